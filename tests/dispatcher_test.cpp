#include "appointment_relay/dispatcher.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "appointment_relay/db_worker.hpp"
#include "appointment_relay/metrics.hpp"
#include "appointment_relay/signature.hpp"
#include "support/test_database.hpp"
#include "support/test_http_server.hpp"

// The dispatch stage with everything real: the relay's triggers in a scratch PostgreSQL database, the
// database worker, the dispatcher and an HTTP server on 127.0.0.1 that fails on demand.

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;
using testing::recorded_request;
using testing::response_plan;
using testing::scratch_database;
using testing::test_http_server;

constexpr const char* secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

class relay_under_test {
 public:
  relay_under_test(const scratch_database& db, const std::string& url, retry_settings retry = fast_retry())
      : work_(net::make_work_guard(io_)) {
    endpoint_config e;
    e.name = "test";
    e.target = *parse_url(url);
    e.secrets = {secret};
    e.kinds = {notification_kind::created, notification_kind::rescheduled, notification_kind::cancelled,
               notification_kind::no_show, notification_kind::reverted,    notification_kind::checked_in};
    e.max_in_flight = 4;
    e.timeout = 2s;
    dispatcher_settings ds;
    ds.endpoints = {e};
    ds.retry = retry;
    db_worker_settings ws;
    ws.database_url = db.url();
    ws.endpoints = {"test"};
    ws.poll_interval = 500ms;
    db_worker_callbacks cb;
    cb.on_active = [this](std::string id, std::uint64_t session) { disp_->activate(std::move(id), session); };
    cb.on_inactive = [this] { disp_->deactivate(); };
    cb.on_wake = [this] { disp_->wake(); };
    worker_ = start_db_worker(io_.get_executor(), ws, cb, metrics_);
    disp_ = make_dispatcher(io_.get_executor(), ds, *worker_, metrics_);
    thread_ = std::thread([this] { io_.run(); });
  }

  ~relay_under_test() {
    std::promise<void> drained;
    net::post(io_, [&] { disp_->drain(2s, [&] { drained.set_value(); }); });
    drained.get_future().wait_for(5s);
    worker_->stop(2s);
    work_.reset();
    io_.stop();
    thread_.join();
  }

  static retry_settings fast_retry() {
    retry_settings r;
    r.base_delay = 20ms;
    r.max_delay = 100ms;
    return r;
  }

  metrics& stats() { return metrics_; }

 private:
  net::io_context io_;
  net::executor_work_guard<net::io_context::executor_type> work_;
  metrics metrics_;
  std::unique_ptr<db_worker> worker_;
  std::unique_ptr<dispatcher> disp_;
  std::thread thread_;
};

std::string canvas(const scratch_database& db, const std::string& call) {
  return db.query_value("SELECT canvas_test." + call);
}

struct appointment {
  std::string id;
  std::string external_id;
  std::string patient_key;
};

appointment book(const scratch_database& db, const std::string& start = "2021-12-24 21:30:00+00",
                 int minutes = 30) {
  auto patient = canvas(db, "create_patient()");
  appointment a;
  a.id = canvas(db, "book_appointment(" + patient + ", '" + start + "', " + std::to_string(minutes) + ")");
  a.external_id = db.query_value("SELECT externally_exposable_id FROM api_appointment WHERE id = " + a.id);
  a.patient_key = db.query_value("SELECT key FROM api_patient WHERE id = " + patient);
  return a;
}

std::string payload(const appointment& a, const std::string& flag, const std::string& times = "") {
  return R"({"canvas_patient_key":")" + a.patient_key + R"(","appointment_external_id":")" + a.external_id +
         "\"," + times + "\"" + flag + "\":true}";
}

std::string times(const std::string& start, const std::string& end) {
  return R"("start_time":")" + start + R"(","end_time":")" + end + "\",";
}

