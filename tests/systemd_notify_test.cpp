#include "appointment_relay/systemd_notify.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

namespace appointment_relay {
namespace {

// A unix datagram socket in a fresh temporary directory, announced as NOTIFY_SOCKET for the test.
class systemd_notify : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/ar-notify-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    path_ = dir_ + "/notify.sock";
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd_, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    ASSERT_LT(path_.size(), sizeof addr.sun_path);
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    ASSERT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
    timeval tv{2, 0};  // a missing datagram fails the test instead of hanging it
    ASSERT_EQ(setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    ASSERT_EQ(setenv("NOTIFY_SOCKET", path_.c_str(), 1), 0);
  }
  void TearDown() override {
    unsetenv("NOTIFY_SOCKET");
    if (fd_ >= 0) close(fd_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string receive() {
    char buf[4096];
    const ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n < 0) return "<nothing received: " + std::string(std::strerror(errno)) + ">";
    return std::string(buf, static_cast<std::size_t>(n));
  }
  bool nothing_pending() {
    char buf[16];
    return recv(fd_, buf, sizeof buf, MSG_DONTWAIT) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  std::string dir_;
  std::string path_;
  int fd_ = -1;
};

TEST_F(systemd_notify, should_send_exact_state_datagrams) {
  const struct {
    const char* name;
    bool (*send)();
    const char* expected;
  } cases[] = {
      {"ready", [] { return notify_ready(); }, "READY=1"},
      {"ready with status", [] { return notify_ready("relaying to 2 endpoints"); },
       "READY=1\nSTATUS=relaying to 2 endpoints"},
      {"stopping", [] { return notify_stopping(); }, "STOPPING=1"},
      {"watchdog", [] { return notify_watchdog(); }, "WATCHDOG=1"},
      {"status", [] { return notify_status("database reconnecting"); }, "STATUS=database reconnecting"},
      {"status newline", [] { return notify_status("line one\nline two"); }, "STATUS=line one line two"},
  };
  for (const auto& c : cases) {
    EXPECT_TRUE(c.send()) << c.name;
    EXPECT_EQ(receive(), c.expected) << c.name;
  }
  EXPECT_TRUE(nothing_pending());
}

TEST_F(systemd_notify, should_send_reloading_with_the_monotonic_clock_in_microseconds) {
  auto now_usec = [] {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000u +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
  };
  const std::uint64_t before = now_usec();
  ASSERT_TRUE(notify_reloading());
  const std::uint64_t after = now_usec();
  const std::string msg = receive();
  const std::string prefix = "RELOADING=1\nMONOTONIC_USEC=";
  ASSERT_EQ(msg.rfind(prefix, 0), 0u) << msg;
  const std::string digits = msg.substr(prefix.size());
  ASSERT_FALSE(digits.empty());
  ASSERT_EQ(digits.find_first_not_of("0123456789"), std::string::npos) << msg;
  const std::uint64_t stamp = std::stoull(digits);
  EXPECT_GE(stamp, before);
  EXPECT_LE(stamp, after);
}

TEST_F(systemd_notify, should_report_half_the_watchdog_timeout_for_this_process_only) {
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
  EXPECT_EQ(watchdog_interval(), std::chrono::microseconds{0});

  setenv("WATCHDOG_USEC", "30000000", 1);
  setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
  EXPECT_EQ(watchdog_interval(), std::chrono::seconds{15});

  setenv("WATCHDOG_PID", std::to_string(getpid() + 1).c_str(), 1);  // meant for another process
  EXPECT_EQ(watchdog_interval(), std::chrono::microseconds{0});
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
}

TEST_F(systemd_notify, should_do_nothing_without_a_notify_socket) {
  unsetenv("NOTIFY_SOCKET");
  EXPECT_FALSE(notify_ready("x"));
  EXPECT_FALSE(notify_reloading());
  EXPECT_FALSE(notify_stopping());
  EXPECT_FALSE(notify_watchdog());
  EXPECT_FALSE(notify_status("x"));
}

}  // namespace
}  // namespace appointment_relay
