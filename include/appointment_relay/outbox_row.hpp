#pragma once
// Decoding of one outbox row, as libpq returns it (text fields, each possibly NULL), into the classifier's
// input. Pure; never throws: a row that cannot be decoded gives an error text (it becomes a dead letter).
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "appointment_relay/classifier.hpp"

namespace appointment_relay {

// Text of the outbox columns the classifier needs; std::nullopt is SQL NULL.
struct outbox_row_text {
  std::optional<std::string_view> source_table;  // "api_appointment" | "api_notestatechangeevent"
  std::optional<std::string_view> operation;     // "INSERT" | "UPDATE"
  std::optional<std::string_view> state;
  std::optional<std::string_view> appointment_id;
  std::optional<std::string_view> appointment_external_id;
  std::optional<std::string_view> rescheduled_from_id;
  std::optional<std::string_view> start_time;  // unix seconds as an integer text
  std::optional<std::string_view> duration_minutes;
  std::optional<std::string_view> entered_in_error;  // "t" | "f"
  std::optional<std::string_view> patient_id;
  std::optional<std::string_view> patient_key;
};

// captured_change, or the reason the row is unreadable.
using decoded_row = std::variant<captured_change, std::string>;

decoded_row decode_outbox_row(const outbox_row_text& row) noexcept;

}  // namespace appointment_relay
