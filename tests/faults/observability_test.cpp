#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "fault_support.hpp"
#include "support/shell.hpp"

// What an operator's tools read from the real daemon: /metrics as Prometheus reads it (promtool, from
// Debian's prometheus package, accepts the scrape of a relay that has delivered, retried and stood by; the
// leader gauge says which instance is active; the process_* figures are the relay's), and JSON log lines
// whose delivery fields a log pipeline can index.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;

// promtool's path from PATH, or "" when it is not installed.
std::string find_promtool() {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    auto candidate = (dir.empty() ? std::string(".") : dir) + "/promtool";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

struct promtool_result {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// `promtool check metrics` on the text (it reads the exposition from stdin and lints it: an exit code other
// than 0 means a parse error or a lint problem, each printed).
promtool_result promtool_check_metrics(const std::string& promtool, const std::string& text) {
  const auto file = std::filesystem::temp_directory_path() / ("ar-metrics-" + std::to_string(::getpid()));
  std::ofstream(file) << text;
  const std::string command = "'" + promtool + "' check metrics < '" + file.string() + "' 2>&1";
  auto r = run_shell(command);
  std::filesystem::remove(file);
  return {r.exit_code, r.output};
}

// The value of the unlabelled sample `name`, or nullopt when the scrape has none.
std::optional<double> sample(const std::string& text, const std::string& name) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.starts_with(name + " ")) return std::stod(line.substr(name.size() + 1));
  return std::nullopt;
}

std::string scrape(relay_process& relay) {
  auto r = http_get(relay.admin_port(), "/metrics");
  EXPECT_EQ(r.status, 200) << r.body;
  return r.body;
}

TEST(observability, should_pass_promtool_and_show_the_leader_and_this_process_figures) {
  AR_REQUIRE_DATABASE();
  const auto promtool = find_promtool();
  // scripts/install-deps.sh installs it: a machine without it has not run the test command's installs.
  if (promtool.empty()) {
    FAIL() << "promtool is not installed (scripts/install-deps.sh, or apt-get install prometheus)";
  }
  scratch_database db;
  test_http_server rx(always_status(200));
  rx.push_plan(response_plan::with_status(503));  // one retry, so every family of the scrape has a series
  const auto env = relay_env(db, rx.url("/canvas"));
  relay_process active(env);
  ASSERT_TRUE(active.wait_for_log("this instance is active", 30s)) << active.log();
  relay_process standby(env);
  ASSERT_TRUE(standby.wait_for_log("another instance is active", 30s)) << standby.log();

  stream_options o;
  o.lives = 20;
  canvas_stream stream(db.url(), o);
  stream.play();
  ASSERT_TRUE(wait_for_deliveries(
      stream.expected(), [&] { return rx.requests(); }, 60s));

  const auto text = scrape(active);
  const auto checked = promtool_check_metrics(promtool, text);
  EXPECT_EQ(checked.exit_code, 0) << checked.output << "\n" << text;
  EXPECT_EQ(checked.output, "") << text;
  EXPECT_NE(text.find("appointment_relay_retries_total{endpoint=\"default\""), std::string::npos) << text;
  EXPECT_NE(text.find("appointment_relay_build_info{version=\""), std::string::npos) << text;

  EXPECT_EQ(sample(text, "appointment_relay_leader"), 1.0) << text;
  const auto standby_text = scrape(standby);
  EXPECT_EQ(sample(standby_text, "appointment_relay_leader"), 0.0) << standby_text;
  EXPECT_EQ(promtool_check_metrics(promtool, standby_text).exit_code, 0) << standby_text;

  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const auto rss = sample(text, "process_resident_memory_bytes");
  const auto vsz = sample(text, "process_virtual_memory_bytes");
  const auto started = sample(text, "process_start_time_seconds");
  const auto cpu = sample(text, "process_cpu_seconds_total");
  const auto fds = sample(text, "process_open_fds");
  const auto max_fds = sample(text, "process_max_fds");
  ASSERT_TRUE(rss && vsz && started && cpu && fds && max_fds) << text;
  EXPECT_GT(*rss, 1 << 20);
  EXPECT_GE(*vsz, *rss);
  EXPECT_GT(*started, now - 3600);
  EXPECT_LE(*started, now + 1);
  // At most the time it has run, on every core (a relay this idle may still show 0: the unit is 10 ms).
  EXPECT_GE(*cpu, 0.0);
  EXPECT_LE(*cpu, (now - *started) * static_cast<double>(std::thread::hardware_concurrency()) + 0.1);
  EXPECT_GT(*fds, 3.0);  // the standard three, the database connections, the listening sockets
  EXPECT_GE(*max_fds, *fds);

  // The standby takes over: the gauge follows.
  active.kill_now();
  ASSERT_TRUE(standby.wait_for_log("this instance is active", 20s)) << standby.log();
  EXPECT_EQ(sample(scrape(standby), "appointment_relay_leader"), 1.0);
}

TEST(observability, should_log_json_lines_with_each_delivery_s_fields) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server rx(always_status(200));
  rx.push_plan(response_plan::with_status(503));
  auto env = relay_env(db, rx.url("/canvas"));
  env["APPOINTMENT_RELAY_LOG_FORMAT"] = "json";
  relay_process relay(env);
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();
  stream_options o;
  o.lives = 2;
  canvas_stream stream(db.url(), o);
  stream.play();
  const auto expected = stream.expected();
  ASSERT_TRUE(wait_for_deliveries(
      expected, [&] { return rx.requests(); }, 30s));
  ASSERT_TRUE(relay.wait_for_log("\"status\":200", 10s)) << relay.log();

  std::istringstream lines(relay.log());
  std::vector<nlohmann::json> retries, delivered;
  for (std::string line; std::getline(lines, line);) {
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(line)) << line;
    const auto msg = j.at("msg").get<std::string>();
    if (msg.starts_with("retry ")) retries.push_back(j);
    if (msg.starts_with("delivered ")) delivered.push_back(j);
  }
  ASSERT_EQ(retries.size(), 1u) << relay.log();
  const auto& r = retries[0];
  EXPECT_EQ(r["level"], "warning");
  EXPECT_TRUE(r["event"].is_number_integer()) << r;
  EXPECT_TRUE(r["kind"].is_string()) << r;
  EXPECT_TRUE(r["appointment"].is_string()) << r;
  EXPECT_EQ(r["endpoint"], "default") << r;
  EXPECT_EQ(r["attempt"], 1) << r;
  EXPECT_EQ(r["status"], 503) << r;
  EXPECT_TRUE(r["latency_ms"].is_number()) << r;
  EXPECT_TRUE(r["next_in_ms"].is_number_integer()) << r;
  ASSERT_EQ(delivered.size(), expected.size()) << relay.log();
  for (const auto& d : delivered) {
    EXPECT_EQ(d["status"], 200) << d;
    EXPECT_EQ(d["endpoint"], "default") << d;
    EXPECT_TRUE(d["event"].is_number_integer()) << d;
  }
}

}  // namespace
}  // namespace appointment_relay::testing
