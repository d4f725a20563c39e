#include "appointment_relay/outbox_row.hpp"

#include <charconv>
#include <cstdint>
#include <system_error>

namespace appointment_relay {
namespace {

// The whole text must be one decimal integer (optional '-'), nothing else: no spaces, no '+', no junk.
bool parse_int(std::string_view text, std::int64_t& out) noexcept {
  if (text.empty()) return false;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(first, last, out);
  return ec == std::errc() && ptr == last;
}

// NULL stays empty; otherwise an integer or an error naming the column.
bool decode_int(const std::optional<std::string_view>& field, const char* column,
                std::optional<std::int64_t>& out, std::string& error) {
  if (!field) return true;
  std::int64_t v = 0;
  if (!parse_int(*field, v)) {
    error = std::string("malformed outbox row: ") + column + " is not an integer";
    return false;
  }
  out = v;
  return true;
}

decoded_row decode(const outbox_row_text& row) {
  captured_change c;
  if (!row.source_table) return std::string("malformed outbox row: source_table is NULL");
  if (*row.source_table == "api_appointment")
    c.table = source_table::appointment;
  else if (*row.source_table == "api_notestatechangeevent")
    c.table = source_table::note_state_event;
  else
    return std::string("malformed outbox row: unknown source_table");

  if (!row.operation) return std::string("malformed outbox row: operation is NULL");
  if (*row.operation == "INSERT")
    c.operation = change_operation::insert;
  else if (*row.operation == "UPDATE")
    c.operation = change_operation::update;
  else
    return std::string("malformed outbox row: unknown operation");

  if (row.state) c.state = std::string(*row.state);
  if (row.appointment_external_id) c.appointment_external_id = std::string(*row.appointment_external_id);
  if (row.patient_key) c.patient_key = std::string(*row.patient_key);

  std::string error;
  if (!decode_int(row.appointment_id, "appointment_id", c.appointment_id, error) ||
      !decode_int(row.rescheduled_from_id, "rescheduled_from_id", c.rescheduled_from_id, error) ||
      !decode_int(row.start_time, "start_time", c.start_time, error) ||
      !decode_int(row.duration_minutes, "duration_minutes", c.duration_minutes, error) ||
      !decode_int(row.patient_id, "patient_id", c.patient_id, error))
    return error;

  if (row.entered_in_error) {
    if (*row.entered_in_error == "t")
      c.entered_in_error = true;
    else if (*row.entered_in_error == "f")
      c.entered_in_error = false;
    else
      return std::string("malformed outbox row: entered_in_error is not a boolean");
  }
  return c;
}

}  // namespace

decoded_row decode_outbox_row(const outbox_row_text& row) noexcept {
  try {
    return decode(row);
  } catch (...) {
    // Only allocation can fail here; the row becomes a dead letter rather than a crash.
    return std::string("malformed outbox row: cannot decode");
  }
}

}  // namespace appointment_relay
