#include "appointment_relay/admin_views.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace appointment_relay {
namespace {

constexpr std::string_view hostile = "<script>alert('x')</script>&\"";

std::size_t count(const std::string& haystack, std::string_view needle) {
  std::size_t n = 0;
  for (auto pos = haystack.find(needle); pos != std::string::npos; pos = haystack.find(needle, pos + 1)) ++n;
  return n;
}

endpoint_status crm_status() {
  endpoint_status s;
  s.endpoint = "crm";
  s.backlog = 42;
  s.oldest_pending_age_seconds = 12.5;
  s.dead_by_reason = {{"http 400 <b>bad</b>", 3}};
  s.control.health.health = endpoint_health::open;
  s.control.health.reason = std::string(hostile);
  s.control.health.since_ms = 1'700'000'000'000;
  s.control.health.probe_at_ms = 1'700'000'060'000;
  s.control.paused = true;
  s.control.paused_by = "ops@<host>";
  s.control.pause_reason = "maintenance";
  s.control.paused_at_ms = 1'700'000'000'000;
  return s;
}

event_summary dead_event() {
  event_summary e;
  e.id = 77;
  e.endpoint = "crm";
  e.kind = "cancelled";
  e.appointment = "appt-<1>";
  e.captured_at_ms = 1'700'000'000'000;
  e.state = "dead";
  e.attempts = 1;
  e.last_attempt_ms = 1'700'000'001'000;
  e.last_error = std::string("http 400: ") + std::string(hostile);
  e.dead_reason = "permanent: http 400";
  return e;
}

TEST(admin_views, should_escape_markup_quotes_controls_and_invalid_utf8) {
  EXPECT_EQ(html_escape("a<b>&\"'c"), "a&lt;b&gt;&amp;&quot;&#39;c");
  EXPECT_EQ(html_escape("tab\tnl\nbell\x07"), "tab\tnl\nbell ");
  EXPECT_EQ(html_escape("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  // Stray continuation, truncated sequence, overlong encoding, surrogate: one U+FFFD per byte.
  EXPECT_EQ(html_escape("\x80"), "\xef\xbf\xbd");
  EXPECT_EQ(html_escape("a\xc3"), "a\xef\xbf\xbd");
  EXPECT_EQ(html_escape("\xc0\xbc"), "\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(html_escape("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(html_escape(""), "");
}

TEST(admin_views, should_render_the_status_json_as_the_status_command_does) {
  auto j = nlohmann::json::parse(status_json({crm_status()}));
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 1u);
  const auto& e = j[0];
  EXPECT_EQ(e["endpoint"], "crm");
  EXPECT_EQ(e["backlog"], 42);
  EXPECT_EQ(e["oldest_pending_age_seconds"], 12.5);
  EXPECT_TRUE(e["oldest_dead_letter_age_seconds"].is_null());
  EXPECT_EQ(e["dead_letters"]["http 400 <b>bad</b>"], 3);
  EXPECT_EQ(e["state"]["state"], "paused");
  EXPECT_EQ(e["state"]["health"], "open");
  EXPECT_EQ(e["state"]["reason"], hostile);
  EXPECT_EQ(e["state"]["since"], "2023-11-14T22:13:20Z");
  EXPECT_EQ(e["state"]["next_probe"], "2023-11-14T22:14:20Z");
  EXPECT_EQ(e["state"]["paused"]["by"], "ops@<host>");
  EXPECT_FALSE(e["state"].contains("start"));
}

TEST(admin_views, should_show_endpoints_and_failures_on_the_page_with_every_value_escaped) {
  status_page page;
  page.endpoints = {crm_status()};
  page.failures = {dead_event()};
  page.database_up = true;
  page.now_ms = 1'700'000'002'000;
  page.version = "1.2.3";
  const auto html = render_status_page(page);
  EXPECT_EQ(count(html, "<script"), 0u) << html;
  EXPECT_EQ(count(html, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"), 2u) << html;
  EXPECT_NE(html.find("<meta http-equiv=\"refresh\" content=\"10\">"), std::string::npos);
  EXPECT_NE(html.find("<td>crm</td>"), std::string::npos);
  EXPECT_NE(html.find("class=\"state paused\""), std::string::npos);
  EXPECT_NE(html.find(">42<"), std::string::npos);
  EXPECT_NE(html.find("12.5 s"), std::string::npos);
  EXPECT_NE(html.find("3 &times; http 400 &lt;b&gt;bad&lt;/b&gt;"), std::string::npos);
  EXPECT_NE(html.find("paused by ops@&lt;host&gt;"), std::string::npos);
  EXPECT_NE(html.find("<a href=\"/events/77\">77</a>"), std::string::npos);
  EXPECT_NE(html.find("appt-&lt;1&gt;"), std::string::npos);
  EXPECT_NE(html.find("permanent: http 400"), std::string::npos);
  // No external asset: nothing is loaded from anywhere.
  EXPECT_EQ(count(html, "src="), 0u);
  EXPECT_EQ(count(html, "<link"), 0u);
  EXPECT_EQ(count(html, "http://"), 0u);
  EXPECT_EQ(count(html, "https://"), 0u);
}

TEST(admin_views, should_say_when_nothing_failed_or_the_failures_could_not_be_read) {
  status_page page;
  page.endpoints = {crm_status()};
  EXPECT_NE(render_status_page(page).find("No event is retrying or dead."), std::string::npos);
  page.failures_error = "boom <x>";
  EXPECT_NE(render_status_page(page).find("boom &lt;x&gt;"), std::string::npos);
}

event_detail detail_with_attempts() {
  event_detail d;
  d.summary = dead_event();
  d.payload = R"({"canvas_patient_key":"pk-<secret>","cancelled":true})";
  d.webhook_id = "msg_abc_77_crm";
  attempt_record a;
  a.attempt = 1;
  a.at_ms = 1'700'000'001'000;
  a.status = 400;
  a.latency_ms = 3.25;
  a.response_body = "<html>bad request</html>";
  d.attempts = {a};
  return d;
}

TEST(admin_views, should_show_an_events_payload_only_with_the_token) {
  const auto d = detail_with_attempts();
  const auto without = render_event_page(77, {d}, false, "1");
  EXPECT_EQ(without.find("pk-"), std::string::npos) << without;
  EXPECT_NE(without.find("shown only with the admin token"), std::string::npos);
  EXPECT_NE(without.find("msg_abc_77_crm"), std::string::npos);
  EXPECT_NE(without.find("&lt;html&gt;bad request&lt;/html&gt;"), std::string::npos);
  EXPECT_NE(without.find(">400<"), std::string::npos);
  EXPECT_EQ(count(without, "<html>"), 0u);
  const auto with = render_event_page(77, {d}, true, "1");
  EXPECT_NE(with.find("pk-&lt;secret&gt;"), std::string::npos) << with;

  auto j_without = nlohmann::json::parse(event_json(77, {d}, false));
  EXPECT_FALSE(j_without["endpoints"][0].contains("payload"));
  EXPECT_EQ(j_without["endpoints"][0]["failed_attempts"][0]["status"], 400);
  EXPECT_EQ(j_without["endpoints"][0]["webhook_id"], "msg_abc_77_crm");
  auto j_with = nlohmann::json::parse(event_json(77, {d}, true));
  EXPECT_EQ(j_with["endpoints"][0]["payload"], d.payload);
}

TEST(admin_views, should_keep_answering_json_when_the_database_holds_invalid_utf8) {
  auto d = detail_with_attempts();
  d.attempts[0].response_body = "cut \xe2\x82";
  auto j = nlohmann::json::parse(event_json(77, {d}, false));
  EXPECT_EQ(j["endpoints"][0]["failed_attempts"][0]["response_body"], "cut \xef\xbf\xbd");
}

TEST(admin_views, should_read_the_events_query_and_refuse_what_it_does_not_know) {
  auto ok = parse_event_query(
      "appointment=a%2Fb+c&endpoint=crm&state=dead&kind=no_show&since=2024-05-01"
      "&until=2024-05-02T00:00:00Z&limit=5");
  ASSERT_TRUE(std::holds_alternative<event_filter>(ok)) << std::get<std::string>(ok);
  const auto& f = std::get<event_filter>(ok);
  EXPECT_EQ(f.appointment, "a/b c");
  EXPECT_EQ(f.endpoint, "crm");
  EXPECT_EQ(f.state, "dead");
  EXPECT_EQ(f.kind, "no_show");
  EXPECT_EQ(f.since, 1714521600);
  EXPECT_EQ(f.until, 1714608000);
  EXPECT_EQ(f.limit, 5u);

  auto unix_seconds = parse_event_query("since=1714521600&state=");
  ASSERT_TRUE(std::holds_alternative<event_filter>(unix_seconds));
  EXPECT_EQ(std::get<event_filter>(unix_seconds).since, 1714521600);
  EXPECT_FALSE(std::get<event_filter>(unix_seconds).state);  // an empty field is no filter
  EXPECT_EQ(std::get<event_filter>(parse_event_query("")).limit, 100u);

  for (const char* bad :
       {"state=lost", "kind=booked", "limit=0", "limit=1001", "limit=x", "since=yesterday",
        "since=2024-05-02&until=2024-05-01", "color=red", "appointment=%zz", "endpoint=%4"}) {
    auto r = parse_event_query(bad);
    EXPECT_TRUE(std::holds_alternative<std::string>(r)) << bad;
  }
}

}  // namespace
}  // namespace appointment_relay
