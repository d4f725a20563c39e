#include "support/canvas_stream.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "fault_support.hpp"
#include "support/tcp_proxy.hpp"

// The real daemon as a process against a scratch database and a real receiver, while a stream of a few
// thousand Canvas changes is played, under faults: every expected payload arrives at least once, nothing
// unexpected, a duplicate only with the same webhook-id, each appointment's notifications in commit order.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// A receiver whose answers a test decides per request, remembering which requests it accepted (2xx answered
// at once): those are the ones the relay saw delivered.
class receiver {
 public:
  using policy = std::function<response_plan(const recorded_request&, int index)>;

  explicit receiver(std::uint16_t port = 0) {
    test_server_options o;
    o.port = port;
    server_ = std::make_unique<test_http_server>(
        [this](const recorded_request& r, int index) {
          policy p;
          {
            std::lock_guard lock(mutex_);
            p = policy_;
          }
          auto plan = p ? p(r, index) : response_plan::with_status(200);
          bool ok =
              plan.what == response_plan::action::respond && plan.status / 100 == 2 && plan.delay < 100ms;
          std::lock_guard lock(mutex_);
          if (ok) accepted_.insert(index);
          return plan;
        },
        o);
  }

  ~receiver() { server_->stop(); }  // before the members its handler uses are gone
  receiver(const receiver&) = delete;
  receiver& operator=(const receiver&) = delete;

  void set_policy(policy p) {
    std::lock_guard lock(mutex_);
    policy_ = std::move(p);
  }
  test_http_server& server() { return *server_; }
  std::string url() const { return server_->url("/canvas"); }

  std::vector<recorded_request> accepted() const {
    auto all = server_->requests();
    std::lock_guard lock(mutex_);
    std::vector<recorded_request> out;
    for (std::size_t i = 0; i < all.size(); ++i)
      if (accepted_.count(static_cast<int>(i))) out.push_back(all[i]);
    return out;
  }

 private:
  std::unique_ptr<test_http_server> server_;
  mutable std::mutex mutex_;
  policy policy_;
  std::set<int> accepted_;
};

// Requests of one appointment that overlapped in time, seen from the receiver: a request that arrived before
// the previous one of its appointment was answered (every request is answered answer_time after it arrives).
int count_overlaps(const std::vector<expected_notification>& expected,
                   const std::vector<recorded_request>& got, std::chrono::milliseconds answer_time) {
  std::map<std::string, std::string> key_of;
  for (const auto& e : expected) key_of[e.body] = e.ordering_key;
  std::map<std::string, clock_type::time_point> last_arrival;
  int overlaps = 0;
  for (const auto& r : got) {
    auto key = key_of.find(r.body);
    if (key == key_of.end()) continue;
    auto [it, first] = last_arrival.try_emplace(key->second, r.received);
    if (!first) {
      if (r.received < it->second + answer_time - 5ms) ++overlaps;
      it->second = r.received;
    }
  }
  return overlaps;
}

class relay_faults : public ::testing::Test {
 protected:
  void SetUp() override {
    AR_REQUIRE_DATABASE();
    db_ = std::make_unique<scratch_database>();
  }

  stream_options stream_opts(int lives, std::uint64_t seed = 42) {
    stream_options o;
    o.lives = lives;
    o.seed = seed;
    return o;
  }

  // Every relay a test starts is kept until the test has ended, so that TearDown can read its log.
  relay_process* start(const environment& env, std::vector<std::string> args = {"run"}) {
    relays_.push_back(std::make_unique<relay_process>(env, std::move(args)));
    return relays_.back().get();
  }
  relay_process* start_active(const environment& env, std::vector<std::string> args = {"run"}) {
    auto* relay = start(env, std::move(args));
    EXPECT_TRUE(relay->wait_for_log("this instance is active", 30s)) << relay->log();
    return relay;
  }

  // The dispatcher's guard ends an attempt the HTTP client never answered: a defect of the client. Every
  // attempt of these streams must end by the client's own answer (a response, a timeout, an error).
  void TearDown() override {
    for (const auto& relay : relays_)
      EXPECT_EQ(relay->count_in_log("no answer from the HTTP client"), 0u)
          << "the no-answer guard fired (pid " << relay->pid() << ")";
  }

