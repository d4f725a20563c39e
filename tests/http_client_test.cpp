#include "appointment_relay/http_client.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>

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
  // Results also say which request they answer (finished, in the same order), so that a test can count
  // how often each request's done was called.
  std::vector<http_client::request_id> finished;
  http_client::request_id post(std::string body = "{}", header_list headers = {}) {
    auto slot = std::make_shared<http_client::request_id>(0);
    const auto id = client->post(std::move(body), std::move(headers), [this, slot](http_response_info info) {
      results.push_back(std::move(info));
      finished.push_back(*slot);
    });
    *slot = id;  // done is never called from inside post()
    return id;
  }
  std::size_t calls(http_client::request_id id) const {
    return static_cast<std::size_t>(std::count(finished.begin(), finished.end(), id));
  }
  // Runs the io_context until pred() holds (or 5 s passed); pred()'s value.
  template <class Pred>
  bool run_while_not(Pred pred) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!pred() && std::chrono::steady_clock::now() < deadline) {
      io.restart();
      io.run_for(10ms);
    }
    return pred();
  }
  void run_for(std::chrono::milliseconds d) {
    io.restart();
    io.run_for(d);
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
  test_http_server server(testing::always_status(200));
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
  test_http_server server(testing::always_status(200));
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
  test_http_server server(testing::always_status(200));
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
  test_http_server server(testing::always_status(200));
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
  test_http_server server(testing::always_status(200));
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

TEST(http_client, should_keep_the_first_kib_of_a_failed_responses_body_as_valid_utf8) {
  test_http_server server(testing::always_status(200));
  auto long_body = response_plan::with_status(500);
  long_body.body = std::string(1023, 'a') + "\xc3\xa9" + std::string(500, 'b');  // an e-acute across the cut
  server.push_plan(long_body);
  auto invalid = response_plan::with_status(400);
  invalid.body = std::string("no \xff\xfe UTF-8 \xe2\x82 and a NUL \0 here", 31);
  server.push_plan(invalid);
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();
  h.run_until(2);
  h.post();
  h.run_until(3);
  ASSERT_EQ(h.results.size(), 3u);
  EXPECT_EQ(h.results[0].status, 500);
  EXPECT_EQ(h.results[0].body_prefix, std::string(1023, 'a')) << "cut before a character that does not fit";
  EXPECT_EQ(h.results[1].status, 400);
  EXPECT_EQ(h.results[1].body_prefix,
            "no \xef\xbf\xbd\xef\xbf\xbd UTF-8 \xef\xbf\xbd\xef\xbf\xbd and a NUL \xef\xbf\xbd here");
  EXPECT_EQ(h.results[2].status, 200);
  EXPECT_EQ(h.results[2].body_prefix, "") << "a success's body is not kept";
}

TEST(http_client, should_time_out_a_slow_response) {
  test_http_server server(testing::always_status(200));
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
  test_http_server server(testing::always_status(200));
  server.push_plan(response_plan::fault(response_plan::action::reset));
  harness h(server.url());
  h.post();
  const auto& r = h.only_result();
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.error, "connection reset");
  EXPECT_EQ(server.request_count(), 1u);  // a fresh connection is not retried
}

TEST(http_client, should_report_a_malformed_response) {
  test_http_server server(testing::always_status(200));
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
  test_http_server server(testing::always_status(200));
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
  test_http_server server(testing::always_status(200));
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
  test_http_server server(testing::always_status(200));
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
  test_http_server server(testing::always_status(200));
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
  test_http_server server(
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
  test_http_server server(
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
  test_http_server server(testing::always_status(200), tls_server());
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
  test_http_server server(testing::always_status(200), tls_server(false, true));
  harness h(server.url(), tls_options());
  h.post();
  const auto& r = h.only_result();
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.error, "tls handshake: certificate verify failed");
  EXPECT_EQ(server.request_count(), 0u);
}

TEST(http_client, should_reject_a_server_not_signed_by_the_configured_ca) {
  test_http_server server(testing::always_status(200), tls_server());
  http_client_options o = tls_options();
  o.tls.ca_file = test_certs().client_ca_file;  // a CA that did not sign the server's certificate
  harness h(server.url(), o);
  h.post();
  const auto& r = h.only_result();
  EXPECT_EQ(r.error, "tls handshake: certificate verify failed");
}

TEST(http_client, should_need_a_client_certificate_when_the_server_requires_one) {
  test_http_server server(testing::always_status(200), tls_server(true));
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

// ---- the test server itself ----

TEST(test_http_server, should_answer_503_with_neither_a_plan_nor_a_handler) {
  test_http_server server(nullptr);
  server.push_plan(response_plan::with_status(201));
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 201);
  EXPECT_EQ(h.results[1].status, 503) << "no handler: not a silent 200";
  EXPECT_EQ(server.request_count(), 2u);
}

// ---- interim (1xx) responses ----

TEST(http_client, should_read_past_103_early_hints_and_keep_the_connection_in_step) {
  test_http_server server(testing::always_status(200));
  server.push_plan(response_plan::with_status(201).interim(
      103, {{"Link", "</style.css>; rel=preload; as=style"}, {"Link", "</app.js>; rel=preload; as=script"}}));
  server.push_plan(response_plan::with_status(202));
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();  // the same keep-alive connection: must get its own answer, not the first request's
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 201) << h.results[0].error;
  EXPECT_EQ(h.results[1].status, 202) << h.results[1].error;
  EXPECT_EQ(server.request_count(), 2u);
  EXPECT_EQ(server.accepted_connections(), 1);
}

