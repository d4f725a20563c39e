#include "appointment_relay/net.hpp"
//
#include "appointment_relay/admin_server.hpp"

#include "appointment_relay/listen_address.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "appointment_relay/admin_auth.hpp"
#include "appointment_relay/admin_views.hpp"
#include "appointment_relay/metrics.hpp"
#include "appointment_relay/version.hpp"

namespace appointment_relay {
namespace {

constexpr std::uint32_t header_limit = 8 * 1024;
constexpr std::uint64_t body_limit = 1024;
// After an accept error other than cancellation (e.g. out of descriptors), wait before trying again
// instead of spinning.
constexpr auto accept_retry_delay = std::chrono::milliseconds(100);

using response = http::response<http::string_body>;

class session;

// Shared by the accept loop and the sessions; touched only on the executor after start().
struct server_state : std::enable_shared_from_this<server_state> {
  server_state(executor ex, std::string listen, metrics& m, std::function<bool()> ready,
               admin_server_limits limits, std::shared_ptr<admin_worker> worker, admin_api_settings api)
      : ex(ex),
        acceptor(ex),
        retry_timer(ex),
        listen(std::move(listen)),
        m(m),
        ready(std::move(ready)),
        limits(limits),
        worker(std::move(worker)),
        endpoints(std::move(api.endpoints)),
        endpoint_kinds(std::move(api.endpoint_kinds)),
        token(std::move(api.token)) {}

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
  std::shared_ptr<admin_worker> worker;  // null: no API; shut down by ~admin_server_impl, submit then refuses
  std::vector<std::string> endpoints;
  std::map<std::string, std::vector<std::string>> endpoint_kinds;
  std::string token;
  bool stopped = false;
  std::unordered_set<session*> sessions;
};

// A response with a body and its content type.
response make_response(http::status status, unsigned version, std::string content_type, std::string body) {
  response res{status, version};
  res.set(http::field::content_type, std::move(content_type));
  res.body() = std::move(body);
  return res;
}

response text(http::status status, std::string body) {
  return make_response(status, 11, "text/plain; charset=utf-8", std::move(body));
}

response json_response(std::string body) {
  return make_response(http::status::ok, 11, "application/json", std::move(body));
}

response html(http::status status, std::string body) {
  auto res = make_response(status, 11, "text/html; charset=utf-8", std::move(body));
  // No script, no frame, nothing fetched from elsewhere: should a value ever escape the escaping, the
  // browser still runs nothing.
  res.set("Content-Security-Policy",
          "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; "
          "frame-ancestors 'none'");
  res.set("X-Content-Type-Options", "nosniff");
  res.set("Referrer-Policy", "no-referrer");
  return res;
}

// "/events/42" with prefix "/events/": 42; nothing for anything else.
std::optional<std::int64_t> id_after(std::string_view path, std::string_view prefix) {
  if (!path.starts_with(prefix)) return std::nullopt;
  path.remove_prefix(prefix.size());
  std::int64_t id = 0;
  auto [p, ec] = std::from_chars(path.data(), path.data() + path.size(), id);
  if (path.empty() || ec != std::errc{} || p != path.data() + path.size() || id <= 0) return std::nullopt;
  return id;
}

// The endpoints a request reports on, as configured when it came (a copy: the worker reads it).
struct api_scope {
  std::vector<std::string> endpoints;
  std::map<std::string, std::vector<std::string>> kinds;
};

// How many failures the status page lists.
constexpr std::size_t page_failures = 20;

// The status page's reads; on the worker's thread.
response status_page_response(admin_data& db, const std::vector<std::string>& endpoints,
                              const std::map<std::string, std::vector<std::string>>& kinds,
                              bool database_up) {
  status_page page;
  page.endpoints = db.status(endpoints);
  page.database_up = database_up;
  page.now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  page.version = version;
  try {
    for (const char* state : {"dead", "retrying"}) {
      event_filter f;
      f.state = state;
      f.limit = page_failures;
      f.endpoint_kinds = kinds;
      auto some = db.events(f, endpoints);
      page.failures.insert(page.failures.end(), some.begin(), some.end());
    }
    std::sort(page.failures.begin(), page.failures.end(), [](const event_summary& a, const event_summary& b) {
      return std::pair(a.last_attempt_ms.value_or(0), a.id) > std::pair(b.last_attempt_ms.value_or(0), b.id);
    });
    if (page.failures.size() > page_failures) page.failures.resize(page_failures);
  } catch (const std::exception& e) {
    // The endpoints are still worth showing.
    page.failures.clear();
    page.failures_error = std::string("the failed events could not be read: ") + e.what();
  }
  return html(http::status::ok, render_status_page(page));
}

// One connection: read a request (deadline, size limits), answer it, repeat while keep-alive.
class session : public std::enable_shared_from_this<session> {
 public:
  session(tcp::socket socket, std::shared_ptr<server_state> server)
      : stream_(std::move(socket)), api_timer_(server->ex), server_(std::move(server)) {
    server_->sessions.insert(this);
  }
  ~session() { server_->sessions.erase(this); }

