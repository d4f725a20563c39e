#include "appointment_relay/admin_server.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "appointment_relay/metrics.hpp"

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;

// A client connection with a deadline on every step, run on its own io_context in the test thread.
class client {
 public:
  explicit client(std::uint16_t port, const char* host = "127.0.0.1") : stream_(io_) {
    stream_.expires_after(5s);
    error_code ec = net::error::would_block;
    stream_.async_connect(tcp::endpoint(net::ip::make_address(host), port), [&](error_code e) { ec = e; });
    run();
    connect_error = ec;
  }

  // Sends a request and reads the response; nullopt when the connection ends (or times out) instead.
  std::optional<http::response<http::string_body>> request(http::verb method, std::string target,
                                                           bool keep_alive = true, std::string body = {}) {
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (!authorization.empty()) req.set(http::field::authorization, authorization);
    req.keep_alive(keep_alive);
    if (!body.empty()) {
      req.body() = std::move(body);
      req.prepare_payload();
    }
    stream_.expires_after(5s);
    error_code ec = net::error::would_block;
    http::async_write(stream_, req, [&](error_code e, std::size_t) { ec = e; });
    run();
    if (ec) return std::nullopt;
    return read_response();
  }

  std::optional<http::response<http::string_body>> read_response(std::chrono::seconds deadline = 5s) {
    http::response<http::string_body> res;
    stream_.expires_after(deadline);
    error_code ec = net::error::would_block;
    http::async_read(stream_, buffer_, res, [&](error_code e, std::size_t) { ec = e; });
    run();
    last_error = ec;
    if (ec) return std::nullopt;
    return res;
  }

  // True when the server closes the connection (EOF or reset) within the deadline, without sending data.
  bool closed_by_server(std::chrono::seconds deadline = 5s) {
    char byte;
    stream_.expires_after(deadline);
    error_code ec = net::error::would_block;
    stream_.async_read_some(net::buffer(&byte, 1), [&](error_code e, std::size_t) { ec = e; });
    run();
    return ec == net::error::eof || ec == net::error::connection_reset;
  }

  error_code connect_error;
  error_code last_error;
  std::string authorization;  // sent as the Authorization header when set

 private:
  void run() {
    io_.restart();
    io_.run();
  }
  net::io_context io_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
};

// The server under test on its own io thread, as in the daemon.
class admin_server_fixture : public ::testing::Test {
 protected:
  void start(admin_server_limits limits = {}) {
    server_ = make_admin_server(
        io_.get_executor(), "127.0.0.1:0", metrics_, [this] { return ready_.load(); }, limits);
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    if (server_) server_->stop();
    work_.reset();
    // stop() closed every connection, so nothing is left to run and the io thread ends on its own.
    thread_.join();
    server_.reset();
  }

  net::io_context io_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_{io_.get_executor()};
  metrics metrics_;
  std::atomic<bool> ready_{false};
  std::unique_ptr<admin_server> server_;
  std::thread thread_;
};

using admin_server_test = admin_server_fixture;

TEST_F(admin_server_test, should_answer_the_routes) {
  start();
  ASSERT_NE(server_->port(), 0);
  metrics_.attempt("crm", "appointment.created");

  const struct {
    http::verb method;
    const char* target;
    http::status status;
    const char* body;  // exact, or nullptr to skip
  } cases[] = {
      {http::verb::get, "/healthz", http::status::ok, "ok\n"},
      {http::verb::get, "/healthz?verbose=1", http::status::ok, "ok\n"},
      {http::verb::get, "/readyz", http::status::service_unavailable, "not ready: database not connected\n"},
      {http::verb::get, "/metrics", http::status::ok, nullptr},
      {http::verb::get, "/", http::status::not_found, nullptr},
      {http::verb::get, "/metricsx", http::status::not_found, nullptr},
      {http::verb::post, "/healthz", http::status::method_not_allowed, nullptr},
      {http::verb::delete_, "/metrics", http::status::method_not_allowed, nullptr},
  };
  client c(server_->port());
  ASSERT_FALSE(c.connect_error) << c.connect_error.message();
  for (const auto& tc : cases) {  // all on one keep-alive connection
    auto res = c.request(tc.method, tc.target);
    ASSERT_TRUE(res) << tc.target << ": " << c.last_error.message();
    EXPECT_EQ(res->result(), tc.status) << tc.target;
    if (tc.body) {
      EXPECT_EQ(res->body(), tc.body) << tc.target;
    }
    if (tc.status == http::status::method_not_allowed) {
      EXPECT_EQ((*res)[http::field::allow], "GET");
    }
  }
}

