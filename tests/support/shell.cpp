#include "support/shell.hpp"

#include <sys/wait.h>

#include <cstdio>

namespace appointment_relay::testing {

shell_result run_shell(const std::string& command) {
  shell_result r;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace appointment_relay::testing
