#include "appointment_relay/admin_views.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <optional>

#include <nlohmann/json.hpp>

#include "appointment_relay/cli.hpp"

namespace appointment_relay {
namespace {

using json = nlohmann::json;

// Invalid UTF-8 from the database (a response body cut short, say) must not make an answer fail.
std::string dump(const json& j) {
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

// What status shows of an endpoint's state: paused over the breaker's (as `status` does).
std::string state_of(const endpoint_control& c) {
  return c.paused ? "paused" : to_string(c.health.health);
}

json endpoint_object(const endpoint_status& s) {
  const auto& c = s.control;
  json state = {{"state", state_of(c)}, {"health", to_string(c.health.health)}};
  if (c.health.health != endpoint_health::healthy) {
    state["since"] = utc_text(c.health.since_ms);
    state["reason"] = c.health.reason;
  }
  if (c.health.health == endpoint_health::open) state["next_probe"] = utc_text(c.health.probe_at_ms);
  if (c.paused)
    state["paused"] = {{"by", c.paused_by}, {"at", utc_text(c.paused_at_ms)}, {"reason", c.pause_reason}};
  if (c.start_id)
    state["start"] = {
        {"after_event", *c.start_id}, {"at", utc_text(c.started_at_ms)}, {"reason", c.start_reason}};
  return {{"endpoint", s.endpoint},
          {"state", state},
          {"backlog", s.backlog},
          {"oldest_pending_age_seconds",
           s.oldest_pending_age_seconds ? json(*s.oldest_pending_age_seconds) : json(nullptr)},
          {"dead_letters", s.dead_by_reason},
          {"oldest_dead_letter_age_seconds",
           s.oldest_dead_letter_age_seconds ? json(*s.oldest_dead_letter_age_seconds) : json(nullptr)}};
}

json optional_time(std::optional<std::int64_t> ms) {
  return ms ? json(utc_text(ms)) : json(nullptr);
}

json summary_object(const event_summary& e) {
  return {{"id", e.id},
          {"endpoint", e.endpoint},
          {"kind", e.kind},
          {"appointment", e.appointment},
          {"captured_at", utc_text(e.captured_at_ms)},
          {"state", e.state},
          {"attempts", e.attempts},
          {"last_attempt_at", optional_time(e.last_attempt_ms)},
          {"last_error", e.last_error},
          {"dead_reason", e.dead_reason}};
}

json attempt_object(const attempt_record& a) {
  return {{"attempt", a.attempt}, {"at", utc_text(a.at_ms)},    {"status", a.status},
          {"error", a.error},     {"latency_ms", a.latency_ms}, {"response_body", a.response_body}};
}

// "%" followed by two hex digits, and '+' for a blank, as browsers send a form's query.
std::optional<std::string> url_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%') {
      unsigned v = 0;
      if (i + 2 >= s.size()) return std::nullopt;
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      if (ec != std::errc{} || p != s.data() + i + 3) return std::nullopt;
      out += static_cast<char>(v);
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

constexpr std::string_view page_style = R"(
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2430;background:#fafbfc}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta{color:#5b6675;margin-bottom:1em}
table{border-collapse:collapse;background:#fff;min-width:40em}
th,td{border:1px solid #d5dae1;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600;padding:.05em .45em;border-radius:.3em}
.healthy{background:#dcf5e3;color:#135c2a}.failing{background:#fff1cc;color:#6b4e00}
.open{background:#fde0dd;color:#8a1c12}.paused{background:#e4e7ec;color:#39414d}
.dead{background:#fde0dd;color:#8a1c12}.retrying{background:#fff1cc;color:#6b4e00}
.delivered{background:#dcf5e3;color:#135c2a}.pending,.skipped{background:#e4e7ec;color:#39414d}
table+table{margin-top:.8em}pre{white-space:pre-wrap;word-break:break-all;margin:0;max-width:60em}
.note{color:#5b6675}
)";

std::string page_head(std::string_view title, bool refresh) {
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  if (refresh) out += "<meta http-equiv=\"refresh\" content=\"10\">\n";
  out += "<title>" + html_escape(title) + "</title>\n<style>" + std::string(page_style) +
         "</style>\n</head>\n<body>\n";
  return out;
}

std::string state_badge(const std::string& state) {
  // The class is one of a fixed set: a state the page does not know gets none.
  static constexpr std::array<std::string_view, 9> known{"healthy",  "failing",   "open",    "paused", "dead",
                                                         "retrying", "delivered", "pending", "skipped"};
  const bool styled = std::find(known.begin(), known.end(), state) != known.end();
  return "<span class=\"state" + (styled ? " " + state : std::string()) + "\">" + html_escape(state) +
         "</span>";
}

// An age in the unit a person reads at a glance: seconds, minutes, hours, then days.
std::string age_text(std::optional<double> seconds) {
  if (!seconds) return "";
  const double s = *seconds;
  char buf[32];
  if (s < 120)
    std::snprintf(buf, sizeof buf, "%.1f s", s);
  else if (s < 2 * 3600)
    std::snprintf(buf, sizeof buf, "%.0f min", s / 60);
  else if (s < 2 * 86400)
    std::snprintf(buf, sizeof buf, "%.1f h", s / 3600);
  else
    std::snprintf(buf, sizeof buf, "%.1f days", s / 86400);
  return buf;
}

std::string event_link(std::int64_t id) {
  const auto n = std::to_string(id);
  return "<a href=\"/events/" + n + "\">" + n + "</a>";
}

}  // namespace

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      switch (c) {
        case '&':
          out += "&amp;";
          break;
        case '<':
          out += "&lt;";
          break;
        case '>':
          out += "&gt;";
          break;
        case '"':
          out += "&quot;";
          break;
        case '\'':
          out += "&#39;";
          break;
        case '\t':
        case '\n':
          out += static_cast<char>(c);
          break;
        default:
          out += (c < 0x20 || c == 0x7f) ? ' ' : static_cast<char>(c);
      }
      ++i;
      continue;
    }
    // A well-formed UTF-8 sequence is copied; anything else is one replacement character per byte.
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    }
    bool ok = len != 0 && i + len <= n;
    for (std::size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xc0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (ok)
      ok = !(len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) &&
           !(len == 4 && (cp < 0x10000 || cp > 0x10ffff));
    if (ok) {
      out.append(s.data() + i, len);
      i += len;
    } else {
      out += "\xef\xbf\xbd";
      ++i;
    }
  }
  return out;
}

std::string utc_text(std::optional<std::int64_t> unix_ms) {
  if (!unix_ms) return "";
  std::time_t t = static_cast<std::time_t>(*unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string status_json(const std::vector<endpoint_status>& report) {
  auto out = json::array();
  for (const auto& s : report) out.push_back(endpoint_object(s));
  return dump(out);
}

std::string endpoint_status_json(const endpoint_status& s) {
  return dump(endpoint_object(s));
}

std::string events_json(const std::vector<event_summary>& events) {
  auto list = json::array();
  for (const auto& e : events) list.push_back(summary_object(e));
  return dump({{"events", list}});
}

std::string event_json(std::int64_t id, const std::vector<event_detail>& detail, bool with_payload) {
  auto list = json::array();
  for (const auto& d : detail) {
    auto o = summary_object(d.summary);
    o["webhook_id"] = d.webhook_id;
    auto attempts = json::array();
    for (const auto& a : d.attempts) attempts.push_back(attempt_object(a));
    o["failed_attempts"] = attempts;  // "attempts" stays the count
    if (with_payload) o["payload"] = d.payload;
    list.push_back(o);
  }
  return dump({{"id", id}, {"endpoints", list}});
}

std::variant<event_filter, std::string> parse_event_query(std::string_view query) {
  event_filter f;
  auto time_of = [](const std::string& v) -> std::optional<std::int64_t> {
    std::int64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (!v.empty() && ec == std::errc{} && p == v.data() + v.size()) return n;
    return cli::parse_time(v);
  };
  while (!query.empty()) {
    const auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (pair.empty()) continue;
    const auto eq = pair.find('=');
    const auto name = url_decode(pair.substr(0, eq));
    const auto value = url_decode(eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1));
    if (!name || !value) return "malformed percent-encoding in the query";
    // An empty value means the parameter was not given (a form's empty field).
    if (value->empty()) continue;
    if (*name == "appointment") {
      f.appointment = *value;
    } else if (*name == "endpoint") {
      f.endpoint = *value;
    } else if (*name == "state") {
      static constexpr std::array<std::string_view, 5> states{"pending", "delivered", "retrying", "dead",
                                                              "skipped"};
      if (std::find(states.begin(), states.end(), *value) == states.end())
        return "state: expected pending, delivered, retrying, dead or skipped";
      f.state = *value;
    } else if (*name == "kind") {
      static constexpr std::array<std::string_view, 6> kinds{"created", "rescheduled", "cancelled",
                                                             "no_show", "reverted",    "checked_in"};
      if (std::find(kinds.begin(), kinds.end(), *value) == kinds.end())
        return "kind: expected created, rescheduled, cancelled, no_show, reverted or checked_in";
      f.kind = *value;
    } else if (*name == "since" || *name == "until") {
      auto t = time_of(*value);
      if (!t) return *name + ": expected RFC 3339 (2024-05-01T12:00:00Z), a date or unix seconds";
      (*name == "since" ? f.since : f.until) = t;
    } else if (*name == "limit") {
      std::size_t n = 0;
      auto [p, ec] = std::from_chars(value->data(), value->data() + value->size(), n);
      if (ec != std::errc{} || p != value->data() + value->size() || n < 1 || n > 1000)
        return "limit: expected a number from 1 to 1000";
      f.limit = n;
    } else {
      return "unknown parameter '" + *name +
             "' (expected appointment, endpoint, state, kind, since, until, limit)";
    }
  }
  if (f.since && f.until && *f.since >= *f.until) return "since must be before until";
  return f;
}

std::string render_status_page(const status_page& page) {
  std::string out = page_head("appointment-relay status", true);
  out += "<h1>appointment-relay</h1>\n<div class=\"meta\">version " + html_escape(page.version) +
         " &middot; " + html_escape(utc_text(page.now_ms)) + " &middot; database " +
         (page.database_up ? "connected" : "<strong>not connected</strong>") +
         " &middot; refreshes every 10 s &middot; <a href=\"/api/status\">JSON</a></div>\n";

  out +=
      "<h2>Endpoints</h2>\n<table id=\"endpoints\">\n<tr><th>Endpoint</th><th>State</th><th>Backlog</th>"
      "<th>Oldest pending</th><th>Dead letters by reason</th></tr>\n";
  for (const auto& s : page.endpoints) {
    const auto& c = s.control;
    out += "<tr class=\"endpoint\"><td>" + html_escape(s.endpoint) + "</td><td>" + state_badge(state_of(c));
    if (c.paused)
      out += "<br>paused by " + html_escape(c.paused_by) + " at " + html_escape(utc_text(c.paused_at_ms)) +
             ": " + html_escape(c.pause_reason.empty() ? "(no reason given)" : c.pause_reason);
    if (c.health.health != endpoint_health::healthy)
      out += "<br>" + std::string(c.health.health == endpoint_health::open ? "breaker open" : "failing") +
             " since " + html_escape(utc_text(c.health.since_ms)) + ": " + html_escape(c.health.reason);
    if (c.health.health == endpoint_health::open)
      out += "<br>next probe at " + html_escape(utc_text(c.health.probe_at_ms));
    out += "</td><td class=\"num\">" + std::to_string(s.backlog) + "</td><td class=\"num\">" +
           age_text(s.oldest_pending_age_seconds) + "</td><td>";
    if (s.dead_by_reason.empty()) out += "none";
    for (const auto& [reason, n] : s.dead_by_reason)
      out += "<div>" + std::to_string(n) + " &times; " + html_escape(reason) + "</div>";
    if (s.oldest_dead_letter_age_seconds)
      out += "<div class=\"note\">oldest " + age_text(s.oldest_dead_letter_age_seconds) + " old</div>";
    out += "</td></tr>\n";
  }
  out += "</table>\n";

  out += "<h2>Last failures</h2>\n";
  if (!page.failures_error.empty()) {
    out += "<p class=\"note\">" + html_escape(page.failures_error) + "</p>\n";
  } else if (page.failures.empty()) {
    out += "<p class=\"note\">No event is retrying or dead.</p>\n";
  } else {
    out +=
        "<table id=\"failures\">\n<tr><th>Event</th><th>Endpoint</th><th>Kind</th><th>Appointment</th>"
        "<th>State</th><th>Attempts</th><th>Last attempt</th><th>Error</th></tr>\n";
    for (const auto& e : page.failures) {
      std::string error = e.last_error;
      if (!e.dead_reason.empty() && e.dead_reason != e.last_error)
        error += (error.empty() ? "" : "; ") + e.dead_reason;
      out += "<tr class=\"failure\"><td>" + event_link(e.id) + "</td><td>" + html_escape(e.endpoint) +
             "</td><td>" + html_escape(e.kind) + "</td><td>" + html_escape(e.appointment) + "</td><td>" +
             state_badge(e.state) + "</td><td class=\"num\">" + std::to_string(e.attempts) + "</td><td>" +
             html_escape(utc_text(e.last_attempt_ms)) + "</td><td>" + html_escape(error) + "</td></tr>\n";
    }
    out += "</table>\n";
  }
  out += "</body>\n</html>\n";
  return out;
}

std::string render_event_page(std::int64_t id, const std::vector<event_detail>& detail, bool with_payload,
                              const std::string& version) {
  const auto n = std::to_string(id);
  std::string out = page_head("appointment-relay event " + n, false);
  out += "<h1>Event " + n + "</h1>\n<div class=\"meta\">version " + html_escape(version) +
         " &middot; <a href=\"/\">status</a> &middot; <a href=\"/api/events/" + n + "\">JSON</a></div>\n";
  if (detail.empty()) out += "<p class=\"note\">No such event for the configured endpoints.</p>\n";
  for (const auto& d : detail) {
    const auto& e = d.summary;
    out += "<h2>Endpoint " + html_escape(e.endpoint) + "</h2>\n<table class=\"event\">\n";
    auto row = [&](std::string_view name, const std::string& escaped_value) {
      out += "<tr><th>" + std::string(name) + "</th><td>" + escaped_value + "</td></tr>\n";
    };
    row("State", state_badge(e.state));
    row("Kind", html_escape(e.kind));
    row("Appointment", html_escape(e.appointment));
    row("Captured", html_escape(utc_text(e.captured_at_ms)));
    row("webhook-id", html_escape(d.webhook_id));
    row("Attempts", std::to_string(e.attempts));
    if (!e.last_error.empty()) row("Last error", html_escape(e.last_error));
    if (!e.dead_reason.empty()) row("Dead letter", html_escape(e.dead_reason));
    row("Payload", with_payload ? "<pre>" + html_escape(d.payload) + "</pre>"
                                : "<span class=\"note\">shown only with the admin token</span>");
    out += "</table>\n";
    if (d.attempts.empty()) {
      out += "<p class=\"note\">No failed attempt recorded.</p>\n";
      continue;
    }
    out +=
        "<table class=\"attempts\">\n<tr><th>Attempt</th><th>At</th><th>Status</th><th>Error</th>"
        "<th>Latency</th><th>Response (first 1 KiB)</th></tr>\n";
    for (const auto& a : d.attempts) {
      char latency[32];
      std::snprintf(latency, sizeof latency, "%.1f ms", a.latency_ms);
      out += "<tr class=\"attempt\"><td class=\"num\">" + std::to_string(a.attempt) + "</td><td>" +
             html_escape(utc_text(a.at_ms)) + "</td><td class=\"num\">" +
             (a.status ? std::to_string(a.status) : std::string()) + "</td><td>" + html_escape(a.error) +
             "</td><td class=\"num\">" + latency + "</td><td><pre>" + html_escape(a.response_body) +
             "</pre></td></tr>\n";
    }
    out += "</table>\n";
  }
  out += "</body>\n</html>\n";
  return out;
}

}  // namespace appointment_relay