  // Waits for every expected payload among the accepted requests, then checks them all.
  static void expect_delivered(const std::vector<expected_notification>& expected,
                               const std::function<std::vector<recorded_request>()>& received,
                               delivery_check_options options = {},
                               std::chrono::milliseconds timeout = 120s) {
    options.signing_secret = fault_secret;
    auto started = clock_type::now();
    bool all = wait_for_deliveries(expected, received, timeout);
    auto got = received();
    EXPECT_TRUE(all) << count_delivered(expected, got) << " of " << expected.size() << " delivered";
    auto problems = check_deliveries(expected, got, options);
    EXPECT_TRUE(problems.empty()) << describe(problems);
    std::printf("[ stream   ] %s; %zu requests accepted; settled %.1f s after the stream\n",
                stream_summary(expected).c_str(), got.size(),
                std::chrono::duration<double>(clock_type::now() - started).count());
  }

  std::unique_ptr<scratch_database> db_;
  std::vector<std::unique_ptr<relay_process>> relays_;
};

TEST_F(relay_faults, should_deliver_the_whole_stream_exactly_once_without_faults) {
  receiver rx;
  start_active(relay_env(*db_, rx.url()));
  canvas_stream stream(db_->url(), stream_opts(stream_lives()));
  stream.play();
  auto expected = stream.expected();
  ASSERT_GT(expected.size(), 1000u * static_cast<std::size_t>(stream_lives()) / 500u)
      << stream_summary(expected);
  delivery_check_options o;
  o.allow_duplicates = false;
  expect_delivered(
      expected, [&] { return rx.accepted(); }, o);
}

TEST_F(relay_faults, should_deliver_everything_after_a_sigkill_mid_stream_and_a_restart) {
  receiver rx;
  auto env = relay_env(*db_, rx.url());
  auto relay = start_active(env);
  canvas_stream stream(db_->url(), stream_opts(stream_lives(), 7));
  stream.start();
  ASSERT_TRUE(stream.wait_for_actions(static_cast<std::size_t>(stream_lives()), 60s));
  ASSERT_TRUE(rx.server().wait_for_requests(20, 30s));
  relay->kill_now();
  EXPECT_EQ(relay->wait_exit(1s), 128 + SIGKILL);
  const auto delivered_before = rx.accepted().size();
  std::this_thread::sleep_for(500ms);  // changes keep coming while nothing runs
  relay = start_active(env);
  stream.join();
  auto expected = stream.expected();
  EXPECT_LT(delivered_before, expected.size()) << "the kill came mid-stream";
  expect_delivered(expected, [&] { return rx.accepted(); });
}

TEST_F(relay_faults,
       should_drain_on_sigterm_exit_0_within_the_deadline_and_deliver_the_rest_after_a_restart) {
  receiver rx;
  std::atomic<bool> slow{true};
  rx.set_policy([&](const recorded_request&, int) {
    return slow ? response_plan::with_status(200).after(150ms) : response_plan::with_status(200);
  });
  auto env = relay_env(*db_, rx.url());
  env["APPOINTMENT_RELAY_RELAY_SHUTDOWN_TIMEOUT"] = "3s";
  auto relay = start_active(env);
  canvas_stream stream(db_->url(), stream_opts(stream_lives(), 11));
  stream.start();
  ASSERT_TRUE(stream.wait_for_actions(static_cast<std::size_t>(stream_lives()), 60s));
  ASSERT_TRUE(rx.server().wait_for_requests(20, 30s));
  auto before = relay->log_size();
  auto t0 = clock_type::now();
  ASSERT_TRUE(relay->send_signal(SIGTERM));
  auto code = relay->wait_exit(10s);
  auto took = clock_type::now() - t0;
  EXPECT_EQ(code, 0) << relay->log().substr(before);
  EXPECT_LT(took, 3s + 2s) << "within relay.shutdown_timeout (3 s) and a margin";
  EXPECT_TRUE(relay->wait_for_log("SIGTERM received: draining", 0ms, before));
  EXPECT_TRUE(relay->wait_for_log("stopped", 0ms, before));
  EXPECT_EQ(relay->log().find("draining 0 requests", before), std::string::npos)
      << "it had requests in flight";
  EXPECT_EQ(relay->log().find("shutdown deadline reached", before), std::string::npos);
  // The drained requests were answered (200 after 150 ms) and their outcome written before the exit: the
  // restarted relay sends nothing twice.
  slow = false;
  relay = start_active(env);
  stream.join();
  delivery_check_options once;
  once.allow_duplicates = false;
  expect_delivered(
      stream.expected(), [&] { return rx.server().requests(); }, once);
}

