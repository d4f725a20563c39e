#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "fault_support.hpp"
#include "support/relay_process.hpp"

// Endpoint health and control against real receivers: the breaker, pause and resume (kept across a
// restart), the rate limit, a 429's Retry-After for the whole endpoint, static headers, and where an endpoint
// added by SIGHUP starts.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

environment cli_env(const scratch_database& db, const std::string& url) {
  return {{"APPOINTMENT_RELAY_DATABASE_URL", db.url()}, {"APPOINTMENT_RELAY_ENDPOINT_URL", url}};
}

nlohmann::json endpoint_status(const scratch_database& db, const std::string& url, std::size_t index = 0) {
  auto r = run_relay_command({"status", "--json"}, cli_env(db, url));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out).at(index);
}

// Books n appointments (one "created" notification each), in one transaction per appointment.
void book(const scratch_database& db, int n) {
  for (int i = 0; i < n; ++i)
    db.exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
}

std::string config_file(const std::string& name, const std::string& text) {
  auto dir = std::filesystem::temp_directory_path() / ("ar-endpoint-control-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = dir / name;
  std::ofstream(path) << text;
  return path.string();
}

TEST(endpoint_control, should_open_the_breaker_probe_one_at_a_time_close_on_success_and_lose_nothing) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  std::atomic<bool> down{true};
  test_http_server server(
      [&](const recorded_request&, int) { return response_plan::with_status(down ? 503 : 200); });
  auto env = relay_env(db, server.url());
  env["APPOINTMENT_RELAY_ENDPOINTS_DEFAULT_BREAKER_FAILURES"] = "5";
  env["APPOINTMENT_RELAY_ENDPOINTS_DEFAULT_BREAKER_AFTER"] = "0s";
  env["APPOINTMENT_RELAY_ENDPOINTS_DEFAULT_BREAKER_PROBE_MAX"] = "400ms";
  // Without the breaker, 4 attempts 50-500 ms apart would dead-letter every event while the receiver is down.
  env["APPOINTMENT_RELAY_RETRY_MAX_ATTEMPTS"] = "4";
  auto relay = std::make_unique<relay_process>(env);
  ASSERT_TRUE(relay->wait_for_log("this instance is active", 30s)) << relay->log();

  stream_options o;
  o.lives = 40;
  canvas_stream stream(db.url(), o);
  stream.play();
  ASSERT_TRUE(relay->wait_for_log("breaker open", 20s)) << relay->log();
  const auto opened_at = server.request_count();
  // Open for 3 s: only probes, one at a time, at least the probe delay apart (1 s capped to 400 ms).
  std::this_thread::sleep_for(3s);
  const auto during = server.requests();
  std::vector<steady::time_point> probes;
  for (std::size_t i = opened_at; i < during.size(); ++i) probes.push_back(during[i].received);
  EXPECT_GE(probes.size(), 3u) << "no probes while open";
  EXPECT_LE(probes.size(), 10u) << "more than probes went out while the breaker was open";
  for (std::size_t i = 1; i < probes.size(); ++i)
    EXPECT_GE(probes[i] - probes[i - 1], 350ms) << "probes " << i - 1 << " and " << i << " too close";
  auto metrics = http_get(relay->admin_port(), "/metrics").body;
  EXPECT_NE(metrics.find("appointment_relay_endpoint_state{endpoint=\"default\",state=\"open\"} 1"),
            std::string::npos)
      << metrics;
  auto st = endpoint_status(db, server.url());
  EXPECT_EQ(st["state"]["state"], "open") << st.dump();
  EXPECT_NE(st["state"]["reason"].get<std::string>().find("503"), std::string::npos) << st.dump();
  EXPECT_TRUE(st["state"].contains("next_probe")) << st.dump();

  // A restart keeps it open: the new process probes, it does not send the backlog to a receiver that is down.
  relay->send_signal(SIGTERM);
  ASSERT_EQ(relay->wait_exit(20s), 0);
  const auto before_restart = server.request_count();
  relay = std::make_unique<relay_process>(env);
  ASSERT_TRUE(relay->wait_for_log("breaker open (as the database has it", 30s)) << relay->log();
  std::this_thread::sleep_for(1s);
  EXPECT_LE(server.request_count() - before_restart, 4u) << "the restarted relay sent more than probes";

  down = false;
  ASSERT_TRUE(relay->wait_for_log("breaker closed", 10s)) << relay->log();
  auto expected = stream.expected();
  ASSERT_TRUE(wait_for_deliveries(
      expected, [&] { return server.requests(); }, 60s))
      << count_delivered(expected, server.requests()) << " of " << expected.size();
  delivery_check_options check;
  check.signing_secret = fault_secret;
  auto problems = check_deliveries(expected, server.requests(), check);
  EXPECT_TRUE(problems.empty()) << describe(problems);
  EXPECT_EQ(relay->count_in_log("dead letter"), 0u) << relay->log();
  EXPECT_EQ(relay->count_in_log("breaker open:"), 0u) << "opened again after the restart";
  // The state is written with the next outcomes: healthy again in the database.
  wait_until([&] { return endpoint_status(db, server.url())["state"]["state"] == "healthy"; }, 5s, 100ms);
  EXPECT_EQ(endpoint_status(db, server.url())["state"]["state"], "healthy");
}