  void run() { do_read(); }

  void close() {
    error_code ignored;  // the peer may be gone already; nothing to do about it
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    api_timer_.cancel();
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
    auto& req = parser_->get();
    if (auto res = handle(req)) {
      res->version(req.version());
      res->keep_alive(req.keep_alive());
      respond(std::move(*res));
    }
  }

  http::response<http::string_body> error_response(http::status status, std::string body) {
    http::response<http::string_body> res{status, 11};
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    res.keep_alive(false);
    res.body() = std::move(body);
    return res;
  }

  // The response, or nothing when the request went to the worker (answer() responds then).
  std::optional<response> handle(const http::request<http::string_body>& req) {
    std::string_view target(req.target().data(), req.target().size());
    const auto question = target.find('?');
    const std::string_view path = target.substr(0, question);
    const std::string_view query = question == std::string_view::npos ? "" : target.substr(question + 1);
    if (req.method() != http::verb::get) {
      auto res = text(http::status::method_not_allowed, "method not allowed\n");
      res.set(http::field::allow, "GET");
      return res;
    }
    const auto authorization = req[http::field::authorization];
    const auto access =
        access_for(path, std::string_view(authorization.data(), authorization.size()), server_->token);
    if (access == admin_access::denied) {
      auto res = text(http::status::unauthorized, "a bearer token is required (admin.token_file)\n");
      res.set(http::field::www_authenticate, "Bearer realm=\"appointment-relay\"");
      return res;
    }
    if (path == "/healthz") return text(http::status::ok, "ok\n");
    if (path == "/readyz") {
      if (server_->ready()) return text(http::status::ok, "ready\n");
      return text(http::status::service_unavailable, "not ready: database not connected\n");
    }
    if (path == "/metrics") {
      auto res = text(http::status::ok, server_->m.render());
      res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      return res;
    }
    if (server_->worker) return handle_api(path, query, access == admin_access::token_holder);
    return text(http::status::not_found, "not found\n");
  }

  // The routes that read the database: each becomes a job for the worker. Nothing when the request went
  // there (or was answered 503 at once, the queue being full); a response for a bad request or an unknown
  // path.
  std::optional<response> handle_api(std::string_view path, std::string_view query, bool token_holder) {
    using produce_fn = std::function<response(admin_data&, const api_scope&)>;
    produce_fn produce;
    const bool database_up = server_->ready();
    if (path == "/" || path == "/index.html") {
      produce = [database_up](admin_data& db, const api_scope& scope) {
        return status_page_response(db, scope.endpoints, scope.kinds, database_up);
      };
    } else if (path == "/api/status" || path == "/api/endpoints") {
      produce = [](admin_data& db, const api_scope& scope) {
        return json_response(status_json(db.status(scope.endpoints)));
      };
    } else if (path.starts_with("/api/endpoints/")) {
      std::string name(path.substr(15));
      const auto& known = server_->endpoints;
      if (std::find(known.begin(), known.end(), name) == known.end())
        return text(http::status::not_found, "no such endpoint in the configuration\n");
      produce = [name](admin_data& db, const api_scope&) {
        auto report = db.status({name});
        if (report.empty()) return text(http::status::not_found, "no such endpoint\n");
        return json_response(endpoint_status_json(report.front()));
      };
    } else if (path == "/api/events") {
      auto parsed = parse_event_query(query);
      if (auto* err = std::get_if<std::string>(&parsed)) return text(http::status::bad_request, *err + "\n");
      produce = [filter = std::get<event_filter>(parsed)](admin_data& db, const api_scope& scope) mutable {
        filter.endpoint_kinds = scope.kinds;
        return json_response(events_json(db.events(filter, scope.endpoints)));
      };
    } else if (auto id = id_after(path, "/api/events/")) {
      produce = [id = *id, token_holder](admin_data& db, const api_scope& scope) {
        auto detail = db.event(id, scope.endpoints, scope.kinds);
        if (detail.empty()) return text(http::status::not_found, "no such event\n");
        return json_response(event_json(id, detail, token_holder));
      };
    } else if (auto page_id = id_after(path, "/events/")) {
      produce = [id = *page_id, token_holder](admin_data& db, const api_scope& scope) {
        auto detail = db.event(id, scope.endpoints, scope.kinds);
        return html(detail.empty() ? http::status::not_found : http::status::ok,
                    render_event_page(id, detail, token_holder, version));
      };
    } else {
      return text(http::status::not_found, "not found\n");
    }
    query_worker(std::move(produce));
    return std::nullopt;
  }

