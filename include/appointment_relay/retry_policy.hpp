#pragma once
// What happens after one delivery attempt: delivered, retried at a given time, or dead-lettered.
// A pure function over plain values: the clock reading and the random draw are parameters.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace appointment_relay {

struct retry_settings {
  std::chrono::milliseconds base_delay{1000};
  std::chrono::milliseconds max_delay{std::chrono::minutes(5)};
  std::chrono::seconds max_age{std::chrono::hours(24)};  // since the first attempt
  int max_attempts = 0;                                  // 0: no limit but max_age
};

// The result of one attempt, as the HTTP client saw it.
struct attempt_result {
  int status = 0;     // HTTP status; 0 when no response was read
  std::string error;  // transport error text when status == 0 (refused, timeout, reset, ...)
  std::optional<std::string> retry_after;  // the Retry-After header, verbatim
};

enum class verdict { delivered, retry, dead };

// Why an event was dead-lettered: decides the bounded label of the dead-letter metric (the full reason text
// goes to the log and the database).
enum class dead_cause {
  none,            // not dead
  http_status,     // a status that is not retried (other 4xx, 3xx, 1xx as a final answer)
  max_attempts,    // retry.max_attempts reached
  max_age,         // retry.max_age reached
  rejected,        // the classifier refused the captured change
  unreadable_row,  // the outbox row could not be decoded
};

// "http_404", "max_attempts", "max_age", "rejected", "unreadable_row" (status: the HTTP status, for
// http_status).
std::string dead_letter_label(dead_cause cause, int status);

struct decision {
  verdict what = verdict::dead;
  dead_cause cause = dead_cause::none;  // verdict::dead: why
  std::chrono::milliseconds delay{0};   // verdict::retry: wait this long before the next attempt
  std::string reason;  // "http 503", "connection refused", "http 400", "max age reached", ...
};

// attempts: attempts made so far, this one included (>= 1).
// age: time since the event's first attempt, this one included.
// now_unix: wall clock in unix seconds (to read a Retry-After HTTP date).
// jitter: a uniform draw in [0, 1) (full jitter: delay = jitter * min(max_delay, base * 2^(attempts-1))).
decision decide(const retry_settings& settings, const attempt_result& result, int attempts,
                std::chrono::milliseconds age, std::int64_t now_unix, double jitter);

// retry.max_age in milliseconds: 0 for a negative setting, INT64_MAX where milliseconds would overflow.
std::int64_t max_age_ms(const retry_settings& settings);

// The first unix-ms time at which an event first attempted at first_attempt_ms is past max_age (INT64_MAX
// when that time cannot be represented).
std::int64_t max_age_expiry_ms(const retry_settings& settings, std::int64_t first_attempt_ms);

// Retry-After as seconds or an HTTP date (RFC 9110 IMF-fixdate, also RFC 850 and asctime forms).
// The delay from now_unix, never negative; empty when unreadable.
std::optional<std::chrono::seconds> parse_retry_after(std::string_view value, std::int64_t now_unix);

}  // namespace appointment_relay
