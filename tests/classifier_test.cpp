#include "appointment_relay/classifier.hpp"

#include <chrono>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace appointment_relay {
namespace {

// The example of Canvas's appointment-notification documentation.
constexpr const char* doc_patient_key = "06669a76329f4577bea114bc50072da6";
constexpr const char* doc_external_id = "e999b5c7-d12f-498c-816a-f3c66946a911";
constexpr std::int64_t doc_start = 1640381400;  // 2021-12-24T21:30:00+00:00

// A new appointment row of a patient, as the trigger captures it: well formed, created.
captured_change appointment_row() {
  captured_change c;
  c.table = source_table::appointment;
  c.operation = change_operation::insert;
  c.appointment_id = 41;
  c.appointment_external_id = doc_external_id;
  c.start_time = doc_start;
  c.duration_minutes = 30;
  c.patient_id = 7;
  c.patient_key = doc_patient_key;
  return c;
}

// A new state event on a note whose current appointment is the documentation's one.
captured_change state_event(const std::string& state) {
  captured_change c = appointment_row();
  c.table = source_table::note_state_event;
  c.state = state;
  return c;
}

// The notification of a result (a copy: results are temporaries), or an empty one after a failure.
notification expect_notification(const classification& result) {
  if (const auto* i = std::get_if<ignored>(&result)) ADD_FAILURE() << "ignored: " << i->reason;
  if (const auto* r = std::get_if<rejected>(&result)) ADD_FAILURE() << "rejected: " << r->reason;
  const auto* n = std::get_if<notification>(&result);
  return n != nullptr ? *n : notification{notification_kind::created, "", "{}"};
}

TEST(classifier, should_name_every_kind_by_its_payload_flag_and_parse_it_back) {
  const std::vector<std::pair<notification_kind, std::string>> names = {
      {notification_kind::created, "created"},     {notification_kind::rescheduled, "rescheduled"},
      {notification_kind::cancelled, "cancelled"}, {notification_kind::no_show, "no_show"},
      {notification_kind::reverted, "reverted"},   {notification_kind::checked_in, "checked_in"},
  };
  ASSERT_EQ(names.size(), static_cast<std::size_t>(notification_kind_count));
  for (const auto& [kind, name] : names) {
    SCOPED_TRACE(name);
    EXPECT_EQ(to_string(kind), name);
    EXPECT_EQ(parse_notification_kind(name), kind);
  }
}

TEST(classifier, should_parse_no_other_name_as_a_kind) {
  for (const char* name :
       {"", "Created", "CREATED", "no-show", "noshow", "checked_in ", "cancel", "deleted"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(parse_notification_kind(name), std::nullopt);
  }
}

// The six payloads of Canvas's documentation, rebuilt from rows: equal as JSON and, to pin the key order,
// equal as text.
TEST(classifier, should_rebuild_the_six_payloads_of_the_canvas_documentation) {
  const std::string ids = R"({"canvas_patient_key":"06669a76329f4577bea114bc50072da6",)"
                          R"("appointment_external_id":"e999b5c7-d12f-498c-816a-f3c66946a911",)";
  const std::string times =
      R"("start_time":"2021-12-24T21:30:00+00:00","end_time":"2021-12-24T22:00:00+00:00",)";
  captured_change rescheduled = appointment_row();
  rescheduled.rescheduled_from_id = 40;
  struct example {
    std::string name;
    captured_change change;
    notification_kind kind;
    std::string payload;
  };
  const std::vector<example> examples = {
      {"created", appointment_row(), notification_kind::created, ids + times + R"("created":true})"},
      {"rescheduled", rescheduled, notification_kind::rescheduled, ids + times + R"("rescheduled":true})"},
      {"cancelled", state_event("CLD"), notification_kind::cancelled, ids + R"("cancelled":true})"},
      {"no_show", state_event("NSW"), notification_kind::no_show, ids + R"("no_show":true})"},
      {"reverted", state_event("RVT"), notification_kind::reverted, ids + R"("reverted":true})"},
      {"checked_in", state_event("CVD"), notification_kind::checked_in, ids + R"("checked_in":true})"},
  };
  for (const auto& e : examples) {
    SCOPED_TRACE(e.name);
    const notification n = expect_notification(classify(e.change));
    EXPECT_EQ(n.kind, e.kind);
    EXPECT_EQ(n.ordering_key, doc_external_id);
    EXPECT_EQ(nlohmann::json::parse(n.payload), nlohmann::json::parse(e.payload));
    EXPECT_EQ(n.payload, e.payload);
  }
}

TEST(classifier, should_write_the_documented_created_payload_exactly) {
  const notification n = expect_notification(classify(appointment_row()));
  EXPECT_EQ(
      n.payload,
      R"({"canvas_patient_key":"06669a76329f4577bea114bc50072da6",)"
      R"("appointment_external_id":"e999b5c7-d12f-498c-816a-f3c66946a911",)"
      R"("start_time":"2021-12-24T21:30:00+00:00","end_time":"2021-12-24T22:00:00+00:00","created":true})");
}

TEST(classifier, should_order_by_the_appointment_external_id) {
  captured_change c = appointment_row();
  c.appointment_external_id = "00000000-0000-4000-8000-000000000001";
  EXPECT_EQ(expect_notification(classify(c)).ordering_key, "00000000-0000-4000-8000-000000000001");
  captured_change e = state_event("CLD");
  e.appointment_external_id = "ffffffff-ffff-4fff-bfff-ffffffffffff";
  EXPECT_EQ(expect_notification(classify(e)).ordering_key, "ffffffff-ffff-4fff-bfff-ffffffffffff");
}

TEST(classifier, should_end_at_the_start_for_a_zero_minute_appointment) {
  captured_change c = appointment_row();
  c.duration_minutes = 0;
  const auto payload = nlohmann::json::parse(expect_notification(classify(c)).payload);
  EXPECT_EQ(payload["start_time"], "2021-12-24T21:30:00+00:00");
  EXPECT_EQ(payload["end_time"], "2021-12-24T21:30:00+00:00");
}

TEST(classifier, should_accept_an_uppercase_uuid_as_the_external_id) {
  captured_change c = appointment_row();
  c.appointment_external_id = "E999B5C7-D12F-498C-816A-F3C66946A911";
  const notification n = expect_notification(classify(c));
  EXPECT_EQ(nlohmann::json::parse(n.payload)["appointment_external_id"],
            "E999B5C7-D12F-498C-816A-F3C66946A911");
}

struct ignored_case {
  std::string name;
  captured_change change;
};

TEST(classifier, should_ignore_what_is_not_a_notification_with_a_reason) {
  std::vector<ignored_case> cases;
  auto add = [&](std::string name, auto edit, captured_change base) {
    edit(base);
    cases.push_back({std::move(name), std::move(base)});
  };
  const auto row = appointment_row();
  add(
      "appointment update", [](auto& c) { c.operation = change_operation::update; }, row);
  add(
      "rescheduled row update",
      [](auto& c) { c.operation = change_operation::update, c.rescheduled_from_id = 3; }, row);
  add(
      "appointment without patient (schedule block)",
      [](auto& c) { c.patient_id.reset(), c.patient_key.reset(); }, row);
  add(
      "appointment entered in error", [](auto& c) { c.entered_in_error = true; }, row);
  add(
      "rescheduled appointment entered in error",
      [](auto& c) { c.entered_in_error = true, c.rescheduled_from_id = 3; }, row);
  for (const char* state : {"CLD", "NSW", "RVT", "CVD"}) {
    const auto event = state_event(state);
    add(
        std::string(state) + " update", [](auto& c) { c.operation = change_operation::update; }, event);
    add(
        std::string(state) + " on a note without appointment",
        [](auto& c) {
          c.appointment_id.reset(), c.appointment_external_id.reset(), c.start_time.reset();
          c.duration_minutes.reset(), c.patient_id.reset(), c.patient_key.reset();
        },
        event);
    add(
        std::string(state) + " whose current appointment was entered in error",
        [](auto& c) { c.entered_in_error = true; }, event);
    add(
        std::string(state) + " whose current appointment has no patient",
        [](auto& c) { c.patient_id.reset(), c.patient_key.reset(); }, event);
  }
  for (const char* state : {"SCH", "BKD", "LKD", "NEW", "PSH", "ULK", "DLT", "RLK", "RST", "RCL", "UND",
                            "DSC", "SGN", "CNF", "XYZ"})
    add(
        std::string("other note state ") + state, [](auto&) {}, state_event(state));

  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const auto result = classify(c.change);
    const auto* i = std::get_if<ignored>(&result);
    ASSERT_NE(i, nullptr) << "not ignored";
    EXPECT_FALSE(i->reason.empty());
  }
}

// Where a change is not a notification anyway, its malformed fields do not make it a dead letter.
TEST(classifier, should_ignore_before_looking_at_malformed_fields) {
  std::vector<ignored_case> cases;
  captured_change broken = appointment_row();
  broken.appointment_external_id = "not-a-uuid";
  broken.patient_key = "NOT A KEY";
  broken.start_time.reset();
  broken.duration_minutes = -5;

  captured_change update = broken;
  update.operation = change_operation::update;
  cases.push_back({"appointment update", update});
  captured_change block = broken;
  block.patient_id.reset();
  cases.push_back({"schedule block", block});
  captured_change in_error = broken;
  in_error.entered_in_error = true;
  cases.push_back({"entered in error", in_error});

  captured_change event = broken;
  event.table = source_table::note_state_event;
  event.state = "SCH";
  cases.push_back({"other note state", event});
  event.state = "CLD";
  event.appointment_id.reset();
  cases.push_back({"note without appointment", event});
  event.appointment_id = 1;
  event.entered_in_error = true;
  cases.push_back({"current appointment entered in error", event});
  event.entered_in_error = false;
  event.patient_id.reset();
  cases.push_back({"current appointment without patient", event});

  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const auto result = classify(c.change);
    EXPECT_TRUE(std::holds_alternative<ignored>(result));
  }
}