TEST_F(admin_server_test, should_serve_metrics_in_the_prometheus_text_format) {
  start();
  metrics_.attempt("crm", "appointment.created");
  metrics_.attempt("crm", "appointment.created");
  client c(server_->port());
  auto res = c.request(http::verb::get, "/metrics");
  ASSERT_TRUE(res) << c.last_error.message();
  EXPECT_EQ(res->result(), http::status::ok);
  EXPECT_EQ((*res)[http::field::content_type].find("text/plain; version=0.0.4"), 0u);
  EXPECT_NE(
      res->body().find(
          "appointment_relay_delivery_attempts_total{endpoint=\"crm\",kind=\"appointment.created\"} 2\n"),
      std::string::npos)
      << res->body();
}

TEST_F(admin_server_test, should_report_ready_when_the_flag_flips) {
  start();
  client c(server_->port());
  auto before = c.request(http::verb::get, "/readyz");
  ASSERT_TRUE(before);
  EXPECT_EQ(before->result(), http::status::service_unavailable);
  ready_ = true;
  auto after = c.request(http::verb::get, "/readyz");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->result(), http::status::ok);
  EXPECT_EQ(after->body(), "ready\n");
  ready_ = false;
  auto again = c.request(http::verb::get, "/readyz");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->result(), http::status::service_unavailable);
}

TEST_F(admin_server_test, should_close_the_connection_when_the_client_asks) {
  start();
  client c(server_->port());
  auto res = c.request(http::verb::get, "/healthz", /*keep_alive=*/false);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->result(), http::status::ok);
  EXPECT_TRUE(c.closed_by_server());
}

TEST_F(admin_server_test, should_reject_a_large_body_with_413_and_close) {
  start();
  client c(server_->port());
  auto res = c.request(http::verb::get, "/healthz", true, std::string(64 * 1024, 'x'));
  ASSERT_TRUE(res) << c.last_error.message();
  EXPECT_EQ(res->result(), http::status::payload_too_large);
  EXPECT_TRUE(c.closed_by_server());
}

