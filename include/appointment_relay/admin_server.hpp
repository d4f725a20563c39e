#pragma once
// The admin HTTP/1.1 server: GET /healthz (process alive), GET /readyz (ready() says the database is
// connected and listening), GET /metrics (Prometheus text format). Plain HTTP, meant for 127.0.0.1 or a
// private network. All its handlers run on the given executor (the daemon's io thread); ready() and
// metrics::render() are called there.
//
// Limits (admin_server_limits): every read and write has a deadline, request headers are capped at 8 KiB
// and a request body at 1 KiB (larger: 413 and close; malformed: 400 and close); keep-alive is supported;
// at most max_sessions concurrent connections, further ones are closed at once.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "appointment_relay/net.hpp"

namespace appointment_relay {

class metrics;

struct admin_server_limits {
  std::chrono::steady_clock::duration io_timeout = std::chrono::seconds(10);  // per read or write
  std::size_t max_sessions = 64;
};

class admin_server {
 public:
  virtual ~admin_server() = default;  // stops the server (see stop())

  // Binds and listens, then accepts on the executor. Throws std::runtime_error naming the address when
  // the listen address is malformed or cannot be bound (e.g. the port is in use). Call at most once.
  virtual void start() = 0;
  // The bound port (useful with port 0); 0 before start().
  virtual std::uint16_t port() const = 0;
  // Closes the acceptor and every open connection; once that has run, no handler calls metrics or ready().
  // Idempotent, callable from any thread: on the executor's thread it runs at once, otherwise it is
  // posted to the executor.
  virtual void stop() = 0;
};

// listen: "host:port" with an IPv4 literal, "[IPv6]:port", or "localhost:port"; port 0 picks a free port.
// m and ready must outlive the server and any run of the executor that may still execute its handlers.
std::unique_ptr<admin_server> make_admin_server(executor ex, std::string listen, metrics& m,
                                                std::function<bool()> ready, admin_server_limits limits = {});

}  // namespace appointment_relay
