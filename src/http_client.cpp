#include "appointment_relay/http_client.hpp"

// GCC 12 false positives with sanitizers on: Asio's coroutine frames (allocated and freed by Asio's own
// operator new/delete pair) are reported as mismatched, and Beast 1.74's parser's optional body limit as
// maybe-uninitialized. Both are in Boost code instantiated here.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <deque>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>

#include <openssl/ssl.h>

#include "appointment_relay/json_escape.hpp"

namespace appointment_relay {
namespace {

using clock = std::chrono::steady_clock;
using io_executor = executor;  // the io_context's own executor type (net.hpp says why)
using plain_stream = beast::basic_stream<tcp, io_executor>;
using tls_stream = beast::ssl_stream<plain_stream>;
template <class T>
using task = net::awaitable<T, io_executor>;
constexpr net::use_awaitable_t<io_executor> use_task;

// Resolved addresses are kept this long: no resolver round trip per connection.
constexpr auto resolve_cache_ttl = std::chrono::seconds(60);
// A graceful TLS close_notify exchange on close() may take at most this long.
constexpr auto tls_shutdown_timeout = std::chrono::seconds(1);

using request_id = http_client::request_id;

struct pending {
  request_id id = 0;  // 0: none (a connection with no request)
  std::string body;
  header_list headers;
  std::function<void(http_response_info)> done;
};

bool is_ip_literal(const std::string& host) {
  error_code ec;
  net::ip::make_address(host, ec);
  return !ec;
}

bool iequals(std::string_view a, std::string_view b) {
  return beast::iequals(beast::string_view(a.data(), a.size()), beast::string_view(b.data(), b.size()));
}

// Transport errors in the short words the retry policy and the logs use.
std::string describe(const error_code& ec) {
  if (ec == beast::error::timeout) return "timeout";
  if (ec == net::error::connection_refused) return "connection refused";
  if (ec == net::error::connection_reset || ec == net::error::broken_pipe) return "connection reset";
  if (ec == http::error::end_of_stream || ec == net::error::eof) return "end of stream";
  // The peer closed the TCP connection without a TLS close_notify: for us the same as end of stream.
  if (ec == ssl::error::stream_truncated) return "end of stream";
  if (ec == http::error::body_limit) return "body too large";
  if (ec.category() == http::make_error_code(http::error::bad_status).category())
    return "http parse: " + ec.message();
  if (ec.category() == net::error::get_ssl_category()) return "tls: " + ec.message();
  return ec.message();
}

// Errors that, on a reused keep-alive connection with no response byte read yet, mean the server had
// already closed it while it was idle: the request was not processed and goes again on a fresh connection.
bool stale_connection(const error_code& ec) {
  return ec == http::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset ||
         ec == net::error::broken_pipe || ec == ssl::error::stream_truncated;
}

// More interim responses than this before the final one: the server is not speaking HTTP we can use.
constexpr int max_interim_responses = 32;

std::vector<tcp::endpoint> system_resolve(const std::string& host, const std::string& port, error_code& ec) {
  // A synchronous resolve calls getaddrinfo on the calling thread (the lookup thread): no io_context
  // machinery runs, this one only satisfies the resolver's constructor.
  net::io_context io;
  tcp::resolver resolver(io);
  auto results = resolver.resolve(host, port, ec);
  std::vector<tcp::endpoint> out;
  if (!ec) {
    for (const auto& r : results) out.push_back(r.endpoint());
  }
  return out;
}

// Shared by a client and its lookup threads. A lookup thread may outlive the client (a getaddrinfo that
// never returns): it then must not touch the client or its executor, whose io_context may be gone.
struct lookup_link {
  std::mutex mutex;
  bool client_gone = false;  // under mutex; set by the client's destructor
};

// A request waiting for the client's lookup; lives on that request's coroutine frame.
struct lookup_waiter {
  steady_timer* wake = nullptr;  // expires at the request's deadline; cancelled when the lookup ends
  bool finished = false;         // the lookup ended (error says how)
  std::string error;
};

template <class Stream>
struct connection {
  std::optional<Stream> stream;
  bool open = false;       // connected (and TLS handshake done): may be reused
  bool busy = false;       // a coroutine owns it
  bool cancelled = false;  // cancel() gave up on job: its socket was aborted (or its lookup wait ended)
  pending job;             // the request in flight on it (job.id 0: none)
  lookup_waiter* waiting = nullptr;  // job's wait for a name lookup, if any
  beast::flat_buffer buffer;
  std::string wire;  // the request being sent, serialised in full (its capacity is reused)
};

template <class Stream>
class client final : public http_client, public std::enable_shared_from_this<client<Stream>> {
  static constexpr bool tls = std::is_same_v<Stream, tls_stream>;