TEST_F(admin_server_test, should_close_an_idle_connection_after_the_read_deadline) {
  start({.io_timeout = 200ms, .max_sessions = 64});
  client c(server_->port());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(c.closed_by_server(5s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
}

TEST_F(admin_server_test, should_close_connections_beyond_the_session_cap) {
  start({.io_timeout = 10s, .max_sessions = 2});
  auto a = std::make_unique<client>(server_->port());
  auto b = std::make_unique<client>(server_->port());
  ASSERT_TRUE(a->request(http::verb::get, "/healthz"));  // both accepted and counted
  ASSERT_TRUE(b->request(http::verb::get, "/healthz"));
  client third(server_->port());
  EXPECT_TRUE(third.closed_by_server());

  a.reset();  // frees a slot once the server sees the connection end
  bool served = false;
  for (int i = 0; i < 50 && !served; ++i) {
    client next(server_->port());
    auto res = next.request(http::verb::get, "/healthz");
    served = res && res->result() == http::status::ok;
    if (!served) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(served);
}

TEST_F(admin_server_test, should_fail_to_start_on_a_port_in_use_with_a_clear_message) {
  start();
  auto second = make_admin_server(io_.get_executor(), "127.0.0.1:" + std::to_string(server_->port()),
                                  metrics_, [] { return true; });
  try {
    second->start();
    FAIL() << "start() did not throw";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("127.0.0.1:" + std::to_string(server_->port())), std::string::npos) << what;
    EXPECT_NE(what.find("in use"), std::string::npos) << what;
  }
  second->stop();
}

TEST_F(admin_server_test, should_reject_malformed_listen_addresses) {
  start();
  const char* bad[] = {"127.0.0.1",    "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:http",
                       "not-an-ip:80", ":80",        "::1:80",          "[::1:80"};
  for (const char* listen : bad) {
    auto s = make_admin_server(io_.get_executor(), listen, metrics_, [] { return true; });
    try {
      s->start();
      ADD_FAILURE() << listen << ": start() did not throw";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(listen), std::string::npos) << e.what();
    }
  }
}

TEST_F(admin_server_test, should_listen_on_ipv6_loopback_when_available) {
  start();
  auto v6 = make_admin_server(io_.get_executor(), "[::1]:0", metrics_, [] { return true; });
  try {
    v6->start();
  } catch (const std::runtime_error& e) {
    GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
  }
  client c(v6->port(), "::1");
  ASSERT_FALSE(c.connect_error) << c.connect_error.message();
  auto res = c.request(http::verb::get, "/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->result(), http::status::ok);
  v6->stop();
}

TEST_F(admin_server_test, should_stop_idempotently_and_close_open_connections) {
  start();
  client c(server_->port());
  ASSERT_TRUE(c.request(http::verb::get, "/healthz"));
  server_->stop();
  server_->stop();
  EXPECT_TRUE(c.closed_by_server());
  client after(server_->port());
  EXPECT_TRUE(after.connect_error) << "still accepting after stop()";
  server_->stop();
}

// The admin API against a data source in memory: what each route reads and answers, who may read it, and
// that a slow or failing database never holds up the io thread.
struct fake_data_state {
  std::mutex mutex;
  std::vector<std::string> endpoints_seen;
  std::optional<event_filter> filter_seen;
  std::atomic<int> delay_ms{0};
  std::atomic<bool> fail{false};
  std::atomic<int> connections{0};
};

class fake_data final : public admin_data {
 public:
  explicit fake_data(std::shared_ptr<fake_data_state> st) : st_(std::move(st)) {}
  std::vector<endpoint_status> status(const std::vector<std::string>& endpoints) override {
    wait_or_fail();
    std::lock_guard lock(st_->mutex);
    st_->endpoints_seen = endpoints;
    std::vector<endpoint_status> out;
    for (const auto& e : endpoints) {
      endpoint_status s;
      s.endpoint = e;
      s.backlog = 7;
      s.dead_by_reason = {{"http 400", 1}};
      out.push_back(s);
    }
    return out;
  }
  std::vector<event_summary> events(const event_filter& filter, const std::vector<std::string>&) override {
    wait_or_fail();
    std::lock_guard lock(st_->mutex);
    st_->filter_seen = filter;
    event_summary e;
    e.id = 5;
    e.endpoint = "crm";
    e.kind = "cancelled";
    e.state = filter.state.value_or("dead");
    e.last_error = "http 400 <oops>";
    return {e};
  }
  std::vector<event_detail> event(std::int64_t id, const std::vector<std::string>&,
                                  const std::map<std::string, std::vector<std::string>>&) override {
    wait_or_fail();
    if (id != 5) return {};
    event_detail d;
    d.summary.id = 5;
    d.summary.endpoint = "crm";
    d.summary.state = "dead";
    d.payload = R"({"canvas_patient_key":"patient-secret"})";
    d.webhook_id = "msg_x_5_crm";
    return {d};
  }
  bool usable() const override { return true; }

 private:
  void wait_or_fail() {
    if (st_->fail) throw std::runtime_error("relation \"outbox\" does not exist");
    std::this_thread::sleep_for(std::chrono::milliseconds(st_->delay_ms.load()));
  }
  std::shared_ptr<fake_data_state> st_;
};

constexpr const char* api_token = "0123456789abcdef-token";

class admin_api_test : public admin_server_fixture {
 protected:
  void start_api(std::string token = {}, std::string listen = "127.0.0.1:0",
                 admin_server_limits limits = {}) {
    admin_api_settings api;
    api.data = [st = data_]() -> std::unique_ptr<admin_data> {
      ++st->connections;
      return std::make_unique<fake_data>(st);
    };
    api.endpoints = {"crm", "billing"};
    api.token = std::move(token);
    server_ = make_admin_server(
        io_.get_executor(), std::move(listen), metrics_, [this] { return ready_.load(); }, std::move(api),
        limits);
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  std::shared_ptr<fake_data_state> data_ = std::make_shared<fake_data_state>();
};

TEST_F(admin_api_test, should_answer_the_status_as_json_for_the_configured_endpoints) {
  start_api();
  client c(server_->port());
  auto res = c.request(http::verb::get, "/api/status");
  ASSERT_TRUE(res) << c.last_error.message();
  EXPECT_EQ(res->result(), http::status::ok);
  EXPECT_EQ((*res)[http::field::content_type], "application/json");
  auto j = nlohmann::json::parse(res->body());
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["endpoint"], "crm");
  EXPECT_EQ(j[1]["backlog"], 7);
  EXPECT_EQ(res->body(), c.request(http::verb::get, "/api/endpoints")->body());

  auto one = c.request(http::verb::get, "/api/endpoints/billing");
  ASSERT_TRUE(one);
  EXPECT_EQ(nlohmann::json::parse(one->body())["endpoint"], "billing");
  EXPECT_EQ(c.request(http::verb::get, "/api/endpoints/nope")->result(), http::status::not_found);

  server_->set_endpoints({"billing"}, {});
  auto after = c.request(http::verb::get, "/api/status");
  ASSERT_TRUE(after);
  EXPECT_EQ(nlohmann::json::parse(after->body()).size(), 1u);
  // One connection for all of these: it is kept between requests.
  EXPECT_EQ(data_->connections.load(), 1);
}

TEST_F(admin_api_test, should_pass_the_filters_and_refuse_a_bad_query_without_reading) {
  start_api();
  client c(server_->port());
  auto res = c.request(http::verb::get, "/api/events?appointment=A1&state=retrying&kind=created&limit=3");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->result(), http::status::ok);
  EXPECT_EQ(nlohmann::json::parse(res->body())["events"][0]["state"], "retrying");
  {
    std::lock_guard lock(data_->mutex);
    ASSERT_TRUE(data_->filter_seen);
    EXPECT_EQ(data_->filter_seen->appointment, "A1");
    EXPECT_EQ(data_->filter_seen->kind, "created");
    EXPECT_EQ(data_->filter_seen->limit, 3u);
    data_->filter_seen.reset();
  }
  auto bad = c.request(http::verb::get, "/api/events?state=gone");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->result(), http::status::bad_request);
  std::lock_guard lock(data_->mutex);
  EXPECT_FALSE(data_->filter_seen);
}

