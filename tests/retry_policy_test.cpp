#include "appointment_relay/retry_policy.hpp"

#include <gtest/gtest.h>

#include <limits>

namespace appointment_relay {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// 1994-11-06T08:49:37Z, the RFC 9110 example date.
constexpr std::int64_t rfc_example_unix = 784111777;

retry_settings settings_for_tests() {
  retry_settings s;
  s.base_delay = milliseconds(1000);
  s.max_delay = milliseconds(60'000);
  s.max_age = seconds(3600);
  s.max_attempts = 0;
  return s;
}

attempt_result http_status(int status) {
  return attempt_result{status, "", std::nullopt};
}

TEST(retry_policy, should_sort_every_class_of_status) {
  struct row {
    int status;
    std::string error;
    verdict expected;
    std::string reason;
  };
  const std::vector<row> rows = {
      {200, "", verdict::delivered, "http 200"},
      {201, "", verdict::delivered, "http 201"},
      {204, "", verdict::delivered, "http 204"},
      {299, "", verdict::delivered, "http 299"},
      {0, "connection refused", verdict::retry, "connection refused"},
      {0, "timeout", verdict::retry, "timeout"},
      {0, "connection reset", verdict::retry, "connection reset"},
      {0, "tls handshake: certificate verify failed", verdict::retry,
       "tls handshake: certificate verify failed"},
      {0, "resolve: Host not found", verdict::retry, "resolve: Host not found"},
      {0, "", verdict::retry, "no response"},
      {408, "", verdict::retry, "http 408"},
      {425, "", verdict::retry, "http 425"},
      {429, "", verdict::retry, "http 429"},
      {500, "", verdict::retry, "http 500"},
      {502, "", verdict::retry, "http 502"},
      {503, "", verdict::retry, "http 503"},
      {599, "", verdict::retry, "http 599"},
      {100, "", verdict::dead, "http 100"},
      {101, "", verdict::dead, "http 101"},
      {301, "", verdict::dead, "http 301"},
      {302, "", verdict::dead, "http 302"},
      {304, "", verdict::dead, "http 304"},
      {400, "", verdict::dead, "http 400"},
      {401, "", verdict::dead, "http 401"},
      {403, "", verdict::dead, "http 403"},
      {404, "", verdict::dead, "http 404"},
      {409, "", verdict::dead, "http 409"},
      {410, "", verdict::dead, "http 410"},
      {413, "", verdict::dead, "http 413"},
      {422, "", verdict::dead, "http 422"},
      {499, "", verdict::dead, "http 499"},
  };
  for (const row& r : rows) {
    const decision d = decide(settings_for_tests(), attempt_result{r.status, r.error, std::nullopt}, 1,
                              milliseconds(0), 0, 0.5);
    EXPECT_EQ(d.what, r.expected) << "status " << r.status;
    EXPECT_EQ(d.reason, r.reason) << "status " << r.status;
    if (r.expected == verdict::retry) {
      EXPECT_EQ(d.delay, milliseconds(500)) << "status " << r.status;
    }
  }
}

TEST(retry_policy, should_grow_exponentially_up_to_the_cap) {
  struct row {
    int attempts;
    milliseconds expected;  // jitter just below 1
  };
  const std::vector<row> rows = {
      {1, milliseconds(999)},        {2, milliseconds(1998)},   {3, milliseconds(3996)},
      {4, milliseconds(7992)},       {5, milliseconds(15984)},  {6, milliseconds(31968)},
      {7, milliseconds(59940)},      {8, milliseconds(59940)},  {30, milliseconds(59940)},
      {63, milliseconds(59940)},     {64, milliseconds(59940)}, {100, milliseconds(59940)},
      {100000, milliseconds(59940)},
  };
  for (const row& r : rows) {
    const decision d = decide(settings_for_tests(), http_status(503), r.attempts, milliseconds(0), 0, 0.999);
    EXPECT_EQ(d.what, verdict::retry) << "attempt " << r.attempts;
    EXPECT_EQ(d.delay, r.expected) << "attempt " << r.attempts;
  }
}

TEST(retry_policy, should_apply_full_jitter) {
  for (int attempts : {1, 3, 7, 100}) {
    const decision zero = decide(settings_for_tests(), http_status(500), attempts, milliseconds(0), 0, 0.0);
    EXPECT_EQ(zero.what, verdict::retry);
    EXPECT_EQ(zero.delay, milliseconds(0)) << "attempt " << attempts;
  }
  const decision half = decide(settings_for_tests(), http_status(500), 3, milliseconds(0), 0, 0.5);
  EXPECT_EQ(half.delay, milliseconds(2000));
}

TEST(retry_policy, should_not_overflow_with_a_huge_base_delay_at_attempt_100) {
  retry_settings s = settings_for_tests();
  s.base_delay = milliseconds(std::numeric_limits<std::int64_t>::max() / 4);
  s.max_delay = milliseconds(std::numeric_limits<std::int64_t>::max() / 2);
  s.max_age = seconds(std::numeric_limits<std::int64_t>::max());
  const decision d = decide(s, http_status(500), 100, milliseconds(0), 0, 0.0);
  EXPECT_EQ(d.delay, milliseconds(0));
  const decision big = decide(s, http_status(500), 100, milliseconds(0), 0, 0.999);
  EXPECT_GT(big.delay, milliseconds(0));
  EXPECT_LE(big.delay, s.max_delay);
}

TEST(retry_policy, should_honour_retry_after_up_to_the_cap) {
  struct row {
    int status;
    std::string retry_after;
    milliseconds expected;
  };
  const std::vector<row> rows = {
      {429, "30", milliseconds(30'000)},
      {503, "0", milliseconds(0)},
      {503, " 7 ", milliseconds(7'000)},
      {429, "3600", milliseconds(60'000)},                           // capped at max_delay
      {429, "99999999999999999999999", milliseconds(60'000)},        // saturates, capped
      {503, "Sun, 06 Nov 1994 08:50:07 GMT", milliseconds(30'000)},  // 30 s after now
      {503, "Sunday, 06-Nov-94 08:50:07 GMT", milliseconds(30'000)},
      {503, "Sun Nov  6 08:50:07 1994", milliseconds(30'000)},
      {503, "Mon, 07 Nov 1994 08:49:37 GMT", milliseconds(60'000)},  // a day ahead: capped
      {503, "Sun, 06 Nov 1994 08:49:00 GMT", milliseconds(0)},       // in the past
      {500, "12", milliseconds(12'000)},                             // any retryable status
      {429, "soon", milliseconds(3996)},                             // unreadable: the jittered backoff
  };
  for (const row& r : rows) {
    const decision d = decide(settings_for_tests(), attempt_result{r.status, "", r.retry_after}, 3,
                              milliseconds(0), rfc_example_unix, 0.999);
    EXPECT_EQ(d.what, verdict::retry) << r.retry_after;
    EXPECT_EQ(d.delay, r.expected) << r.retry_after;
  }
}

TEST(retry_policy, should_ignore_retry_after_on_a_permanent_failure) {
  const decision d =
      decide(settings_for_tests(), attempt_result{400, "", std::string("5")}, 1, milliseconds(0), 0, 0.5);
  EXPECT_EQ(d.what, verdict::dead);
  EXPECT_EQ(d.reason, "http 400");
}

TEST(retry_policy, should_give_up_after_max_attempts) {
  retry_settings s = settings_for_tests();
  s.max_attempts = 3;
  EXPECT_EQ(decide(s, http_status(503), 1, milliseconds(0), 0, 0.5).what, verdict::retry);
  EXPECT_EQ(decide(s, http_status(503), 2, milliseconds(0), 0, 0.5).what, verdict::retry);
  const decision last = decide(s, http_status(503), 3, milliseconds(0), 0, 0.5);
  EXPECT_EQ(last.what, verdict::dead);
  EXPECT_EQ(last.reason, "max attempts reached (http 503)");
  const decision refused =
      decide(s, attempt_result{0, "connection refused", std::nullopt}, 4, milliseconds(0), 0, 0.5);
  EXPECT_EQ(refused.what, verdict::dead);
  EXPECT_EQ(refused.reason, "max attempts reached (connection refused)");
  // A success on the last attempt is still a success, a permanent failure keeps its own reason.
  EXPECT_EQ(decide(s, http_status(200), 3, milliseconds(0), 0, 0.5).what, verdict::delivered);
  EXPECT_EQ(decide(s, http_status(404), 3, milliseconds(0), 0, 0.5).reason, "http 404");
}

TEST(retry_policy, should_not_limit_attempts_when_max_attempts_is_zero) {
  const decision d = decide(settings_for_tests(), http_status(503), 1'000'000, milliseconds(0), 0, 0.5);
  EXPECT_EQ(d.what, verdict::retry);
}

TEST(retry_policy, should_give_up_when_the_next_attempt_would_pass_max_age) {
  const retry_settings s = settings_for_tests();  // max_age 3600 s
  struct row {
    milliseconds age;
    double jitter;
    std::optional<std::string> retry_after;
    verdict expected;
  };
  const std::vector<row> rows = {
      {milliseconds(3'500'000), 0.999, std::nullopt, verdict::retry},       // 3500 s + 59.94 s
      {milliseconds(3'590'000), 0.999, std::nullopt, verdict::dead},        // 3590 s + 59.94 s
      {milliseconds(3'590'000), 0.0, std::nullopt, verdict::retry},         // 3590 s + 0
      {milliseconds(3'600'000), 0.0, std::nullopt, verdict::retry},         // exactly at max age
      {milliseconds(3'600'001), 0.0, std::nullopt, verdict::dead},          // past it
      {milliseconds(3'590'000), 0.0, std::string("20"), verdict::dead},     // Retry-After pushes it past
      {milliseconds(3'570'000), 0.999, std::string("20"), verdict::retry},  // Retry-After keeps it inside
  };
  for (const row& r : rows) {
    const decision d = decide(s, attempt_result{503, "", r.retry_after}, 10, r.age, 0, r.jitter);
    EXPECT_EQ(d.what, r.expected) << r.age.count() << " " << r.jitter;
    if (r.expected == verdict::dead) {
      EXPECT_EQ(d.reason, "max age reached (http 503)");
    }
  }
}

// The time an event waiting without attempts (paused, breaker open) ends: just past first attempt + max_age,
// the same instant decide() calls past it; saturating instead of overflowing.
TEST(retry_policy, should_place_the_max_age_expiry_just_past_max_age_and_saturate) {
  constexpr std::int64_t ms_max = std::numeric_limits<std::int64_t>::max();
  retry_settings s = settings_for_tests();  // max_age 3600 s
  EXPECT_EQ(max_age_ms(s), 3'600'000);
  EXPECT_EQ(max_age_expiry_ms(s, 1'000), 3'601'001);
  // decide() at that age (expiry - first attempt) calls it past max_age, one millisecond earlier not.
  EXPECT_EQ(decide(s, attempt_result{503, "", std::nullopt}, 2, milliseconds(3'600'001), 0, 0.0).what,
            verdict::dead);
  EXPECT_EQ(decide(s, attempt_result{503, "", std::nullopt}, 2, milliseconds(3'600'000), 0, 0.0).what,
            verdict::retry);
  EXPECT_EQ(max_age_expiry_ms(s, ms_max - 10), ms_max);
  s.max_age = std::chrono::seconds(ms_max / 1000 + 1);
  EXPECT_EQ(max_age_ms(s), ms_max);
  EXPECT_EQ(max_age_expiry_ms(s, 0), ms_max);
  s.max_age = std::chrono::seconds(-5);
  EXPECT_EQ(max_age_ms(s), 0);
  EXPECT_EQ(max_age_expiry_ms(s, 1'000), 1'001);
}

TEST(retry_policy, should_parse_retry_after_in_every_form) {
  struct row {
    std::string value;
    std::optional<seconds> expected;
  };
  const std::vector<row> rows = {
      {"0", seconds(0)},
      {"120", seconds(120)},
      {"Sun, 06 Nov 1994 08:49:37 GMT", seconds(0)},
      {"Sun, 06 Nov 1994 08:51:37 GMT", seconds(120)},
      {"Sunday, 06-Nov-94 08:51:37 GMT", seconds(120)},
      {"Sun Nov  6 08:51:37 1994", seconds(120)},
      {"Tue, 29 Nov 1994 08:49:37 GMT", seconds(23 * 86400)},
      {"Sat, 06 Nov 1993 08:49:37 GMT", seconds(0)},  // past
      {"", std::nullopt},
      {"   ", std::nullopt},
      {"-5", std::nullopt},
      {"1.5", std::nullopt},
      {"soon", std::nullopt},
      {"Sun, 06 Nov 1994 08:49:37 UTC", std::nullopt},
      {"Sun, 31 Nov 1994 08:49:37 GMT", std::nullopt},  // no 31 November
      {"Sun, 06 Foo 1994 08:49:37 GMT", std::nullopt},
      {"Sun, 06 Nov 1994 25:49:37 GMT", std::nullopt},
      {"Sun, 06 Nov 1994 08:49:37 GMT extra", std::nullopt},
      {"Sun Nov 6 08:49:37 1994", std::nullopt},
  };
  for (const row& r : rows) {
    EXPECT_EQ(parse_retry_after(r.value, rfc_example_unix), r.expected) << "'" << r.value << "'";
  }
}

TEST(retry_policy, should_read_a_two_digit_year_as_the_nearest_past_century) {
  // now: 2024-01-01T00:00:00Z. "06-Nov-94" is 1994 (2094 is more than 50 years ahead), "06-Nov-25" is 2025.
  constexpr std::int64_t new_year_2024 = 1704067200;
  EXPECT_EQ(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", new_year_2024), seconds(0));
  const auto ahead = parse_retry_after("Thursday, 06-Nov-25 00:00:00 GMT", new_year_2024);
  ASSERT_TRUE(ahead);
  EXPECT_EQ(*ahead, seconds(1762387200 - new_year_2024));
  // Leap day.
  EXPECT_EQ(parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", new_year_2024), seconds(59 * 86400));
}

}  // namespace
}  // namespace appointment_relay
