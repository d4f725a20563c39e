#include "support/test_database.hpp"

#include <string>

#include <gtest/gtest.h>

// The Canvas test schema (sql/canvas/) and its helpers act as Canvas does: the other tests build their
// scenarios on them, so they are checked here against a real database, without the relay's migrations.
namespace appointment_relay::testing {
namespace {

// The note's state codes in order, comma separated.
std::string note_states(const scratch_database& db, const std::string& appointment_id) {
  return db.query_value(
      "SELECT string_agg(e.state, ',' ORDER BY e.created, e.id) FROM api_notestatechangeevent e "
      "JOIN api_appointment a ON a.note_id = e.note_id WHERE a.id = " +
      appointment_id);
}

TEST(canvas_schema, should_create_a_patient_with_a_32_digit_lowercase_hex_key) {
  AR_REQUIRE_DATABASE();
  scratch_database db(false);
  const std::string id = db.query_value("SELECT canvas_test.create_patient()");
  EXPECT_EQ(db.query_value("SELECT key ~ '^[0-9a-f]{32}$' FROM api_patient WHERE id = " + id), "t");
  const std::string given =
      db.query_value("SELECT canvas_test.create_patient('06669a76329f4577bea114bc50072da6')");
  EXPECT_EQ(db.query_value("SELECT key FROM api_patient WHERE id = " + given),
            "06669a76329f4577bea114bc50072da6");
}

TEST(canvas_schema, should_book_one_appointment_on_a_new_note_then_schedule_and_book_it) {
  AR_REQUIRE_DATABASE();
  scratch_database db(false);
  const std::string patient = db.query_value("SELECT canvas_test.create_patient()");
  const std::string id =
      db.query_value("SELECT canvas_test.book_appointment(" + patient + ", '2021-12-24T21:30:00+00:00', 30)");
  EXPECT_EQ(db.query_value("SELECT count(*) FROM api_appointment"), "1");
  EXPECT_EQ(db.query_value(
                "SELECT concat_ws('|', patient_id, status, duration_minutes, "
                "extract(epoch FROM start_time)::bigint, appointment_rescheduled_from_id IS NULL, "
                "(SELECT patient_id FROM api_note n WHERE n.id = note_id)) FROM api_appointment WHERE id = " +
                id),
            patient + "|confirmed|30|1640381400|t|" + patient);
  EXPECT_EQ(note_states(db, id), "SCH,BKD");
}

TEST(canvas_schema, should_reschedule_into_a_chain_on_the_same_note) {
  AR_REQUIRE_DATABASE();
  scratch_database db(false);
  const std::string first = db.query_value(
      "SELECT canvas_test.book_appointment(canvas_test.create_patient(), '2021-12-24T21:30:00+00:00', 30)");
  const std::string second =
      db.query_value("SELECT canvas_test.reschedule(" + first + ", '2021-12-25T09:00:00Z', 45)");
  const std::string third =
      db.query_value("SELECT canvas_test.reschedule(" + second + ", '2021-12-26T09:00:00Z', 15)");
  EXPECT_EQ(
      db.query_value("SELECT appointment_rescheduled_from_id FROM api_appointment WHERE id = " + second),
      first);
  EXPECT_EQ(db.query_value("SELECT appointment_rescheduled_from_id FROM api_appointment WHERE id = " + third),
            second);
  EXPECT_EQ(db.query_value("SELECT count(DISTINCT note_id) FROM api_appointment"), "1");
  EXPECT_EQ(db.query_value("SELECT count(DISTINCT externally_exposable_id) FROM api_appointment"), "3");
  EXPECT_EQ(db.query_value("SELECT concat_ws('|', duration_minutes, extract(epoch FROM start_time)::bigint) "
                           "FROM api_appointment WHERE id = " +
                           third),
            "15|1640509200");
  // The current appointment of the note: the one no other row was rescheduled from.
  EXPECT_EQ(
      db.query_value("SELECT a.id FROM api_appointment a WHERE NOT EXISTS (SELECT 1 FROM api_appointment b "
                     "WHERE b.appointment_rescheduled_from_id = a.id)"),
      third);
  EXPECT_EQ(note_states(db, third), "SCH,BKD,SCH,BKD,SCH,BKD");
}

TEST(canvas_schema, should_record_each_appointment_action_as_a_note_state_and_a_status) {
  AR_REQUIRE_DATABASE();
  scratch_database db(false);
  const std::string id = db.query_value(
      "SELECT canvas_test.book_appointment(canvas_test.create_patient(), '2021-12-24T21:30:00+00:00', 30)");
  const struct {
    const char* action;
    const char* state;
    const char* status;
  } steps[] = {{"cancel", "CLD", "cancelled"},
               {"restore", "RVT", "confirmed"},
               {"no_show", "NSW", "noshowed"},
               {"check_in", "CVD", "arrived"}};
  std::string expected_states = "SCH,BKD";
  for (const auto& s : steps) {
    SCOPED_TRACE(s.action);
    const std::string event = db.query_value(std::string("SELECT canvas_test.") + s.action + "(" + id + ")");
    EXPECT_EQ(db.query_value("SELECT state FROM api_notestatechangeevent WHERE id = " + event), s.state);
    EXPECT_EQ(db.query_value("SELECT status FROM api_appointment WHERE id = " + id), s.status);
    expected_states += std::string(",") + s.state;
    EXPECT_EQ(note_states(db, id), expected_states);
  }
}

TEST(canvas_schema, should_make_a_schedule_block_without_patient_or_note) {
  AR_REQUIRE_DATABASE();
  scratch_database db(false);
  const std::string id = db.query_value("SELECT canvas_test.schedule_block('2021-12-24T12:00:00Z', 60)");
  EXPECT_EQ(db.query_value("SELECT concat_ws('|', patient_id IS NULL, note_id IS NULL, duration_minutes) "
                           "FROM api_appointment WHERE id = " +
                           id),
            "t|t|60");
  EXPECT_EQ(db.query_value("SELECT count(*) FROM api_notestatechangeevent"), "0");
}

TEST(canvas_schema, should_accept_malformed_rows_that_the_relay_must_reject) {
  AR_REQUIRE_DATABASE();
  scratch_database db(false);
  const std::string patient = db.query_value("SELECT canvas_test.create_patient()");
  EXPECT_NO_THROW(db.exec("INSERT INTO api_appointment (patient_id, start_time, duration_minutes) VALUES (" +
                          patient + ", NULL, NULL)"));
  EXPECT_EQ(db.query_value("SELECT count(*) FROM api_appointment WHERE start_time IS NULL"), "1");
}

}  // namespace
}  // namespace appointment_relay::testing