 public:
  client(executor ex, url endpoint, http_client_options options, std::shared_ptr<ssl::context> ctx)
      : ex_(std::move(ex)),
        endpoint_(std::move(endpoint)),
        options_(std::move(options)),
        ctx_(std::move(ctx)),
        port_text_(std::to_string(endpoint_.port)),
        host_header_(endpoint_.host_header()),
        host_is_ip_(is_ip_literal(endpoint_.host)),
        lookup_link_(std::make_shared<lookup_link>()) {
    if (options_.max_connections < 1) options_.max_connections = 1;
    if (!options_.resolve) options_.resolve = system_resolve;
    if (host_is_ip_) {
      endpoints_.emplace_back(net::ip::make_address(endpoint_.host), endpoint_.port);
      endpoints_expiry_ = clock::time_point::max();
    }
  }

  ~client() override {
    std::lock_guard lock(lookup_link_->mutex);
    lookup_link_->client_gone = true;
  }

  request_id post(std::string body, header_list headers,
                  std::function<void(http_response_info)> done) override {
    const request_id id = next_id_++;
    if (closed_) {
      fail_later(std::move(done), "shutting down");
      return id;
    }
    queue_.push_back(pending{id, std::move(body), std::move(headers), std::move(done)});
    pump();
    return id;
  }

  void cancel(request_id id) override {
    if (id == 0) return;
    for (auto& c : connections_) {
      if (c->job.id != id) continue;
      if (c->cancelled) return;
      c->cancelled = true;
      abort(*c);
      return;
    }
    // Not in flight: queued, or unknown/finished. A cancel usually concerns the oldest requests.
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (it->id != id) continue;
      auto done = std::move(it->done);
      queue_.erase(it);
      fail_later(std::move(done), "cancelled");
      return;
    }
  }

  std::size_t outstanding() const noexcept override { return queue_.size() + in_flight_; }

  void close() override {
    if (closed_) return;
    closed_ = true;
    std::deque<pending> queued;
    queued.swap(queue_);
    for (pending& p : queued) fail_later(std::move(p.done), "shutting down");
    for (auto& c : connections_) {
      if (c->busy || !c->open) continue;  // in-flight requests finish; their coroutine closes afterwards
      if constexpr (tls) {
        c->busy = true;
        spawn(shutdown_tls(this->shared_from_this(), c.get()), c.get());
      } else {
        drop(*c);
      }
    }
  }

 private:
  void fail_later(std::function<void(http_response_info)> done, const char* why) {
    // Posted, not called here: the caller may be inside post(), cancel() or close() and not expect re-entry.
    net::post(ex_, [done = std::move(done), why]() mutable {
      http_response_info info;
      info.error = why;
      try {
        done(std::move(info));
      } catch (...) {
      }
    });
  }

  // Runs a coroutine that owns connection c. Should anything escape it, c is freed and its request (if
  // any) ends with an error: a detached coroutine's exception would otherwise vanish with the connection
  // left busy forever and done never called.
  template <class Task>
  void spawn(Task work, connection<Stream>* c) {
    net::co_spawn(ex_, std::move(work), [self = this->shared_from_this(), c](std::exception_ptr e) {
      if (e) self->recover(*c, e);
    });
  }

