#include "appointment_relay/receiver.hpp"

#include "appointment_relay/listen_address.hpp"

#include <charconv>
#include <stdexcept>

namespace appointment_relay {

namespace {

std::int64_t unix_ns_now() {
  using namespace std::chrono;
  return duration_cast<nanoseconds>(system_clock::now().time_since_epoch()).count();
}

struct shared_state {
  receiver_options options;
  std::function<void(received_webhook)> on_webhook;
};

class session : public std::enable_shared_from_this<session> {
 public:
  session(tcp::socket socket, std::shared_ptr<const shared_state> state)
      : stream_(std::move(socket)), state_(std::move(state)) {}

  void start() { read(); }

 private:
  void read() {
    parser_.emplace();
    parser_->body_limit(state_->options.body_limit);
    stream_.expires_after(std::chrono::seconds(60));  // an idle keep-alive connection is closed after this
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](error_code ec, std::size_t) { self->on_read(ec); });
  }

  void on_read(error_code ec) {
    if (ec) {  // end of stream, timeout or a bad request: the connection is done either way
      error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
      return;
    }
    auto request = parser_->release();
    response_ = {};
    response_.version(request.version());
    response_.keep_alive(request.keep_alive());
    response_.set(http::field::content_type, "text/plain");
    if (request.method() != http::verb::post) {
      response_.result(http::status::method_not_allowed);
      response_.body() = "POST only\n";
    } else {
      received_webhook w;
      w.received_unix_ns = unix_ns_now();
      w.webhook_id = std::string(request["webhook-id"]);
      w.timestamp = std::string(request["webhook-timestamp"]);
      w.body = std::move(request.body());
      bool ok = true;
      if (!state_->options.keys.empty()) {
        std::int64_t ts = 0;
        auto [p, tec] = std::from_chars(w.timestamp.data(), w.timestamp.data() + w.timestamp.size(), ts);
        bool fresh = tec == std::errc{} && p == w.timestamp.data() + w.timestamp.size() &&
                     std::llabs(ts - w.received_unix_ns / 1000000000) <= state_->options.tolerance.count();
        auto header = request["webhook-signature"];
        std::string_view signatures(header.data(), header.size());
        bool valid = false;
        for (const auto& key : state_->options.keys)
          valid = valid || verify_signature(key, signatures, w.webhook_id, ts, w.body);
        w.signature_valid = fresh && valid;
        ok = *w.signature_valid;
      }
      response_.result(ok ? http::status::ok : http::status::unauthorized);
      response_.body() = ok ? "ok\n" : "invalid signature\n";
      state_->on_webhook(std::move(w));
    }
    response_.prepare_payload();
    http::async_write(stream_, response_, [self = shared_from_this()](error_code wec, std::size_t) {
      if (wec || !self->response_.keep_alive()) {
        error_code ignored;
        self->stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
        return;
      }
      self->read();
    });
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
  std::shared_ptr<const shared_state> state_;
};

class receiver_impl final : public receiver {
 public:
  receiver_impl(executor ex, std::shared_ptr<const shared_state> state)
      : acceptor_(ex), state_(std::move(state)) {
    auto endpoint = parse_listen_address(state_->options.listen);
    error_code ec;
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) throw std::runtime_error("cannot listen on " + state_->options.listen + ": " + ec.message());
  }

  void accept() {
    acceptor_.async_accept([this, alive = alive_](error_code ec, tcp::socket socket) {
      if (!*alive || !acceptor_.is_open()) return;
      if (!ec) {
        socket.set_option(tcp::no_delay(true), ec);
        std::make_shared<session>(std::move(socket), state_)->start();
      }
      accept();
    });
  }

  std::uint16_t port() const override { return acceptor_.local_endpoint().port(); }

  void stop() override {
    error_code ignored;
    acceptor_.close(ignored);
  }

  ~receiver_impl() override {
    *alive_ = false;
    stop();
  }

 private:
  tcp::acceptor acceptor_;
  std::shared_ptr<const shared_state> state_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<receiver> make_receiver(executor ex, const receiver_options& options,
                                        std::function<void(received_webhook)> on_webhook) {
  auto state = std::make_shared<shared_state>();
  state->options = options;
  state->on_webhook = std::move(on_webhook);
  auto r = std::make_unique<receiver_impl>(std::move(ex), std::move(state));
  r->accept();
  return r;
}

}  // namespace appointment_relay
