#include "appointment_relay/http_client.hpp"

#include <gtest/gtest.h>

#include "support/test_certs.hpp"
#include "support/test_http_server.hpp"

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;
using testing::response_plan;
using testing::test_certs;
using testing::test_http_server;
using testing::test_server_options;

http_client_options fast_options() {
  http_client_options o;
  o.max_connections = 4;
  o.request_timeout = 400ms;
  o.body_limit = 64 * 1024;
  o.user_agent = "appointment-relay/test";
  return o;
}

// A client on its own io_context, driven from the test thread; results in completion order.
struct harness {
  net::io_context io;
  std::shared_ptr<http_client> client;
  std::vector<http_response_info> results;

  explicit harness(const std::string& text, http_client_options options = fast_options()) {
    std::string error;
    auto u = parse_url(text, &error);
    if (!u) throw std::runtime_error(error);
    client = make_http_client(io.get_executor(), *u, std::move(options));
  }
  void post(std::string body = "{}", header_list headers = {}) {
    client->post(std::move(body), std::move(headers),
                 [this](http_response_info info) { results.push_back(std::move(info)); });
  }
  // Runs the io_context until n results are in (or 5 s passed).
  void run_until(std::size_t n) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (results.size() < n && std::chrono::steady_clock::now() < deadline) {
      io.restart();
      io.run_for(20ms);
    }
  }
  const http_response_info& only_result() {
    run_until(1);
    if (results.size() != 1)
      throw std::runtime_error("expected one result, got " + std::to_string(results.size()));
    return results[0];
  }
};

std::uint16_t closed_port() {
  net::io_context io;
  tcp::acceptor a(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  const auto port = a.local_endpoint().port();
  a.close();
  return port;
}

test_server_options tls_server(bool require_client_cert = false, bool wrong_host = false) {
  const auto& certs = test_certs();
  test_server_options o;
  o.tls = true;
  o.cert_file = wrong_host ? certs.wrong_host_cert_file : certs.server_cert_file;
  o.key_file = wrong_host ? certs.wrong_host_key_file : certs.server_key_file;
  if (require_client_cert) o.client_ca_file = certs.client_ca_file;
  return o;
}

http_client_options tls_options(bool with_client_cert = false) {
  http_client_options o = fast_options();
  o.request_timeout = 2000ms;  // TLS handshakes under sanitizers on a busy machine
  o.tls.ca_file = test_certs().ca_file;
  if (with_client_cert) {
    o.tls.client_cert_file = test_certs().client_cert_file;
    o.tls.client_key_file = test_certs().client_key_file;
  }
  return o;
}

TEST(http_client, should_deliver_over_reused_keep_alive_connections) {
  test_http_server server;
  harness h(server.url());
  for (int i = 0; i < 50; ++i) h.post("{\"n\":" + std::to_string(i) + "}");
  EXPECT_EQ(h.client->outstanding(), 50u);
  h.run_until(50);
  ASSERT_EQ(h.results.size(), 50u);
  for (const auto& r : h.results) {
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.error, "");
    EXPECT_GT(r.latency.count(), 0);
  }
  EXPECT_EQ(server.request_count(), 50u);
  EXPECT_GE(server.accepted_connections(), 1);
  EXPECT_LE(server.accepted_connections(), 4);
  EXPECT_EQ(h.client->outstanding(), 0u);

  // Later requests reuse the idle connections.
  const int connections = server.accepted_connections();
  for (int i = 0; i < 10; ++i) h.post();
  h.run_until(60);
  EXPECT_EQ(server.accepted_connections(), connections);
}

