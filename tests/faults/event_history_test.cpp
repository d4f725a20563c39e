#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "fault_support.hpp"
#include "support/relay_process.hpp"

// An event's history as `appointment-relay events` and `events show` tell it, against the real daemon and a
// receiver that fails on purpose: every failed attempt with its status or error, latency and body, the state
// per endpoint, and the filters.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;

environment cli_env(const scratch_database& db, const std::string& url) {
  return {{"APPOINTMENT_RELAY_DATABASE_URL", db.url()}, {"APPOINTMENT_RELAY_ENDPOINT_URL", url}};
}

nlohmann::json run_json(const std::vector<std::string>& args, const environment& env) {
  auto r = run_relay_command(args, env);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out);  // throws on anything but valid JSON (and valid UTF-8)
}

// `events show ID --json` once the event's outcome at endpoint "default" is state (outcomes are written a few
// milliseconds after the attempt).
nlohmann::json shown_when(const std::string& state, std::int64_t id, const environment& env) {
  nlohmann::json shown;
  wait_until(
      [&] {
        shown = run_json({"events", "show", std::to_string(id), "--json"}, env);
        return shown["endpoints"].size() == 1 && shown["endpoints"][0]["state"] == state;
      },
      10s, 100ms);
  return shown;
}

TEST(event_history, should_show_both_failed_attempts_of_an_event_delivered_on_its_third) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(200));
  // A 503 with a body, then a connection reset, then the default: 200.
  auto unavailable = response_plan::with_status(503);
  unavailable.body = "maintenance until 14:00";
  unavailable.closing();  // the next attempt on a new connection: a reset on a reused one is retried at once
  server.push_plan(unavailable);
  server.push_plan(response_plan::fault(response_plan::action::reset));
  relay_process relay(relay_env(db, server.url()));
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();
  db.exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  ASSERT_TRUE(relay.wait_for_log("delivered event=1", 20s)) << relay.log();
  const auto env = cli_env(db, server.url());

  auto shown = shown_when("delivered", 1, env);
  ASSERT_EQ(shown["endpoints"].size(), 1u) << shown.dump(2);
  const auto& at = shown["endpoints"][0];
  EXPECT_EQ(shown["id"], 1);
  EXPECT_EQ(at["state"], "delivered") << shown.dump(2);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(at["webhook_id"], requests.back().header("webhook-id").value_or("")) << shown.dump(2);
  EXPECT_EQ(at["payload"], requests.back().body);
  ASSERT_EQ(at["failed_attempts"].size(), 2u) << shown.dump(2);
  EXPECT_EQ(at["attempts"], 3) << "the count, beside the list of the failed ones";
  const auto& first = at["failed_attempts"][0];
  EXPECT_EQ(first["attempt"], 1);
  EXPECT_EQ(first["status"], 503);
  EXPECT_EQ(first["error"], "");
  EXPECT_EQ(first["response_body"], "maintenance until 14:00");
  EXPECT_GT(first["latency_ms"].get<double>(), 0.0);
  EXPECT_FALSE(first["at"].get<std::string>().empty());
  const auto& second = at["failed_attempts"][1];
  EXPECT_EQ(second["attempt"], 2);
  EXPECT_EQ(second["status"], 0);
  EXPECT_NE(second["error"].get<std::string>().find("reset"), std::string::npos) << shown.dump(2);
  EXPECT_EQ(second["response_body"], "");

  // For people: each failed attempt with its outcome, then the delivery.
  auto text = run_relay_command({"events", "show", "1"}, env);
  EXPECT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("endpoint default: delivered, 3 attempts"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("attempt 1 at "), std::string::npos) << text.out;
  EXPECT_NE(text.out.find(": http 503, "), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("body: maintenance until 14:00"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("attempt 2 at "), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("attempt 3 at "), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("delivered"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find(requests.back().header("webhook-id").value_or("?")), std::string::npos) << text.out;

  // Unknown: exit 1 and a reason.
  auto unknown = run_relay_command({"events", "show", "999"}, env);
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.err.find("no event 999"), std::string::npos) << unknown.err;
}

TEST(event_history, should_keep_a_failed_responses_body_prefix_as_valid_utf8) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(200));
  auto bad = response_plan::with_status(500);
  bad.body = "upstream \xff\xfe down \xe2\x82";  // stray bytes, and a sequence cut short at the end
  server.push_plan(bad);
  auto long_body = response_plan::with_status(502);
  long_body.body = std::string(2000, 'x');
  server.push_plan(long_body);
  relay_process relay(relay_env(db, server.url()));
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();
  db.exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  ASSERT_TRUE(relay.wait_for_log("delivered event=1", 20s)) << relay.log();

  auto shown = shown_when("delivered", 1, cli_env(db, server.url()));
  ASSERT_EQ(shown["endpoints"].size(), 1u) << shown.dump(2);
  const auto& attempts = shown["endpoints"][0]["failed_attempts"];
  ASSERT_EQ(attempts.size(), 2u) << shown.dump(2);
  EXPECT_EQ(attempts[0]["status"], 500);
  EXPECT_EQ(attempts[0]["response_body"], "upstream \xef\xbf\xbd\xef\xbf\xbd down \xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(attempts[1]["status"], 502);
  EXPECT_EQ(attempts[1]["response_body"], std::string(1024, 'x')) << "the first 1 KiB only";
}

