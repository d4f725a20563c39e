#include "appointment_relay/net.hpp"
//
#include "appointment_relay/admin_server.hpp"

#include "appointment_relay/listen_address.hpp"

#include <atomic>
#include <charconv>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "appointment_relay/metrics.hpp"
#include "appointment_relay/version.hpp"

namespace appointment_relay {
namespace {

constexpr std::uint32_t header_limit = 8 * 1024;
constexpr std::uint64_t body_limit = 1024;
// After an accept error other than cancellation (e.g. out of descriptors), wait before trying again
// instead of spinning.
constexpr auto accept_retry_delay = std::chrono::milliseconds(100);

class session;

// Shared by the accept loop and the sessions; touched only on the executor after start().
struct server_state : std::enable_shared_from_this<server_state> {
  server_state(executor ex, std::string listen, metrics& m, std::function<bool()> ready,
               admin_server_limits limits)
      : ex(ex),
        acceptor(ex),
        retry_timer(ex),
        listen(std::move(listen)),
        m(m),
        ready(std::move(ready)),
        limits(limits) {}

  void do_accept();
  void on_accept(error_code ec, tcp::socket socket);
  void stop();

  executor ex;
  tcp::acceptor acceptor;
  steady_timer retry_timer;
  std::string listen;
  metrics& m;
  std::function<bool()> ready;
  admin_server_limits limits;
  bool stopped = false;
  std::unordered_set<session*> sessions;
};

// One connection: read a request (deadline, size limits), answer it, repeat while keep-alive.
class session : public std::enable_shared_from_this<session> {
 public:
  session(tcp::socket socket, std::shared_ptr<server_state> server)
      : stream_(std::move(socket)), server_(std::move(server)) {
    server_->sessions.insert(this);
  }
  ~session() { server_->sessions.erase(this); }

  void run() { do_read(); }

  void close() {
    error_code ignored;  // the peer may be gone already; nothing to do about it
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->header_limit(header_limit);
    parser_->body_limit(body_limit);
    stream_.expires_after(server_->limits.io_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&session::on_read, shared_from_this()));
  }

  void on_read(error_code ec, std::size_t) {
    if (server_->stopped) return;
    if (ec == http::error::end_of_stream) return do_shutdown();  // the client closed between requests
    if (ec == http::error::body_limit)
      return respond(error_response(http::status::payload_too_large, "request body too large\n"));
    if (ec == http::error::header_limit)
      return respond(
          error_response(http::status::request_header_fields_too_large, "request header too large\n"));
    // Any other HTTP parse error gets a 400 before closing; the rest (timeout, reset, a message cut short,
    // cancellation by stop()) just ends the session.
    if (ec) {
      if (ec.category() == make_error_code(http::error::bad_target).category() &&
          ec != http::error::partial_message)
        return respond(error_response(http::status::bad_request, "bad request\n"));
      return;
    }
    respond(handle(parser_->get()));
  }

  http::response<http::string_body> error_response(http::status status, std::string body) {
    http::response<http::string_body> res{status, 11};
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    res.keep_alive(false);
    res.body() = std::move(body);
    return res;
  }

  http::response<http::string_body> handle(const http::request<http::string_body>& req) {
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    res.keep_alive(req.keep_alive());
    std::string_view target(req.target().data(), req.target().size());
    target = target.substr(0, target.find('?'));
    if (req.method() != http::verb::get) {
      res.result(http::status::method_not_allowed);
      res.set(http::field::allow, "GET");
      res.body() = "method not allowed\n";
    } else if (target == "/healthz") {
      res.body() = "ok\n";
    } else if (target == "/readyz") {
      if (server_->ready()) {
        res.body() = "ready\n";
      } else {
        res.result(http::status::service_unavailable);
        res.body() = "not ready: database not connected\n";
      }
    } else if (target == "/metrics") {
      res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      res.body() = server_->m.render();
    } else {
      res.result(http::status::not_found);
      res.body() = "not found\n";
    }
    return res;
  }