TEST(endpoint_control,
     should_hold_a_paused_endpoints_events_across_a_restart_and_send_them_in_order_on_resume) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(200));
  auto env = relay_env(db, server.url());
  auto relay = std::make_unique<relay_process>(env);
  ASSERT_TRUE(relay->wait_for_log("this instance is active", 30s)) << relay->log();
  book(db, 3);
  ASSERT_TRUE(server.wait_for_requests(3, 20s));

  auto paused = run_relay_command({"pause", "--endpoint", "default", "--reason", "CRM maintenance"},
                                  cli_env(db, server.url()));
  ASSERT_EQ(paused.exit_code, 0) << paused.err;
  ASSERT_TRUE(relay->wait_for_log("paused by", 5s)) << relay->log();
  stream_options o;
  o.lives = 30;
  canvas_stream stream(db.url(), o);
  stream.play();
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(server.request_count(), 3u) << "a paused endpoint was sent to";
  auto st = endpoint_status(db, server.url());
  EXPECT_EQ(st["state"]["state"], "paused") << st.dump();
  EXPECT_EQ(st["state"]["paused"]["reason"], "CRM maintenance") << st.dump();
  EXPECT_FALSE(st["state"]["paused"]["by"].get<std::string>().empty()) << st.dump();
  EXPECT_GT(st["backlog"].get<int>(), 0) << st.dump();

  // A restart keeps the pause.
  relay->send_signal(SIGTERM);
  ASSERT_EQ(relay->wait_exit(20s), 0);
  relay = std::make_unique<relay_process>(env);
  ASSERT_TRUE(relay->wait_for_log("this instance is active", 30s)) << relay->log();
  ASSERT_TRUE(relay->wait_for_log("paused by", 10s)) << relay->log();
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(server.request_count(), 3u) << "a paused endpoint was sent to after a restart";

  const auto before_resume = steady::now();
  auto resumed = run_relay_command({"resume", "--endpoint", "default"}, cli_env(db, server.url()));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  ASSERT_TRUE(server.wait_for_requests(4, 5s));
  // Within a second (NOTIFY), not at the next poll.
  EXPECT_LT(server.requests()[3].received - before_resume, 1500ms);
  // The stream's, after the three booked before the pause.
  auto since_pause = [&] {
    auto all = server.requests();
    return std::vector<recorded_request>(all.begin() + 3, all.end());
  };
  auto expected = stream.expected();
  ASSERT_TRUE(wait_for_deliveries(expected, since_pause, 60s));
  delivery_check_options check;
  check.signing_secret = fault_secret;
  auto problems = check_deliveries(expected, since_pause(), check);
  EXPECT_TRUE(problems.empty()) << describe(problems);
  EXPECT_EQ(endpoint_status(db, server.url())["state"]["state"], "healthy");

  // An unknown endpoint is refused, with the names the configuration has.
  auto unknown = run_relay_command({"pause", "--endpoint", "nope"}, cli_env(db, server.url()));
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.err.find("default"), std::string::npos) << unknown.err;
}