TEST_F(admin_api_test, should_serve_the_pages_escaped_and_without_payloads_without_a_token) {
  start_api();
  client c(server_->port());
  auto page = c.request(http::verb::get, "/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->result(), http::status::ok);
  EXPECT_EQ((*page)[http::field::content_type], "text/html; charset=utf-8");
  EXPECT_NE((*page)["Content-Security-Policy"].find("default-src 'none'"), std::string::npos);
  EXPECT_NE(page->body().find("http 400 &lt;oops&gt;"), std::string::npos) << page->body();
  EXPECT_NE(page->body().find("/events/5"), std::string::npos);

  auto event = c.request(http::verb::get, "/api/events/5");
  ASSERT_TRUE(event);
  EXPECT_EQ(event->result(), http::status::ok);
  EXPECT_EQ(event->body().find("patient-secret"), std::string::npos) << event->body();
  auto event_page = c.request(http::verb::get, "/events/5");
  ASSERT_TRUE(event_page);
  EXPECT_EQ(event_page->body().find("patient-secret"), std::string::npos);
  EXPECT_EQ(c.request(http::verb::get, "/api/events/6")->result(), http::status::not_found);
  EXPECT_EQ(c.request(http::verb::get, "/api/events/x")->result(), http::status::not_found);
}

TEST_F(admin_api_test, should_require_the_token_for_all_but_the_probes_and_show_payloads_to_its_holder) {
  start_api(api_token);
  client c(server_->port());
  for (const char* target : {"/", "/metrics", "/api/status", "/api/events", "/api/events/5", "/events/5"}) {
    auto res = c.request(http::verb::get, target);
    ASSERT_TRUE(res) << target;
    EXPECT_EQ(res->result(), http::status::unauthorized) << target;
    EXPECT_EQ((*res)[http::field::www_authenticate].substr(0, 6), "Bearer") << target;
  }
  c.authorization = "Bearer wrong-token-but-long-enough";
  EXPECT_EQ(c.request(http::verb::get, "/api/status")->result(), http::status::unauthorized);
  c.authorization.clear();
  EXPECT_EQ(c.request(http::verb::get, "/healthz")->result(), http::status::ok);
  EXPECT_EQ(c.request(http::verb::get, "/readyz")->result(), http::status::service_unavailable);
  EXPECT_EQ(data_->connections.load(), 0);  // nothing was read for a refused request

  c.authorization = std::string("Bearer ") + api_token;
  auto event = c.request(http::verb::get, "/api/events/5");
  ASSERT_TRUE(event);
  EXPECT_EQ(event->result(), http::status::ok);
  EXPECT_NE(event->body().find("patient-secret"), std::string::npos) << event->body();
  EXPECT_EQ(c.request(http::verb::get, "/metrics")->result(), http::status::ok);
}

TEST_F(admin_api_test, should_refuse_to_listen_off_loopback_without_a_token) {
  auto s = make_admin_server(
      io_.get_executor(), "0.0.0.0:0", metrics_, [] { return true; }, admin_api_settings{});
  try {
    s->start();
    FAIL() << "start() did not throw";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("token_file"), std::string::npos) << e.what();
  }
  // With a token it listens on every address, and the token is required there.
  start_api(api_token, "0.0.0.0:0");
  client c(server_->port());
  EXPECT_EQ(c.request(http::verb::get, "/api/status")->result(), http::status::unauthorized);
  EXPECT_EQ(c.request(http::verb::get, "/healthz")->result(), http::status::ok);
}

