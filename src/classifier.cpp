#include "appointment_relay/classifier.hpp"

#include "appointment_relay/json_escape.hpp"

#include <array>

namespace appointment_relay {
namespace {

// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z as unix seconds: the range format_utc can write with a
// four-digit year.
constexpr std::int64_t min_unix_seconds = -62135596800;
constexpr std::int64_t max_unix_seconds = 253402300799;
// More minutes than the whole supported range holds: any longer duration cannot end inside it. Bounding the
// duration first keeps start + duration * 60 far from int64 overflow.
constexpr std::int64_t max_duration_minutes = (max_unix_seconds - min_unix_seconds) / 60 + 1;

constexpr std::size_t utc_text_size = 25;  // "2021-12-24T21:30:00+00:00"

struct civil_date {
  std::int64_t year;
  unsigned month;  // 1..12
  unsigned day;    // 1..31
};

// Proleptic Gregorian date of a day count since 1970-01-01. The calendar repeats every 400 years
// (146097 days); inside one such era, counting years from March 1st puts the leap day at the end of the
// year, so the month follows from the day of the year by a linear formula.
constexpr civil_date civil_from_days(std::int64_t days) noexcept {
  const std::int64_t shifted = days + 719468;  // days since 0000-03-01
  const std::int64_t era = (shifted >= 0 ? shifted : shifted - 146096) / 146097;
  const auto day_of_era = static_cast<std::uint64_t>(shifted - era * 146097);  // 0..146096
  const std::uint64_t year_of_era =
      (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;  // 0..399
  const std::uint64_t day_of_year =
      day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);  // 0..365, from March 1st
  const std::uint64_t month_from_march = (5 * day_of_year + 2) / 153;          // 0..11
  const auto day = static_cast<unsigned>(day_of_year - (153 * month_from_march + 2) / 5 + 1);
  const auto month =
      static_cast<unsigned>(month_from_march < 10 ? month_from_march + 3 : month_from_march - 9);
  const std::int64_t year = static_cast<std::int64_t>(year_of_era) + era * 400 + (month <= 2 ? 1 : 0);
  return {year, month, day};
}

static_assert(civil_from_days(0).year == 1970 && civil_from_days(0).month == 1 &&
              civil_from_days(0).day == 1);
static_assert(civil_from_days(-1).year == 1969 && civil_from_days(-1).month == 12 &&
              civil_from_days(-1).day == 31);
static_assert(civil_from_days(11016).year == 2000 && civil_from_days(11016).month == 2 &&
              civil_from_days(11016).day == 29);

inline void put2(char* out, unsigned v) noexcept {
  out[0] = static_cast<char>('0' + v / 10);
  out[1] = static_cast<char>('0' + v % 10);
}

// Writes the 25 characters of unix_seconds; false (nothing written) outside years 0001..9999.
bool write_utc(std::int64_t unix_seconds, char* out) noexcept {
  if (unix_seconds < min_unix_seconds || unix_seconds > max_unix_seconds) return false;
  // Floor division: a negative time belongs to the day before the epoch, not to day 0.
  std::int64_t days = unix_seconds / 86400;
  std::int64_t second_of_day = unix_seconds % 86400;
  if (second_of_day < 0) {
    second_of_day += 86400;
    --days;
  }
  const civil_date date = civil_from_days(days);
  const auto year = static_cast<unsigned>(date.year);  // 1..9999 by the range check
  const auto sod = static_cast<unsigned>(second_of_day);
  put2(out, year / 100);
  put2(out + 2, year % 100);
  out[4] = '-';
  put2(out + 5, date.month);
  out[7] = '-';
  put2(out + 8, date.day);
  out[10] = 'T';
  put2(out + 11, sod / 3600);
  out[13] = ':';
  put2(out + 14, sod / 60 % 60);
  out[16] = ':';
  put2(out + 17, sod % 60);
  constexpr std::string_view offset = "+00:00";
  offset.copy(out + 19, offset.size());
  return true;
}

constexpr bool is_lower_hex(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}
constexpr bool is_hex(char c) noexcept {
  return is_lower_hex(c) || (c >= 'A' && c <= 'F');
}

// api_patient.key: uuid4().hex, 32 lowercase hex digits.
bool is_patient_key(std::string_view s) noexcept {
  if (s.size() != 32) return false;
  for (char c : s)
    if (!is_lower_hex(c)) return false;
  return true;
}

// uuid text form 8-4-4-4-12 (PostgreSQL writes lowercase; uppercase is still a uuid).
bool is_uuid_text(std::string_view s) noexcept {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const bool dash_position = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash_position ? s[i] != '-' : !is_hex(s[i])) return false;
  }
  return true;
}

bool is_state_code(std::string_view s) noexcept {
  if (s.size() != 3) return false;
  for (char c : s)
    if (c < 'A' || c > 'Z') return false;
  return true;
}

std::optional<notification_kind> notifying_state(std::string_view state) noexcept {
  if (state == "CLD") return notification_kind::cancelled;
  if (state == "NSW") return notification_kind::no_show;
  if (state == "RVT") return notification_kind::reverted;
  if (state == "CVD") return notification_kind::checked_in;
  return std::nullopt;
}

