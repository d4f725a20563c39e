#include "appointment_relay/relay.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "support/relay_process.hpp"
#include "support/test_database.hpp"
#include "support/test_http_server.hpp"

// The daemon as operators run it: the real binary against the test PostgreSQL and a real HTTP server;
// what it tells systemd, what /metrics says about what happened, and how it takes SIGHUP and signals.

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;
using testing::environment;
using testing::http_get;
using testing::relay_process;
using testing::response_plan;
using testing::scratch_database;
using testing::test_http_server;

environment relay_env(const scratch_database& db, const test_http_server& server) {
  return {{"APPOINTMENT_RELAY_DATABASE_URL", db.url()},
          {"APPOINTMENT_RELAY_ENDPOINT_URL", server.url("/canvas")},
          {"APPOINTMENT_RELAY_SIGNING_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
          {"APPOINTMENT_RELAY_ADMIN_LISTEN", "127.0.0.1:0"},
          {"APPOINTMENT_RELAY_DATABASE_POLL_INTERVAL", "200ms"},
          {"APPOINTMENT_RELAY_DATABASE_LEADER_LEASE", "300ms"},
          {"APPOINTMENT_RELAY_RETRY_BASE_DELAY", "50ms"},
          {"APPOINTMENT_RELAY_RETRY_MAX_DELAY", "200ms"}};
}

std::string book(const scratch_database& db) {
  return db.query_value(
      "SELECT canvas_test.book_appointment(canvas_test.create_patient(), '2021-12-24 21:30+00', 30)");
}

// A unix datagram socket standing in for systemd's notify socket.
class notify_socket {
 public:
  notify_socket() {
    dir_ = std::filesystem::temp_directory_path() / ("ar-notify-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "notify").string();
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throw std::runtime_error("bind");
    timeval tv{0, 100000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~notify_socket() {
    ::close(fd_);
    std::filesystem::remove_all(dir_);
  }
  const std::string& path() const { return path_; }

  // Waits until a message (the from-th received or a later one) contains text.
  bool wait_for(const std::string& text, std::chrono::milliseconds timeout, int from = 0) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      if (index_of(text, from) >= 0) return true;
      char buf[4096];
      auto n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) messages_.emplace_back(buf, static_cast<std::size_t>(n));
    }
    return false;
  }
  // Index of the first message containing text at or after from; -1 when none.
  int index_of(const std::string& text, int from = 0) const {
    for (int i = from; i < static_cast<int>(messages_.size()); ++i)
      if (messages_[i].find(text) != std::string::npos) return i;
    return -1;
  }
  std::string all() const {
    std::string s;
    for (const auto& m : messages_) s += "[" + m + "] ";
    return s;
  }

 private:
  std::filesystem::path dir_;
  std::string path_;
  int fd_ = -1;
  std::vector<std::string> messages_;
};

TEST(daemon, should_tell_systemd_ready_reloading_watchdog_and_stopping) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(testing::always_status(200));
  notify_socket sd;
  auto env = relay_env(db, server);
  env["NOTIFY_SOCKET"] = sd.path();
  env["APPOINTMENT_RELAY_RELAY_WATCHDOG_INTERVAL"] = "1s";
  relay_process relay(env);
  ASSERT_TRUE(sd.wait_for("READY=1", 10s)) << sd.all();
  ASSERT_TRUE(sd.wait_for("WATCHDOG=1", 3s)) << sd.all();
  int ready = sd.index_of("READY=1");

  relay.send_signal(SIGHUP);
  ASSERT_TRUE(relay.wait_for_log("configuration reloaded", 10s)) << relay.log();
  ASSERT_TRUE(sd.wait_for("RELOADING=1", 3s)) << sd.all();
  int reloading = sd.index_of("RELOADING=1");
  EXPECT_NE(sd.all().find("MONOTONIC_USEC="), std::string::npos);
  EXPECT_TRUE(sd.wait_for("READY=1", 3s, reloading + 1)) << "READY=1 again after the reload: " << sd.all();
  EXPECT_LT(ready, reloading);

  relay.send_signal(SIGTERM);
  ASSERT_TRUE(sd.wait_for("STOPPING=1", 5s)) << sd.all();
  EXPECT_EQ(relay.wait_exit(15s), 0);
}

// The value of one sample line of the Prometheus text, or -1 when absent.
double sample(const std::string& text, const std::string& series) {
  auto pos = text.find("\n" + series + " ");
  if (pos == std::string::npos) return -1;
  return std::stod(text.substr(pos + series.size() + 2));
}