  void respond(http::response<http::string_body> res) {
    res.set(http::field::server, std::string("appointment-relay/") + version);
    res.set(http::field::cache_control, "no-store");
    res.prepare_payload();
    res_ = std::move(res);
    stream_.expires_after(server_->limits.io_timeout);
    http::async_write(stream_, res_, beast::bind_front_handler(&session::on_write, shared_from_this()));
  }

  void on_write(error_code ec, std::size_t) {
    if (ec || server_->stopped) return;
    if (!res_.keep_alive()) return do_shutdown();
    do_read();
  }

  void do_shutdown() {
    error_code ignored;  // best effort: the session ends either way
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;  // a fresh parser per request
  http::response<http::string_body> res_;                          // alive until its write completes
  std::shared_ptr<server_state> server_;
};

void server_state::do_accept() {
  if (stopped) return;
  acceptor.async_accept(beast::bind_front_handler(&server_state::on_accept, shared_from_this()));
}

void server_state::on_accept(error_code ec, tcp::socket socket) {
  if (stopped) return;
  if (ec) {
    retry_timer.expires_after(accept_retry_delay);
    retry_timer.async_wait([self = shared_from_this()](error_code wait_ec) {
      if (!wait_ec) self->do_accept();
    });
    return;
  }
  if (sessions.size() >= limits.max_sessions) {
    error_code ignored;  // over the cap: refuse by closing; the client sees the connection end
    socket.close(ignored);
  } else {
    std::make_shared<session>(std::move(socket), shared_from_this())->run();
  }
  do_accept();
}

void server_state::stop() {
  if (stopped) return;
  stopped = true;
  error_code ignored;  // closing what may not be open
  acceptor.close(ignored);
  retry_timer.cancel();
  // close() does not destroy a session (its pending handlers hold it), so the set is not changed here.
  std::vector<session*> open(sessions.begin(), sessions.end());
  for (session* s : open) s->close();
}

class admin_server_impl final : public admin_server {
 public:
  admin_server_impl(executor ex, std::string listen, metrics& m, std::function<bool()> ready,
                    admin_server_limits limits)
      : state_(std::make_shared<server_state>(ex, std::move(listen), m, std::move(ready), limits)) {}
  ~admin_server_impl() override { stop(); }

  void start() override {
    tcp::endpoint endpoint;
    try {
      endpoint = parse_listen_address(state_->listen);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(std::string("admin server: ") + e.what());
    }
    auto& acceptor = state_->acceptor;
    error_code ec;
    auto check = [&](const char* what) {
      if (!ec) return;
      error_code ignored;
      acceptor.close(ignored);
      throw std::runtime_error("admin server cannot listen on " + state_->listen + ": " + what + ": " +
                               ec.message());
    };
    if (started_.exchange(true)) throw std::runtime_error("admin server: start() called twice");
    acceptor.open(endpoint.protocol(), ec);
    check("open");
    acceptor.set_option(net::socket_base::reuse_address(true), ec);
    check("set SO_REUSEADDR");
    if (endpoint.address().is_v6()) {
      acceptor.set_option(net::ip::v6_only(true), ec);  // [::1] means IPv6 only
      check("set IPV6_V6ONLY");
    }
    acceptor.bind(endpoint, ec);
    check("bind");
    acceptor.listen(net::socket_base::max_listen_connections, ec);
    check("listen");
    port_ = acceptor.local_endpoint().port();
    net::dispatch(state_->ex, [state = state_] { state->do_accept(); });
  }

  std::uint16_t port() const override { return port_; }

  void stop() override {
    net::dispatch(state_->ex, [state = state_] { state->stop(); });
  }

 private:
  std::shared_ptr<server_state> state_;
  std::atomic<bool> started_{false};
  std::atomic<std::uint16_t> port_{0};
};

}  // namespace

std::unique_ptr<admin_server> make_admin_server(executor ex, std::string listen, metrics& m,
                                                std::function<bool()> ready, admin_server_limits limits) {
  return std::make_unique<admin_server_impl>(std::move(ex), std::move(listen), m, std::move(ready), limits);
}

}  // namespace appointment_relay