// JSON string literal. The classifier only writes validated ids (hex digits and dashes): the escapes are a
// guard for whoever loosens the validation, not a path taken today.
void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  append_json_escaped(s, out);
  out += '"';
}

// The fields every payload shares, checked after the ignore rules: the patient's key and the appointment's
// public id. Empty optional when both are well formed.
std::optional<rejected> check_identifiers(const captured_change& change) {
  if (!change.patient_key || change.patient_key->empty())
    return rejected{"patient_key is missing for an appointment with a patient"};
  if (!is_patient_key(*change.patient_key)) return rejected{"patient_key is not 32 lowercase hex digits"};
  if (!change.appointment_external_id || change.appointment_external_id->empty())
    return rejected{"appointment_external_id is missing"};
  if (!is_uuid_text(*change.appointment_external_id))
    return rejected{"appointment_external_id is not a uuid (8-4-4-4-12 hex digits)"};
  return std::nullopt;
}

// {"canvas_patient_key":"…","appointment_external_id":"…"[,"start_time":"…","end_time":"…"],"<kind>":true}
notification build(notification_kind kind, const captured_change& change, const char* start_text,
                   const char* end_text) {
  const std::string_view flag = to_string(kind);
  std::string payload;
  payload.reserve(192);
  payload += R"({"canvas_patient_key":)";
  append_json_string(payload, *change.patient_key);
  payload += R"(,"appointment_external_id":)";
  append_json_string(payload, *change.appointment_external_id);
  if (start_text != nullptr) {
    payload += R"(,"start_time":")";
    payload.append(start_text, utc_text_size);
    payload += R"(","end_time":")";
    payload.append(end_text, utc_text_size);
    payload += '"';
  }
  payload += R"(,")";
  payload += flag;
  payload += R"(":true})";
  return notification{kind, *change.appointment_external_id, std::move(payload)};
}

classification classify_appointment(const captured_change& change) {
  if (change.operation == change_operation::update)
    return ignored{"update of an existing appointment row is not notified"};
  if (change.entered_in_error) return ignored{"appointment entered in error"};
  if (!change.patient_id) return ignored{"appointment has no patient (schedule block)"};
  if (auto bad = check_identifiers(change)) return std::move(*bad);
  if (!change.start_time) return rejected{"start_time is missing"};
  if (!change.duration_minutes) return rejected{"duration_minutes is missing"};
  if (*change.duration_minutes < 0) return rejected{"duration_minutes is negative"};
  std::array<char, utc_text_size> start_text{};
  std::array<char, utc_text_size> end_text{};
  if (!write_utc(*change.start_time, start_text.data()))
    return rejected{"start_time is outside years 1..9999"};
  if (*change.duration_minutes > max_duration_minutes ||
      !write_utc(*change.start_time + *change.duration_minutes * 60, end_text.data()))
    return rejected{"end_time is outside years 1..9999"};
  const auto kind = change.rescheduled_from_id ? notification_kind::rescheduled : notification_kind::created;
  return build(kind, change, start_text.data(), end_text.data());
}

classification classify_state_event(const captured_change& change) {
  if (change.operation == change_operation::update)
    return ignored{"update of an existing note state event is not notified"};
  // A malformed code is not "another state": it says the capture is broken, so it is a dead letter.
  if (!change.state || !is_state_code(*change.state))
    return rejected{"note state is not a three-letter uppercase code"};
  const auto kind = notifying_state(*change.state);
  if (!kind) return ignored{"note state is not notified (only CLD, NSW, RVT and CVD are)"};
  if (!change.appointment_id) return ignored{"note carries no appointment"};
  if (change.entered_in_error) return ignored{"current appointment of the note entered in error"};
  if (!change.patient_id) return ignored{"current appointment of the note has no patient (schedule block)"};
  if (auto bad = check_identifiers(change)) return std::move(*bad);
  return build(*kind, change, nullptr, nullptr);
}

}  // namespace

std::string_view to_string(notification_kind kind) noexcept {
  switch (kind) {
    case notification_kind::created:
      return "created";
    case notification_kind::rescheduled:
      return "rescheduled";
    case notification_kind::cancelled:
      return "cancelled";
    case notification_kind::no_show:
      return "no_show";
    case notification_kind::reverted:
      return "reverted";
    case notification_kind::checked_in:
      return "checked_in";
  }
  return "unknown";
}

std::optional<notification_kind> parse_notification_kind(std::string_view name) noexcept {
  for (int i = 0; i < notification_kind_count; ++i) {
    const auto kind = static_cast<notification_kind>(i);
    if (to_string(kind) == name) return kind;
  }
  return std::nullopt;
}

classification classify(const captured_change& change) {
  switch (change.table) {
    case source_table::appointment:
      return classify_appointment(change);
    case source_table::note_state_event:
      return classify_state_event(change);
  }
  return rejected{"unknown source table"};
}

std::optional<std::string> format_utc(std::int64_t unix_seconds) {
  std::array<char, utc_text_size> text{};
  if (!write_utc(unix_seconds, text.data())) return std::nullopt;
  return std::string(text.data(), text.size());
}

}  // namespace appointment_relay