TEST(http_client, should_read_past_100_continue) {
  test_http_server server(testing::always_status(200));
  server.push_plan(response_plan::with_status(204).interim(100));
  server.push_plan(response_plan::with_status(409));
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 204) << h.results[0].error;
  EXPECT_EQ(h.results[1].status, 409) << h.results[1].error;
  EXPECT_EQ(server.accepted_connections(), 1);
}

TEST(http_client, should_read_past_several_interim_responses_sent_before_a_slow_final_one) {
  test_http_server server(testing::always_status(200));
  server.push_plan(response_plan::with_status(200)
                       .interim(100)
                       .interim(102)
                       .interim(103, {{"Link", "</a.css>; rel=preload"}})
                       .interim(103, {{"Link", "</b.css>; rel=preload"}})
                       .after(100ms)  // the interim responses go at once, the final one later
                       .header("Retry-After", "7"));
  server.push_plan(response_plan::with_status(503).header("Retry-After", "9"));
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 200) << h.results[0].error;
  EXPECT_EQ(h.results[0].retry_after, "7");
  EXPECT_EQ(h.results[1].status, 503) << h.results[1].error;
  EXPECT_EQ(h.results[1].retry_after, "9");
  EXPECT_EQ(server.accepted_connections(), 1);
}

TEST(http_client, should_fail_on_101_switching_protocols_and_drop_the_connection) {
  test_http_server server(testing::always_status(200));
  server.push_plan(response_plan::with_status(200).interim(101, {{"Upgrade", "websocket"}}));
  harness h(server.url());
  h.post();
  h.run_until(1);
  h.post();  // a new connection: the old one is out of step
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 0);
  EXPECT_EQ(h.results[0].error, "unexpected 101 Switching Protocols");
  EXPECT_EQ(h.results[1].status, 200) << h.results[1].error;
  EXPECT_EQ(server.accepted_connections(), 2);
}

// ---- cancel ----

TEST(http_client, should_never_send_a_request_cancelled_while_queued) {
  test_http_server server(testing::always_status(200));
  server.push_plan(response_plan::fault(response_plan::action::freeze));  // holds the only connection
  http_client_options o = fast_options();
  o.max_connections = 1;
  o.request_timeout = 3s;
  harness h(server.url(), o);
  const auto first = h.post("{\"n\":1}");
  const auto queued = h.post("{\"n\":2}");
  EXPECT_NE(first, 0u);
  EXPECT_NE(queued, first);
  ASSERT_TRUE(h.run_while_not([&] { return server.request_count() == 1; }));
  h.client->cancel(queued);
  EXPECT_TRUE(h.results.empty()) << "done is not called from inside cancel()";
  EXPECT_EQ(h.client->outstanding(), 1u);
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(queued) == 1; }));
  EXPECT_EQ(h.results[0].error, "cancelled");
  EXPECT_EQ(h.results[0].status, 0);
  h.client->cancel(first);  // frees the connection
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(first) == 1; }));
  const auto third = h.post("{\"n\":3}");
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(third) == 1; }));
  h.run_for(50ms);
  ASSERT_EQ(h.results.size(), 3u);
  EXPECT_EQ(h.results[2].status, 200) << h.results[2].error;
  EXPECT_EQ(h.calls(first), 1u);
  EXPECT_EQ(h.calls(queued), 1u);
  EXPECT_EQ(h.calls(third), 1u);
  const auto got = server.requests();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].body, "{\"n\":1}");
  EXPECT_EQ(got[1].body, "{\"n\":3}") << "the cancelled request never reached the server";
  EXPECT_EQ(h.client->outstanding(), 0u);
}