TEST_F(relay_faults, should_reconnect_after_the_postgresql_server_restarts_mid_stream) {
  const char* pgdir = std::getenv("APPOINTMENT_RELAY_TEST_PGDIR");
  if (pgdir == nullptr || *pgdir == '\0') {
    if (database_required())
      FAIL() << "APPOINTMENT_RELAY_TEST_PGDIR is not set but APPOINTMENT_RELAY_TEST_REQUIRE_DB=1";
    GTEST_SKIP() << "APPOINTMENT_RELAY_TEST_PGDIR is not set: no server of our own to restart";
  }
  receiver rx;
  auto relay = start_active(relay_env(*db_, rx.url()));
  canvas_stream stream(db_->url(), stream_opts(stream_lives(), 13));
  stream.start();
  ASSERT_TRUE(stream.wait_for_actions(static_cast<std::size_t>(stream_lives()), 60s));
  stream.pause();  // the stream's own connections are cut too; it reconnects when resumed
  auto before = relay->log_size();
  std::string cmd =
      std::string(APPOINTMENT_RELAY_SOURCE_DIR) + "/scripts/pg-cluster.sh restart '" + pgdir + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  stream.resume();
  EXPECT_TRUE(relay->wait_for_log("reconnecting", 20s, before));
  EXPECT_TRUE(relay->wait_for_log("this instance is active", 30s, before))
      << "active again after the restart";
  stream.join();
  expect_delivered(stream.expected(), [&] { return rx.accepted(); });
  EXPECT_TRUE(relay->running());
}

// Terminated while requests are in flight (every answer takes 30 ms): the new session cancels nothing it
// does not own and sends no event of an appointment while an older request of it is still open.
TEST_F(relay_faults, should_reconnect_when_its_connections_are_terminated_mid_stream) {
  constexpr auto answer_time = 30ms;
  receiver rx;
  rx.set_policy(
      [&](const recorded_request&, int) { return response_plan::with_status(200).after(answer_time); });
  auto relay = start_active(relay_env(*db_, rx.url()));
  canvas_stream stream(db_->url(), stream_opts(stream_lives(), 17));
  stream.start();
  auto before = relay->log_size();
  for (int round = 1; round <= 3; ++round) {
    ASSERT_TRUE(stream.wait_for_actions(static_cast<std::size_t>(stream_lives() * round / 2), 60s));
    auto offset = relay->log_size();
    EXPECT_GT(terminate_relay_backends(*db_), 0) << "round " << round;
    EXPECT_TRUE(relay->wait_for_log("reconnecting", 10s, offset)) << "round " << round;
    EXPECT_TRUE(relay->wait_for_log("this instance is active", 20s, offset)) << "round " << round;
  }
  EXPECT_GT(relay->log_size(), before);
  stream.join();
  expect_delivered(stream.expected(), [&] { return rx.server().requests(); });
  EXPECT_EQ(count_overlaps(stream.expected(), rx.server().requests(), answer_time), 0)
      << "requests of one appointment overlapped in time";
  EXPECT_TRUE(relay->running());
}