// Waiting, an event still ends at retry.max_age (counted from its first attempt) and says why it waited: at
// its time, not when a probe or a resume happens to take it.
TEST(endpoint_control, should_end_waiting_events_at_max_age_while_open_or_paused) {
  AR_REQUIRE_DATABASE();
  for (const bool pause : {false, true}) {
    SCOPED_TRACE(pause ? "paused" : "breaker open");
    scratch_database db;
    test_http_server server(always_status(503));
    auto env = relay_env(db, server.url());
    env["APPOINTMENT_RELAY_RETRY_MAX_AGE"] = "4s";
    env["APPOINTMENT_RELAY_RETRY_BASE_DELAY"] = "100ms";
    env["APPOINTMENT_RELAY_RETRY_MAX_DELAY"] = "300ms";
    env["APPOINTMENT_RELAY_ENDPOINTS_DEFAULT_BREAKER_FAILURES"] = pause ? "0" : "3";
    env["APPOINTMENT_RELAY_ENDPOINTS_DEFAULT_BREAKER_AFTER"] = "0s";
    // Probes 1 s, 2 s, 4 s apart: within max_age at most two of the six events go out as probes.
    env["APPOINTMENT_RELAY_ENDPOINTS_DEFAULT_BREAKER_PROBE_MAX"] = "1h";
    relay_process relay(env);
    ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();
    // In one transaction: read together and attempted together, all before the breaker opens.
    std::string six;
    for (int i = 0; i < 6; ++i)
      six += "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30);";
    db.exec(six);
    // Every event is attempted once before it waits.
    ASSERT_TRUE(server.wait_for_requests(6, 20s)) << relay.log();
    const auto first = server.requests().front().received;
    if (pause) {
      auto r = run_relay_command({"pause", "--endpoint", "default"}, cli_env(db, server.url()));
      ASSERT_EQ(r.exit_code, 0) << r.err;
      ASSERT_TRUE(relay.wait_for_log("paused by", 5s)) << relay.log();
    } else {
      ASSERT_TRUE(relay.wait_for_log("breaker open:", 10s)) << relay.log();
    }
    const auto sent_while_waiting = server.request_count();
    // max_age 4 s from the first attempts, then the timer, the batch write and the poll: well within 4 s
    // more.
    const std::string dead = "SELECT count(*) FROM appointment_relay.delivery WHERE state = 'dead'";
    wait_until([&] { return db.query_value(dead) == "6"; },
               std::chrono::duration_cast<std::chrono::milliseconds>(first + 8s - steady::now()), 100ms);
    ASSERT_EQ(db.query_value(dead), "6") << relay.log();
    EXPECT_GE(steady::now() - first, 4s) << "dead-lettered before max_age";
    const std::string why = pause ? "while the endpoint was paused" : "breaker was open";
    EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivery WHERE state = 'dead' AND "
                             "dead_reason LIKE 'max age reached%" +
                             why + "%'"),
              "6")
        << db.query_value("SELECT string_agg(dead_reason, ' | ') FROM appointment_relay.delivery")
        << relay.log();
    if (pause)
      EXPECT_EQ(server.request_count(), sent_while_waiting) << "a paused endpoint was sent to";
    else
      EXPECT_LE(server.request_count() - sent_while_waiting, 3u)
          << "more than probes while the breaker was open";
    // At least once each: a leadership lapse on a loaded machine re-reads events whose outcome was not yet
    // written, and they end again (the same row, the same reason).
    EXPECT_GE(relay.count_in_log("dead letter event="), 6u) << relay.log();
  }
}

TEST(endpoint_control, should_hold_the_rate_limit_and_a_429_retry_after_for_the_whole_endpoint) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(200));
  // The first request gets a 429 asking for 1 s: nothing at all may go out during that second.
  server.push_plan(response_plan::with_status(429).header("Retry-After", "1"));
  auto env = relay_env(db, server.url());
  env["APPOINTMENT_RELAY_ENDPOINTS_DEFAULT_RATE_LIMIT"] = "25";
  env["APPOINTMENT_RELAY_ENDPOINTS_DEFAULT_RATE_LIMIT_BURST"] = "1";
  env["APPOINTMENT_RELAY_RETRY_MAX_DELAY"] = "5s";  // a Retry-After is capped at retry.max_delay
  book(db, 1);
  relay_process relay(env);
  ASSERT_TRUE(server.wait_for_requests(1, 30s)) << relay.log();
  book(db, 80);
  ASSERT_TRUE(server.wait_for_requests(82, 30s)) << server.request_count();
  auto reqs = server.requests();
  EXPECT_GE(reqs[1].received - reqs[0].received, 900ms) << "sent during the Retry-After";
  // 80 requests after the hold at 25/s with a burst of 1: 79 intervals of 40 ms, within 10 %.
  const auto span = std::chrono::duration<double>(reqs[81].received - reqs[2].received).count();
  const double rate = 79 / span;
  EXPECT_GT(rate, 22.5) << span;
  EXPECT_LT(rate, 27.5) << span;
  EXPECT_TRUE(relay.wait_for_log("asked to wait", 1s)) << relay.log();
}