TEST(http_client, should_reset_the_connection_of_a_request_cancelled_in_flight_and_end_it_once) {
  test_http_server server(testing::always_status(200));
  server.push_plan(response_plan::fault(response_plan::action::freeze));  // a receiver that hangs
  http_client_options o = fast_options();
  o.request_timeout = 5s;
  harness h(server.url(), o);
  const auto hung = h.post();
  ASSERT_TRUE(h.run_while_not([&] { return server.request_count() == 1; }));
  h.run_for(20ms);
  EXPECT_TRUE(h.results.empty());
  const auto t0 = std::chrono::steady_clock::now();
  h.client->cancel(hung);
  EXPECT_TRUE(h.results.empty()) << "done is not called from inside cancel()";
  h.client->cancel(hung);  // twice: still one done
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(hung) == 1; }));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s) << "at once, not at the request's deadline";
  EXPECT_EQ(h.results[0].error, "cancelled");
  EXPECT_EQ(h.results[0].status, 0);
  // The server, which read nothing more, sees the connection reset (no FIN first).
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  while (server.peer_resets() < 1 && std::chrono::steady_clock::now() < deadline) h.run_for(10ms);
  EXPECT_EQ(server.peer_resets(), 1);
  const auto next = h.post();
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(next) == 1; }));
  h.run_for(50ms);
  EXPECT_EQ(h.results.back().status, 200) << h.results.back().error;
  EXPECT_EQ(h.calls(hung), 1u);
  EXPECT_EQ(h.calls(next), 1u);
  EXPECT_EQ(server.accepted_connections(), 2) << "the later request went on a new connection";
  EXPECT_EQ(h.client->outstanding(), 0u);
}

TEST(http_client, should_ignore_cancel_of_an_unknown_or_finished_request) {
  test_http_server server(testing::always_status(200));
  harness h(server.url());
  const auto id = h.post();
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(id) == 1; }));
  h.client->cancel(id);
  h.client->cancel(0);
  h.client->cancel(id + 1000);
  const auto next = h.post();
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(next) == 1; }));
  h.run_for(50ms);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].status, 200);
  EXPECT_EQ(h.results[1].status, 200) << h.results[1].error;
  EXPECT_EQ(server.accepted_connections(), 1) << "the connection was not touched";
}

// ---- name resolution ----

// A lookup function for http_client_options::resolve that blocks until the gate opens (or `limit` passed),
// then answers 127.0.0.1:port. Shared with the lookup thread, which may outlive the test's client.
struct resolve_gate {
  std::mutex mutex;
  std::condition_variable opened;
  bool open = false;
  std::atomic<int> calls{0};
  void release() {
    {
      std::lock_guard lock(mutex);
      open = true;
    }
    opened.notify_all();
  }
};

auto gated_resolve(std::shared_ptr<resolve_gate> gate, std::uint16_t port,
                   std::chrono::milliseconds limit = 10s) {
  return [gate, port, limit](const std::string&, const std::string&, error_code&) {
    ++gate->calls;
    std::unique_lock lock(gate->mutex);
    gate->opened.wait_for(lock, limit, [&] { return gate->open; });
    return std::vector<tcp::endpoint>{tcp::endpoint(net::ip::make_address("127.0.0.1"), port)};
  };
}

std::string url_on(const std::string& host, std::uint16_t port) {
  return "http://" + host + ":" + std::to_string(port) + "/hook";
}

TEST(http_client, should_not_let_a_stalled_resolver_delay_other_clients_on_the_same_io_context) {
  test_http_server server(testing::always_status(200));
  auto gate = std::make_shared<resolve_gate>();
  net::io_context io;
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> ends;
  const auto make = [&](const std::string& host, http_client_options o) {
    return make_http_client(io.get_executor(), *parse_url(url_on(host, server.port())), std::move(o));
  };
  http_client_options stuck_options = fast_options();
  stuck_options.request_timeout = 1000ms;
  stuck_options.resolve = gated_resolve(gate, server.port());
  auto a = make("stuck.test", stuck_options);
  http_client_options normal = fast_options();
  normal.request_timeout = 900ms;
  auto b = make("localhost", normal);  // the system resolver
  auto c = make("127.0.0.1", normal);
  std::string a_error;
  int b_status = 0;
  int c_status = 0;
  const auto t0 = std::chrono::steady_clock::now();
  a->post("{}", {}, [&](http_response_info r) {
    a_error = r.error;
    ends.emplace_back("a", std::chrono::steady_clock::now());
  });
  ASSERT_TRUE([&] {  // A's lookup is under way (and stuck) before B and C start
    for (int i = 0; i < 200 && gate->calls == 0; ++i) io.run_for(5ms);
    return gate->calls == 1;
  }());
  b->post("{}", {}, [&](http_response_info r) {
    b_status = r.status;
    ends.emplace_back("b", std::chrono::steady_clock::now());
  });
  c->post("{}", {}, [&](http_response_info r) {
    c_status = r.status;
    ends.emplace_back("c", std::chrono::steady_clock::now());
  });
  for (int i = 0; i < 300 && ends.size() < 3; ++i) io.run_for(10ms);
  gate->release();
  ASSERT_EQ(ends.size(), 3u);
  EXPECT_EQ(b_status, 200);
  EXPECT_EQ(c_status, 200);
  EXPECT_EQ(a_error, "timeout");
  EXPECT_EQ(ends[2].first, "a") << "B and C were done while A's lookup was stuck";
  EXPECT_GE(ends[2].second - t0, 1000ms) << "A ends at its own deadline";
  EXPECT_LT(ends[2].second - t0, 2500ms);
}