struct rejected_case {
  std::string name;
  captured_change change;
  std::string reason_mentions;  // the field the reason must name
};

TEST(classifier, should_reject_malformed_changes_with_a_reason_naming_the_field) {
  std::vector<rejected_case> cases;
  auto add = [&](std::string name, captured_change base, std::string mentions, auto edit) {
    edit(base);
    cases.push_back({std::move(name), std::move(base), std::move(mentions)});
  };
  for (const auto& [table_name, base] : std::vector<std::pair<std::string, captured_change>>{
           {"appointment", appointment_row()}, {"CLD event", state_event("CLD")}}) {
    const std::string t = table_name + ": ";
    add(t + "missing patient key", base, "patient_key", [](auto& c) { c.patient_key.reset(); });
    add(t + "empty patient key", base, "patient_key", [](auto& c) { c.patient_key = ""; });
    add(t + "uppercase patient key", base, "patient_key",
        [](auto& c) { c.patient_key = "06669A76329F4577BEA114BC50072DA6"; });
    add(t + "dashed patient key", base, "patient_key",
        [](auto& c) { c.patient_key = "06669a76-329f-4577-bea1-14bc50072da6"; });
    add(t + "short patient key", base, "patient_key",
        [](auto& c) { c.patient_key = "06669a76329f4577bea114bc50072da"; });
    add(t + "long patient key", base, "patient_key",
        [](auto& c) { c.patient_key = "06669a76329f4577bea114bc50072da6a"; });
    add(t + "non-hex patient key", base, "patient_key",
        [](auto& c) { c.patient_key = "06669a76329f4577bea114bc50072dg6"; });
    add(t + "patient key with a quote", base, "patient_key",
        [](auto& c) { c.patient_key = "06669a76329f4577bea114bc50072d\"6"; });
    add(t + "missing external id", base, "appointment_external_id",
        [](auto& c) { c.appointment_external_id.reset(); });
    add(t + "empty external id", base, "appointment_external_id",
        [](auto& c) { c.appointment_external_id = ""; });
    add(t + "external id without dashes", base, "appointment_external_id",
        [](auto& c) { c.appointment_external_id = "e999b5c7d12f498c816af3c66946a911"; });
    add(t + "external id with a misplaced dash", base, "appointment_external_id",
        [](auto& c) { c.appointment_external_id = "e999b5c7d-12f-498c-816a-f3c66946a911"; });
    add(t + "external id too short", base, "appointment_external_id",
        [](auto& c) { c.appointment_external_id = "e999b5c7-d12f-498c-816a-f3c66946a91"; });
    add(t + "external id in braces", base, "appointment_external_id",
        [](auto& c) { c.appointment_external_id = "{e999b5c7-d12f-498c-816a-f3c66946a911}"; });
    add(t + "external id with a non-hex digit", base, "appointment_external_id",
        [](auto& c) { c.appointment_external_id = "e999b5c7-d12f-498c-816a-f3c66946a91z"; });
  }
  const auto row = appointment_row();
  add("missing start time", row, "start_time", [](auto& c) { c.start_time.reset(); });
  add("missing start time on a rescheduled row", row, "start_time",
      [](auto& c) { c.start_time.reset(), c.rescheduled_from_id = 3; });
  add("missing duration", row, "duration_minutes", [](auto& c) { c.duration_minutes.reset(); });
  add("negative duration", row, "duration_minutes", [](auto& c) { c.duration_minutes = -1; });
  add("most negative duration", row, "duration_minutes",
      [](auto& c) { c.duration_minutes = std::numeric_limits<std::int64_t>::min(); });
  add("start in year 0", row, "start_time", [](auto& c) { c.start_time = -62135596801; });
  add("start in year 10000", row, "start_time", [](auto& c) { c.start_time = 253402300800; });
  add("most negative start", row, "start_time",
      [](auto& c) { c.start_time = std::numeric_limits<std::int64_t>::min(); });
  add("largest start", row, "start_time",
      [](auto& c) { c.start_time = std::numeric_limits<std::int64_t>::max(); });
  add("end in year 10000", row, "end_time", [](auto& c) {
    c.start_time = 253402299900;  // 9999-12-31T23:45:00
    c.duration_minutes = 30;
  });
  add("largest duration", row, "end_time",
      [](auto& c) { c.duration_minutes = std::numeric_limits<std::int64_t>::max(); });
  for (const std::string state : {"", "cld", "Cld", "CL", "CL ", " CL", "CLDX", "C1D", "CL\n", "ÉTÉ"})
    add("state code '" + state + "'", state_event(state), "state", [](auto&) {});
  add("missing state code", state_event("CLD"), "state", [](auto& c) { c.state.reset(); });
  add("malformed state code on a note without appointment", state_event("cl"), "state",
      [](auto& c) { c.appointment_id.reset(); });

  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const auto result = classify(c.change);
    const auto* r = std::get_if<rejected>(&result);
    ASSERT_NE(r, nullptr) << "not rejected";
    EXPECT_NE(r->reason.find(c.reason_mentions), std::string::npos) << r->reason;
  }
}

