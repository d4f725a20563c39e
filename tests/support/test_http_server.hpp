#pragma once
// A real HTTP/1.1 server for tests, on 127.0.0.1 and a free port, in its own thread; plain or TLS (optionally
// requiring a client certificate). It records every request and answers each one by a plan: a status with
// headers and body, optionally preceded by interim (1xx) responses, after a delay, or a fault (reset,
// malformed response, silent close, freeze).
//
//   test_http_server server(always_status(200));   // listening once constructed, with its handler
//   server.push_plan(response_plan::with_status(503).header("Retry-After", "2"));
//   ... client posts to server.url("/hook") ...
//   ASSERT_TRUE(server.wait_for_requests(1, 2s));
//   EXPECT_EQ(server.requests()[0].header("webhook-id"), "evt_1");
//
// Which plan answers request number `index` (0-based, in arrival order): the next queued plan (push_plan)
// if any, else the handler given to the constructor, else (no handler) 503 "no handler". The handler is
// fixed before the server listens, so no request can arrive before it. Every member is thread-safe; the
// handler runs on the server's thread and must not call back into the server. Connections are kept alive
// unless a plan or the client says otherwise. The destructor stops the server (in-flight connections are
// cut).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace appointment_relay::testing {

using header_pairs = std::vector<std::pair<std::string, std::string>>;

struct recorded_request {
  std::chrono::steady_clock::time_point received;  // when the whole request had been read
  std::string method;                              // "POST"
  std::string target;                              // "/hook?x=1"
  header_pairs headers;                            // in arrival order, names as sent
  std::string body;
  int connection = 0;  // which accepted connection it came on (0-based, in accept order)
  // The first header of that name (case-insensitive), or empty.
  std::optional<std::string> header(std::string_view name) const;
};

struct response_plan {
  enum class action {
    respond,    // send the status, headers and body
    reset,      // abort the TCP connection (SO_LINGER 0: the client sees a reset), no response
    malformed,  // send "HTTP/1.1 abc\r\n\r\n" and close
    close,      // close the connection without a response
    freeze,     // neither read nor write on the connection again and keep it open (no FIN, no RST) until
                // the server stops: a receiver that hangs like a partitioned peer. The server still notices
                // a reset from the client (peer_resets()).
  };
  struct interim_response {
    int status = 100;  // 1xx
    header_pairs headers;
  };
  action what = action::respond;
  int status = 200;
  header_pairs headers;
  std::string body = "ok";
  std::chrono::milliseconds delay{0};  // wait this long before acting
  bool keep_alive = true;              // false: "Connection: close" and close after the response
  // Sent in this order as soon as the request has been read, before the delay and whatever the action.
  std::vector<interim_response> interims;

  static response_plan with_status(int status);
  static response_plan fault(action what);
  response_plan& header(std::string name, std::string value);
  response_plan& after(std::chrono::milliseconds wait);
  response_plan& closing();  // keep_alive = false
  // Adds an interim response (100 Continue, 102 Processing, 103 Early Hints with Link headers, ...).
  response_plan& interim(int status, header_pairs headers = {});
};

struct test_server_options {
  bool tls = false;
  std::string cert_file;       // PEM chain (tls)
  std::string key_file;        // PEM key (tls)
  std::string client_ca_file;  // tls: when set, a client certificate signed by this CA is required
  bool record = true;          // false: count requests but keep no copies (long benchmarks)
  std::uint16_t port = 0;      // 0: a free port; else this one (a receiver restarted on the same address)
};

class test_http_server {
 public:
  using handler = std::function<response_plan(const recorded_request&, int index)>;

  // Listens once constructed. An empty handler: requests with no queued plan are answered 503.
  explicit test_http_server(handler h, test_server_options options = {});
  ~test_http_server();
  test_http_server(const test_http_server&) = delete;
  test_http_server& operator=(const test_http_server&) = delete;

  std::uint16_t port() const { return port_; }
  // "http://127.0.0.1:<port><target>" (https when TLS).
  std::string url(std::string_view target = "/hook") const;

  void push_plan(response_plan plan);

  // Requests are recorded as soon as they have been read, before they are answered.
  std::vector<recorded_request> requests() const;  // copies, in arrival order
  std::size_t request_count() const;               // every request read, also when record is false
  // True once at least n requests have arrived; false on timeout.
  bool wait_for_requests(std::size_t n, std::chrono::milliseconds timeout) const;
  int accepted_connections() const { return accepted_.load(); }
  int tls_handshake_failures() const { return handshake_failures_.load(); }
  // Connections the client aborted with a reset (ECONNRESET), seen while waiting for the next request on
  // it or while frozen.
  int peer_resets() const { return peer_resets_.load(); }
  // The most requests that were being handled at once (read, not yet answered).
  int max_concurrent_requests() const { return max_concurrent_.load(); }

  void stop();  // idempotent

 private:
  struct impl;
  friend struct impl;
  response_plan next_plan(const recorded_request& request, int index);
  int record(const recorded_request& request);  // its index

  test_server_options options_;
  std::unique_ptr<impl> impl_;
  std::uint16_t port_ = 0;
  std::thread thread_;

  mutable std::mutex mutex_;
  mutable std::condition_variable arrived_;
  std::vector<recorded_request> requests_;
  std::size_t count_ = 0;
  std::deque<response_plan> plans_;
  const handler handler_;  // fixed before listening: no request can see another

  std::atomic<int> accepted_{0};
  std::atomic<int> handshake_failures_{0};
  std::atomic<int> peer_resets_{0};
  std::atomic<int> concurrent_{0};
  std::atomic<int> max_concurrent_{0};
  std::atomic<bool> stopped_{false};
};

// A handler that answers every request with this status (and "ok" or "status <n>").
test_http_server::handler always_status(int status);

}  // namespace appointment_relay::testing
