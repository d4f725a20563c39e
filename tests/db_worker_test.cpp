#include "appointment_relay/db_worker.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "appointment_relay/metrics.hpp"
#include "support/tcp_proxy.hpp"
#include "support/test_database.hpp"

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;
using testing::scratch_database;

// What the callbacks saw, in order: "active", "inactive"; wakes are counted.
class recorder {
 public:
  db_worker_callbacks callbacks() {
    return {[this](std::string id, std::uint64_t session) {
              session_ = session;
              push("active", std::move(id));
            },
            [this] { push("inactive", ""); },
            [this] {
              std::lock_guard lock(mutex_);
              ++wakes_;
              cv_.notify_all();
            },
            [] {}, [](std::vector<endpoint_control>, bool) {}};
  }
  bool wait(const std::function<bool(const std::vector<std::string>&, int)>& pred,
            std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return pred(events_, wakes_); });
  }
  bool wait_events(std::size_t n, std::chrono::milliseconds timeout) {
    return wait([n](const auto& e, int) { return e.size() >= n; }, timeout);
  }
  std::vector<std::string> events() {
    std::lock_guard lock(mutex_);
    return events_;
  }
  int wakes() {
    std::lock_guard lock(mutex_);
    return wakes_;
  }
  std::string installation() {
    std::lock_guard lock(mutex_);
    return installation_;
  }
  // The session of the last activation (read on the io thread, where the callbacks run).
  std::uint64_t session() const { return session_.load(); }

 private:
  void push(const char* what, std::string id) {
    std::lock_guard lock(mutex_);
    events_.push_back(what);
    if (!id.empty()) installation_ = std::move(id);
    cv_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> events_;
  std::string installation_;
  int wakes_ = 0;
  std::atomic<std::uint64_t> session_{0};
};

class db_worker_test : public ::testing::Test {
 protected:
  void SetUp() override {
    io_thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    guard_.reset();
    io_.stop();
    io_thread_.join();
  }

  db_worker_settings settings(const std::string& url) {
    db_worker_settings s;
    s.database_url = url;
    s.endpoints = {"a"};
    s.poll_interval = 5000ms;  // long: a wake within milliseconds must come from NOTIFY
    s.reconnect_min = 50ms;
    s.reconnect_max = 400ms;
    s.standby_retry = 100ms;
    s.lease = 300ms;  // short: a new leader waits one lease before it is active
    s.heartbeat = 60ms;
    return s;
  }

  std::unique_ptr<db_worker> start(const std::string& url, recorder& r) {
    auto w = start_db_worker(io_.get_executor(), settings(url), r.callbacks(), metrics_);
    sessions_[w.get()] = &r;
    return w;
  }
  std::unique_ptr<db_worker> start(db_worker_settings s, recorder& r) {
    auto w = start_db_worker(io_.get_executor(), std::move(s), r.callbacks(), metrics_);
    sessions_[w.get()] = &r;
    return w;
  }

  // fetch() is called on the io thread, as the dispatcher does, in the worker's current session (or the
  // one given).
  std::vector<pending_event> fetch(db_worker& w, const std::string& endpoint,
                                   std::optional<std::uint64_t> session = std::nullopt) {
    auto p = std::make_shared<std::promise<std::vector<pending_event>>>();
    auto f = p->get_future();
    recorder* r = sessions_.at(&w);
    net::post(io_, [&w, endpoint, p, r, session] {
      w.fetch(
          endpoint, session.value_or(r->session()), 100,
          [p](std::vector<pending_event> rows) { p->set_value(std::move(rows)); }, false);
    });
    if (f.wait_for(5s) != std::future_status::ready) throw std::runtime_error("fetch not answered");
    return f.get();
  }

  static void book(const scratch_database& db) {
    db.exec(
        "WITH p AS (INSERT INTO api_patient (key) VALUES (md5(random()::text)) RETURNING id)"
        " INSERT INTO api_appointment (patient_id, start_time, duration_minutes)"
        " SELECT id, '2021-12-24 21:30+00', 30 FROM p");
  }
  static void kill_relay_sessions(const scratch_database& db) {
    db.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'appointment-relay'");
  }

  std::map<const db_worker*, recorder*> sessions_;
  metrics metrics_;
  net::io_context io_;
  net::executor_work_guard<net::io_context::executor_type> guard_ = net::make_work_guard(io_);
  std::thread io_thread_;
};