  // Hands produce to the worker; its response (or a 503) comes back through answer() on the executor. The
  // job holds only a weak reference: the session must never be destroyed on the worker's thread. The
  // timer's handler keeps the session alive until the answer or the timeout.
  void query_worker(std::function<response(admin_data&, const api_scope&)> produce) {
    res_pending_ = true;
    const auto request = ++request_no_;
    std::weak_ptr<session> weak = shared_from_this();
    auto ex = server_->ex;
    auto post = [weak, ex, request](std::shared_ptr<response> res) {
      net::post(ex, [weak, request, res] {
        if (auto self = weak.lock()) self->answer(request, std::move(*res));
      });
    };
    admin_job job;
    job.run = [produce = std::move(produce), scope = api_scope{server_->endpoints, server_->endpoint_kinds},
               post](admin_data& db) { post(std::make_shared<response>(produce(db, scope))); };
    job.fail = [post](const std::string& error) {
      post(std::make_shared<response>(
          text(http::status::service_unavailable, "the database cannot be read now: " + error + "\n")));
    };
    if (!server_->worker->submit(std::move(job))) {
      res_pending_ = false;
      return respond_api(text(http::status::service_unavailable, "busy: too many requests waiting\n"));
    }
    api_timer_.expires_after(server_->limits.api_timeout);
    api_timer_.async_wait([self = shared_from_this(), request](error_code ec) {
      if (ec || self->server_->stopped || request != self->request_no_ || !self->res_pending_) return;
      self->answer(request, text(http::status::service_unavailable,
                                 "the database did not answer in time: try again\n"));
    });
  }

  void answer(std::uint64_t request, response res) {
    if (server_->stopped || request != request_no_ || !res_pending_) return;  // late: 503 went out already
    res_pending_ = false;
    api_timer_.cancel();
    respond_api(std::move(res));
  }

  void respond_api(response res) {
    const auto& req = parser_->get();
    res.version(req.version());
    res.keep_alive(req.keep_alive());
    respond(std::move(res));
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
  steady_timer api_timer_;                                         // the deadline of a request at the worker
  std::uint64_t request_no_ = 0;  // which request an answer from the worker is for
  bool res_pending_ = false;      // a request is at the worker
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
                    admin_api_settings api, admin_server_limits limits)
      : worker_(api.data ? std::make_shared<admin_worker>(std::move(api.data), limits.api_queue) : nullptr),
        state_(std::make_shared<server_state>(ex, std::move(listen), m, std::move(ready), limits, worker_,
                                              std::move(api))) {}
  ~admin_server_impl() override {
    stop();
    // Sessions may outlive this (their handlers hold the state), but no job runs after it: the executor
    // never sees an answer from a worker that is gone.
    if (worker_) worker_->shutdown();
  }

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
    if (state_->token.empty() && !is_loopback_listen(state_->listen))
      throw std::runtime_error("admin server: " + state_->listen +
                               " is not a loopback address: set admin.token_file to listen there");
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

  void set_endpoints(std::vector<std::string> endpoints,
                     std::map<std::string, std::vector<std::string>> endpoint_kinds) override {
    net::dispatch(state_->ex, [state = state_, endpoints = std::move(endpoints),
                               kinds = std::move(endpoint_kinds)]() mutable {
      state->endpoints = std::move(endpoints);
      state->endpoint_kinds = std::move(kinds);
    });
  }

 private:
  std::shared_ptr<admin_worker> worker_;
  std::shared_ptr<server_state> state_;
  std::atomic<bool> started_{false};
  std::atomic<std::uint16_t> port_{0};
};

}  // namespace

std::unique_ptr<admin_server> make_admin_server(executor ex, std::string listen, metrics& m,
                                                std::function<bool()> ready, admin_server_limits limits) {
  return make_admin_server(std::move(ex), std::move(listen), m, std::move(ready), admin_api_settings{},
                           limits);
}

std::unique_ptr<admin_server> make_admin_server(executor ex, std::string listen, metrics& m,
                                                std::function<bool()> ready, admin_api_settings api,
                                                admin_server_limits limits) {
  return std::make_unique<admin_server_impl>(std::move(ex), std::move(listen), m, std::move(ready),
                                             std::move(api), limits);
}

}  // namespace appointment_relay