TEST(dispatcher, should_deliver_the_six_canvas_payloads_end_to_end_signed) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(testing::always_status(200));
  relay_under_test relay(db, server.url("/canvas"));

  auto first = book(db);
  auto second_id = canvas(db, "reschedule(" + first.id + ", '2021-12-31 23:45:00+00', 30)");
  appointment second = first;
  second.id = second_id;
  second.external_id =
      db.query_value("SELECT externally_exposable_id FROM api_appointment WHERE id = " + second_id);
  canvas(db, "cancel(" + second.id + ")");
  canvas(db, "restore(" + second.id + ")");
  canvas(db, "no_show(" + second.id + ")");
  canvas(db, "check_in(" + second.id + ")");

  ASSERT_TRUE(server.wait_for_requests(6, 10s)) << server.request_count();
  std::this_thread::sleep_for(200ms);  // nothing more may arrive
  auto got = server.requests();
  ASSERT_EQ(got.size(), 6u);
  std::vector<std::string> expected = {
      payload(first, "created", times("2021-12-24T21:30:00+00:00", "2021-12-24T22:00:00+00:00")),
      payload(second, "rescheduled", times("2021-12-31T23:45:00+00:00", "2022-01-01T00:15:00+00:00")),
      payload(second, "cancelled"),
      payload(second, "reverted"),
      payload(second, "no_show"),
      payload(second, "checked_in"),
  };
  std::set<std::string> ids;
  auto key = *signing_key::parse(secret);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const auto& r = got[i];
    EXPECT_EQ(r.body, expected[i]) << i;
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.target, "/canvas");
    EXPECT_EQ(r.header("content-type").value_or(""), "application/json");
    EXPECT_TRUE(r.header("user-agent").value_or("").starts_with("appointment-relay/"));
    auto id = r.header("webhook-id").value_or("");
    auto ts = std::stoll(r.header("webhook-timestamp").value_or("0"));
    EXPECT_LE(std::llabs(ts - std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count()),
              5);
    EXPECT_TRUE(verify_signature(key, r.header("webhook-signature").value_or(""), id, ts, r.body)) << i;
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 6u) << "every event has its own webhook-id";

  // Delivery state written back.
  for (int i = 0; i < 50 && db.query_value("SELECT count(*) FROM appointment_relay.delivered_events"
                                           " WHERE delivered_at IS NOT NULL") != "6";
       ++i)
    std::this_thread::sleep_for(50ms);
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivered_events WHERE"
                           " delivered_at IS NOT NULL AND attempts = 1 AND endpoint = 'test'"),
            "6");
  // First-attempt successes write no delivery row: one batch record holds them.
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivery"), "0");
}

TEST(dispatcher, should_keep_each_appointments_order_through_retries_without_holding_up_others) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  // Appointment A's patient is known before anything is captured. A's creation fails until B's creation has
  // arrived (and at least twice): were B held up behind A, A would never get through. A's cancel must wait
  // for A's creation.
  const std::string a_patient_key = "0123456789abcdef0123456789abcdef";
  std::atomic<int> failures{0};
  std::atomic<bool> b_arrived{false};
  test_http_server server([&](const recorded_request& r, int) {
    bool a_created =
        r.body.find(a_patient_key) != std::string::npos && r.body.find("\"created\"") != std::string::npos;
    if (!a_created) {
      if (r.body.find("\"created\"") != std::string::npos) b_arrived = true;
      return response_plan::with_status(200);
    }
    if (failures < 2 || !b_arrived) {
      ++failures;
      return response_plan::with_status(500);
    }
    return response_plan::with_status(200);
  });
  relay_under_test relay(db, server.url());

  auto patient = canvas(db, "create_patient('" + a_patient_key + "')");
  auto a_id = canvas(db, "book_appointment(" + patient + ", '2022-01-01 10:00+00', 15)");
  auto a_ext = db.query_value("SELECT externally_exposable_id FROM api_appointment WHERE id = " + a_id);
  canvas(db, "cancel(" + a_id + ")");
  auto b = book(db, "2022-01-02 10:00+00", 15);

  ASSERT_TRUE(server.wait_for_requests(4, 10s)) << server.request_count();
  for (int i = 0; i < 200 && server.requests().back().body.find("\"cancelled\"") == std::string::npos; ++i)
    std::this_thread::sleep_for(50ms);
  auto got = server.requests();
  std::vector<std::string> a_bodies, a_ids;
  int b_index = -1, a_done_index = -1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i].body.find(a_ext) != std::string::npos) {
      a_bodies.push_back(got[i].body.find("\"created\"") != std::string::npos ? "created" : "cancelled");
      if (a_bodies.back() == "created") a_ids.push_back(got[i].header("webhook-id").value_or(""));
      if (a_bodies.back() == "created") a_done_index = static_cast<int>(i);
    } else if (got[i].body.find(b.external_id) != std::string::npos) {
      b_index = static_cast<int>(i);
    }
  }
  ASSERT_GE(a_bodies.size(), 4u);
  EXPECT_EQ(a_bodies.back(), "cancelled") << "the cancel came after every attempt of the creation";
  EXPECT_EQ(std::count(a_bodies.begin(), a_bodies.end(), "cancelled"), 1);
  ASSERT_GE(a_ids.size(), 3u);
  EXPECT_EQ(std::set<std::string>(a_ids.begin(), a_ids.end()).size(), 1u) << "a retry keeps its webhook-id";
  ASSERT_GE(b_index, 0);
  EXPECT_LT(b_index, a_done_index) << "B went while A was retrying";
}

