#include "support/relay_process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

extern char** environ;

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

std::string make_temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "ar-relay.XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr)
    throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
  return tmpl;
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The child's environment: ours without APPOINTMENT_RELAY_*, then env on top.
std::vector<std::string> child_environment(const environment& env) {
  std::vector<std::string> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    if (entry.starts_with("APPOINTMENT_RELAY_")) continue;
    auto eq = entry.find('=');
    if (eq != std::string_view::npos && env.count(std::string(entry.substr(0, eq))) > 0) continue;
    out.emplace_back(entry);
  }
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

// posix_spawn of the relay binary, stdin from /dev/null, stdout and stderr to the given files.
pid_t spawn(const std::vector<std::string>& args, const environment& env, const std::string& out_path,
            const std::string& err_path) {
  std::vector<std::string> argv_s;
  argv_s.push_back(relay_binary());
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  auto env_s = child_environment(env);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  // fork + exec rather than posix_spawn: the child must not inherit the test's other descriptors (a test
  // server's listening socket would outlive its stop()), and it dies with the test process
  // (PR_SET_PDEATHSIG) when a test crashes. Between fork and exec only async-signal-safe calls.
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork: " + std::string(std::strerror(errno)));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int in = ::open("/dev/null", O_RDONLY);
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    int err = err_path == out_path ? out : ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in < 0 || out < 0 || err < 0) ::_exit(127);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::close_range(3, ~0U, 0);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Polls waitpid until the child exits or timeout; nullopt on timeout.
std::optional<int> reap(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = clock_type::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return decode_status(status);
    if (r < 0 && errno != EINTR) return -1;
    if (clock_type::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(10ms);
  }
}

}  // namespace

std::string relay_binary() {
  // A developer may run a copy of the tests against a copy of the binary (a build tree shared by several
  // people): APPOINTMENT_RELAY_TEST_BINARY names it.
  if (const char* b = std::getenv("APPOINTMENT_RELAY_TEST_BINARY"); b && *b) return b;
  return APPOINTMENT_RELAY_BINARY;
}

command_result run_relay_command(const std::vector<std::string>& args, const environment& env,
                                 std::chrono::milliseconds timeout) {
  auto dir = make_temp_dir();
  auto out_path = dir + "/stdout";
  auto err_path = dir + "/stderr";
  command_result result;
  pid_t pid = spawn(args, env, out_path, err_path);
  auto code = reap(pid, timeout);
  if (!code) {
    ::kill(pid, SIGKILL);
    reap(pid, 10s);
    result.exit_code = -1;
  } else {
    result.exit_code = *code;
  }
  result.out = read_whole(out_path);
  result.err = read_whole(err_path);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return result;
}

relay_process::relay_process(environment env, std::vector<std::string> args) {
  dir_ = make_temp_dir();
  log_path_ = dir_ + "/relay.log";
  pid_ = spawn(args, env, log_path_, log_path_);
}

relay_process::~relay_process() {
  if (pid_ > 0 && !exit_code_) {
    ::kill(pid_, SIGKILL);
    reap(pid_, 10s);
  }
  if (::testing::Test::HasFailure()) {
    auto text = log();
    constexpr std::size_t tail = 6000;
    std::cerr << "---- relay pid " << pid_ << " log (last " << tail << " bytes of " << text.size()
              << ") ----\n"
              << (text.size() > tail ? text.substr(text.size() - tail) : text)
              << "---- end of relay log (kept: " << log_path_ << ") ----\n";
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

bool relay_process::running() {
  if (exit_code_) return false;
  auto code = reap(pid_, 0ms);
  if (code) exit_code_ = code;
  return !exit_code_;
}

bool relay_process::send_signal(int sig) {
  if (!running()) return false;
  return ::kill(pid_, sig) == 0;
}

void relay_process::kill_now() {
  if (!running()) return;
  ::kill(pid_, SIGKILL);
  wait_exit(10s);
}

std::optional<int> relay_process::wait_exit(std::chrono::milliseconds timeout) {
  if (exit_code_) return exit_code_;
  auto code = reap(pid_, timeout);
  if (code) exit_code_ = code;
  return exit_code_;
}

std::string relay_process::log() const {
  return read_whole(log_path_);
}

std::size_t relay_process::log_size() const {
  std::error_code ec;
  auto n = std::filesystem::file_size(log_path_, ec);
  return ec ? 0 : static_cast<std::size_t>(n);
}

bool relay_process::wait_for_log(std::string_view text, std::chrono::milliseconds timeout, std::size_t from) {
  auto deadline = clock_type::now() + timeout;
  for (;;) {
    bool alive = running();
    auto content = log();
    if (content.size() > from && content.find(text, from) != std::string::npos) return true;
    if (!alive || clock_type::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

std::size_t relay_process::count_in_log(std::string_view text) const {
  auto content = log();
  std::size_t n = 0;
  for (auto pos = content.find(text); pos != std::string::npos; pos = content.find(text, pos + text.size()))
    ++n;
  return n;
}

std::uint16_t relay_process::admin_port(std::chrono::milliseconds timeout) {
  if (admin_port_ != 0) return admin_port_;
  if (!wait_for_log("admin server on ", timeout)) return 0;
  auto content = log();
  auto at = content.find("admin server on ");
  auto port_at = content.find(" port ", at);
  if (port_at == std::string::npos) return 0;
  admin_port_ = static_cast<std::uint16_t>(std::strtoul(content.c_str() + port_at + 6, nullptr, 10));
  return admin_port_;
}

http_get_result http_get(std::uint16_t port, const std::string& target, std::chrono::milliseconds timeout) {
  http_get_result result;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return result;
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return result;
  }
  std::string req = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return result;
  }
  std::string response;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    response.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  // "HTTP/1.1 503 Service Unavailable\r\n...\r\n\r\nbody"
  if (!response.starts_with("HTTP/1.")) return result;
  auto sp = response.find(' ');
  if (sp == std::string::npos) return result;
  result.status = std::atoi(response.c_str() + sp + 1);
  auto body_at = response.find("\r\n\r\n");
  if (body_at != std::string::npos) result.body = response.substr(body_at + 4);
  return result;
}

}  // namespace appointment_relay::testing
