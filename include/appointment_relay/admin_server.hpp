#pragma once
// The admin HTTP/1.1 server: GET /healthz (process alive), GET /readyz (ready() says the database is
// connected and listening), GET /metrics (Prometheus text format). Plain HTTP, meant for 127.0.0.1 or a
// private network. All its handlers run on the given executor (the daemon's io thread); ready() and
// metrics::render() are called there.
//
// With a data source (admin_api_settings), also the read-only admin API and the status page:
//   GET /api/status             as `appointment-relay status --json` (an array, one object per endpoint)
//   GET /api/endpoints[/NAME]   the same array, or NAME's object (404 for an endpoint not configured)
//   GET /api/events?appointment=&endpoint=&state=&kind=&since=&until=&limit=   {"events": [...]}, newest
//   first GET /api/events/ID          the event per endpoint with its attempts; "payload" only for a token
//   holder GET /                       the status page (HTML, refreshes itself); GET /events/ID an event's
//   page
// Their database reads run on a thread of their own (admin_worker), never on the executor: at most
// api_queue requests wait there, more get 503, as does one not answered within api_timeout. Who may read
// what: admin_auth.hpp (a configured token is required for everything but /healthz and /readyz; 401 with
// WWW-Authenticate: Bearer).
//
// Limits (admin_server_limits): every read and write has a deadline, request headers are capped at 8 KiB
// and a request body at 1 KiB (larger: 413 and close; malformed: 400 and close); keep-alive is supported;
// at most max_sessions concurrent connections, further ones are closed at once.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <vector>

#include "appointment_relay/admin_worker.hpp"
#include "appointment_relay/net.hpp"

namespace appointment_relay {

class metrics;

struct admin_server_limits {
  std::chrono::steady_clock::duration io_timeout = std::chrono::seconds(10);  // per read or write
  std::size_t max_sessions = 64;
  std::chrono::steady_clock::duration api_timeout =
      std::chrono::seconds(10);  // a database read, queue included
  std::size_t api_queue = 8;     // reads waiting for the worker
};

struct admin_api_settings {
  // Where the API reads; none: no API and no status page (404), only /healthz, /readyz and /metrics.
  // store_admin_data(url, ...) for the daemon's database.
  admin_data_factory data;
  std::vector<std::string> endpoints;  // the configured endpoints, as `status` reports them
  // The kinds each endpoint wants (event_filter::endpoint_kinds): an event of another kind is "skipped".
  std::map<std::string, std::vector<std::string>> endpoint_kinds;
  // The bearer token (admin.token_file's content); empty: none, and then start() refuses a listen address
  // that is not loopback (admin_auth.hpp).
  std::string token;
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
  // The endpoints the API and the page report from now on (a reload changed them). Any thread.
  virtual void set_endpoints(std::vector<std::string> endpoints,
                             std::map<std::string, std::vector<std::string>> endpoint_kinds) = 0;
};

// listen: "host:port" with an IPv4 literal, "[IPv6]:port", or "localhost:port"; port 0 picks a free port.
// m and ready must outlive the server and any run of the executor that may still execute its handlers.
std::unique_ptr<admin_server> make_admin_server(executor ex, std::string listen, metrics& m,
                                                std::function<bool()> ready, admin_server_limits limits = {});
// The same with the admin API and the status page. The destructor waits for a database read in progress.
std::unique_ptr<admin_server> make_admin_server(executor ex, std::string listen, metrics& m,
                                                std::function<bool()> ready, admin_api_settings api,
                                                admin_server_limits limits = {});

}  // namespace appointment_relay
