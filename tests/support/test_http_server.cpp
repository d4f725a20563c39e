#include "support/test_http_server.hpp"

// GCC 12 false positives with sanitizers on: Asio's coroutine frames (allocated and freed by Asio's own
// operator new/delete pair) are reported as mismatched, and Beast 1.74's parser's optional body limit as
// maybe-uninitialized. Both are in Boost code instantiated here.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <stdexcept>
#include <type_traits>

#include "appointment_relay/net.hpp"

namespace appointment_relay::testing {
namespace {

using plain_stream = beast::tcp_stream;
using tls_stream = beast::ssl_stream<beast::tcp_stream>;

constexpr std::size_t request_body_limit = 16 * 1024 * 1024;

bool iequals(std::string_view a, std::string_view b) {
  return beast::iequals(beast::string_view(a.data(), a.size()), beast::string_view(b.data(), b.size()));
}

}  // namespace

std::optional<std::string> recorded_request::header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (iequals(n, name)) return v;
  }
  return std::nullopt;
}

response_plan response_plan::with_status(int status) {
  response_plan p;
  p.status = status;
  // 204 and 304 never have a body (RFC 9110): one would be taken for the start of the next response.
  if (status == 204 || status == 304)
    p.body.clear();
  else
    p.body = status >= 200 && status < 300 ? "ok" : "status " + std::to_string(status);
  return p;
}

response_plan response_plan::fault(action what) {
  response_plan p;
  p.what = what;
  return p;
}

response_plan& response_plan::header(std::string name, std::string value) {
  headers.emplace_back(std::move(name), std::move(value));
  return *this;
}

response_plan& response_plan::after(std::chrono::milliseconds wait) {
  delay = wait;
  return *this;
}

response_plan& response_plan::closing() {
  keep_alive = false;
  return *this;
}

response_plan& response_plan::interim(int status, header_pairs headers) {
  interims.push_back(interim_response{status, std::move(headers)});
  return *this;
}

test_http_server::handler always_status(int status) {
  return [status](const recorded_request&, int) { return response_plan::with_status(status); };
}

struct test_http_server::impl {
  test_http_server& owner;
  std::optional<ssl::context> tls;  // outlives io: the sessions' TLS streams are destroyed with io
  net::io_context io{1};
  tcp::acceptor acceptor{io};

  explicit impl(test_http_server& o) : owner(o) {}

  net::awaitable<void> accept_loop() {
    for (;;) {
      error_code ec;
      tcp::socket socket = co_await acceptor.async_accept(net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        if (ec == net::error::operation_aborted || !acceptor.is_open()) co_return;
        continue;
      }
      socket.set_option(tcp::no_delay(true), ec);
      const int index = owner.accepted_.fetch_add(1);
      if (tls) {
        net::co_spawn(io, session(tls_stream(std::move(socket), *tls), index), net::detached);
      } else {
        net::co_spawn(io, session(plain_stream(std::move(socket)), index), net::detached);
      }
    }
  }

  // Holds the connection open without reading from it until the server stops (which destroys this frame and
  // closes the socket). Readiness is waited for and the socket only peeked, so that a reset from the client
  // is noticed (and counted) while anything it sends stays unread.
  net::awaitable<void> freeze(tcp::socket& socket) {
    error_code ec;
    for (;;) {
      co_await socket.async_wait(tcp::socket::wait_read, net::redirect_error(net::use_awaitable, ec));
      if (ec) break;
      char byte = 0;
      const ssize_t n = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n < 0 && errno == ECONNRESET) {
        owner.peer_resets_.fetch_add(1);
        co_return;
      }
      if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
    }
    // The client closed its side, sent more (left unread) or the socket failed otherwise: keep ours open
    // (no FIN) until the server stops.
    steady_timer forever(io, steady_timer::time_point::max());
    co_await forever.async_wait(net::redirect_error(net::use_awaitable, ec));
  }

  template <class Stream>
  net::awaitable<void> session(Stream stream, int connection_index) {
    error_code ec;
    if constexpr (std::is_same_v<Stream, tls_stream>) {
      beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
      co_await stream.async_handshake(ssl::stream_base::server, net::redirect_error(net::use_awaitable, ec));
      beast::get_lowest_layer(stream).expires_never();
      if (ec) {
        owner.handshake_failures_.fetch_add(1);
        co_return;
      }
    }
    beast::flat_buffer buffer;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(request_body_limit);
      co_await http::async_read(stream, buffer, parser, net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        if (ec == net::error::connection_reset) owner.peer_resets_.fetch_add(1);
        // With mTLS under TLS 1.3 a missing client certificate only shows up here, at the first read.
        if constexpr (std::is_same_v<Stream, tls_stream>) {
          if (ec.category() == net::error::get_ssl_category()) owner.handshake_failures_.fetch_add(1);
        }
        co_return;
      }
      const auto& req = parser.get();
      recorded_request rec;
      rec.received = std::chrono::steady_clock::now();
      rec.method = std::string(req.method_string());
      rec.target = std::string(req.target());
      for (const auto& field : req) rec.headers.emplace_back(field.name_string(), field.value());
      rec.body = req.body();
      rec.connection = connection_index;
      const bool client_keep_alive = req.keep_alive();

      const int now = owner.concurrent_.fetch_add(1) + 1;
      for (int seen = owner.max_concurrent_.load();
           now > seen && !owner.max_concurrent_.compare_exchange_weak(seen, now);) {
      }
      const int index = owner.record(rec);
      response_plan plan = owner.next_plan(rec, index);
      if (!plan.interims.empty()) {
        std::string head;
        for (const auto& interim : plan.interims) {
          const auto reason = http::obsolete_reason(static_cast<http::status>(interim.status));
          head += "HTTP/1.1 " + std::to_string(interim.status) + " " +
                  std::string(reason.data(), reason.size()) + "\r\n";
          for (const auto& [name, value] : interim.headers) head += name + ": " + value + "\r\n";
          head += "\r\n";
        }
        co_await net::async_write(stream, net::buffer(head), net::redirect_error(net::use_awaitable, ec));
        if (ec) {
          owner.concurrent_.fetch_sub(1);
          co_return;
        }
      }
      if (plan.delay.count() > 0) {
        steady_timer timer(io, plan.delay);
        co_await timer.async_wait(net::redirect_error(net::use_awaitable, ec));
      }
      owner.concurrent_.fetch_sub(1);

      auto& socket = beast::get_lowest_layer(stream).socket();
      switch (plan.what) {
        case response_plan::action::reset:
          socket.set_option(net::socket_base::linger(true, 0), ec);
          socket.close(ec);
          co_return;
        case response_plan::action::close:
          socket.shutdown(tcp::socket::shutdown_both, ec);
          socket.close(ec);
          co_return;
        case response_plan::action::malformed: {
          static constexpr std::string_view garbage = "HTTP/1.1 abc\r\n\r\n";
          co_await net::async_write(stream, net::buffer(garbage.data(), garbage.size()),
                                    net::redirect_error(net::use_awaitable, ec));
          socket.shutdown(tcp::socket::shutdown_both, ec);
          socket.close(ec);
          co_return;
        }
        case response_plan::action::freeze:
          co_await freeze(socket);
          co_return;
        case response_plan::action::respond:
          break;
      }
      http::response<http::string_body> res{static_cast<http::status>(plan.status), 11};
      res.set(http::field::server, "appointment-relay-test-server");
      for (const auto& [name, value] : plan.headers) res.insert(name, value);
      res.body() = plan.body;
      res.keep_alive(plan.keep_alive && client_keep_alive);
      res.prepare_payload();
      co_await http::async_write(stream, res, net::redirect_error(net::use_awaitable, ec));
      if (ec) co_return;
      if (!res.keep_alive()) {
        if constexpr (std::is_same_v<Stream, tls_stream>) {
          beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(1));
          co_await stream.async_shutdown(net::redirect_error(net::use_awaitable, ec));
          // Errors ignored: the client may close the TCP connection before answering close_notify
          // (ssl::error::stream_truncated); the connection is over either way.
        }
        socket.shutdown(tcp::socket::shutdown_both, ec);
        socket.close(ec);
        co_return;
      }
    }
  }
};

