#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <thread>

#include <pqxx/pqxx>

#include "fault_support.hpp"
#include "support/relay_process.hpp"

// Redelivery of delivered events (replay --delivered, with --dry-run) keeps webhook-ids and the order per
// appointment; dead letters outlive retention and go only after dead_letter_retention.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;

TEST(redelivery,
     should_send_an_appointments_delivered_events_again_with_their_ids_in_order_and_dry_run_nothing) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(200));
  relay_process relay(relay_env(db, server.url()));
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();
  stream_options o;
  o.lives = 30;
  canvas_stream stream(db.url(), o);
  stream.play();
  const auto expected = stream.expected();
  ASSERT_TRUE(wait_for_deliveries(
      expected, [&] { return server.requests(); }, 60s));
  std::this_thread::sleep_for(500ms);  // outcomes recorded (100 ms batches)

  // The appointment with the most events.
  std::map<std::string, int> per_appointment;
  for (const auto& e : expected) ++per_appointment[e.ordering_key];
  auto busiest = std::max_element(per_appointment.begin(), per_appointment.end(),
                                  [](auto& a, auto& b) { return a.second < b.second; });
  ASSERT_GE(busiest->second, 2) << "no appointment with two events";
  const std::string appointment = busiest->first;
  std::vector<recorded_request> first_time;
  for (const auto& r : server.requests())
    if (r.body.find(appointment) != std::string::npos) first_time.push_back(r);
  ASSERT_EQ(static_cast<int>(first_time.size()), busiest->second);

  environment cli = {{"APPOINTMENT_RELAY_DATABASE_URL", db.url()},
                     {"APPOINTMENT_RELAY_ENDPOINT_URL", server.url()}};
  const auto before = server.request_count();
  auto dry = run_relay_command({"replay", "--delivered", "--appointment", appointment, "--dry-run"}, cli);
  ASSERT_EQ(dry.exit_code, 0) << dry.err;
  EXPECT_NE(
      dry.out.find("dry run: " + std::to_string(busiest->second) + " delivered events would be sent again"),
      std::string::npos)
      << dry.out;
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(server.request_count(), before) << "a dry run sent something";

  auto real = run_relay_command({"replay", "--delivered", "--appointment", appointment}, cli);
  ASSERT_EQ(real.exit_code, 0) << real.err;
  EXPECT_EQ(real.out, std::to_string(busiest->second) + " delivered events back to pending\n");
  ASSERT_TRUE(server.wait_for_requests(before + first_time.size(), 10s));
  std::this_thread::sleep_for(500ms);
  auto all = server.requests();
  ASSERT_EQ(all.size(), before + first_time.size()) << "more than that appointment's events were sent again";
  for (std::size_t i = 0; i < first_time.size(); ++i) {
    const auto& again = all[before + i];
    EXPECT_EQ(again.body, first_time[i].body) << "order or payload changed at " << i;
    EXPECT_EQ(again.header("webhook-id"), first_time[i].header("webhook-id")) << i;
  }
  // A delivered replay needs a filter.
  auto everything = run_relay_command({"replay", "--delivered", "--all"}, cli);
  EXPECT_EQ(everything.exit_code, 2) << everything.out;
}

TEST(redelivery, should_keep_dead_letters_past_retention_and_remove_them_after_dead_letter_retention) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(400));  // every event a dead letter
  auto env = relay_env(db, server.url());
  env["APPOINTMENT_RELAY_DATABASE_RETENTION"] = "1s";
  env["APPOINTMENT_RELAY_DATABASE_DEAD_LETTER_RETENTION"] = "30d";
  db.exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  db.exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  {
    relay_process relay(env);
    ASSERT_TRUE(relay.wait_for_log("dead letter event=2", 30s)) << relay.log();
    std::this_thread::sleep_for(500ms);
    relay.send_signal(SIGTERM);
    ASSERT_EQ(relay.wait_exit(20s), 0);
  }
  const auto dead = [&] {
    return std::stoi(db.query_value("SELECT count(*) FROM appointment_relay.delivery WHERE state = 'dead'"));
  };
  ASSERT_EQ(dead(), 2);
  // One of them failed 40 days ago; retention (1 s) has long passed for both.
  db.exec(
      "UPDATE appointment_relay.delivery SET first_attempt_at = now() - interval '40 days',"
      " last_attempt_at = now() - interval '40 days' WHERE event_id = 1");
  std::this_thread::sleep_for(1100ms);
  relay_process relay(env);
  // Retention runs 5 s after the start, then every minute: the old dead letter goes, the other stays.
  ASSERT_TRUE(relay.wait_for_log("1 dead letters older than dead_letter_retention (30 days) removed", 30s))
      << relay.log();
  EXPECT_EQ(dead(), 1);
  EXPECT_EQ(db.query_value("SELECT event_id FROM appointment_relay.delivery WHERE state = 'dead'"), "2");
  auto status = run_relay_command({"status"}, {{"APPOINTMENT_RELAY_DATABASE_URL", db.url()},
                                               {"APPOINTMENT_RELAY_ENDPOINT_URL", server.url()}});
  EXPECT_NE(status.out.find("oldest dead letter: 0.0 days old"), std::string::npos) << status.out;
}

}  // namespace
}  // namespace appointment_relay::testing