TEST(dispatcher, should_dead_letter_a_400_at_once_and_record_the_reason) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server([](const recorded_request&, int) { return response_plan::with_status(400); });
  relay_under_test relay(db, server.url());
  auto a = book(db);
  ASSERT_TRUE(server.wait_for_requests(1, 10s));
  for (int i = 0;
       i < 100 &&
       db.query_value("SELECT count(*) FROM appointment_relay.delivery WHERE state = 'dead'") != "1";
       ++i)
    std::this_thread::sleep_for(50ms);
  EXPECT_EQ(db.query_value("SELECT dead_reason || '/' || attempts FROM appointment_relay.delivery"),
            "http 400/1");
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(server.request_count(), 1u) << "a 400 is not retried";
  EXPECT_NE(relay.stats().render().find(
                "appointment_relay_dead_letters_total{endpoint=\"test\",reason=\"http_400\"} 1"),
            std::string::npos)
      << relay.stats().render();
}

TEST(dispatcher, should_honour_retry_after_on_a_429) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(testing::always_status(200));
  server.push_plan(response_plan::with_status(429).header("Retry-After", "1"));
  retry_settings retry = relay_under_test::fast_retry();
  retry.max_delay = 5s;
  relay_under_test relay(db, server.url(), retry);
  book(db);
  ASSERT_TRUE(server.wait_for_requests(2, 10s));
  auto got = server.requests();
  auto gap = got[1].received - got[0].received;
  EXPECT_GE(gap, 900ms);
  EXPECT_LT(gap, 3s);
}

TEST(dispatcher, should_dead_letter_a_row_the_classifier_rejects_and_deliver_the_rest) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(testing::always_status(200));
  relay_under_test relay(db, server.url());
  auto patient = canvas(db, "create_patient()");
  db.exec("INSERT INTO api_appointment (patient_id, start_time, duration_minutes, status) VALUES (" +
          patient + ", NULL, 30, 'confirmed')");
  db.exec("INSERT INTO api_appointment (patient_id, start_time, duration_minutes, status) VALUES (" +
          patient + ", now(), -5, 'confirmed')");
  auto good = book(db);
  ASSERT_TRUE(server.wait_for_requests(1, 10s));
  for (int i = 0;
       i < 100 &&
       db.query_value("SELECT count(*) FROM appointment_relay.delivery WHERE state = 'dead'") != "2";
       ++i)
    std::this_thread::sleep_for(50ms);
  EXPECT_EQ(
      db.query_value("SELECT count(*) FROM appointment_relay.delivery WHERE state = 'dead' AND dead_reason "
                     "LIKE 'rejected: %'"),
      "2");
  std::this_thread::sleep_for(200ms);
  ASSERT_EQ(server.request_count(), 1u);
  EXPECT_NE(server.requests()[0].body.find(good.external_id), std::string::npos);
}

}  // namespace
}  // namespace appointment_relay

namespace appointment_relay {
namespace {

// A unit test's stand-in for the listener stage: hands out prepared events per endpoint and keeps what the
// dispatcher records. Runs on the io thread like the real one's callbacks.
class fake_source final : public event_source {
 public:
  fake_source(net::io_context& io, int events) : io_(io) {
    for (int i = 1; i <= events; ++i) {
      captured_change c;
      c.table = source_table::appointment;
      c.appointment_id = i;
      c.appointment_external_id =
          "00000000-0000-4000-8000-" + std::string(12 - std::to_string(i).size(), '0') + std::to_string(i);
      c.start_time = 1640381400;
      c.duration_minutes = 30;
      c.patient_id = 1;
      c.patient_key = "06669a76329f4577bea114bc50072da6";
      pending_event e;
      e.id = i;
      e.captured_at_us = 1;
      e.change = c;
      events_.push_back(e);
    }
  }