// Receivers behind real proxies: interim responses before the final one (103 Early Hints with Link headers,
// 100 Continue, 102 Processing), `Connection: close`, answers whose headers come late: every event arrives,
// in order per appointment, nothing is dead-lettered, and no interim answer is taken for the final one.
TEST_F(relay_faults, should_deliver_through_interim_responses_connection_close_and_slow_headers) {
  receiver rx;
  rx.set_policy([](const recorded_request&, int i) {
    auto plan = response_plan::with_status(i % 4 == 0 ? 202 : 200);
    if (i % 3 == 0) plan.interim(103, {{"Link", "</styles.css>; rel=preload; as=style"}});
    if (i % 5 == 1) plan.interim(100);
    if (i % 7 == 2) plan.interim(102).interim(103, {{"Link", "</app.js>; rel=preload; as=script"}});
    if (i % 6 == 5) plan.closing();
    if (i % 17 == 8) plan.after(60ms);
    return plan;
  });
  start_active(relay_env(*db_, rx.url()));
  canvas_stream stream(db_->url(), stream_opts(stream_lives() / 2, 47));
  stream.play();
  expect_delivered(stream.expected(), [&] { return rx.server().requests(); });
  for (const auto& relay : relays_) {
    EXPECT_EQ(relay->count_in_log("dead letter"), 0u);
    EXPECT_EQ(relay->count_in_log("status=103"), 0u) << "an interim response taken for the answer";
  }
}

TEST_F(relay_faults, should_deliver_through_503_retry_after_timeouts_and_resets) {
  receiver rx;
  rx.set_policy([](const recorded_request&, int i) {
    if (i % 11 == 3) return response_plan::with_status(503).header("Retry-After", "1");
    if (i % 29 == 5) return response_plan::with_status(200).after(1500ms);  // slower than the 400 ms timeout
    if (i % 13 == 7) return response_plan::fault(response_plan::action::reset);
    return response_plan::with_status(200);
  });
  auto env = relay_env(*db_, rx.url());
  env["APPOINTMENT_RELAY_ENDPOINTS_DEFAULT_TIMEOUT"] = "400ms";
  auto relay = start_active(env);
  canvas_stream stream(db_->url(), stream_opts(stream_lives(), 19));
  stream.play();
  expect_delivered(stream.expected(), [&] { return rx.accepted(); });
  EXPECT_GT(relay->count_in_log("retry event="), 10u);
  EXPECT_GT(relay->count_in_log("status=503"), 0u);
  EXPECT_EQ(relay->count_in_log("dead letter"), 0u);
}

TEST_F(relay_faults, should_deliver_everything_after_the_receiver_was_down_for_20_seconds) {
  auto first = std::make_unique<receiver>();
  const auto port = first->server().port();
  auto relay = start_active(relay_env(*db_, first->url()));
  canvas_stream stream(db_->url(), stream_opts(stream_lives(), 23));
  stream.start();
  ASSERT_TRUE(stream.wait_for_actions(static_cast<std::size_t>(stream_lives()), 60s));
  first->server().stop();  // connection refused from now on
  auto before = relay->log_size();
  auto down_at = clock_type::now();
  stream.join();
  EXPECT_TRUE(relay->wait_for_log("refused", 10s, before)) << "retries say why";
  std::this_thread::sleep_for(20s - (clock_type::now() - down_at));
  receiver second(port);
  auto got = [&] {
    auto all = first->server().requests();
    auto more = second.accepted();
    all.insert(all.end(), more.begin(), more.end());
    return all;
  };
  expect_delivered(stream.expected(), got);
  EXPECT_EQ(relay->count_in_log("dead letter"), 0u);
}