  void recover(connection<Stream>& c, std::exception_ptr e) {
    drop(c);
    if (c.job.id != 0) {
      finish(c, internal_error(e));
    }
    c.busy = false;
    pump();
  }

  static http_response_info internal_error(std::exception_ptr e) {
    http_response_info info;
    info.error = "internal error";
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      info.error += ": ";
      info.error += x.what();
    } catch (...) {
    }
    return info;
  }

  // Ends c's request: done is called once, after c no longer names it (done may post or cancel again).
  void finish(connection<Stream>& c, http_response_info info) {
    if (c.cancelled) {
      // Whatever the exchange ended with, the request was given up on: it is reported as such.
      info = http_response_info{};
      info.error = "cancelled";
    }
    auto done = std::move(c.job.done);
    c.job.id = 0;
    c.job.done = nullptr;
    c.cancelled = false;
    --in_flight_;
    try {
      done(std::move(info));
    } catch (...) {
      // A callback must not throw; if one does, the other requests still complete.
    }
  }

  // Aborts c's request at once: the socket is reset (SO_LINGER 0) so nothing more of it is sent, and a
  // wait for a name lookup ends. The connection's coroutine then sees the failure and ends the request.
  void abort(connection<Stream>& c) {
    if (c.stream) {
      auto& socket = beast::get_lowest_layer(*c.stream).socket();
      error_code ignored;
      if (socket.is_open()) {
        socket.set_option(net::socket_base::linger(true, 0), ignored);
        socket.close(ignored);
      }
    }
    c.open = false;
    if (c.waiting && c.waiting->wake) c.waiting->wake->cancel();
  }

  // Hands queued requests to idle connections (reusing open ones first) or new ones up to the cap.
  void pump() {
    while (!queue_.empty() && !closed_) {
      connection<Stream>* chosen = nullptr;
      for (auto& c : connections_) {
        if (c->busy) continue;
        if (c->open) {
          chosen = c.get();
          break;
        }
        if (!chosen) chosen = c.get();
      }
      if (!chosen) {
        if (connections_.size() >= static_cast<std::size_t>(options_.max_connections)) return;
        connections_.push_back(std::make_unique<connection<Stream>>());
        chosen = connections_.back().get();
      }
      chosen->busy = true;
      chosen->job = std::move(queue_.front());
      queue_.pop_front();
      ++in_flight_;
      try {
        spawn(run(this->shared_from_this(), chosen), chosen);
      } catch (...) {
        // Later, not here: pump() runs inside post() and in callbacks, where done must not be called.
        net::post(ex_, [self = this->shared_from_this(), chosen, e = std::current_exception()] {
          self->recover(*chosen, e);
        });
        return;
      }
    }
  }

  // One connection works through the queue, one request at a time, until the queue is empty.
  task<void> run(std::shared_ptr<client> self, connection<Stream>* c) {
    for (;;) {
      const clock::time_point taken = clock::now();
      http_response_info info;
      try {
        info = co_await exchange(*c, c->job, taken + options_.request_timeout);
      } catch (...) {
        drop(*c);
        info = internal_error(std::current_exception());
      }
      info.latency = std::chrono::duration_cast<std::chrono::microseconds>(clock::now() - taken);
      if (c->cancelled) drop(*c);
      finish(*c, std::move(info));
      if (closed_ || queue_.empty()) break;
      c->job = std::move(queue_.front());
      queue_.pop_front();
      ++in_flight_;
    }
    c->busy = false;
    if (closed_ && c->open) {
      if constexpr (tls) {
        c->busy = true;
        co_await shutdown_tls(std::move(self), c);
      } else {
        drop(*c);
      }
    }
  }

