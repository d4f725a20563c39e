#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>

#include "fault_support.hpp"
#include "support/relay_process.hpp"

// W3C trace context: every attempt carries a traceparent, one trace per event and a span per attempt, and
// the attempt's log line names the same ids.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;

TEST(trace_context, should_send_one_trace_per_event_a_span_per_attempt_and_log_the_same_ids) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(200));
  server.push_plan(response_plan::with_status(503));  // the first attempt of the first event fails
  relay_process relay(relay_env(db, server.url()));
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();
  db.exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  db.exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  ASSERT_TRUE(server.wait_for_requests(3, 20s)) << relay.log();
  ASSERT_TRUE(relay.wait_for_log("delivered event=1 ", 10s)) << relay.log();
  ASSERT_TRUE(relay.wait_for_log("delivered event=2 ", 10s)) << relay.log();

  const std::regex traceparent("00-([0-9a-f]{32})-([0-9a-f]{16})-01");
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> by_event;  // webhook-id -> ids
  for (const auto& r : server.requests()) {
    auto header = r.header("traceparent");
    ASSERT_TRUE(header) << "no traceparent";
    std::smatch m;
    ASSERT_TRUE(std::regex_match(*header, m, traceparent)) << *header;
    EXPECT_NE(m[1].str(), std::string(32, '0'));
    EXPECT_NE(m[2].str(), std::string(16, '0'));
    by_event[r.header("webhook-id").value_or("")].emplace_back(m[1], m[2]);
  }
  ASSERT_EQ(by_event.size(), 2u);
  std::set<std::string> traces;
  for (const auto& [id, attempts] : by_event) {
    traces.insert(attempts.front().first);
    for (const auto& [trace, span] : attempts) EXPECT_EQ(trace, attempts.front().first) << id;
    if (attempts.size() == 2) {
      EXPECT_NE(attempts[0].second, attempts[1].second) << "two attempts, one span";
      // The retry's line and the delivery's line each name their attempt's span.
      EXPECT_EQ(relay.count_in_log("trace_id=" + attempts[0].first + " span_id=" + attempts[0].second), 1u)
          << relay.log();
      EXPECT_EQ(relay.count_in_log("trace_id=" + attempts[1].first + " span_id=" + attempts[1].second), 1u)
          << relay.log();
    }
  }
  EXPECT_EQ(traces.size(), 2u) << "two events share a trace";
}

}  // namespace
}  // namespace appointment_relay::testing
