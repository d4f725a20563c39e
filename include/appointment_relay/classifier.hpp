#pragma once
// The classifier: one captured Canvas change in, one Canvas appointment notification (or nothing, or a
// rejection) out. A pure function over plain values: no database, no network, no clock, no logging.
// The rules are those of ../shared/canvas-data-model.md.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace appointment_relay {

enum class source_table { appointment, note_state_event };
enum class change_operation { insert, update };

// The facts of one captured change, as the trigger recorded them in the transaction that made the change.
// For an api_appointment row they are the row's own; for an api_notestatechangeevent row they are those of
// the note's current appointment (the last of its reschedule chain) at commit time.
struct captured_change {
  source_table table = source_table::appointment;
  change_operation operation = change_operation::insert;

  std::optional<std::string> state;  // state events only: the note state code (CLD, NSW, RVT, CVD, ...)

  // The appointment (the row itself, or the note's current appointment). Empty appointment_id on a state
  // event: the note carries no appointment.
  std::optional<std::int64_t> appointment_id;
  std::optional<std::string> appointment_external_id;  // uuid text, e.g. e999b5c7-d12f-498c-816a-f3c66946a911
  std::optional<std::int64_t> rescheduled_from_id;
  std::optional<std::int64_t> start_time;  // unix seconds, UTC (fractions already dropped)
  std::optional<std::int64_t> duration_minutes;
  bool entered_in_error = false;

  std::optional<std::int64_t> patient_id;  // empty: no patient (a schedule block)
  std::optional<std::string> patient_key;  // api_patient.key of patient_id
};

enum class notification_kind { created, rescheduled, cancelled, no_show, reverted, checked_in };
inline constexpr int notification_kind_count = 6;

// "created", "rescheduled", "cancelled", "no_show", "reverted", "checked_in": the payload flag's name.
std::string_view to_string(notification_kind kind) noexcept;
std::optional<notification_kind> parse_notification_kind(std::string_view name) noexcept;

struct notification {
  notification_kind kind;
  std::string ordering_key;  // the appointment's external id
  std::string payload;       // compact JSON, keys in Canvas's order
};

// Not a notification (an update, another note state, no patient, ...): the reason is for the debug log.
struct ignored {
  std::string reason;
};

// Malformed input: becomes a dead letter with this reason.
struct rejected {
  std::string reason;
};

using classification = std::variant<ignored, notification, rejected>;

classification classify(const captured_change& change);

// "2021-12-24T21:30:00+00:00" for unix seconds; exact for any year 0001..9999. Empty optional outside it.
std::optional<std::string> format_utc(std::int64_t unix_seconds);

}  // namespace appointment_relay
