#pragma once
// A TCP proxy on 127.0.0.1 for fault tests: forwards every connection to a target, until freeze(): from then
// on nothing more is forwarded in either direction and nothing is closed (no FIN, no RST), as a network
// partition or a hung middlebox looks to both ends; new connections are accepted and held, never forwarded.
// thaw() resumes forwarding (what was held is delivered). Runs on its own thread; members are thread-safe.
//
//   tcp_proxy proxy("127.0.0.1", pg_port);
//   ... connect to 127.0.0.1:proxy.port() ...
//   proxy.freeze();
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

namespace appointment_relay::testing {

class tcp_proxy {
 public:
  tcp_proxy(std::string target_host, std::uint16_t target_port);
  ~tcp_proxy();
  tcp_proxy(const tcp_proxy&) = delete;
  tcp_proxy& operator=(const tcp_proxy&) = delete;

  std::uint16_t port() const { return port_; }
  void freeze();
  void thaw();
  bool frozen() const { return frozen_.load(); }
  int connections() const { return connections_.load(); }  // accepted so far

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
  std::uint16_t port_ = 0;
  std::atomic<bool> frozen_{false};
  std::atomic<int> connections_{0};
  std::thread thread_;
};

// A proxy in front of the PostgreSQL server of a test database URL ("postgresql://user@HOST:PORT/db"), and
// that URL through it. Throws std::invalid_argument for a URL of another shape.
struct proxied_database {
  std::unique_ptr<tcp_proxy> proxy;
  std::string url;
};
proxied_database proxy_database(const std::string& url);

}  // namespace appointment_relay::testing
