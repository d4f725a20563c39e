#pragma once
// The real `appointment-relay` binary (APPOINTMENT_RELAY_BINARY) as a child process, for tests of the
// daemon as a whole: start it with a chosen environment, read its log, signal it, wait for its exit.
//
//   relay_process relay({{"APPOINTMENT_RELAY_DATABASE_URL", db.url()},
//                        {"APPOINTMENT_RELAY_ENDPOINT_URL", server.url()},
//                        {"APPOINTMENT_RELAY_ADMIN_LISTEN", "127.0.0.1:0"}});   // runs `run`
//   ASSERT_TRUE(relay.wait_for_log("this instance is active", 10s)) << relay.log();
//   auto ready = http_get(relay.admin_port(), "/readyz");                     // {200, "ready\n"}
//   relay.send_signal(SIGTERM);
//   EXPECT_EQ(relay.wait_exit(15s), 0);
//
//   auto r = run_relay_command({"status", "--json"}, env);                     // a one-shot command
//   EXPECT_EQ(r.exit_code, 0) << r.err;
//
// The environment: the test process's own, minus every APPOINTMENT_RELAY_* variable (the relay rejects
// unknown APPOINTMENT_RELAY_* names, and a developer's shell may have some), plus the variables given.
// stdin is /dev/null; no other descriptor of the test process is inherited. The child is killed (SIGKILL)
// when the thread that started it ends (PR_SET_PDEATHSIG), so a crashed test leaves no daemon behind: start
// it from the test's own thread, not from a short-lived one. stdout and stderr of `run` go to one log file in
// a temporary directory (removed with the object, unless the test failed: then its tail is printed and the
// file kept). Not thread-safe: one test thread drives one process.
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace appointment_relay::testing {

using environment = std::map<std::string, std::string>;

// The path of the built daemon binary.
std::string relay_binary();

struct command_result {
  int exit_code = -1;  // the process's exit code; 128 + N when killed by signal N; -1 on timeout (killed)
  std::string out;     // everything written to stdout
  std::string err;     // everything written to stderr
};

// Runs `appointment-relay <args...>` to completion (status, replay, check-config, migrate, ...). On timeout
// the process is killed with SIGKILL and exit_code is -1.
command_result run_relay_command(const std::vector<std::string>& args, const environment& env,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(30));

class relay_process {
 public:
  // Starts `appointment-relay <args...>` (default: `run`). Throws std::runtime_error when it cannot start.
  explicit relay_process(environment env, std::vector<std::string> args = {"run"});
  // SIGKILL if still running, then reaps it. Prints the log's tail when the current test has failed.
  ~relay_process();
  relay_process(const relay_process&) = delete;
  relay_process& operator=(const relay_process&) = delete;

  pid_t pid() const { return pid_; }
  // True until the process has exited (and been reaped by wait_exit / running()).
  bool running();

  // Sends sig (SIGTERM, SIGINT, SIGHUP, SIGKILL, ...); false if the process is already gone.
  bool send_signal(int sig);
  // SIGKILL and wait for it: the crash fault. Returns at once when already exited.
  void kill_now();
  // The exit code (128 + N when killed by signal N), or nullopt if still running after timeout.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);

  // Everything logged so far (stdout + stderr), and its size in bytes.
  std::string log() const;
  std::size_t log_size() const;
  // Waits until the log, from byte offset `from` on, contains `text`. False on timeout or when the process
  // exits without having logged it.
  bool wait_for_log(std::string_view text, std::chrono::milliseconds timeout, std::size_t from = 0);
  // How many times `text` occurs in the log.
  std::size_t count_in_log(std::string_view text) const;

  // The admin server's port, from the line "admin server on HOST port N" (waits up to timeout for it);
  // 0 if it never came (e.g. APPOINTMENT_RELAY_ADMIN_LISTEN was empty).
  std::uint16_t admin_port(std::chrono::milliseconds timeout = std::chrono::seconds(20));

  const std::string& log_path() const { return log_path_; }

 private:
  std::string dir_;
  std::string log_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::uint16_t admin_port_ = 0;
};

struct http_get_result {
  int status = 0;  // 0: no answer (connection refused, timeout, unparseable)
  std::string body;
};

// A minimal blocking HTTP/1.1 GET to 127.0.0.1:port (for /healthz, /readyz, /metrics).
http_get_result http_get(std::uint16_t port, const std::string& target,
                         std::chrono::milliseconds timeout = std::chrono::seconds(5));

}  // namespace appointment_relay::testing