  // The request in one flat buffer: one contiguous write per request, rather than Beast's serializer
  // walking a sequence of header and body buffers (a measurable share of the relay's CPU per event).
  // An extra header named like a fixed one (Host, User-Agent, Content-Type) replaces it.
  void set_request(connection<Stream>& c, pending& p) {
    auto overridden = [&](std::string_view fixed) {
      return std::any_of(p.headers.begin(), p.headers.end(),
                         [&](const auto& h) { return iequals(h.first, fixed); });
    };
    auto& w = c.wire;
    w.clear();
    w.append("POST ").append(endpoint_.target).append(" HTTP/1.1\r\n");
    if (!overridden("host")) w.append("Host: ").append(host_header_).append("\r\n");
    if (!options_.user_agent.empty() && !overridden("user-agent"))
      w.append("User-Agent: ").append(options_.user_agent).append("\r\n");
    if (!overridden("content-type")) w.append("Content-Type: application/json\r\n");
    for (const auto& [name, value] : p.headers) w.append(name).append(": ").append(value).append("\r\n");
    w.append("Content-Length: ").append(std::to_string(p.body.size())).append("\r\n\r\n");
    w.append(p.body);
  }

  // After every suspension: a cancelled request ends here (cancel() already aborted the socket), and in
  // particular is never sent again on a fresh connection.
  task<http_response_info> exchange(connection<Stream>& c, pending& p, clock::time_point deadline) {
    http_response_info info;
    for (const auto& [name, value] : p.headers) {
      if (name.empty() || name.find_first_of(": \r\n") != std::string::npos ||
          value.find_first_of("\r\n") != std::string::npos) {
        info.error = "invalid header " + (name.find_first_of("\r\n") == std::string::npos ? name : "name");
        co_return info;
      }
    }
    set_request(c, p);
    error_code ec;
    for (int attempt = 0;; ++attempt) {
      const bool reused = c.open;
      if (!c.open) {
        std::string error = co_await open_connection(c, deadline);
        if (!error.empty() || c.cancelled) {
          info.error = std::move(error);
          co_return info;
        }
      }
      auto& lowest = beast::get_lowest_layer(*c.stream);
      lowest.expires_at(deadline);
      co_await net::async_write(*c.stream, net::buffer(c.wire), net::redirect_error(use_task, ec));
      if (ec || c.cancelled) {
        drop(c);
        if (reused && attempt == 0 && stale_connection(ec) && !c.cancelled) continue;
        info.error = describe(ec);
        co_return info;
      }
      // Interim responses (100 Continue, 102 Processing, 103 Early Hints) come before the final one: each is
      // read and dropped; taking one for the answer would leave the connection a response out of step.
      std::optional<http::response_parser<http::string_body>> parser;
      bool nothing_read = true;
      for (int interim = 0;; ++interim) {
        parser.emplace();
        parser->body_limit(options_.body_limit);
        co_await http::async_read_header(*c.stream, c.buffer, *parser, net::redirect_error(use_task, ec));
        if (ec || c.cancelled) break;
        nothing_read = false;
        const unsigned status = parser->get().result_int();
        if (status < 100 || status > 199) break;
        if (status == 101) {
          drop(c);
          info.error = "unexpected 101 Switching Protocols";
          co_return info;
        }
        if (interim >= max_interim_responses) {
          drop(c);
          info.error = "too many interim responses";
          co_return info;
        }
      }
      if (!ec && !c.cancelled) {
        // Beast 1.74 does not apply body_limit to a response's Content-Length (a request's it does): check
        // it here, before the body is read. Chunked and read-to-eof bodies are limited by the parser itself.
        if (parser->content_length() && *parser->content_length() > options_.body_limit)
          ec = http::error::body_limit;
        if (!ec && !parser->is_done())
          co_await http::async_read(*c.stream, c.buffer, *parser, net::redirect_error(use_task, ec));
      }
      if (ec || c.cancelled) {
        nothing_read = nothing_read && !parser->got_some() && c.buffer.size() == 0;
        drop(c);
        if (reused && attempt == 0 && nothing_read && stale_connection(ec) && !c.cancelled) continue;
        info.error = describe(ec);
        co_return info;
      }
      lowest.expires_never();
      const auto& res = parser->get();
      info.status = static_cast<int>(res.result_int());
      if (auto it = res.find(http::field::retry_after); it != res.end())
        info.retry_after = std::string(it->value());
      if (info.status < 200 || info.status > 299)
        info.body_prefix = valid_utf8(res.body(), body_prefix_limit);
      // The server closes after this response: so do we (the next request reconnects).
      if (!res.keep_alive()) drop(c);
      co_return info;
    }
  }