TEST_F(admin_api_test, should_answer_503_when_the_database_is_slow_while_the_probes_stay_prompt) {
  data_->delay_ms = 1500;
  start_api({}, "127.0.0.1:0", {.io_timeout = 10s, .max_sessions = 64, .api_timeout = 300ms, .api_queue = 1});
  client slow(server_->port());
  const auto t0 = std::chrono::steady_clock::now();
  auto res = slow.request(http::verb::get, "/api/status");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->result(), http::status::service_unavailable);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1200ms);
  // The worker is still busy with that read: the io thread is not.
  client probe(server_->port());
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_EQ(probe.request(http::verb::get, "/healthz")->result(), http::status::ok);
  EXPECT_LT(std::chrono::steady_clock::now() - t1, 500ms);
  // One request may wait behind the busy worker; the next is refused at once.
  client queued(server_->port());
  auto first = std::thread([&] { (void)queued.request(http::verb::get, "/api/status"); });
  std::this_thread::sleep_for(100ms);
  client refused(server_->port());
  auto busy = refused.request(http::verb::get, "/api/status");
  first.join();
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy->result(), http::status::service_unavailable);
  EXPECT_NE(busy->body().find("busy"), std::string::npos) << busy->body();
}

TEST_F(admin_api_test, should_answer_503_with_the_reason_when_the_database_fails) {
  data_->fail = true;
  start_api();
  client c(server_->port());
  auto res = c.request(http::verb::get, "/api/status");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->result(), http::status::service_unavailable);
  EXPECT_NE(res->body().find("does not exist"), std::string::npos) << res->body();
  data_->fail = false;
  EXPECT_EQ(c.request(http::verb::get, "/api/status")->result(), http::status::ok);
}

}  // namespace
}  // namespace appointment_relay