TEST(endpoint_control,
     should_send_static_headers_and_start_a_new_endpoint_at_the_newest_event_or_its_backfill) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server a(always_status(200)), b(always_status(200)), c(always_status(200));
  auto token = config_file("token", "s3cr3t-t0ken\n");
  auto endpoint = [&](const std::string& name, const test_http_server& s, const std::string& extra) {
    return "[endpoints." + name + "]\nurl = \"" + s.url() + "\"\n" + extra;
  };
  const std::string head =
      "[database]\nurl = \"" + db.url() +
      "\"\npoll_interval = \"1s\"\nleader_lease = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
  const std::string a_toml = endpoint(
      "a", a,
      "headers = { X-Tenant = \"clinic-7\" }\nheader_files = { Authorization = \"" + token + "\" }\n");
  auto path = config_file("relay.toml", head + a_toml);
  book(db, 5);
  relay_process relay({}, {"run", "--config", path});
  ASSERT_TRUE(a.wait_for_requests(5, 30s)) << relay.log();
  EXPECT_EQ(a.requests()[0].header("X-Tenant"), "clinic-7");
  EXPECT_EQ(a.requests()[0].header("Authorization"), "s3cr3t-t0ken");
  EXPECT_EQ(relay.count_in_log("s3cr3t"), 0u) << "a header value was logged";

  // b (no backfill) starts at the newest event: only what comes after; c (backfill 1h) gets all of it.
  config_file("relay.toml", head + a_toml + endpoint("b", b, "") + endpoint("c", c, "backfill = \"1h\"\n"));
  const auto offset = relay.log_size();
  relay.send_signal(SIGHUP);
  ASSERT_TRUE(relay.wait_for_log("configuration reloaded", 10s, offset)) << relay.log();
  ASSERT_TRUE(relay.wait_for_log("endpoint b seen for the first time", 10s, offset)) << relay.log();
  ASSERT_TRUE(relay.wait_for_log("endpoint c seen for the first time", 10s, offset)) << relay.log();
  book(db, 2);
  ASSERT_TRUE(a.wait_for_requests(7, 20s));
  ASSERT_TRUE(b.wait_for_requests(2, 20s));
  ASSERT_TRUE(c.wait_for_requests(7, 20s));
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(b.request_count(), 2u) << "a new endpoint got events from before it was added";
  EXPECT_EQ(c.request_count(), 7u);
  auto st = run_relay_command({"status", "--json", "--config", path}, {});
  ASSERT_EQ(st.exit_code, 0) << st.err;
  auto report = nlohmann::json::parse(st.out);
  EXPECT_NE(report[1]["state"]["start"]["reason"].get<std::string>().find("newest"), std::string::npos)
      << report.dump();
  EXPECT_NE(report[2]["state"]["start"]["reason"].get<std::string>().find("backfill"), std::string::npos)
      << report.dump();

  // A header the relay sets itself is refused at config check, a CR/LF in a value too (never shown).
  auto bad = config_file("bad.toml", head + endpoint("a", a, "headers = { webhook-id = \"x\" }\n"));
  auto r = run_relay_command({"check-config", "--config", bad}, {});
  EXPECT_EQ(r.exit_code, 78);
  EXPECT_NE(r.err.find("webhook-id is set by the relay"), std::string::npos) << r.err;
  bad = config_file("bad2.toml", head + endpoint("a", a, "headers = { X-A = \"v\\r\\nX-Evil: 1\" }\n"));
  r = run_relay_command({"check-config", "--config", bad}, {});
  EXPECT_EQ(r.exit_code, 78);
  EXPECT_NE(r.err.find("control character"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("X-Evil"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace appointment_relay::testing
