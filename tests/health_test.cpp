#include "appointment_relay/health.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "support/relay_process.hpp"
#include "support/test_database.hpp"
#include "support/test_http_server.hpp"

// `appointment-relay health`: check_health against servers that answer, fail, refuse or hang, and the
// command against the real daemon, as a container's HEALTHCHECK runs it.

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;
using testing::relay_process;
using testing::response_plan;
using testing::run_relay_command;
using testing::scratch_database;
using testing::test_http_server;

std::string local(std::uint16_t port) {
  return "127.0.0.1:" + std::to_string(port);
}

// A port that nothing listens on: bound once to get a free one, then closed.
std::uint16_t closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

TEST(health, should_be_healthy_when_healthz_answers_200) {
  test_http_server server(testing::always_status(200));
  auto r = check_health(local(server.port()), 2s);
  EXPECT_TRUE(r.healthy) << r.message;
  EXPECT_EQ(r.message, "healthy: " + local(server.port()) + "/healthz answered 200");
  ASSERT_EQ(server.request_count(), 1u);
  EXPECT_EQ(server.requests()[0].method, "GET");
  EXPECT_EQ(server.requests()[0].target, "/healthz");
}

TEST(health, should_ask_a_wildcard_address_on_the_loopback_address) {
  test_http_server server(testing::always_status(200));
  auto r = check_health("0.0.0.0:" + std::to_string(server.port()), 2s);
  EXPECT_TRUE(r.healthy) << r.message;
  EXPECT_NE(r.message.find(local(server.port())), std::string::npos) << r.message;
}

TEST(health, should_be_unhealthy_with_the_status_and_body_of_another_answer) {
  test_http_server server(testing::always_status(503));
  auto r = check_health(local(server.port()), 2s);
  EXPECT_FALSE(r.healthy);
  EXPECT_EQ(r.message.rfind("unhealthy: " + local(server.port()) + "/healthz answered 503", 0), 0u)
      << r.message;
  EXPECT_EQ(r.message.find('\n'), std::string::npos) << "one line";
}

TEST(health, should_be_unhealthy_when_nothing_listens) {
  const auto port = closed_port();
  auto r = check_health(local(port), 2s);
  EXPECT_FALSE(r.healthy);
  EXPECT_EQ(r.message.rfind("unhealthy: cannot connect to " + local(port) + ": ", 0), 0u) << r.message;
}

TEST(health, should_give_up_at_the_deadline_when_the_server_never_answers) {
  test_http_server server([](const testing::recorded_request&, int) {
    return response_plan::fault(response_plan::action::freeze);
  });
  const auto start = std::chrono::steady_clock::now();
  auto r = check_health(local(server.port()), 300ms);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_FALSE(r.healthy);
  EXPECT_EQ(r.message, "unhealthy: no answer from " + local(server.port()) + " within 300 ms");
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 2s);
  server.stop();
}

TEST(health, should_be_unhealthy_for_a_disabled_or_unreadable_admin_address) {
  auto disabled = check_health("", 1s);
  EXPECT_FALSE(disabled.healthy);
  EXPECT_NE(disabled.message.find("admin server is disabled"), std::string::npos) << disabled.message;
  auto bad = check_health("relay:9187", 1s);
  EXPECT_FALSE(bad.healthy);
  EXPECT_NE(bad.message.find("invalid listen address 'relay:9187'"), std::string::npos) << bad.message;
}

// The command as a HEALTHCHECK runs it, against the daemon: healthy while it runs, whichever way it is told
// the address, and exit 1 once the daemon has stopped.
TEST(health, should_report_the_running_daemon_healthy_and_a_stopped_one_not) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server receiver(testing::always_status(200));
  relay_process relay({{"APPOINTMENT_RELAY_DATABASE_URL", db.url()},
                       {"APPOINTMENT_RELAY_ENDPOINT_URL", receiver.url("/canvas")},
                       {"APPOINTMENT_RELAY_SIGNING_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                       {"APPOINTMENT_RELAY_ADMIN_LISTEN", "127.0.0.1:0"}});
  const auto port = relay.admin_port();
  ASSERT_NE(port, 0) << relay.log();
  const std::string expected = "healthy: " + local(port) + "/healthz answered 200\n";

  auto by_option = run_relay_command({"health", "--admin", local(port)}, {});
  EXPECT_EQ(by_option.exit_code, 0) << by_option.out << by_option.err;
  EXPECT_EQ(by_option.out, expected);

  // The container's way: no option, the address from the environment the daemon was started with.
  auto by_environment =
      run_relay_command({"health"}, {{"APPOINTMENT_RELAY_ADMIN_LISTEN", "0.0.0.0:" + std::to_string(port)}});
  EXPECT_EQ(by_environment.exit_code, 0) << by_environment.out << by_environment.err;
  EXPECT_EQ(by_environment.out, expected);

  const auto dir = std::filesystem::temp_directory_path() / ("ar-health-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "relay.toml") << "[database]\nurl = \"" << db.url() << "\"\n[admin]\nlisten = \""
                                    << local(port) << "\"\n[endpoints.crm]\nurl = \"" << receiver.url("/c")
                                    << "\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n";
  auto by_config = run_relay_command({"health", "--config", (dir / "relay.toml").string()}, {});
  EXPECT_EQ(by_config.exit_code, 0) << by_config.out << by_config.err;
  EXPECT_EQ(by_config.out, expected);
  auto broken_config = run_relay_command({"health", "--config", (dir / "missing.toml").string()}, {});
  EXPECT_EQ(broken_config.exit_code, 1) << "a probe exits 0 or 1 only";
  EXPECT_EQ(broken_config.out.rfind("unhealthy: configuration error: ", 0), 0u) << broken_config.out;
  std::filesystem::remove_all(dir);

  relay.send_signal(SIGTERM);
  ASSERT_EQ(relay.wait_exit(15s), 0) << relay.log();
  auto stopped = run_relay_command({"health", "--admin", local(port)}, {});
  EXPECT_EQ(stopped.exit_code, 1);
  EXPECT_EQ(stopped.out.rfind("unhealthy: cannot connect to " + local(port) + ": ", 0), 0u) << stopped.out;
}

}  // namespace
}  // namespace appointment_relay
