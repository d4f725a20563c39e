#include "support/relay_process.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>

#include "support/test_database.hpp"
#include "support/test_http_server.hpp"

// The daemon as a process: start, log, admin port, readiness, SIGTERM, one-shot commands.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;

TEST(relay_process, should_run_a_one_shot_command_and_capture_its_output) {
  auto r = run_relay_command({"version"}, {});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.starts_with("appointment-relay ")) << r.out;
}

TEST(relay_process, should_not_pass_on_stray_relay_variables_of_the_test_environment) {
  ::setenv("APPOINTMENT_RELAY_NO_SUCH_KEY", "x", 1);
  auto r = run_relay_command({"check-config"},
                             {{"APPOINTMENT_RELAY_DATABASE_URL", "postgresql://x@127.0.0.1/db"}});
  ::unsetenv("APPOINTMENT_RELAY_NO_SUCH_KEY");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("configuration is valid"), std::string::npos) << r.out;
}

TEST(relay_process, should_start_the_daemon_report_ready_and_stop_on_sigterm_with_exit_0) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(200));
  relay_process relay({{"APPOINTMENT_RELAY_DATABASE_URL", db.url()},
                       {"APPOINTMENT_RELAY_ENDPOINT_URL", server.url()},
                       {"APPOINTMENT_RELAY_ADMIN_LISTEN", "127.0.0.1:0"}});
  auto port = relay.admin_port();
  ASSERT_NE(port, 0) << relay.log();
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 20s)) << relay.log();
  auto ready = http_get(port, "/readyz");
  EXPECT_EQ(ready.status, 200) << ready.body;
  EXPECT_TRUE(relay.send_signal(SIGTERM));
  EXPECT_EQ(relay.wait_exit(15s), 0) << relay.log();
  EXPECT_FALSE(relay.running());
  EXPECT_TRUE(relay.wait_for_log("stopped", 1s));
}

}  // namespace
}  // namespace appointment_relay::testing