  void fetch(std::string endpoint, std::uint64_t, std::size_t limit,
             std::function<void(std::vector<pending_event>)> done, bool wait) override {
    auto& next = cursor_[endpoint];
    if (wait && next >= events_.size()) {
      waiting_[endpoint] = std::move(done);  // its events never change: nothing new will come
      return;
    }
    std::vector<pending_event> out;
    while (out.size() < limit && next < events_.size()) out.push_back(events_[next++]);
    handed_[endpoint] += out.size();
    max_limit_ = std::max(max_limit_, limit);
    net::post(io_, [done = std::move(done), out = std::move(out)]() mutable { done(std::move(out)); });
  }

  void record(std::vector<delivery_update> updates, std::map<std::string, watermark>) override {
    for (const auto& u : updates) {
      if (u.state == delivery_state::delivered) ++delivered_[u.endpoint];
      recorded_.push_back(u);
    }
  }
  const std::vector<delivery_update>& recorded() const { return recorded_; }

  std::size_t handed(const std::string& e) { return handed_[e]; }
  std::size_t delivered(const std::string& e) { return delivered_[e]; }
  std::size_t max_limit() const { return max_limit_; }

 private:
  net::io_context& io_;
  std::vector<pending_event> events_;
  std::map<std::string, std::size_t> cursor_, handed_, delivered_;
  std::map<std::string, std::function<void(std::vector<pending_event>)>> waiting_;
  std::vector<delivery_update> recorded_;
  std::size_t max_limit_ = 0;
};

endpoint_config endpoint_to(const std::string& name, const std::string& url) {
  endpoint_config e;
  e.name = name;
  e.target = *parse_url(url);
  e.kinds = {notification_kind::created};
  e.max_in_flight = 2;
  e.timeout = 1s;
  return e;
}

TEST(dispatcher, should_stop_reading_for_a_slow_endpoint_once_its_window_is_full) {
  test_http_server server(
      [](const recorded_request&, int) { return response_plan::with_status(200).after(100ms); });
  net::io_context io;
  fake_source source(io, 100);
  metrics m;
  dispatcher_settings s;
  s.endpoints = {endpoint_to("slow", server.url())};
  s.max_pending_per_endpoint = 5;
  s.batch_size = 3;
  auto d = make_dispatcher(io.get_executor(), s, source, m);
  d->activate("test", 1);
  io.run_for(450ms);
  // In 450 ms two connections finish about 8 requests: what was handed out stays within the window.
  EXPECT_LE(source.handed("slow"), source.delivered("slow") + 5 + 2);
  EXPECT_LT(source.handed("slow"), 20u);
  EXPECT_LE(source.max_limit(), 3u);
  d->drain(1s, [&] { io.stop(); });
  io.run_for(2s);
}

TEST(dispatcher, should_not_let_an_endpoint_that_is_down_delay_another) {
  test_http_server up(testing::always_status(200));
  std::uint16_t closed_port = 0;
  {
    // A port that was just ours and is now closed: connections are refused.
    test_http_server gone(testing::always_status(200));
    closed_port = gone.port();
  }
  net::io_context io;
  fake_source source(io, 200);
  metrics m;
  dispatcher_settings s;
  s.endpoints = {endpoint_to("down", "http://127.0.0.1:" + std::to_string(closed_port) + "/"),
                 endpoint_to("up", up.url())};
  s.endpoints[1].max_in_flight = 8;
  s.retry.base_delay = 10ms;
  s.retry.max_delay = 50ms;
  s.max_pending_per_endpoint = 20;
  auto d = make_dispatcher(io.get_executor(), s, source, m);
  d->activate("test", 1);
  for (int i = 0; i < 100 && source.delivered("up") < 200; ++i) io.run_for(50ms);
  EXPECT_EQ(source.delivered("up"), 200u);
  EXPECT_EQ(source.delivered("down"), 0u);
  EXPECT_LE(source.handed("down"), 20u) << "the endpoint that is down holds at most its window";
  d->drain(500ms, [&] { io.stop(); });
  io.run_for(2s);
}

// A paused endpoint, or one whose breaker is open, sends nothing new: it reads one page to hold (a probe's
// event) and no more until it is resumed or the breaker closes, so that its reads do not queue before the
// other endpoints' on the database thread. Then it reads and sends everything.
TEST(dispatcher, should_read_no_further_for_a_paused_or_open_endpoint_until_it_may_send) {
  for (const bool pause : {true, false}) {
    SCOPED_TRACE(pause ? "paused" : "breaker open");
    std::atomic<bool> answering{pause};  // the held endpoint's receiver: 503 until it answers
    test_http_server held(
        [&](const recorded_request&, int) { return response_plan::with_status(answering ? 200 : 503); });
    test_http_server up(testing::always_status(200));
    net::io_context io;
    fake_source source(io, 100);
    metrics m;
    dispatcher_settings s;
    s.endpoints = {endpoint_to("held", held.url()), endpoint_to("up", up.url())};
    s.endpoints[0].breaker_probe_max = 200ms;  // failed probes every 200 ms
    s.max_pending_per_endpoint = 40;
    s.batch_size = 10;
    auto d = make_dispatcher(io.get_executor(), s, source, m);
    endpoint_control c;
    c.health.endpoint = "held";
    c.paused = pause;
    if (!pause) {
      const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
      c.health.health = endpoint_health::open;
      c.health.probe_at_ms = now_ms + 100;
    }
    d->activate("test", 1);
    d->control({c}, true);
    for (int i = 0; i < 100 && source.delivered("up") < 100; ++i) io.run_for(20ms);
    io.run_for(500ms);  // probes fail meanwhile (breaker open)
    EXPECT_EQ(source.delivered("up"), 100u);
    EXPECT_EQ(source.delivered("held"), 0u);
    EXPECT_EQ(source.handed("held"), 10u) << "read past its first page while it could send nothing";
    if (pause)
      EXPECT_EQ(held.request_count(), 0u) << "a paused endpoint was sent to";
    else
      EXPECT_GE(held.request_count(), 2u) << "no probes";
    d->wake();  // news: still nothing read
    io.run_for(50ms);
    EXPECT_EQ(source.handed("held"), 10u);

    // Resumed, or the breaker closed by a probe: everything is read and sent.
    answering = true;
    if (pause) d->control({}, false);
    for (int i = 0; i < 150 && source.delivered("held") < 100; ++i) io.run_for(20ms);
    EXPECT_EQ(source.delivered("held"), 100u);
    EXPECT_EQ(source.handed("held"), 100u);
    d->drain(500ms, [&] { io.stop(); });
    io.run_for(2s);
  }
}

// An HTTP client that never answers on its own: the test answers, late or never. It records what the lane
// cancels.
class silent_client final : public http_client {
 public:
  request_id post(std::string, header_list, std::function<void(http_response_info)> done) override {
    held.push_back(std::move(done));
    return held.size();  // ids 1, 2, ...
  }
  void cancel(request_id id) override { cancelled.push_back(id); }
  std::size_t outstanding() const noexcept override { return held.size(); }
  void close() override {}
  std::vector<std::function<void(http_response_info)>> held;
  std::vector<request_id> cancelled;
};

TEST(dispatcher, should_end_an_attempt_the_client_never_answers_and_ignore_its_late_answer) {
  net::io_context io;
  fake_source source(io, 1);
  metrics m;
  auto client = std::make_shared<silent_client>();
  dispatcher_settings s;
  s.endpoints = {endpoint_to("mute", "http://127.0.0.1:9/")};  // never connected to: the client is fake
  s.retry.base_delay = 10ms;
  s.retry.max_delay = 20ms;
  s.record_flush_interval = 5ms;  // outcomes handed over within the waits below
  s.make_client = [client](executor, const url&, const http_client_options&) { return client; };
  auto d = make_dispatcher(io.get_executor(), s, source, m);
  d->activate("test", 1);
  // The attempt's deadline is the endpoint's timeout (1 s) + 5 s; the lane's sweep runs every second.
  for (int i = 0; i < 100 && client->held.size() < 2; ++i) io.run_for(100ms);
  ASSERT_EQ(client->held.size(), 2u) << "the unanswered attempt ended and the event was sent again";
  EXPECT_EQ(client->cancelled, std::vector<http_client::request_id>{1})
      << "the given-up request is cancelled in the client before the event goes again";
  EXPECT_EQ(d->abandoned_attempts(), 1u);
  io.run_for(50ms);
  ASSERT_FALSE(source.recorded().empty());
  EXPECT_EQ(source.recorded().front().state, delivery_state::retrying);
  EXPECT_EQ(source.recorded().front().last_error, "no answer within the request deadline");

  http_response_info ok;
  ok.status = 200;
  client->held[0](ok);  // the first attempt's answer, long after it was given up: ignored
  io.run_for(50ms);
  EXPECT_EQ(source.delivered("mute"), 0u);
  EXPECT_EQ(d->in_flight(), 1u);
  client->held[1](ok);
  io.run_for(50ms);
  EXPECT_EQ(source.delivered("mute"), 1u);
  EXPECT_EQ(d->in_flight(), 0u);
  d->drain(200ms, [&] { io.stop(); });
  io.run_for(1s);
}

// A real HTTP client whose first answer is lost on the way back (a defect of a client), with a request
// timeout far longer than the lane's: the lane's guard must give the attempt up and cancel the request in
// the client before the event goes again, so the abandoned request cannot reach the receiver after its
// retry (and cannot be answered twice).
class deaf_client final : public http_client {
 public:
  explicit deaf_client(std::shared_ptr<http_client> real) : real_(std::move(real)) {}
  request_id post(std::string body, header_list headers,
                  std::function<void(http_response_info)> done) override {
    const bool deaf = ++posts == 1;
    auto id = real_->post(std::move(body), std::move(headers),
                          [this, deaf, done = std::move(done)](http_response_info r) {
                            if (deaf) {
                              lost_answers.push_back(r.error);
                              return;
                            }
                            done(std::move(r));
                          });
    log.push_back("post " + std::to_string(id));
    return id;
  }
  void cancel(request_id id) override {
    log.push_back("cancel " + std::to_string(id));
    real_->cancel(id);
  }
  std::size_t outstanding() const noexcept override { return real_->outstanding(); }
  void close() override { real_->close(); }