  // Resolve (cached), connect, TLS handshake. An empty string on success, the error text otherwise.
  task<std::string> open_connection(connection<Stream>& c, clock::time_point deadline) {
    error_code ec;
    if (endpoints_.empty() || clock::now() >= endpoints_expiry_) {
      std::string error = co_await resolve(c, deadline);
      if (!error.empty() || c.cancelled) co_return error;
    }
    if constexpr (tls) {
      c.stream.emplace(ex_, *ctx_);
    } else {
      c.stream.emplace(ex_);
    }
    c.buffer.clear();
    auto& lowest = beast::get_lowest_layer(*c.stream);
    lowest.expires_at(deadline);
    co_await lowest.async_connect(endpoints_, net::redirect_error(use_task, ec));
    if (ec || c.cancelled) {
      // A failed connect may mean the cached address is stale: resolve again next time.
      if (!host_is_ip_ && !c.cancelled) endpoints_expiry_ = clock::time_point::min();
      c.stream.reset();
      co_return describe(ec);
    }
    lowest.socket().set_option(tcp::no_delay(true), ec);
    if constexpr (tls) {
      if (!host_is_ip_) {
        // SNI; never for an IP address (RFC 6066).
        SSL_set_tlsext_host_name(c.stream->native_handle(), endpoint_.host.c_str());
      }
      if (options_.tls.verify_peer)
        c.stream->set_verify_callback(ssl::host_name_verification(endpoint_.host));
      co_await c.stream->async_handshake(ssl::stream_base::client, net::redirect_error(use_task, ec));
      if (ec || c.cancelled) {
        c.stream.reset();
        if (ec == beast::error::timeout) co_return std::string("timeout");
        co_return "tls handshake: " +
            (ec.category() == net::error::get_ssl_category() ? ec.message() : describe(ec));
      }
    }
    c.open = true;
    co_return std::string();
  }

  // Waits for the client's lookup (starting one if none is running) until the request's own deadline.
  // Another request's deadline or cancel ends only that request's wait, never the lookup.
  task<std::string> resolve(connection<Stream>& c, clock::time_point deadline) {
    steady_timer wake(ex_);
    wake.expires_at(deadline);
    lookup_waiter me;
    me.wake = &wake;
    waiters_.push_back(&me);
    c.waiting = &me;
    if (!lookup_running_) start_lookup();
    error_code ec;
    if (!me.finished) co_await wake.async_wait(net::redirect_error(use_task, ec));
    c.waiting = nullptr;
    if (!me.finished) waiters_.erase(std::find(waiters_.begin(), waiters_.end(), &me));
    if (c.cancelled) co_return std::string("cancelled");
    if (me.finished) co_return std::move(me.error);
    co_return std::string("timeout");
  }

  // One blocking lookup on a detached thread of its own, which holds only the link (not the client): if the
  // lookup never returns, the thread stays behind and the client goes on without it.
  void start_lookup() {
    lookup_running_ = true;
    try {
      std::thread([link = lookup_link_, ex = ex_, owner = this->weak_from_this(), lookup = options_.resolve,
                   host = endpoint_.host, port = port_text_] {
        error_code ec;
        std::vector<tcp::endpoint> found;
        std::string failure;
        try {
          found = lookup(host, port, ec);
        } catch (const std::exception& e) {
          failure = e.what();
        } catch (...) {
          failure = "unknown exception";
        }
        std::lock_guard lock(link->mutex);
        if (link->client_gone) return;  // the client, and maybe its io_context, are gone
        net::post(ex, [owner, found = std::move(found), ec, failure = std::move(failure)]() mutable {
          if (auto self = owner.lock()) self->lookup_done(std::move(found), ec, failure);
        });
      }).detach();
    } catch (const std::exception& e) {
      lookup_done({}, {}, e.what());
    }
  }