TEST(http_client, should_send_the_fixed_and_the_given_headers) {
  test_http_server server;
  harness h(server.url("/hooks/in?tenant=7"));
  h.post("{\"a\":1}",
         {{"webhook-id", "evt_1"}, {"webhook-timestamp", "1700000000"}, {"webhook-signature", "v1,x"}});
  h.post("{\"b\":2}", {{"webhook-id", "evt_2"}});
  h.run_until(2);
  ASSERT_EQ(server.request_count(), 2u);
  const auto requests = server.requests();
  const auto& first = requests[0];
  EXPECT_EQ(first.method, "POST");
  EXPECT_EQ(first.target, "/hooks/in?tenant=7");
  EXPECT_EQ(first.body, "{\"a\":1}");
  EXPECT_EQ(first.header("host"), "127.0.0.1:" + std::to_string(server.port()));
  EXPECT_EQ(first.header("User-Agent"), "appointment-relay/test");
  EXPECT_EQ(first.header("content-type"), "application/json");
  EXPECT_EQ(first.header("content-length"), "7");
  EXPECT_EQ(first.header("webhook-id"), "evt_1");
  EXPECT_EQ(first.header("webhook-timestamp"), "1700000000");
  EXPECT_EQ(first.header("webhook-signature"), "v1,x");
  // A later request on the same connection carries only its own extra headers.
  harness sequential(server.url("/x"));
  sequential.post("1", {{"webhook-id", "evt_a"}, {"x-extra", "1"}});
  sequential.run_until(1);
  sequential.post("22", {{"webhook-id", "evt_b"}});
  sequential.run_until(2);
  const auto all = server.requests();
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[3].header("webhook-id"), "evt_b");
  EXPECT_EQ(all[3].header("x-extra"), std::nullopt);
  EXPECT_EQ(all[3].header("content-length"), "2");
  EXPECT_EQ(all[3].header("user-agent"), "appointment-relay/test");
  EXPECT_EQ(all[3].connection, all[2].connection);
}

TEST(http_client, should_let_a_given_header_replace_a_fixed_one_and_refuse_a_header_that_breaks_lines) {
  test_http_server server;
  harness h(server.url());
  h.post("{}", {{"Content-Type", "application/webhook+json"}});
  h.run_until(1);
  h.post("{}", {{"webhook-id", "evt_1\r\nx-injected: 1"}});
  h.post("{}", {{"x-bad name", "1"}});
  h.run_until(3);
  ASSERT_EQ(h.results.size(), 3u);
  EXPECT_EQ(h.results[0].status, 200);
  EXPECT_EQ(h.results[1].status, 0);
  EXPECT_EQ(h.results[1].error, "invalid header webhook-id");
  EXPECT_EQ(h.results[2].error, "invalid header x-bad name");
  ASSERT_EQ(server.request_count(), 1u);  // the refused ones were never sent
  const auto requests = server.requests();
  EXPECT_EQ(requests[0].header("content-type"), "application/webhook+json");
  EXPECT_EQ(requests[0].header("x-injected"), std::nullopt);
}

TEST(http_client, should_report_the_status_and_leave_the_decision_to_the_caller) {
  test_http_server server;
  server.push_plan(response_plan::with_status(500));
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 500);
  EXPECT_EQ(h.results[0].error, "");
  EXPECT_EQ(h.results[1].status, 200);
  EXPECT_EQ(server.accepted_connections(), 1);  // a 500 does not cost the connection
}

TEST(http_client, should_surface_retry_after) {
  test_http_server server;
  server.push_plan(response_plan::with_status(429).header("Retry-After", "7"));
  server.push_plan(response_plan::with_status(503).header("Retry-After", "Sun, 06 Nov 1994 08:49:37 GMT"));
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();
  h.post();
  h.run_until(3);
  ASSERT_EQ(h.results.size(), 3u);
  EXPECT_EQ(h.results[0].status, 429);
  EXPECT_EQ(h.results[0].retry_after, "7");
  EXPECT_EQ(h.results[1].status, 503);
  EXPECT_EQ(h.results[1].retry_after, "Sun, 06 Nov 1994 08:49:37 GMT");
  EXPECT_EQ(h.results[2].status, 200);
  EXPECT_EQ(h.results[2].retry_after, std::nullopt);
}