TEST_F(relay_faults, should_dead_letter_a_kind_answered_400_show_it_in_status_and_deliver_it_on_replay) {
  receiver rx;
  std::atomic<bool> refuse{true};
  rx.set_policy([&](const recorded_request& r, int) {
    if (refuse && r.body.find("\"no_show\":true") != std::string::npos)
      return response_plan::with_status(400);
    return response_plan::with_status(200);
  });
  auto env = relay_env(*db_, rx.url());
  auto relay = start_active(env);
  canvas_stream stream(db_->url(), stream_opts(stream_lives() / 2, 29));
  stream.play();
  auto expected = stream.expected();
  std::vector<expected_notification> accepted_first, no_shows;
  for (const auto& e : expected) (e.kind == "no_show" ? no_shows : accepted_first).push_back(e);
  ASSERT_FALSE(no_shows.empty());
  delivery_check_options unordered;
  unordered.require_order = false;
  expect_delivered(
      accepted_first, [&] { return rx.accepted(); }, unordered);

  environment cli_env = {{"APPOINTMENT_RELAY_DATABASE_URL", db_->url()},
                         {"APPOINTMENT_RELAY_ENDPOINT_URL", rx.url()}};
  nlohmann::json status;
  for (int i = 0; i < 100; ++i) {
    auto r = run_relay_command({"status", "--json"}, cli_env);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    status = nlohmann::json::parse(r.out);
    if (status[0]["dead_letters"].value("http 400", 0) == static_cast<int>(no_shows.size())) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(status[0]["endpoint"], "default");
  EXPECT_EQ(status[0]["dead_letters"].value("http 400", 0), static_cast<int>(no_shows.size()))
      << status.dump();
  auto text = run_relay_command({"status"}, cli_env);
  EXPECT_NE(text.out.find("http 400"), std::string::npos) << text.out;
  EXPECT_EQ(relay->count_in_log("reason=\"http 400\""), no_shows.size());

  refuse = false;
  auto replay = run_relay_command({"replay", "--all"}, cli_env);
  EXPECT_EQ(replay.exit_code, 0) << replay.err;
  EXPECT_EQ(replay.out, std::to_string(no_shows.size()) + " dead letters back to pending\n");
  // A dead letter is out of its appointment's order by nature: the replayed no-show comes after the check-in.
  expect_delivered(
      expected, [&] { return rx.accepted(); }, unordered);
  auto after = nlohmann::json::parse(run_relay_command({"status", "--json"}, cli_env).out);
  EXPECT_TRUE(after[0]["dead_letters"].empty()) << after.dump();
}

// A reload is built whole before anything changes: one that adds an endpoint beside one whose CA file
// cannot be loaded changes nothing (the added endpoint gets no request), and the corrected reload makes
// exactly one lane for it: every event once, in order per appointment.
TEST_F(relay_faults, should_apply_a_reload_whole_or_not_at_all_and_keep_one_lane_per_endpoint) {
  receiver main_rx, added_rx;
  const auto dir =
      std::filesystem::temp_directory_path() / ("ar-reload-" + std::to_string(::getpid()) + "-" +
                                                std::to_string(clock_type::now().time_since_epoch().count()));
  std::filesystem::create_directories(dir);
  const auto path = (dir / "relay.toml").string();
  const auto bad_ca = (dir / "not-a-ca.pem").string();
  { std::ofstream(bad_ca) << "this is not a certificate\n"; }
  auto endpoint = [](const std::string& name, const std::string& url, const std::string& extra = "") {
    return "[endpoints." + name + "]\nurl = \"" + url + "\"\nsecrets = [\"" + fault_secret + "\"]\n" + extra +
           "\n";
  };
  auto write = [&](const std::string& text) { std::ofstream(path, std::ios::trunc) << text; };
  write(endpoint("default", main_rx.url()));
  auto env = relay_env(*db_, main_rx.url());
  env.erase("APPOINTMENT_RELAY_ENDPOINT_URL");
  env.erase("APPOINTMENT_RELAY_SIGNING_SECRET");
  auto* relay = start_active(env, {"run", "--config", path});
  canvas_stream stream(db_->url(), stream_opts(stream_lives(), 41));
  stream.start();
  ASSERT_TRUE(stream.wait_for_actions(static_cast<std::size_t>(stream_lives() / 3), 60s));

  write(endpoint("default", main_rx.url()) + endpoint("aaa", added_rx.url(), "backfill = \"1h\"") +
        endpoint("zzz", "https://127.0.0.1:9/hook", "ca_file = \"" + bad_ca + "\""));
  auto before = relay->log_size();
  ASSERT_TRUE(relay->send_signal(SIGHUP));
  EXPECT_TRUE(relay->wait_for_log("configuration reload failed", 10s, before)) << relay->log().substr(before);
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(added_rx.server().request_count(), 0u) << "a failed reload must not have started endpoint aaa";

  // With a backfill reaching before the stream, the added endpoint gets all of it, exactly once (without one
  // it would start at the newest event).
  write(endpoint("default", main_rx.url()) + endpoint("aaa", added_rx.url(), "backfill = \"1h\""));
  before = relay->log_size();
  ASSERT_TRUE(relay->send_signal(SIGHUP));
  EXPECT_TRUE(relay->wait_for_log("configuration reloaded", 10s, before)) << relay->log().substr(before);
  stream.join();
  auto expected = stream.expected();
  expect_delivered(expected, [&] { return main_rx.accepted(); });
  delivery_check_options once;
  once.allow_duplicates = false;
  expect_delivered(
      expected, [&] { return added_rx.server().requests(); }, once);
  std::filesystem::remove_all(dir);
}

TEST_F(relay_faults, should_deliver_once_with_two_instances_and_fail_over_to_the_standby_when_killed) {
  receiver rx;
  auto env = relay_env(*db_, rx.url());
  auto a = start_active(env);
  auto* b = start(env);
  ASSERT_TRUE(b->wait_for_log("another instance is active", 30s)) << b->log();

  canvas_stream first(db_->url(), stream_opts(stream_lives() / 2, 31));
  first.play();
  auto expected = first.expected();
  delivery_check_options once;
  once.allow_duplicates = false;
  expect_delivered(
      expected, [&] { return rx.server().requests(); }, once);
  EXPECT_EQ(b->count_in_log("delivered event="), 0u) << "the standby sends nothing";

  canvas_stream second(db_->url(), stream_opts(stream_lives() / 2, 37));
  second.start();
  ASSERT_TRUE(second.wait_for_actions(static_cast<std::size_t>(stream_lives() / 2), 60s));
  a->kill_now();
  auto killed_at = clock_type::now();
  EXPECT_TRUE(b->wait_for_log("this instance is active", 15s)) << b->log();
  EXPECT_LT(clock_type::now() - killed_at, 10s) << "the standby takes over within seconds";
  second.join();
  auto more = second.expected();
  expected.insert(expected.end(), more.begin(), more.end());
  expect_delivered(expected, [&] { return rx.server().requests(); });
  EXPECT_GT(b->count_in_log("delivered event="), 0u);
}

// Fencing across instances, on a fault that is not clean: the active instance's connections to PostgreSQL
// freeze mid-stream (a TCP proxy that stops forwarding: no FIN, no RST), a standby runs beside it. The frozen
// one stops sending within its lease and says 503 on /readyz; its session (and the advisory lock) ends on
// the server's side; the standby takes over within 30 s; no two requests of one appointment overlap in time
// across the two instances; everything is delivered.
TEST_F(relay_faults,
       should_fail_over_within_30_seconds_when_the_active_instances_database_connection_freezes) {
  constexpr auto answer_time = 50ms;
  receiver rx;
  rx.set_policy(
      [&](const recorded_request&, int) { return response_plan::with_status(200).after(answer_time); });
  auto [proxy, through] = proxy_database(db_->url());
  auto frozen_env = relay_env(*db_, rx.url());
  frozen_env["APPOINTMENT_RELAY_DATABASE_URL"] = through;
  auto* a = start_active(frozen_env);
  auto* b = start(relay_env(*db_, rx.url()));
  ASSERT_TRUE(b->wait_for_log("another instance is active", 30s)) << b->log();

  canvas_stream stream(db_->url(), stream_opts(stream_lives() / 2, 43));
  stream.start();
  ASSERT_TRUE(stream.wait_for_actions(static_cast<std::size_t>(stream_lives() / 8), 60s));
  ASSERT_TRUE(rx.server().wait_for_requests(10, 30s));
  proxy->freeze();
  const auto frozen_at = clock_type::now();
  const auto port = a->admin_port();
  bool unready = false;
  for (int i = 0; i < 100 && !unready; ++i) {
    unready = http_get(port, "/readyz").status == 503;
    if (!unready) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(unready) << "the frozen instance still says it is ready";
  EXPECT_TRUE(b->wait_for_log("this instance is active", 40s)) << b->log();
  EXPECT_LT(clock_type::now() - frozen_at, 30s) << "the standby takes over within 30 s";
  stream.join();
  auto expected = stream.expected();
  expect_delivered(expected, [&] { return rx.server().requests(); });

  // From the receiver's side, also across the two instances.
  EXPECT_EQ(count_overlaps(expected, rx.server().requests(), answer_time), 0)
      << "requests of one appointment overlapped in time";
  proxy->thaw();  // the frozen instance's threads end instead of waiting for their timeouts
}

}  // namespace
}  // namespace appointment_relay::testing