  int posts = 0;
  std::vector<std::string> log;
  std::vector<std::string> lost_answers;

 private:
  std::shared_ptr<http_client> real_;
};

TEST(dispatcher, should_cancel_an_attempt_its_guard_gave_up_before_the_event_goes_again) {
  test_http_server server([](const recorded_request&, int index) {
    return index == 0 ? response_plan::fault(response_plan::action::freeze) : response_plan::with_status(200);
  });
  net::io_context io;
  fake_source source(io, 1);
  metrics m;
  std::shared_ptr<deaf_client> client;
  dispatcher_settings s;
  s.endpoints = {endpoint_to("crm", server.url())};  // timeout 1 s: the guard gives up after 1 s + 5 s
  s.retry.base_delay = 10ms;
  s.retry.max_delay = 20ms;
  s.make_client = [&](executor ex, const url& u, const http_client_options& o) {
    auto patient = o;
    patient.request_timeout = 60s;  // the client itself would wait far longer than the lane
    client = std::make_shared<deaf_client>(make_http_client(ex, u, patient));
    return client;
  };
  auto d = make_dispatcher(io.get_executor(), s, source, m);
  d->activate("test", 1);
  for (int i = 0; i < 120 && source.delivered("crm") < 1; ++i) io.run_for(100ms);
  ASSERT_EQ(source.delivered("crm"), 1u);
  EXPECT_EQ(d->abandoned_attempts(), 1u);
  ASSERT_EQ(client->log, (std::vector<std::string>{"post 1", "cancel 1", "post 2"}))
      << "the abandoned request is cancelled before the retry is posted";
  io.run_for(100ms);
  EXPECT_EQ(client->lost_answers, std::vector<std::string>{"cancelled"}) << "the client ended it at once";
  ASSERT_EQ(server.request_count(), 2u);
  auto requests = server.requests();
  EXPECT_EQ(requests[0].header("webhook-id"), requests[1].header("webhook-id"));
  EXPECT_NE(requests[0].connection, requests[1].connection) << "the frozen connection was aborted";
  d->drain(500ms, [&] { io.stop(); });
  io.run_for(1s);
}

}  // namespace
}  // namespace appointment_relay