test_http_server::test_http_server(handler h, test_server_options options)
    : options_(std::move(options)), impl_(std::make_unique<impl>(*this)), handler_(std::move(h)) {
  if (options_.tls) {
    impl_->tls.emplace(ssl::context::tls_server);
    auto& ctx = *impl_->tls;
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3);
    ctx.use_certificate_chain_file(options_.cert_file);
    ctx.use_private_key_file(options_.key_file, ssl::context::pem);
    if (!options_.client_ca_file.empty()) {
      ctx.load_verify_file(options_.client_ca_file);
      ctx.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
    }
  }
  const tcp::endpoint local(net::ip::make_address("127.0.0.1"), options_.port);
  impl_->acceptor.open(local.protocol());
  impl_->acceptor.set_option(net::socket_base::reuse_address(true));
  impl_->acceptor.bind(local);
  impl_->acceptor.listen(net::socket_base::max_listen_connections);
  port_ = impl_->acceptor.local_endpoint().port();
  net::co_spawn(impl_->io, impl_->accept_loop(), net::detached);
  thread_ = std::thread([this] { impl_->io.run(); });
}

test_http_server::~test_http_server() {
  stop();
}

void test_http_server::stop() {
  if (stopped_.exchange(true)) return;
  net::post(impl_->io, [this] {
    error_code ignored;
    impl_->acceptor.close(ignored);
  });
  impl_->io.stop();
  if (thread_.joinable()) thread_.join();
  // io.stop() may have come before the posted close: the port must be free (connection refused) once
  // stop() returns, and the connections cut. Destroying the io_context destroys the sessions and their
  // sockets; nothing else uses impl_ after stop().
  impl_.reset();
}

std::string test_http_server::url(std::string_view target) const {
  return std::string(options_.tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_) +
         std::string(target);
}

void test_http_server::push_plan(response_plan plan) {
  std::lock_guard lock(mutex_);
  plans_.push_back(std::move(plan));
}

std::vector<recorded_request> test_http_server::requests() const {
  std::lock_guard lock(mutex_);
  return requests_;
}

std::size_t test_http_server::request_count() const {
  std::lock_guard lock(mutex_);
  return count_;
}

bool test_http_server::wait_for_requests(std::size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  return arrived_.wait_for(lock, timeout, [&] { return count_ >= n; });
}

response_plan test_http_server::next_plan(const recorded_request& request, int index) {
  {
    std::lock_guard lock(mutex_);
    if (!plans_.empty()) {
      response_plan p = std::move(plans_.front());
      plans_.pop_front();
      return p;
    }
  }
  if (handler_) return handler_(request, index);
  auto p = response_plan::with_status(503);
  p.body = "no handler";
  return p;
}

int test_http_server::record(const recorded_request& request) {
  int index = 0;
  {
    std::lock_guard lock(mutex_);
    index = static_cast<int>(count_++);
    if (options_.record) requests_.push_back(request);
  }
  arrived_.notify_all();
  return index;
}

}  // namespace appointment_relay::testing
