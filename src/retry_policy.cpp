#include "appointment_relay/retry_policy.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <limits>

namespace appointment_relay {
namespace {

using std::chrono::milliseconds;

bool retryable_status(int status) {
  return status == 0 || status == 408 || status == 425 || status == 429 || (status >= 500 && status <= 599);
}

std::string describe(const attempt_result& result) {
  if (result.status != 0) return "http " + std::to_string(result.status);
  return result.error.empty() ? std::string("no response") : result.error;
}

// min(max_delay, base * 2^(attempts-1)) without overflowing for large attempt counts.
milliseconds capped_backoff(const retry_settings& s, int attempts) {
  const std::int64_t cap = std::max<std::int64_t>(0, s.max_delay.count());
  std::int64_t delay = std::max<std::int64_t>(0, s.base_delay.count());
  for (int i = 1; i < attempts && delay < cap; ++i) {
    delay = delay > cap / 2 ? cap : delay * 2;
  }
  return milliseconds(std::min(delay, cap));
}

// ---- HTTP dates (RFC 9110 section 5.6.7), parsed by hand: no locale, no strptime, no time zone.

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

// The civil year of a unix time (for RFC 850 two-digit years).
std::int64_t year_of(std::int64_t unix_seconds) {
  std::int64_t z = unix_seconds / 86400 + 719468;
  if (unix_seconds % 86400 < 0) --z;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2 ? 1 : 0);
}

bool leap(std::int64_t y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

unsigned days_in_month(std::int64_t y, unsigned m) {
  static constexpr std::array<unsigned, 12> days{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap(y) ? 29 : days[m - 1];
}

constexpr std::array<std::string_view, 12> month_names{"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
constexpr std::array<std::string_view, 7> short_days{"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
constexpr std::array<std::string_view, 7> long_days{"Monday", "Tuesday",  "Wednesday", "Thursday",
                                                    "Friday", "Saturday", "Sunday"};

// A tiny cursor over the text; every reader returns false and leaves the cursor unusable on mismatch.
class cursor {
 public:
  explicit cursor(std::string_view text) : text_(text) {}
  bool done() const { return pos_ == text_.size(); }
  bool literal(std::string_view s) {
    if (text_.substr(pos_, s.size()) != s) return false;
    pos_ += s.size();
    return true;
  }
  bool digits(std::size_t count, int& out) {
    if (text_.size() - pos_ < count) return false;
    int v = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const char c = text_[pos_ + i];
      if (c < '0' || c > '9') return false;
      v = v * 10 + (c - '0');
    }
    pos_ += count;
    out = v;
    return true;
  }
  template <std::size_t N>
  bool one_of(const std::array<std::string_view, N>& names, unsigned& index) {
    for (std::size_t i = 0; i < N; ++i) {
      if (literal(names[i])) {
        index = static_cast<unsigned>(i);
        return true;
      }
    }
    return false;
  }
  // "HH:MM:SS"
  bool time_of_day(int& h, int& m, int& s) {
    return digits(2, h) && literal(":") && digits(2, m) && literal(":") && digits(2, s);
  }

 private:
  std::string_view text_;
  std::size_t pos_ = 0;
};

struct civil_time {
  std::int64_t year = 0;
  int month = 0;  // 1..12
  int day = 0, hour = 0, minute = 0, second = 0;
};

std::optional<civil_time> parse_imf_fixdate(std::string_view text) {  // Sun, 06 Nov 1994 08:49:37 GMT
  cursor c(text);
  civil_time t;
  unsigned wd = 0, mon = 0;
  int year = 0;
  if (!(c.one_of(short_days, wd) && c.literal(", ") && c.digits(2, t.day) && c.literal(" ") &&
        c.one_of(month_names, mon) && c.literal(" ") && c.digits(4, year) && c.literal(" ") &&
        c.time_of_day(t.hour, t.minute, t.second) && c.literal(" GMT") && c.done()))
    return std::nullopt;
  t.month = static_cast<int>(mon) + 1;
  t.year = year;
  return t;
}

std::optional<civil_time> parse_rfc850(std::string_view text,
                                       std::int64_t now_unix) {  // Sunday, 06-Nov-94 ...
  cursor c(text);
  civil_time t;
  unsigned wd = 0, mon = 0;
  int yy = 0;
  if (!(c.one_of(long_days, wd) && c.literal(", ") && c.digits(2, t.day) && c.literal("-") &&
        c.one_of(month_names, mon) && c.literal("-") && c.digits(2, yy) && c.literal(" ") &&
        c.time_of_day(t.hour, t.minute, t.second) && c.literal(" GMT") && c.done()))
    return std::nullopt;
  t.month = static_cast<int>(mon) + 1;
  // RFC 9110: a two-digit year more than 50 years in the future means the most recent past such year.
  const std::int64_t now_year = year_of(now_unix);
  std::int64_t year = now_year - now_year % 100 + yy;
  if (year > now_year + 50) year -= 100;
  t.year = year;
  return t;
}

std::optional<civil_time> parse_asctime(std::string_view text) {  // Sun Nov  6 08:49:37 1994
  cursor c(text);
  civil_time t;
  unsigned wd = 0, mon = 0;
  int year = 0;
  if (!(c.one_of(short_days, wd) && c.literal(" ") && c.one_of(month_names, mon) && c.literal(" ")))
    return std::nullopt;
  if (!(c.literal(" ") ? c.digits(1, t.day) : c.digits(2, t.day))) return std::nullopt;
  if (!(c.literal(" ") && c.time_of_day(t.hour, t.minute, t.second) && c.literal(" ") && c.digits(4, year) &&
        c.done()))
    return std::nullopt;
  t.month = static_cast<int>(mon) + 1;
  t.year = year;
  return t;
}

std::optional<std::int64_t> to_unix(const civil_time& t) {
  if (t.month < 1 || t.month > 12 || t.day < 1 ||
      static_cast<unsigned>(t.day) > days_in_month(t.year, static_cast<unsigned>(t.month)) || t.hour > 23 ||
      t.minute > 59 || t.second > 60)
    return std::nullopt;
  return days_from_civil(t.year, static_cast<unsigned>(t.month), static_cast<unsigned>(t.day)) * 86400 +
         t.hour * 3600 + t.minute * 60 + t.second;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::optional<std::chrono::seconds> parse_retry_after(std::string_view value, std::int64_t now_unix) {
  value = trim(value);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    // delay-seconds; an absurdly long value saturates (the caller caps it at max_delay anyway).
    constexpr std::int64_t limit = std::numeric_limits<std::int32_t>::max();
    std::int64_t seconds = 0;
    for (char c : value) {
      seconds = std::min(limit, seconds * 10 + (c - '0'));
    }
    return std::chrono::seconds(seconds);
  }
  std::optional<civil_time> t = parse_imf_fixdate(value);
  if (!t) t = parse_rfc850(value, now_unix);
  if (!t) t = parse_asctime(value);
  if (!t) return std::nullopt;
  const std::optional<std::int64_t> when = to_unix(*t);
  if (!when) return std::nullopt;
  return std::chrono::seconds(std::max<std::int64_t>(0, *when - now_unix));
}

std::string dead_letter_label(dead_cause cause, int status) {
  switch (cause) {
    case dead_cause::http_status:
      return "http_" + std::to_string(status);
    case dead_cause::max_attempts:
      return "max_attempts";
    case dead_cause::max_age:
      return "max_age";
    case dead_cause::rejected:
      return "rejected";
    case dead_cause::unreadable_row:
      return "unreadable_row";
    case dead_cause::none:
      break;
  }
  return "other";
}

std::int64_t max_age_ms(const retry_settings& settings) {
  constexpr std::int64_t ms_max = std::numeric_limits<std::int64_t>::max();
  const std::int64_t seconds = std::max<std::int64_t>(0, settings.max_age.count());
  return seconds > ms_max / 1000 ? ms_max : seconds * 1000;
}

std::int64_t max_age_expiry_ms(const retry_settings& settings, std::int64_t first_attempt_ms) {
  constexpr std::int64_t ms_max = std::numeric_limits<std::int64_t>::max();
  const std::int64_t limit_ms = max_age_ms(settings);
  return first_attempt_ms <= ms_max - limit_ms - 1 ? first_attempt_ms + limit_ms + 1 : ms_max;
}

decision decide(const retry_settings& settings, const attempt_result& result, int attempts,
                std::chrono::milliseconds age, std::int64_t now_unix, double jitter) {
  decision d;
  if (result.status >= 200 && result.status <= 299) {
    d.what = verdict::delivered;
    d.reason = "http " + std::to_string(result.status);
    return d;
  }
  d.reason = describe(result);
  if (!retryable_status(result.status)) {
    d.what = verdict::dead;
    d.cause = dead_cause::http_status;
    return d;
  }

  const milliseconds cap = capped_backoff(settings, attempts);
  std::optional<std::chrono::seconds> retry_after;
  if (result.retry_after) retry_after = parse_retry_after(*result.retry_after, now_unix);
  if (retry_after) {
    // The server said when; it replaces the jittered backoff but never exceeds max_delay.
    const std::int64_t max_ms = std::max<std::int64_t>(0, settings.max_delay.count());
    const std::int64_t wanted = retry_after->count() > max_ms / 1000 ? max_ms : retry_after->count() * 1000;
    d.delay = milliseconds(std::min(wanted, max_ms));
  } else {
    const double j = std::clamp(jitter, 0.0, 1.0);
    // Rounded, not truncated (0.999 * 1000 is 998.99...), and never above the cap in spite of rounding.
    const double wanted = std::round(j * static_cast<double>(cap.count()));
    d.delay =
        wanted >= static_cast<double>(cap.count()) ? cap : milliseconds(static_cast<std::int64_t>(wanted));
  }

  if (settings.max_attempts > 0 && attempts >= settings.max_attempts) {
    d.what = verdict::dead;
    d.cause = dead_cause::max_attempts;
    d.delay = milliseconds(0);
    d.reason = "max attempts reached (" + d.reason + ")";
    return d;
  }
  // age + delay > max_age, written so that the sum does not overflow.
  const std::int64_t limit_ms = max_age_ms(settings);
  if (age.count() > limit_ms || d.delay.count() > limit_ms - age.count()) {
    d.what = verdict::dead;
    d.cause = dead_cause::max_age;
    d.delay = milliseconds(0);
    d.reason = "max age reached (" + d.reason + ")";
    return d;
  }
  d.what = verdict::retry;
  return d;
}

}  // namespace appointment_relay