TEST_F(db_worker_test, should_become_active_and_wake_on_notify_within_milliseconds) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  recorder r;
  auto w = start(db.url(), r);
  ASSERT_TRUE(r.wait_events(1, 5s));
  EXPECT_EQ(r.events(), std::vector<std::string>{"active"});
  EXPECT_EQ(r.installation(), db.query_value("SELECT id FROM appointment_relay.installation"));
  EXPECT_TRUE(metrics_.database_up());
  ASSERT_TRUE(r.wait([](const auto&, int wakes) { return wakes >= 1; }, 2s));  // the catch-up wake
  int before = r.wakes();
  auto t0 = std::chrono::steady_clock::now();
  book(db);
  ASSERT_TRUE(r.wait([before](const auto&, int wakes) { return wakes > before; }, 2s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);
  auto rows = fetch(*w, "a");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_TRUE(std::holds_alternative<captured_change>(rows[0].change));
  w->stop(2s);
  EXPECT_FALSE(metrics_.database_up());
  EXPECT_TRUE(fetch(*w, "a").empty());  // stopped: answered with nothing
}

TEST_F(db_worker_test, should_run_a_waiting_fetch_on_the_next_notification_without_waking_the_io_thread) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  recorder r;
  auto w = start(db.url(), r);  // poll tick 5 s: an answer within it comes from the notification
  ASSERT_TRUE(r.wait_events(1, 5s));
  EXPECT_TRUE(fetch(*w, "a").empty());  // everything read
  auto p = std::make_shared<std::promise<std::vector<pending_event>>>();
  auto answered = p->get_future();
  net::post(io_, [&w, &r, p] {
    w->fetch(
        "a", r.session(), 100, [p](std::vector<pending_event> rows) { p->set_value(std::move(rows)); }, true);
  });
  EXPECT_EQ(answered.wait_for(300ms), std::future_status::timeout) << "nothing new: the fetch waits";
  const int wakes_before = r.wakes();
  auto t0 = std::chrono::steady_clock::now();
  book(db);
  ASSERT_EQ(answered.wait_for(2s), std::future_status::ready);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  EXPECT_EQ(answered.get().size(), 1u);
  EXPECT_EQ(r.wakes(), wakes_before) << "the only endpoint was waiting: no wake-up of the io thread";

  // A change committed while no fetch waits is not lost: the next waiting fetch runs at once.
  book(db);
  std::this_thread::sleep_for(200ms);
  auto p2 = std::make_shared<std::promise<std::vector<pending_event>>>();
  auto second = p2->get_future();
  net::post(io_, [&w, &r, p2] {
    w->fetch(
        "a", r.session(), 100, [p2](std::vector<pending_event> rows) { p2->set_value(std::move(rows)); },
        true);
  });
  ASSERT_EQ(second.wait_for(2s), std::future_status::ready);
  EXPECT_EQ(second.get().size(), 1u);

  // A waiting fetch is answered with nothing when the worker stops.
  auto p3 = std::make_shared<std::promise<std::vector<pending_event>>>();
  auto third = p3->get_future();
  net::post(io_, [&w, &r, p3] {
    w->fetch(
        "a", r.session(), 100, [p3](std::vector<pending_event> rows) { p3->set_value(std::move(rows)); },
        true);
  });
  std::this_thread::sleep_for(100ms);
  w->stop(2s);
  ASSERT_EQ(third.wait_for(2s), std::future_status::ready);
  EXPECT_TRUE(third.get().empty());
}

