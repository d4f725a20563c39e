#include "support/canvas_stream.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <mutex>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "fault_support.hpp"

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
    server_ = std::make_unique<test_http_server>(o);
    server_->set_handler([this](const recorded_request& r, int index) {
      policy p;
      {
        std::lock_guard lock(mutex_);
        p = policy_;
      }
      auto plan = p ? p(r, index) : response_plan::with_status(200);
      bool ok = plan.what == response_plan::action::respond && plan.status / 100 == 2 && plan.delay < 100ms;
      std::lock_guard lock(mutex_);
      if (ok) accepted_.insert(index);
      return plan;
    });
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

  static std::unique_ptr<relay_process> start_active(const environment& env) {
    auto relay = std::make_unique<relay_process>(env);
    EXPECT_TRUE(relay->wait_for_log("this instance is active", 30s)) << relay->log();
    return relay;
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
};

TEST_F(relay_faults, should_deliver_the_whole_stream_exactly_once_without_faults) {
  receiver rx;
  auto relay = start_active(relay_env(*db_, rx.url()));
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

TEST_F(relay_faults, should_reconnect_when_its_connections_are_terminated_mid_stream) {
  receiver rx;
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
  expect_delivered(stream.expected(), [&] { return rx.accepted(); });
  EXPECT_TRUE(relay->running());
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

TEST_F(relay_faults, should_deliver_once_with_two_instances_and_fail_over_to_the_standby_when_killed) {
  receiver rx;
  auto env = relay_env(*db_, rx.url());
  auto a = start_active(env);
  auto b = std::make_unique<relay_process>(env);
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

}  // namespace
}  // namespace appointment_relay::testing
