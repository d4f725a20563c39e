#pragma once
// A shell command run to completion for a test (promtool, chromium, bash -n, systemd-analyze, ...).
#include <string>

namespace appointment_relay::testing {

struct shell_result {
  int exit_code = -1;  // the command's exit code; -1 when it could not be run or ended by a signal
  std::string output;  // what it wrote to stdout (and stderr, when the command redirects it: 2>&1)
};

// Runs `sh -c command` and collects its stdout; the command redirects stderr itself where wanted.
shell_result run_shell(const std::string& command);

}  // namespace appointment_relay::testing