TEST(event_history, should_filter_events_by_appointment_state_kind_and_capture_time) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  // Cancellations are refused (a 400: dead at once); everything else is taken.
  test_http_server server([](const recorded_request& r, int) {
    return response_plan::with_status(r.body.find("\"cancelled\":true") != std::string::npos ? 400 : 200);
  });
  relay_process relay(relay_env(db, server.url()));
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();
  const auto a =
      db.query_value("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  const auto b =
      db.query_value("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  db.exec("SELECT canvas_test.cancel(" + b + ")");
  ASSERT_TRUE(relay.wait_for_log("dead letter event=3", 20s)) << relay.log();
  ASSERT_TRUE(relay.wait_for_log("delivered event=2", 20s)) << relay.log();
  const auto a_id = db.query_value("SELECT externally_exposable_id FROM api_appointment WHERE id = " + a);
  const auto b_id = db.query_value("SELECT externally_exposable_id FROM api_appointment WHERE id = " + b);
  ASSERT_FALSE(a_id.empty());
  ASSERT_NE(a_id, b_id);
  // The first booking two days old: --since and --until fall between it and the others.
  db.exec("UPDATE appointment_relay.outbox SET captured_at = now() - interval '2 days' WHERE id = 1");
  const auto env = cli_env(db, server.url());
  shown_when("dead", 3, env);

  auto ids_of = [](const nlohmann::json& list) {
    std::vector<std::int64_t> ids;
    for (const auto& e : list["events"]) ids.push_back(e["id"].get<std::int64_t>());
    return ids;
  };
  auto all = run_json({"events", "--json"}, env);
  EXPECT_EQ(ids_of(all), (std::vector<std::int64_t>{3, 2, 1})) << all.dump(2) << "newest first";
  for (const auto& e : all["events"]) EXPECT_EQ(e["endpoint"], "default");
  EXPECT_EQ(all["events"][0]["kind"], "cancelled");
  EXPECT_EQ(all["events"][0]["state"], "dead");
  EXPECT_EQ(all["events"][0]["appointment"], b_id);
  EXPECT_EQ(all["events"][2]["state"], "delivered");
  EXPECT_EQ(all["events"][2]["appointment"], a_id);

  EXPECT_EQ(ids_of(run_json({"events", "--appointment", b_id, "--json"}, env)),
            (std::vector<std::int64_t>{3, 2}));
  EXPECT_EQ(ids_of(run_json({"events", "--appointment", a_id, "--json"}, env)),
            (std::vector<std::int64_t>{1}));
  auto dead = run_json({"events", "--state", "dead", "--json"}, env);
  ASSERT_EQ(ids_of(dead), (std::vector<std::int64_t>{3})) << dead.dump(2);
  EXPECT_NE(dead["events"][0]["last_error"].get<std::string>().find("400"), std::string::npos)
      << dead.dump(2);
  EXPECT_FALSE(dead["events"][0]["dead_reason"].get<std::string>().empty()) << dead.dump(2);
  EXPECT_EQ(ids_of(run_json({"events", "--state", "delivered", "--json"}, env)),
            (std::vector<std::int64_t>{2, 1}));
  EXPECT_TRUE(ids_of(run_json({"events", "--state", "pending", "--json"}, env)).empty());
  EXPECT_TRUE(ids_of(run_json({"events", "--state", "retrying", "--json"}, env)).empty());
  EXPECT_EQ(ids_of(run_json({"events", "--kind", "cancelled", "--json"}, env)),
            (std::vector<std::int64_t>{3}));
  EXPECT_EQ(ids_of(run_json({"events", "--kind", "created", "--json"}, env)),
            (std::vector<std::int64_t>{2, 1}));
  const auto yesterday = db.query_value(
      "SELECT to_char((now() - interval '1 day') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')");
  EXPECT_EQ(ids_of(run_json({"events", "--since", yesterday, "--json"}, env)),
            (std::vector<std::int64_t>{3, 2}));
  EXPECT_EQ(ids_of(run_json({"events", "--until", yesterday, "--json"}, env)),
            (std::vector<std::int64_t>{1}));
  EXPECT_EQ(ids_of(run_json({"events", "--since", yesterday, "--kind", "created", "--json"}, env)),
            (std::vector<std::int64_t>{2}));
  EXPECT_EQ(ids_of(run_json({"events", "--limit", "1", "--json"}, env)), (std::vector<std::int64_t>{3}));
  EXPECT_EQ(ids_of(run_json({"events", "--endpoint", "default", "--state", "dead", "--json"}, env)),
            (std::vector<std::int64_t>{3}));

  // The table: a header and a line per event.
  auto table = run_relay_command({"events", "--appointment", b_id}, env);
  EXPECT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("EVENT"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("cancelled"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("dead"), std::string::npos) << table.out;
  EXPECT_EQ(std::count(table.out.begin(), table.out.end(), '\n'), 3) << table.out;
}

}  // namespace
}  // namespace appointment_relay::testing
