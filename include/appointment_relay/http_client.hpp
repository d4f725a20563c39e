#pragma once
// Asynchronous HTTP/1.1 POST client for one endpoint: keep-alive connections reused, at most
// max_connections open and as many requests in flight (one per connection: no pipelining), http or https.
// Lifecycle: made with make_http_client on an executor; every member is called on that executor
// (one thread). Callbacks run on it too, exactly once per post(), also after close() or cancel(), and
// also when something inside the client throws (the request then ends with an error and its connection is
// dropped: no connection stays busy).
// Interim responses (1xx) before the final one are read past; a 101 is an error (the connection is
// dropped), since a POST here never asks to switch protocols.
// Name resolution runs on a short-lived thread of the client's own (at most one lookup per client at a
// time; the requests waiting for it share its result), so a stalled resolver delays only this client's new
// connections and each request's deadline ends only its own wait. Results are cached for a minute; an IP
// literal is never looked up.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "appointment_relay/net.hpp"
#include "appointment_relay/url.hpp"

namespace appointment_relay {

struct tls_settings {
  std::string ca_file;           // empty: the system's trust store
  std::string client_cert_file;  // mTLS: PEM certificate chain; with client_key_file
  std::string client_key_file;
  bool verify_peer = true;  // certificate chain and host name; never off by default
};

struct http_client_options {
  int max_connections = 16;
  std::chrono::milliseconds request_timeout{
      10000};  // whole request: resolve, connect, handshake, write, read
  std::size_t body_limit = 64 * 1024;
  std::string user_agent;  // "appointment-relay/<version>"
  tls_settings tls;
  // Looks up host and port (blocking; called on the lookup thread, never on the executor). Empty: the
  // system resolver (getaddrinfo). Tests inject a slow or failing one. An exception counts as a failure.
  std::function<std::vector<tcp::endpoint>(const std::string& host, const std::string& port, error_code& ec)>
      resolve;
};

struct http_response_info {
  int status = 0;  // 0: no response (see error)
  // Transport error: "connection refused", "timeout", "connection reset", "tls: ...", "cancelled",
  // "shutting down", "resolve: ...", "unexpected 101 Switching Protocols", "internal error: ...".
  std::string error;
  std::optional<std::string> retry_after;
  std::chrono::microseconds latency{0};  // from the request being taken up to its response being read
  // A response other than 2xx: the first body_prefix_limit bytes of its body, made valid UTF-8 (invalid
  // sequences as U+FFFD), for the attempt history. Empty for a 2xx (not kept) and without a response.
  std::string body_prefix;
};

inline constexpr std::size_t body_prefix_limit = 1024;

using header_list = std::vector<std::pair<std::string, std::string>>;

class http_client {
 public:
  using request_id = std::uint64_t;

  virtual ~http_client() = default;
  // Queue one POST of body (Content-Type: application/json) with the extra headers. Requests beyond
  // max_connections wait in a queue; done is called exactly once, never from inside post(). Returns the
  // request's id for cancel(): never 0, unique within this client.
  virtual request_id post(std::string body, header_list headers,
                          std::function<void(http_response_info)> done) = 0;
  // Gives up on a request: a queued one never starts; one in flight has its connection aborted at once
  // (SO_LINGER 0 + close: the receiver sees a reset, and nothing more of the request reaches it once cancel()
  // returns); one waiting for a name lookup stops waiting. done is still called exactly once, later (never
  // from inside cancel()), with error "cancelled" and status 0. An unknown or finished id (or 0) is a no-op.
  virtual void cancel(request_id id) = 0;
  // Requests waiting or in flight.
  virtual std::size_t outstanding() const noexcept = 0;
  // Close idle connections, fail queued requests ("shutting down"), let in-flight ones finish. Idempotent.
  virtual void close() = 0;
};

// Throws std::runtime_error when the TLS settings cannot be loaded (unreadable CA, cert or key).
std::shared_ptr<http_client> make_http_client(executor ex, url endpoint, http_client_options options);

}  // namespace appointment_relay