// An endpoint that holds (a full window, paused, its breaker open) reads nothing until it fetches again: news
// wakes the io thread for neither it nor an endpoint whose fetch waits; once it fetches, it is woken again.
TEST_F(db_worker_test, should_not_wake_the_io_thread_for_an_endpoint_that_holds) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  recorder r;
  auto s = settings(db.url());
  s.endpoints = {"a", "held"};
  auto w = start(s, r);
  ASSERT_TRUE(r.wait_events(1, 5s));
  EXPECT_TRUE(fetch(*w, "a").empty());
  EXPECT_TRUE(fetch(*w, "held").empty());
  auto park = [&](const std::string& endpoint) {
    auto p = std::make_shared<std::promise<std::vector<pending_event>>>();
    net::post(io_, [&w, &r, p, endpoint] {
      w->fetch(
          endpoint, r.session(), 100, [p](std::vector<pending_event> rows) { p->set_value(std::move(rows)); },
          true);
    });
    return p->get_future();
  };
  auto a = park("a");
  net::post(io_, [&w, &r] { w->hold("held", r.session()); });
  std::this_thread::sleep_for(100ms);
  int wakes_before = r.wakes();
  book(db);
  ASSERT_EQ(a.wait_for(2s), std::future_status::ready);
  EXPECT_EQ(a.get().size(), 1u);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(r.wakes(), wakes_before) << "woken for an endpoint that holds";

  // Its next fetch ends the hold: it reads what arrived meanwhile, and news wakes the io thread for it again.
  EXPECT_EQ(fetch(*w, "held").size(), 1u);
  a = park("a");
  std::this_thread::sleep_for(100ms);
  wakes_before = r.wakes();
  book(db);
  ASSERT_EQ(a.wait_for(2s), std::future_status::ready);
  ASSERT_TRUE(r.wait([wakes_before](const auto&, int wakes) { return wakes > wakes_before; }, 2s))
      << "no wake-up for an endpoint with neither a waiting fetch nor a hold";
  w->stop(2s);
}

TEST_F(db_worker_test, should_reconnect_after_its_session_is_terminated_and_read_what_was_missed) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  recorder r;
  auto w = start(db.url(), r);
  ASSERT_TRUE(r.wait_events(1, 5s));
  book(db);
  auto first = fetch(*w, "a");
  ASSERT_EQ(first.size(), 1u);
  w->record({{first[0].id, "a", delivery_state::delivered, 1, 1700000000000, 1700000000000, {}, "", ""}},
            {{"a", first[0].id}});
  ASSERT_TRUE(fetch(*w, "a").empty());  // the record is written before the next fetch
  kill_relay_sessions(db);
  book(db);
  ASSERT_TRUE(r.wait_events(3, 5s));
  EXPECT_EQ(r.events(), (std::vector<std::string>{"active", "inactive", "active"}));
  auto after = fetch(*w, "a");
  ASSERT_EQ(after.size(), 1u);
  EXPECT_GT(after[0].id, first[0].id);
  w->stop(2s);
}

// A fetch issued before a reconnect (an earlier session) that reaches the worker after it must not be read:
// its rows would count as read in the new read position while the dispatcher drops the stale answer, so the
// new session would never read them.
TEST_F(db_worker_test, should_not_read_a_fetch_of_an_earlier_session) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  recorder r;
  auto w = start(db.url(), r);
  ASSERT_TRUE(r.wait_events(1, 5s));
  const auto old_session = r.session();
  kill_relay_sessions(db);
  ASSERT_TRUE(r.wait_events(3, 5s));
  ASSERT_NE(r.session(), old_session);
  book(db);
  EXPECT_TRUE(fetch(*w, "a", old_session).empty()) << "a stale fetch is answered with nothing";
  auto rows = fetch(*w, "a");
  ASSERT_EQ(rows.size(), 1u) << "the new session still reads the row the stale fetch would have taken";
  w->stop(2s);
}

// Fencing: a leader whose database connection freezes (no FIN, no RST: a partition, a hung proxy) stops
// within its lease although its database thread is blocked in a query, says so on /readyz (database_up),
// and resumes in a new session once the same connection answers again (its lock was never lost).
TEST_F(db_worker_test, should_stop_within_the_lease_when_its_connection_freezes_and_resume_when_it_thaws) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto [proxy_owner, through] = testing::proxy_database(db.url());
  auto& proxy = *proxy_owner;
  recorder r;
  auto w = start(through, r);
  ASSERT_TRUE(r.wait_events(1, 5s));
  const auto first_session = r.session();
  EXPECT_TRUE(metrics_.database_up());
  proxy.freeze();
  const auto frozen_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(r.wait_events(2, 3s)) << "no on_inactive after the freeze";
  EXPECT_EQ(r.events()[1], "inactive");
  EXPECT_LT(std::chrono::steady_clock::now() - frozen_at, 300ms + 60ms + 400ms) << "within the lease";
  EXPECT_FALSE(metrics_.database_up()) << "/readyz must say 503";
  proxy.thaw();
  ASSERT_TRUE(r.wait_events(3, 5s)) << "no on_active after the thaw";
  EXPECT_EQ(r.events()[2], "active");
  EXPECT_NE(r.session(), first_session) << "a new session: reads start afresh";
  EXPECT_TRUE(metrics_.database_up());
  book(db);
  EXPECT_EQ(fetch(*w, "a").size(), 1u);
  w->stop(2s);
}