struct time_case {
  std::string name;
  std::int64_t unix_seconds;
  std::string text;
};

TEST(classifier, should_format_utc_times_exactly_across_calendar_boundaries) {
  const std::vector<time_case> cases = {
      {"epoch", 0, "1970-01-01T00:00:00+00:00"},
      {"documentation example", doc_start, "2021-12-24T21:30:00+00:00"},
      {"one second before the epoch", -1, "1969-12-31T23:59:59+00:00"},
      {"moon landing", -14182940, "1969-07-20T20:17:40+00:00"},
      {"last second of a day", 86399, "1970-01-01T23:59:59+00:00"},
      {"first second of the next day", 86400, "1970-01-02T00:00:00+00:00"},
      {"leap day 2000 (divisible by 400)", 951782400, "2000-02-29T00:00:00+00:00"},
      {"leap day 2024", 1709164800, "2024-02-29T00:00:00+00:00"},
      {"2100 is not leap", 4107542400, "2100-03-01T00:00:00+00:00"},
      {"1900 is not leap", -2203891200, "1900-03-01T00:00:00+00:00"},
      {"leap day 1600", -11670998400, "1600-02-29T00:00:00+00:00"},
      {"first second of year 1", -62135596800, "0001-01-01T00:00:00+00:00"},
      {"last second of year 9999", 253402300799, "9999-12-31T23:59:59+00:00"},
      {"int32 overflow moment", 2147483648, "2038-01-19T03:14:08+00:00"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(format_utc(c.unix_seconds), c.text);
  }
}

TEST(classifier, should_not_format_times_outside_years_1_to_9999) {
  for (std::int64_t t :
       {std::int64_t{-62135596801}, std::int64_t{253402300800}, std::numeric_limits<std::int64_t>::min(),
        std::numeric_limits<std::int64_t>::max()}) {
    SCOPED_TRACE(t);
    EXPECT_EQ(format_utc(t), std::nullopt);
  }
}

struct end_time_case {
  std::string name;
  std::int64_t start;
  std::int64_t duration_minutes;
  std::string start_text;
  std::string end_text;
};

TEST(classifier, should_compute_the_end_time_exactly_across_calendar_boundaries) {
  const std::vector<end_time_case> cases = {
      {"documentation example", doc_start, 30, "2021-12-24T21:30:00+00:00", "2021-12-24T22:00:00+00:00"},
      {"from the epoch", 0, 15, "1970-01-01T00:00:00+00:00", "1970-01-01T00:15:00+00:00"},
      {"across midnight", 1612051200 - 600, 20, "2021-01-30T23:50:00+00:00", "2021-01-31T00:10:00+00:00"},
      {"across a month end", 1612137000, 20, "2021-01-31T23:50:00+00:00", "2021-02-01T00:10:00+00:00"},
      {"across a year end", 1640994300, 30, "2021-12-31T23:45:00+00:00", "2022-01-01T00:15:00+00:00"},
      {"into a leap day", 1709163000, 60, "2024-02-28T23:30:00+00:00", "2024-02-29T00:30:00+00:00"},
      {"out of a leap day", 1709249400, 60, "2024-02-29T23:30:00+00:00", "2024-03-01T00:30:00+00:00"},
      {"2100 has no leap day", 4107540600, 60, "2100-02-28T23:30:00+00:00", "2100-03-01T00:30:00+00:00"},
      {"2000 has a leap day", 951780600, 60, "2000-02-28T23:30:00+00:00", "2000-02-29T00:30:00+00:00"},
      {"across the epoch from 1969", -600, 30, "1969-12-31T23:50:00+00:00", "1970-01-01T00:20:00+00:00"},
      {"a whole day long", 1640381400, 24 * 60, "2021-12-24T21:30:00+00:00", "2021-12-25T21:30:00+00:00"},
      {"ending on the last minute of 9999", 253402299900, 14, "9999-12-31T23:45:00+00:00",
       "9999-12-31T23:59:00+00:00"},
      {"starting in year 1", -62135596800, 90, "0001-01-01T00:00:00+00:00", "0001-01-01T01:30:00+00:00"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    captured_change change = appointment_row();
    change.start_time = c.start;
    change.duration_minutes = c.duration_minutes;
    const auto payload = nlohmann::json::parse(expect_notification(classify(change)).payload);
    EXPECT_EQ(payload.value("start_time", ""), c.start_text);
    EXPECT_EQ(payload.value("end_time", ""), c.end_text);
  }
}

// Every day of years 1..9999 against the standard library's calendar, at a second of day that varies.
TEST(classifier, should_agree_with_the_standard_calendar_on_every_day_of_years_1_to_9999) {
  using namespace std::chrono;
  const sys_days first = year{1} / January / 1;
  const sys_days last = year{9999} / December / 31;
  int mismatches = 0;
  for (sys_days d = first; d <= last && mismatches < 5; d += days{1}) {
    const year_month_day ymd{d};
    const std::int64_t second_of_day = (d.time_since_epoch().count() * 7919) % 86400;
    const std::int64_t unix_seconds = std::int64_t{d.time_since_epoch().count()} * 86400 +
                                      (second_of_day < 0 ? second_of_day + 86400 : second_of_day);
    const auto text = format_utc(unix_seconds);
    if (!text || text->size() != 25) {
      ++mismatches;
      ADD_FAILURE() << "no text for " << unix_seconds;
      continue;
    }
    const int y = std::atoi(text->substr(0, 4).c_str());
    const unsigned m = static_cast<unsigned>(std::atoi(text->substr(5, 2).c_str()));
    const unsigned dd = static_cast<unsigned>(std::atoi(text->substr(8, 2).c_str()));
    const std::int64_t sod = std::atoi(text->substr(11, 2).c_str()) * 3600 +
                             std::atoi(text->substr(14, 2).c_str()) * 60 +
                             std::atoi(text->substr(17, 2).c_str());
    if (y != static_cast<int>(ymd.year()) || m != static_cast<unsigned>(ymd.month()) ||
        dd != static_cast<unsigned>(ymd.day()) ||
        sod != (second_of_day < 0 ? second_of_day + 86400 : second_of_day)) {
      ++mismatches;
      ADD_FAILURE() << *text << " for " << unix_seconds << " (expected " << static_cast<int>(ymd.year())
                    << "-" << static_cast<unsigned>(ymd.month()) << "-" << static_cast<unsigned>(ymd.day())
                    << ")";
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(classifier, should_never_write_a_null_into_a_payload) {
  for (const auto& change :
       {appointment_row(), state_event("CLD"), state_event("NSW"), state_event("RVT"), state_event("CVD")}) {
    const auto payload = nlohmann::json::parse(expect_notification(classify(change)).payload);
    for (const auto& [key, value] : payload.items()) {
      SCOPED_TRACE(key);
      EXPECT_FALSE(value.is_null());
    }
  }
}

}  // namespace
}  // namespace appointment_relay