TEST(daemon, should_serve_health_readiness_and_metrics_that_match_what_happened) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(testing::always_status(200));
  server.push_plan(response_plan::with_status(503));  // the first attempt fails and is retried
  relay_process relay(relay_env(db, server));
  auto port = relay.admin_port();
  ASSERT_NE(port, 0) << relay.log();
  EXPECT_EQ(http_get(port, "/healthz").status, 200);
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 10s)) << relay.log();
  EXPECT_EQ(http_get(port, "/readyz").status, 200);

  auto a = book(db);
  book(db);
  db.query_value("SELECT canvas_test.cancel(" + a + ")");
  ASSERT_TRUE(server.wait_for_requests(4, 10s)) << relay.log();

  // The figures settle once outcomes are written and the next poll tick has measured the backlog.
  std::string m;
  for (int i = 0; i < 50; ++i) {
    m = http_get(port, "/metrics").body;
    if (sample(m, R"(appointment_relay_events_delivered_total{endpoint="default",kind="cancelled"})") == 1 &&
        sample(m, R"(appointment_relay_backlog_events{endpoint="default"})") == 0)
      break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(sample(m, R"(appointment_relay_events_captured_total{endpoint="default",kind="created"})"), 2)
      << m;
  EXPECT_EQ(sample(m, R"(appointment_relay_events_delivered_total{endpoint="default",kind="created"})"), 2);
  EXPECT_EQ(sample(m, R"(appointment_relay_events_delivered_total{endpoint="default",kind="cancelled"})"), 1);
  EXPECT_EQ(
      sample(m, R"(appointment_relay_delivery_attempts_total{endpoint="default",kind="created"})") +
          sample(m, R"(appointment_relay_delivery_attempts_total{endpoint="default",kind="cancelled"})"),
      4);
  EXPECT_EQ(sample(m, R"(appointment_relay_retries_total{endpoint="default",kind="created"})") +
                sample(m, R"(appointment_relay_retries_total{endpoint="default",kind="cancelled"})"),
            1);
  EXPECT_EQ(sample(m, R"(appointment_relay_delivery_latency_seconds_count{endpoint="default"})"), 3);
  EXPECT_EQ(sample(m, R"(appointment_relay_backlog_events{endpoint="default"})"), 0);
  EXPECT_EQ(sample(m, "appointment_relay_database_up"), 1);
  EXPECT_EQ(m.find("appointment_relay_dead_letters_total{"), std::string::npos) << "no dead letters";

  relay.send_signal(SIGTERM);
  EXPECT_EQ(relay.wait_exit(15s), 0);
}

TEST(daemon, should_reload_on_sighup_and_keep_the_old_config_when_the_new_one_is_invalid) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server first(testing::always_status(200)), second(testing::always_status(200));
  auto dir = std::filesystem::temp_directory_path() / ("ar-reload-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto file = dir / "relay.toml";
  auto write = [&](const std::string& url, const std::string& extra) {
    std::ofstream(file) << "[database]\nurl = \"" << db.url() << "\"\npoll_interval = \"200ms\"\n"
                        << "[admin]\nlisten = \"\"\n[endpoints.crm]\nurl = \"" << url << "\"\n"
                        << extra;
  };
  write(first.url(), "");
  relay_process relay({}, {"run", "--config", file.string()});
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 10s)) << relay.log();
  book(db);
  ASSERT_TRUE(first.wait_for_requests(1, 10s)) << relay.log();

  write(second.url(), "colour = \"red\"\n");  // an unknown key: the reload is refused
  auto mark = relay.log_size();
  relay.send_signal(SIGHUP);
  ASSERT_TRUE(relay.wait_for_log("reload failed", 10s, mark)) << relay.log();
  book(db);
  ASSERT_TRUE(first.wait_for_requests(2, 10s)) << "the old configuration still delivers: " << relay.log();

  write(second.url(), "");
  mark = relay.log_size();
  relay.send_signal(SIGHUP);
  ASSERT_TRUE(relay.wait_for_log("configuration reloaded", 10s, mark)) << relay.log();
  book(db);
  ASSERT_TRUE(second.wait_for_requests(1, 10s)) << "the new URL is used: " << relay.log();
  EXPECT_EQ(first.request_count(), 2u);

  relay.send_signal(SIGTERM);
  EXPECT_EQ(relay.wait_exit(15s), 0);
  std::filesystem::remove_all(dir);
}

TEST(daemon, should_exit_at_once_on_a_second_signal_leaving_the_rest_pending) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(
      [](const testing::recorded_request&, int) { return response_plan::with_status(200).after(8s); });
  relay_process relay(relay_env(db, server));
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 10s)) << relay.log();
  book(db);
  ASSERT_TRUE(server.wait_for_requests(1, 10s));
  relay.send_signal(SIGTERM);
  ASSERT_TRUE(relay.wait_for_log("draining 1 requests in flight", 5s)) << relay.log();
  auto t0 = std::chrono::steady_clock::now();
  relay.send_signal(SIGTERM);
  auto code = relay.wait_exit(5s);
  ASSERT_TRUE(code.has_value()) << relay.log();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_EQ(*code, 1) << "the drain did not finish";
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivered_events"), "0")
      << "the unfinished event is still pending";
}

}  // namespace
}  // namespace appointment_relay