TEST(http_client, should_time_out_a_slow_response) {
  test_http_server server;
  server.push_plan(response_plan::with_status(200).after(2000ms));
  http_client_options o = fast_options();
  o.request_timeout = 300ms;
  harness h(server.url(), o);
  const auto start = std::chrono::steady_clock::now();
  h.post();
  const auto& r = h.only_result();
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.error, "timeout");
  EXPECT_GE(took, 280ms);
  EXPECT_LT(took, 1000ms);
  EXPECT_GE(r.latency, 280ms);
}

TEST(http_client, should_report_a_reset_connection) {
  test_http_server server;
  server.push_plan(response_plan::fault(response_plan::action::reset));
  harness h(server.url());
  h.post();
  const auto& r = h.only_result();
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.error, "connection reset");
  EXPECT_EQ(server.request_count(), 1u);  // a fresh connection is not retried
}

TEST(http_client, should_report_a_malformed_response) {
  test_http_server server;
  server.push_plan(response_plan::fault(response_plan::action::malformed));
  harness h(server.url());
  h.post();
  const auto& r = h.only_result();
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.error.rfind("http parse: ", 0), 0u) << r.error;
}

TEST(http_client, should_report_connection_refused) {
  harness h("http://127.0.0.1:" + std::to_string(closed_port()) + "/hook");
  h.post();
  const auto& r = h.only_result();
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.error, "connection refused");
}

TEST(http_client, should_refuse_a_body_over_the_limit) {
  test_http_server server;
  response_plan big = response_plan::with_status(200);
  big.body = std::string(5000, 'x');
  server.push_plan(big);
  http_client_options o = fast_options();
  o.body_limit = 1000;
  harness h(server.url(), o);
  h.post();
  h.run_until(1);
  h.post();  // the connection is dropped after the error; the next request gets a new one
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 0);
  EXPECT_EQ(h.results[0].error, "body too large");
  EXPECT_EQ(h.results[1].status, 200);
}

TEST(http_client, should_retry_once_when_an_idle_keep_alive_connection_was_closed) {
  test_http_server server;
  server.push_plan(response_plan::with_status(200));
  server.push_plan(response_plan::fault(response_plan::action::close));  // as if closed while idle
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[1].status, 200) << h.results[1].error;
  EXPECT_EQ(server.request_count(), 3u);
  EXPECT_EQ(server.accepted_connections(), 2);
}

TEST(http_client, should_retry_a_stale_connection_only_once) {
  test_http_server server;
  server.push_plan(response_plan::with_status(200));
  server.push_plan(response_plan::fault(response_plan::action::close));
  server.push_plan(response_plan::fault(response_plan::action::close));
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[1].status, 0);
  EXPECT_EQ(h.results[1].error, "end of stream");
  EXPECT_EQ(server.request_count(), 3u);
}

TEST(http_client, should_reconnect_after_the_server_closes) {
  test_http_server server;
  server.push_plan(response_plan::with_status(200).closing());
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 200);
  EXPECT_EQ(h.results[1].status, 200);
  EXPECT_EQ(server.request_count(), 2u);
  EXPECT_EQ(server.accepted_connections(), 2);
}

TEST(http_client, should_cap_requests_in_flight_at_max_connections) {
  test_http_server server;
  server.set_handler(
      [](const testing::recorded_request&, int) { return response_plan::with_status(200).after(150ms); });
  http_client_options o = fast_options();
  o.max_connections = 16;
  harness h(server.url(), o);
  for (int i = 0; i < 32; ++i) h.post();
  h.run_until(32);
  ASSERT_EQ(h.results.size(), 32u);
  for (const auto& r : h.results) EXPECT_EQ(r.status, 200) << r.error;
  EXPECT_EQ(server.max_concurrent_requests(), 16);
  EXPECT_EQ(server.accepted_connections(), 16);
}

