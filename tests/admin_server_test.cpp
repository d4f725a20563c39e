#include "appointment_relay/admin_server.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

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

}  // namespace
}  // namespace appointment_relay
