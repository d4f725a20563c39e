#include "support/tcp_proxy.hpp"

// GCC 12 false positive with sanitizers on: Asio's coroutine frames are reported as mismatched new/delete.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
// And std::regex, under the sanitizers, as maybe-uninitialized (libstdc++ code).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <list>
#include <regex>
#include <stdexcept>

#include "appointment_relay/net.hpp"

namespace appointment_relay::testing {

struct tcp_proxy::impl {
  tcp_proxy& owner;
  std::string host;
  std::uint16_t target_port;
  net::io_context io{1};
  tcp::acceptor acceptor{io};
  steady_timer thawed{io};  // held forwarding waits on it; thaw() cancels it (wakes every waiter)

  // Both sockets of one proxied connection live as long as the proxy: freezing never closes them.
  struct pair {
    tcp::socket client;
    tcp::socket server;
    explicit pair(net::io_context& io) : client(io), server(io) {}
  };
  std::list<pair> pairs;

  impl(tcp_proxy& o, std::string h, std::uint16_t p) : owner(o), host(std::move(h)), target_port(p) {
    thawed.expires_at(steady_timer::time_point::max());
  }

  net::awaitable<void> wait_while_frozen() {
    while (owner.frozen_.load()) {
      error_code ec;
      co_await thawed.async_wait(net::redirect_error(net::use_awaitable, ec));
    }
  }

  net::awaitable<void> pump(tcp::socket& from, tcp::socket& to) {
    std::array<char, 16384> buffer;
    for (;;) {
      co_await wait_while_frozen();
      error_code ec;
      const auto n =
          co_await from.async_read_some(net::buffer(buffer), net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        if (!owner.frozen_.load()) to.shutdown(tcp::socket::shutdown_send, ec);
        co_return;
      }
      co_await wait_while_frozen();  // read before the freeze, held until the thaw
      co_await net::async_write(to, net::buffer(buffer.data(), n),
                                net::redirect_error(net::use_awaitable, ec));
      if (ec) co_return;
    }
  }

  net::awaitable<void> serve(pair& p) {
    co_await wait_while_frozen();  // accepted while frozen: held, not forwarded
    error_code ec;
    co_await p.server.async_connect(tcp::endpoint(net::ip::make_address(host), target_port),
                                    net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      p.client.close(ec);
      co_return;
    }
    p.server.set_option(tcp::no_delay(true), ec);
    p.client.set_option(tcp::no_delay(true), ec);
    net::co_spawn(io, pump(p.client, p.server), net::detached);
    net::co_spawn(io, pump(p.server, p.client), net::detached);
  }

  net::awaitable<void> accept_loop() {
    for (;;) {
      pairs.emplace_back(io);
      auto& p = pairs.back();
      error_code ec;
      co_await acceptor.async_accept(p.client, net::redirect_error(net::use_awaitable, ec));
      if (ec) co_return;
      owner.connections_.fetch_add(1);
      net::co_spawn(io, serve(p), net::detached);
    }
  }
};

tcp_proxy::tcp_proxy(std::string target_host, std::uint16_t target_port)
    : impl_(std::make_unique<impl>(*this, std::move(target_host), target_port)) {
  const tcp::endpoint local(net::ip::make_address("127.0.0.1"), 0);
  impl_->acceptor.open(local.protocol());
  impl_->acceptor.set_option(net::socket_base::reuse_address(true));
  impl_->acceptor.bind(local);
  impl_->acceptor.listen();
  port_ = impl_->acceptor.local_endpoint().port();
  net::co_spawn(impl_->io, impl_->accept_loop(), net::detached);
  thread_ = std::thread([this] { impl_->io.run(); });
}

tcp_proxy::~tcp_proxy() {
  impl_->io.stop();
  if (thread_.joinable()) thread_.join();
  impl_.reset();  // closes every socket (and destroys the suspended coroutines with the io_context)
}

void tcp_proxy::freeze() {
  frozen_ = true;
}

void tcp_proxy::thaw() {
  frozen_ = false;
  net::post(impl_->io, [this] { impl_->thawed.cancel(); });
}

proxied_database proxy_database(const std::string& url) {
  static const std::regex host_port(R"(@([0-9.]+):([0-9]+)/)");
  std::smatch m;
  if (!std::regex_search(url, m, host_port)) throw std::invalid_argument("not a URL with host:port: " + url);
  proxied_database out;
  out.proxy = std::make_unique<tcp_proxy>(m[1].str(), static_cast<std::uint16_t>(std::stoi(m[2].str())));
  out.url = std::regex_replace(url, host_port, "@127.0.0.1:" + std::to_string(out.proxy->port()) + "/");
  return out;
}

}  // namespace appointment_relay::testing