TEST_F(db_worker_test, should_keep_a_second_instance_standing_by_until_the_first_stops) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  recorder r1, r2;
  auto w1 = start(db.url(), r1);
  ASSERT_TRUE(r1.wait_events(1, 5s));
  auto w2 = start(db.url(), r2);
  EXPECT_FALSE(r2.wait_events(1, 500ms));
  EXPECT_TRUE(fetch(*w2, "a").empty());  // a standby has nothing to give
  book(db);
  w1->stop(2s);
  ASSERT_TRUE(r2.wait_events(1, 3s));
  EXPECT_EQ(r2.events(), std::vector<std::string>{"active"});
  EXPECT_EQ(fetch(*w2, "a").size(), 1u);
  w2->stop(2s);
}

TEST_F(db_worker_test, should_let_a_standby_take_over_when_the_active_session_is_killed) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  recorder r1, r2;
  auto slow = settings(db.url());
  slow.reconnect_min = slow.reconnect_max = 3000ms;  // the killed one comes back late: the standby wins
  auto w1 = start(slow, r1);
  ASSERT_TRUE(r1.wait_events(1, 5s));
  auto w2 = start(db.url(), r2);
  EXPECT_FALSE(r2.wait_events(1, 300ms));
  db.exec(
      "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
      " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())");
  ASSERT_TRUE(r2.wait_events(1, 2s));
  ASSERT_TRUE(r1.wait_events(2, 1s));
  EXPECT_EQ(r1.events(), (std::vector<std::string>{"active", "inactive"}));
  w1->stop(1s);
  w2->stop(1s);
  EXPECT_EQ(r1.events().size(), 2u);  // it came back only as a standby
}

TEST_F(db_worker_test, should_write_queued_records_when_stopped) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  book(db);
  book(db);
  recorder r;
  auto w = start(db.url(), r);
  ASSERT_TRUE(r.wait_events(1, 5s));
  auto rows = fetch(*w, "a");
  ASSERT_EQ(rows.size(), 2u);
  ASSERT_TRUE(fetch(*w, "a").empty());  // settles the read floor, which bounds the watermark
  w->record(
      {{rows[0].id, "a", delivery_state::retrying, 1, 1700000000000, 1700000000000, 1700000005000, "x", ""}},
      {});
  w->record(
      {{rows[0].id, "a", delivery_state::delivered, 2, 1700000000000, 1700000001000, {}, "", ""},
       {rows[1].id, "a", delivery_state::dead, 1, 1700000000000, 1700000000000, {}, "http 400", "http 400"}},
      {{"a", rows[1].id}});
  w->stop(3s);
  EXPECT_EQ(db.query_value("SELECT string_agg(state, ',' ORDER BY event_id) FROM appointment_relay.delivery"),
            "delivered,dead");
  EXPECT_EQ(db.query_value("SELECT done_through FROM appointment_relay.endpoint_cursor"),
            std::to_string(rows[1].id));
}

TEST_F(db_worker_test, should_come_back_after_a_server_restart) {
  AR_REQUIRE_DATABASE();
  const char* pgdir = std::getenv("APPOINTMENT_RELAY_TEST_PGDIR");
  if (pgdir == nullptr || *pgdir == '\0') {
    // scripts/test.sh always provides its own cluster to restart: there, a missing one is a failure.
    if (testing::database_required())
      FAIL() << "APPOINTMENT_RELAY_TEST_PGDIR is not set but APPOINTMENT_RELAY_TEST_REQUIRE_DB=1";
    GTEST_SKIP() << "APPOINTMENT_RELAY_TEST_PGDIR is not set: no server of our own to restart";
  }
  scratch_database db;
  recorder r;
  auto w = start(db.url(), r);
  ASSERT_TRUE(r.wait_events(1, 5s));
  std::string cmd =
      std::string(APPOINTMENT_RELAY_SOURCE_DIR) + "/scripts/pg-cluster.sh restart '" + pgdir + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  book(db);
  ASSERT_TRUE(r.wait_events(3, 8s));
  EXPECT_EQ(r.events(), (std::vector<std::string>{"active", "inactive", "active"}));
  EXPECT_EQ(fetch(*w, "a").size(), 1u);
  w->stop(2s);
}

}  // namespace
}  // namespace appointment_relay