TEST(http_client, should_fail_only_the_request_whose_deadline_passed_while_a_lookup_is_shared) {
  test_http_server server(testing::always_status(200));
  auto gate = std::make_shared<resolve_gate>();
  http_client_options o = fast_options();
  o.request_timeout = 1000ms;
  o.resolve = gated_resolve(gate, server.port());
  harness h(url_on("slow.test", server.port()), o);
  const auto early = h.post();
  h.run_for(600ms);
  const auto late = h.post();  // its deadline is 600 ms after the first one's
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(early) == 1; }));
  EXPECT_EQ(h.calls(late), 0u) << "the first deadline ended only the first request";
  gate->release();
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(late) == 1; }));
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].error, "timeout");
  EXPECT_EQ(h.results[1].status, 200) << h.results[1].error;
  EXPECT_EQ(gate->calls, 1) << "both waited for one lookup";
}

TEST(http_client, should_end_a_request_cancelled_while_waiting_for_its_lookup_and_keep_the_lookups_result) {
  test_http_server server(testing::always_status(200));
  auto gate = std::make_shared<resolve_gate>();
  http_client_options o = fast_options();
  o.request_timeout = 3s;
  o.resolve = gated_resolve(gate, server.port());
  harness h(url_on("slow.test", server.port()), o);
  const auto id = h.post();
  ASSERT_TRUE(h.run_while_not([&] { return gate->calls == 1; }));
  h.client->cancel(id);
  EXPECT_TRUE(h.results.empty());
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(id) == 1; }));
  EXPECT_EQ(h.results[0].error, "cancelled");
  gate->release();
  h.run_for(50ms);  // the lookup's result arrives with nobody waiting: it is cached
  const auto next = h.post();
  const auto another = h.post();
  ASSERT_TRUE(h.run_while_not([&] { return h.calls(next) == 1 && h.calls(another) == 1; }));
  EXPECT_EQ(h.results[1].status, 200) << h.results[1].error;
  EXPECT_EQ(h.results[2].status, 200) << h.results[2].error;
  EXPECT_EQ(gate->calls, 1) << "resolved once, then cached";
  EXPECT_EQ(server.request_count(), 2u);
}

TEST(http_client, should_report_a_lookup_that_throws_and_resolve_again_next_time) {
  test_http_server server(testing::always_status(200));
  auto calls = std::make_shared<std::atomic<int>>(0);
  http_client_options o = fast_options();
  o.resolve = [calls, port = server.port()](const std::string& host, const std::string& service,
                                            error_code&) {
    EXPECT_EQ(host, "flaky.test");
    EXPECT_EQ(service, std::to_string(port));
    if ((*calls)++ == 0) throw std::runtime_error("resolver exploded");
    return std::vector<tcp::endpoint>{tcp::endpoint(net::ip::make_address("127.0.0.1"), port)};
  };
  harness h(url_on("flaky.test", server.port()), o);
  h.post();
  h.run_until(1);
  h.post();
  h.run_until(2);
  ASSERT_EQ(h.results.size(), 2u);
  EXPECT_EQ(h.results[0].error, "resolve: resolver exploded");
  EXPECT_EQ(h.results[1].status, 200) << h.results[1].error;
  EXPECT_EQ(*calls, 2);
}

TEST(http_client, should_report_a_name_that_does_not_resolve) {
  harness h("http://nonexistent.invalid/hook");
  h.post();
  const auto& r = h.only_result();
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.error.rfind("resolve: ", 0), 0u) << r.error;
}

}  // namespace
}  // namespace appointment_relay
