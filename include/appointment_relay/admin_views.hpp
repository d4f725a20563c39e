#pragma once
// What the admin API and the status page show, rendered from what the store read: JSON for /api/*, HTML
// for / and /events/ID. Pure: no I/O, no clock (the time is passed in).
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "appointment_relay/store.hpp"

namespace appointment_relay {

// s with & < > " ' as character references, safe inside element content and quoted attribute values; an
// invalid UTF-8 byte becomes U+FFFD, a control character other than tab and newline a space.
std::string html_escape(std::string_view s);

// unix ms as "2024-05-01T12:00:00Z"; empty for none.
std::string utc_text(std::optional<std::int64_t> unix_ms);

// The report as `appointment-relay status --json` prints it (an array, one object per endpoint), dumped
// with an indent of 2 and a final newline.
std::string status_json(const std::vector<endpoint_status>& report);
// One endpoint's object of status_json (not dumped).
std::string endpoint_status_json(const endpoint_status& s);

// /api/events: {"events": [...]}, each event as event_summary holds it, times as utc_text.
std::string events_json(const std::vector<event_summary>& events);
// /api/events/ID: {"id", "endpoints": [{summary fields, "webhook_id", "attempts": [...], "payload"?}]}; the
// payload only when with_payload.
std::string event_json(std::int64_t id, const std::vector<event_detail>& detail, bool with_payload);

// The query of /api/events (without '?'): appointment, endpoint, state, kind, since, until (RFC 3339, a date
// or unix seconds), limit (1-1000, default 100). A string saying what is wrong for a bad or unknown
// parameter.
std::variant<event_filter, std::string> parse_event_query(std::string_view query);

struct status_page {
  std::vector<endpoint_status> endpoints;
  std::vector<event_summary> failures;  // the last retrying and dead events, newest first
  std::string failures_error;           // why failures could not be read, if they could not
  bool database_up = false;
  std::int64_t now_ms = 0;
  std::string version;
};
// The page at /: endpoints with state, backlog, oldest pending age and dead letters by reason, the last
// failures with their errors and links to /events/ID. Refreshes itself every 10 s; no script, no external
// asset. Every value from the database is escaped.
std::string render_status_page(const status_page& page);

// The page at /events/ID: the event per endpoint with every recorded attempt; the payload only when
// with_payload.
std::string render_event_page(std::int64_t id, const std::vector<event_detail>& detail, bool with_payload,
                              const std::string& version);

}  // namespace appointment_relay