TEST(http_client, should_fail_queued_requests_on_close_and_finish_in_flight_ones) {
  test_http_server server;
  server.set_handler(
      [](const testing::recorded_request&, int) { return response_plan::with_status(200).after(100ms); });
  http_client_options o = fast_options();
  o.max_connections = 1;
  harness h(server.url(), o);
  h.post();
  h.post();
  h.post();
  ASSERT_TRUE([&] {
    for (int i = 0; i < 100 && server.request_count() < 1; ++i) h.io.run_for(10ms);
    return server.request_count() == 1;
  }());
  h.client->close();
  h.client->close();  // idempotent
  h.post();           // after close: fails too
  h.run_until(4);
  ASSERT_EQ(h.results.size(), 4u);
  int shutting_down = 0, delivered = 0;
  for (const auto& r : h.results) {
    if (r.error == "shutting down") ++shutting_down;
    if (r.status == 200) ++delivered;
  }
  EXPECT_EQ(shutting_down, 3);
  EXPECT_EQ(delivered, 1);
  EXPECT_EQ(h.client->outstanding(), 0u);
  EXPECT_EQ(server.request_count(), 1u);
}

TEST(http_client, should_deliver_over_https_with_the_test_ca) {
  test_http_server server(tls_server());
  harness h(server.url(), tls_options());
  h.post();
  h.post();
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 200) << h.results[0].error;
  EXPECT_EQ(h.results[1].status, 200) << h.results[1].error;
  EXPECT_EQ(server.requests().at(0).body, "{}");
}

TEST(http_client, should_reject_a_certificate_for_another_host) {
  test_http_server server(tls_server(false, true));
  harness h(server.url(), tls_options());
  h.post();
  const auto& r = h.only_result();
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.error, "tls handshake: certificate verify failed");
  EXPECT_EQ(server.request_count(), 0u);
}

TEST(http_client, should_reject_a_server_not_signed_by_the_configured_ca) {
  test_http_server server(tls_server());
  http_client_options o = tls_options();
  o.tls.ca_file = test_certs().client_ca_file;  // a CA that did not sign the server's certificate
  harness h(server.url(), o);
  h.post();
  const auto& r = h.only_result();
  EXPECT_EQ(r.error, "tls handshake: certificate verify failed");
}

TEST(http_client, should_need_a_client_certificate_when_the_server_requires_one) {
  test_http_server server(tls_server(true));
  {
    harness without(server.url(), tls_options(false));
    without.post();
    const auto& r = without.only_result();
    EXPECT_EQ(r.status, 0);
    EXPECT_NE(r.error, "");
    EXPECT_EQ(r.error.rfind("tls", 0), 0u) << r.error;
  }
  EXPECT_EQ(server.request_count(), 0u);
  harness with(server.url(), tls_options(true));
  with.post();
  const auto& r = with.only_result();
  EXPECT_EQ(r.status, 200) << r.error;
  EXPECT_EQ(server.request_count(), 1u);
}

TEST(http_client, should_throw_on_unreadable_tls_files) {
  net::io_context io;
  const url endpoint = *parse_url("https://127.0.0.1:1/");
  http_client_options o = fast_options();
  o.tls.ca_file = "/nonexistent/ca.pem";
  EXPECT_THROW(make_http_client(io.get_executor(), endpoint, o), std::runtime_error);
  o = tls_options();
  o.tls.client_cert_file = test_certs().client_cert_file;  // without its key
  EXPECT_THROW(make_http_client(io.get_executor(), endpoint, o), std::runtime_error);
  o.tls.client_key_file = "/nonexistent/key.pem";
  EXPECT_THROW(make_http_client(io.get_executor(), endpoint, o), std::runtime_error);
  EXPECT_NO_THROW(make_http_client(io.get_executor(), endpoint, tls_options(true)));
}

}  // namespace
}  // namespace appointment_relay
