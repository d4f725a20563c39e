#include "appointment_relay/outbox_row.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace appointment_relay {
namespace {

outbox_row_text full_row() {
  outbox_row_text r;
  r.source_table = "api_appointment";
  r.operation = "INSERT";
  r.appointment_id = "42";
  r.appointment_external_id = "e999b5c7-d12f-498c-816a-f3c66946a911";
  r.rescheduled_from_id = "41";
  r.start_time = "1640381400";
  r.duration_minutes = "30";
  r.entered_in_error = "f";
  r.patient_id = "7";
  r.patient_key = "06669a76329f4577bea114bc50072da6";
  return r;
}

TEST(outbox_row, should_decode_every_field_of_a_well_formed_row) {
  auto d = decode_outbox_row(full_row());
  ASSERT_TRUE(std::holds_alternative<captured_change>(d)) << std::get<std::string>(d);
  const auto& c = std::get<captured_change>(d);
  EXPECT_EQ(c.table, source_table::appointment);
  EXPECT_EQ(c.operation, change_operation::insert);
  EXPECT_FALSE(c.state);
  EXPECT_EQ(c.appointment_id, 42);
  EXPECT_EQ(c.appointment_external_id, "e999b5c7-d12f-498c-816a-f3c66946a911");
  EXPECT_EQ(c.rescheduled_from_id, 41);
  EXPECT_EQ(c.start_time, 1640381400);
  EXPECT_EQ(c.duration_minutes, 30);
  EXPECT_FALSE(c.entered_in_error);
  EXPECT_EQ(c.patient_id, 7);
  EXPECT_EQ(c.patient_key, "06669a76329f4577bea114bc50072da6");
}

TEST(outbox_row, should_decode_a_state_event_without_appointment_as_empty_fields) {
  outbox_row_text r;
  r.source_table = "api_notestatechangeevent";
  r.operation = "INSERT";
  r.state = "CLD";
  auto d = decode_outbox_row(r);
  ASSERT_TRUE(std::holds_alternative<captured_change>(d));
  const auto& c = std::get<captured_change>(d);
  EXPECT_EQ(c.table, source_table::note_state_event);
  EXPECT_EQ(c.state, "CLD");
  EXPECT_FALSE(c.appointment_id);
  EXPECT_FALSE(c.patient_id);
  EXPECT_FALSE(c.patient_key);
  EXPECT_FALSE(c.entered_in_error);
}

TEST(outbox_row, should_map_update_operation_negative_times_and_entered_in_error) {
  auto r = full_row();
  r.operation = "UPDATE";
  r.entered_in_error = "t";
  r.start_time = "-62135596800";
  auto d = decode_outbox_row(r);
  ASSERT_TRUE(std::holds_alternative<captured_change>(d));
  EXPECT_EQ(std::get<captured_change>(d).operation, change_operation::update);
  EXPECT_TRUE(std::get<captured_change>(d).entered_in_error);
  EXPECT_EQ(std::get<captured_change>(d).start_time, -62135596800);
}

struct malformed_case {
  const char* name;
  void (*mutate)(outbox_row_text&);
};

TEST(outbox_row, should_reject_malformed_fields_with_a_reason_and_never_throw) {
  const std::vector<malformed_case> cases = {
      {"null source_table", [](outbox_row_text& r) { r.source_table.reset(); }},
      {"unknown source_table", [](outbox_row_text& r) { r.source_table = "api_note"; }},
      {"null operation", [](outbox_row_text& r) { r.operation.reset(); }},
      {"DELETE operation", [](outbox_row_text& r) { r.operation = "DELETE"; }},
      {"lowercase operation", [](outbox_row_text& r) { r.operation = "insert"; }},
      {"junk after id", [](outbox_row_text& r) { r.appointment_id = "42x"; }},
      {"space before id", [](outbox_row_text& r) { r.appointment_id = " 42"; }},
      {"plus sign", [](outbox_row_text& r) { r.patient_id = "+7"; }},
      {"empty integer", [](outbox_row_text& r) { r.duration_minutes = ""; }},
      {"overflow", [](outbox_row_text& r) { r.start_time = "99999999999999999999"; }},
      {"fraction", [](outbox_row_text& r) { r.start_time = "1640381400.5"; }},
      {"hex", [](outbox_row_text& r) { r.rescheduled_from_id = "0x10"; }},
      {"boolean word", [](outbox_row_text& r) { r.entered_in_error = "true"; }},
      {"empty boolean", [](outbox_row_text& r) { r.entered_in_error = ""; }},
  };
  for (const auto& c : cases) {
    auto r = full_row();
    c.mutate(r);
    decoded_row d;
    EXPECT_NO_THROW(d = decode_outbox_row(r)) << c.name;
    ASSERT_TRUE(std::holds_alternative<std::string>(d)) << c.name;
    EXPECT_FALSE(std::get<std::string>(d).empty()) << c.name;
  }
}

TEST(outbox_row, should_survive_arbitrary_bytes_in_every_field) {
  const std::string junk("\0\xff\x80-9223372036854775809\"\\", 28);
  auto r = full_row();
  r.appointment_id = junk;
  r.state = junk;
  r.patient_key = junk;
  auto d = decode_outbox_row(r);
  ASSERT_TRUE(std::holds_alternative<std::string>(d));
  r.appointment_id = "-9223372036854775808";
  d = decode_outbox_row(r);
  ASSERT_TRUE(std::holds_alternative<captured_change>(d));
  EXPECT_EQ(std::get<captured_change>(d).state, junk);
}

}  // namespace
}  // namespace appointment_relay