  void lookup_done(std::vector<tcp::endpoint> found, error_code ec, const std::string& failure) {
    lookup_running_ = false;
    std::string error;
    if (!failure.empty()) {
      error = "resolve: " + failure;
    } else if (ec) {
      error = "resolve: " + ec.message();
    } else if (found.empty()) {
      error = "resolve: no address";
    } else {
      endpoints_ = std::move(found);
      endpoints_expiry_ = clock::now() + resolve_cache_ttl;
    }
    for (lookup_waiter* w : waiters_) {
      w->finished = true;
      w->error = error;
      w->wake->cancel();
    }
    waiters_.clear();
  }

  void drop(connection<Stream>& c) {
    if (c.stream) {
      error_code ignored;
      beast::get_lowest_layer(*c.stream).socket().close(ignored);
      c.stream.reset();
    }
    c.open = false;
    c.buffer.clear();
  }

  task<void> shutdown_tls(std::shared_ptr<client> self, connection<Stream>* c) {
    if constexpr (tls) {
      error_code ec;
      beast::get_lowest_layer(*c->stream).expires_after(tls_shutdown_timeout);
      co_await c->stream->async_shutdown(net::redirect_error(use_task, ec));
      // Any error is fine here: stream_truncated (the server closed the TCP connection without answering our
      // close_notify, which many servers do) and eof mean the same as success; the socket is closed anyway.
    }
    drop(*c);
    c->busy = false;
    (void)self;
  }

  io_executor ex_;
  url endpoint_;
  http_client_options options_;
  std::shared_ptr<ssl::context> ctx_;
  std::string port_text_;
  std::string host_header_;
  bool host_is_ip_ = false;
  std::vector<tcp::endpoint> endpoints_;
  clock::time_point endpoints_expiry_{};
  std::shared_ptr<lookup_link> lookup_link_;
  bool lookup_running_ = false;
  std::vector<lookup_waiter*> waiters_;  // requests waiting for the running lookup
  std::deque<pending> queue_;
  std::vector<std::unique_ptr<connection<Stream>>> connections_;
  std::size_t in_flight_ = 0;
  request_id next_id_ = 1;
  bool closed_ = false;
};

std::shared_ptr<ssl::context> make_tls_context(const tls_settings& settings) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                   ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  const auto load = [](const std::string& what, const std::string& file, auto&& fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      throw std::runtime_error("cannot load TLS " + what + " '" + file + "': " + e.what());
    }
  };
  if (settings.verify_peer) {
    ctx->set_verify_mode(ssl::verify_peer);
    if (settings.ca_file.empty()) {
      load("trust store", "(system default)", [&] { ctx->set_default_verify_paths(); });
    } else {
      load("CA file", settings.ca_file, [&] { ctx->load_verify_file(settings.ca_file); });
    }
  } else {
    ctx->set_verify_mode(ssl::verify_none);
  }
  if (settings.client_cert_file.empty() != settings.client_key_file.empty())
    throw std::runtime_error("TLS client certificate and key must be given together");
  if (!settings.client_cert_file.empty()) {
    load("client certificate", settings.client_cert_file,
         [&] { ctx->use_certificate_chain_file(settings.client_cert_file); });
    load("client key", settings.client_key_file,
         [&] { ctx->use_private_key_file(settings.client_key_file, ssl::context::pem); });
  }
  return ctx;
}

}  // namespace

std::shared_ptr<http_client> make_http_client(executor ex, url endpoint, http_client_options options) {
  if (endpoint.tls) {
    auto ctx = make_tls_context(options.tls);
    return std::make_shared<client<tls_stream>>(std::move(ex), std::move(endpoint), std::move(options),
                                                std::move(ctx));
  }
  return std::make_shared<client<plain_stream>>(std::move(ex), std::move(endpoint), std::move(options),
                                                nullptr);
}

}  // namespace appointment_relay
