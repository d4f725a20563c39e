#include "appointment_relay/store.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <thread>

#include <unistd.h>
#include <pqxx/pqxx>

#include "support/test_database.hpp"

namespace appointment_relay {
namespace {

using testing::scratch_database;

std::int64_t value(const scratch_database& db, const std::string& sql) {
  return std::stoll(db.query_value(sql));
}

struct patient {
  std::int64_t id;
  std::string key;
};

patient add_patient(const scratch_database& db) {
  auto id = value(db, "INSERT INTO api_patient (key) VALUES (md5(random()::text)) RETURNING id");
  return {id, db.query_value("SELECT key FROM api_patient WHERE id = " + std::to_string(id))};
}

std::int64_t add_note(const scratch_database& db, std::int64_t patient_id) {
  return value(db,
               "INSERT INTO api_note (patient_id) VALUES (" + std::to_string(patient_id) + ") RETURNING id");
}

// Books (or, with from, reschedules) an appointment on a note; returns its id.
std::string appointment_sql(std::int64_t patient_id, std::int64_t note_id,
                            std::optional<std::int64_t> from = {},
                            const std::string& start = "2021-12-24 21:30:00+00") {
  return "INSERT INTO api_appointment (patient_id, note_id, appointment_rescheduled_from_id, start_time,"
         " duration_minutes) VALUES (" +
         std::to_string(patient_id) + ", " + std::to_string(note_id) + ", " +
         (from ? std::to_string(*from) : std::string("NULL")) + ", '" + start + "', 30) RETURNING id";
}

std::int64_t book(const scratch_database& db, std::int64_t patient_id, std::int64_t note_id,
                  std::optional<std::int64_t> from = {},
                  const std::string& start = "2021-12-24 21:30:00+00") {
  return value(db, appointment_sql(patient_id, note_id, from, start));
}

void note_state(const scratch_database& db, std::int64_t note_id, const std::string& state) {
  db.exec("INSERT INTO api_notestatechangeevent (note_id, state) VALUES (" + std::to_string(note_id) + ", '" +
          state + "')");
}

const captured_change& change_of(const pending_event& e) {
  if (!std::holds_alternative<captured_change>(e.change))
    throw std::runtime_error("undecodable row: " + std::get<std::string>(e.change));
  return std::get<captured_change>(e.change);
}

std::vector<std::int64_t> ids_of(const std::vector<pending_event>& events) {
  std::vector<std::int64_t> ids;
  for (const auto& e : events) ids.push_back(e.id);
  return ids;
}

std::string external_id(const scratch_database& db, std::int64_t appointment_id) {
  return db.query_value("SELECT externally_exposable_id FROM api_appointment WHERE id = " +
                        std::to_string(appointment_id));
}

TEST(store, should_capture_a_booking_with_the_rows_own_facts) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  auto a = book(db, p.id, note);
  store s(db.url());
  auto events = s.read_pending("a", 100);
  ASSERT_EQ(events.size(), 1u);
  const auto& c = change_of(events[0]);
  EXPECT_EQ(c.table, source_table::appointment);
  EXPECT_EQ(c.operation, change_operation::insert);
  EXPECT_EQ(c.appointment_id, a);
  EXPECT_EQ(c.appointment_external_id, external_id(db, a));
  EXPECT_FALSE(c.rescheduled_from_id);
  EXPECT_EQ(c.start_time, 1640381400);
  EXPECT_EQ(c.duration_minutes, 30);
  EXPECT_FALSE(c.entered_in_error);
  EXPECT_EQ(c.patient_id, p.id);
  EXPECT_EQ(c.patient_key, p.key);
  EXPECT_EQ(events[0].attempts, 0);
  EXPECT_FALSE(events[0].replayed);
  auto now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  EXPECT_NEAR(static_cast<double>(events[0].captured_at_us), static_cast<double>(now_us), 60e6);
}

TEST(store, should_capture_a_reschedule_schedule_block_and_entered_in_error_row) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  auto a1 = book(db, p.id, note);
  auto a2 = book(db, p.id, note, a1, "2021-12-25 10:00:00.750+00");
  db.exec("INSERT INTO api_appointment (start_time, duration_minutes) VALUES ('2021-12-24 08:00+00', 60)");
  db.exec(
      "INSERT INTO api_appointment (patient_id, start_time, duration_minutes, entered_in_error_id)"
      " VALUES (" +
      std::to_string(p.id) + ", '2021-12-24 08:00+00', 60, 5)");
  store s(db.url());
  auto events = s.read_pending("a", 100);
  ASSERT_EQ(events.size(), 4u);
  const auto& r = change_of(events[1]);
  EXPECT_EQ(r.appointment_id, a2);
  EXPECT_EQ(r.rescheduled_from_id, a1);
  EXPECT_EQ(r.start_time, 1640426400);  // fractions dropped
  EXPECT_EQ(r.appointment_external_id, external_id(db, a2));
  const auto& block = change_of(events[2]);
  EXPECT_FALSE(block.patient_id);
  EXPECT_FALSE(block.patient_key);
  EXPECT_TRUE(change_of(events[3]).entered_in_error);
}

TEST(store, should_capture_state_events_with_the_current_appointment_of_the_chain) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  auto a1 = book(db, p.id, note);
  auto a2 = book(db, p.id, note, a1);
  auto a3 = book(db, p.id, note, a2);
  store s(db.url());
  ASSERT_EQ(s.read_pending("a", 100).size(), 3u);
  for (const char* state : {"CLD", "NSW", "RVT", "CVD"}) {
    note_state(db, note, state);
    auto events = s.read_pending("a", 100);
    ASSERT_EQ(events.size(), 1u) << state;
    const auto& c = change_of(events[0]);
    EXPECT_EQ(c.table, source_table::note_state_event);
    EXPECT_EQ(c.state, state);
    EXPECT_EQ(c.appointment_id, a3) << state;
    EXPECT_EQ(c.appointment_external_id, external_id(db, a3));
    EXPECT_EQ(c.rescheduled_from_id, a2);
    EXPECT_EQ(c.patient_id, p.id);
    EXPECT_EQ(c.patient_key, p.key);
    EXPECT_FALSE(c.entered_in_error);
  }
}

TEST(store, should_not_capture_other_note_states_or_appointment_updates) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  auto a = book(db, p.id, note);
  store s(db.url());
  ASSERT_EQ(s.read_pending("a", 100).size(), 1u);
  for (const char* state : {"SCH", "BKD", "LKD", "NEW", "SGN"}) note_state(db, note, state);
  db.exec(
      "UPDATE api_appointment SET status = 'confirmed', start_time = start_time + interval '1 hour' WHERE id "
      "= " +
      std::to_string(a));
  EXPECT_TRUE(s.read_pending("a", 100).empty());
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.outbox"), "1");
}

TEST(store, should_capture_a_state_event_on_a_note_without_appointment_with_empty_appointment) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  note_state(db, note, "CLD");
  store s(db.url());
  auto events = s.read_pending("a", 100);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_FALSE(change_of(events[0]).appointment_id);
  EXPECT_FALSE(change_of(events[0]).patient_id);
  EXPECT_EQ(change_of(events[0]).state, "CLD");
}

TEST(store, should_keep_the_appointment_current_at_commit_after_a_later_reschedule) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  auto a1 = book(db, p.id, note);
  note_state(db, note, "CLD");
  book(db, p.id, note, a1);
  store s(db.url());
  auto events = s.read_pending("a", 100);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(change_of(events[1]).state, "CLD");
  EXPECT_EQ(change_of(events[1]).appointment_id, a1);
}

TEST(store, should_read_changes_committed_before_start_in_order_and_page_by_limit) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  std::vector<std::int64_t> appointments;
  for (int i = 0; i < 7; ++i) appointments.push_back(book(db, p.id, note));
  store s(db.url());
  auto first = s.read_pending("a", 4);
  auto second = s.read_pending("a", 4);
  auto third = s.read_pending("a", 4);
  ASSERT_EQ(first.size(), 4u);
  ASSERT_EQ(second.size(), 3u);
  EXPECT_TRUE(third.empty());
  std::vector<std::int64_t> read;
  for (const auto* batch : {&first, &second})
    for (const auto& e : *batch) read.push_back(*change_of(e).appointment_id);
  EXPECT_EQ(read, appointments);
  // Another endpoint has its own position.
  EXPECT_EQ(s.read_pending("b", 100).size(), 7u);
}

TEST(store, should_read_a_late_committed_lower_id_exactly_once) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  store s(db.url());
  pqxx::connection conn_a(db.url());
  pqxx::work tx_a(conn_a);
  auto a = tx_a.exec(appointment_sql(p.id, note))[0][0].as<std::int64_t>();  // allocates the lower outbox id
  auto b = book(db, p.id, note);
  auto first = s.read_pending("a", 100);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(change_of(first[0]).appointment_id, b);
  EXPECT_TRUE(s.read_pending("a", 100).empty());  // A still open
  tx_a.commit();
  auto second = s.read_pending("a", 100);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(change_of(second[0]).appointment_id, a);
  EXPECT_LT(second[0].id, first[0].id);
  auto c = book(db, p.id, note);
  auto third = s.read_pending("a", 100);
  ASSERT_EQ(third.size(), 1u);
  EXPECT_EQ(change_of(third[0]).appointment_id, c);
  EXPECT_TRUE(s.read_pending("a", 100).empty());
}

TEST(store, should_read_a_late_row_whose_transaction_got_its_id_after_the_last_completed_one) {
  // The snapshot's xmax is the last completed transaction id + 1, not the next one: T below has an id at or
  // above it while running, so it is neither in the snapshot's running list nor holding its xmin back. A
  // hole bound by that xmax would be settled while T still runs, and T's row never read.
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  store s(db.url());
  ASSERT_TRUE(s.read_pending("a", 100).empty());
  pqxx::connection conn_r(db.url()), conn_t(db.url());
  pqxx::work tx_r(conn_r);
  tx_r.exec("SELECT txid_current()");  // R's id first
  pqxx::work tx_t(conn_t);
  auto held = tx_t.exec(appointment_sql(p.id, note))[0][0].as<std::int64_t>();  // T: a later id, lower row
  auto committed = tx_r.exec(appointment_sql(p.id, note))[0][0].as<std::int64_t>();
  tx_r.commit();
  auto first = s.read_pending("a", 100);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(change_of(first[0]).appointment_id, committed);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(s.read_pending("a", 100).empty());
  tx_t.commit();
  auto late = s.read_pending("a", 100);
  ASSERT_EQ(late.size(), 1u);
  EXPECT_EQ(change_of(late[0]).appointment_id, held);
}

TEST(store, should_read_the_page_and_a_few_holes_while_a_transaction_holds_a_lower_id) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  store s(db.url());
  pqxx::connection conn_t(db.url());
  pqxx::work tx_t(conn_t);
  auto held = tx_t.exec(appointment_sql(p.id, note))[0][0].as<std::int64_t>();
  constexpr std::size_t page = 5;
  std::set<std::int64_t> read;
  std::size_t booked = 0;
  for (int round = 0; round < 20; ++round) {
    db.exec(
        "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now() + interval '1 day', 30)"
        " FROM generate_series(1, 7)");
    booked += 7;
    for (;;) {
      auto events = s.read_pending("a", page);
      const auto stats = s.last_read_stats();
      EXPECT_EQ(stats.statements, round == 0 && read.empty() ? 2u : 1u);  // the first adds the side read
      EXPECT_LE(stats.holes_probed, 1u);                                  // the held id
      EXPECT_LE(stats.rows, page + stats.holes_probed);
      for (const auto& e : events) EXPECT_TRUE(read.insert(e.id).second) << e.id;
      if (events.size() < page) break;
    }
  }
  EXPECT_EQ(read.size(), booked);
  tx_t.commit();
  auto late = s.read_pending("a", page);
  ASSERT_EQ(late.size(), 1u);
  EXPECT_EQ(change_of(late[0]).appointment_id, held);
}

TEST(store, should_not_assign_a_transaction_id_to_a_read) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  // No autovacuum/analyze of the outbox meanwhile: ANALYZE writes, so it takes a transaction id.
  db.exec(
      "DO $$ DECLARE p regclass; BEGIN FOR p IN SELECT inhrelid::regclass FROM pg_inherits"
      " WHERE inhparent = 'appointment_relay.outbox'::regclass LOOP"
      " EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = false)', p); END LOOP; END $$");
  db.exec(
      "INSERT INTO appointment_relay.outbox (source_table, operation, row_id)"
      " SELECT 'api_appointment', 'INSERT', g FROM generate_series(1, 40) g");
  store s(db.url());
  pqxx::connection probe(db.url());
  auto next_xid = [&] {
    pqxx::nontransaction tx(probe);
    return tx.exec("SELECT txid_current()")[0][0].as<std::int64_t>();
  };
  const auto before = next_xid();
  std::size_t rows = 0;
  for (int i = 0; i < 60; ++i) rows += s.read_pending("a", 1).size();
  EXPECT_EQ(rows, 40u);
  EXPECT_LE(next_xid() - before, 2);  // the probe's own
}

TEST(store, should_write_the_watermark_past_rows_ignored_in_a_quiet_period) {
  // The caller reports everything it was handed as done (e.g. rows it ignored) while a lower id is still
  // unsettled: the watermark stops below it. Once the floor passes, reads with nothing new write the rest.
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  store s(db.url());
  ASSERT_TRUE(s.read_pending("a", 100).empty());
  pqxx::connection conn_t(db.url());
  auto tx_t = std::make_unique<pqxx::work>(conn_t);
  tx_t->exec(appointment_sql(p.id, note));  // holds the lowest id
  for (int i = 0; i < 3; ++i) book(db, p.id, note);
  auto ids = ids_of(s.read_pending("a", 100));
  ASSERT_EQ(ids.size(), 3u);
  s.record({}, {{"a", ids.back()}});
  auto cursor = [&] {
    return db.query_value("SELECT coalesce(max(done_through), 0) FROM appointment_relay.endpoint_cursor");
  };
  EXPECT_EQ(std::stoll(cursor()), ids[0] - 2);  // below the held id
  tx_t->abort();
  tx_t.reset();
  for (int i = 0; i < 3 && std::stoll(cursor()) != ids.back(); ++i)
    EXPECT_TRUE(s.read_pending("a", 100).empty());
  EXPECT_EQ(std::stoll(cursor()), ids.back());
  auto st = s.status({"a"});
  EXPECT_EQ(st[0].backlog, 0);
  EXPECT_FALSE(st[0].oldest_pending_age_seconds);
}

TEST(store, should_not_read_delivered_or_dead_again_and_resume_from_the_persisted_watermark) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  for (int i = 0; i < 5; ++i) book(db, p.id, note);
  store s(db.url());
  auto ids = ids_of(s.read_pending("a", 100));
  ASSERT_EQ(ids.size(), 5u);
  // A watermark never passes the read floor, which settles once a later read proves that no transaction
  // can still commit a lower id.
  ASSERT_TRUE(s.read_pending("a", 100).empty());
  std::vector<delivery_update> updates(3);
  updates[0] = {ids[0], "a", delivery_state::delivered, 1, 1700000000000, 1700000000000, {}, "", ""};
  updates[1] = {ids[1], "a",        delivery_state::dead, 3, 1700000000000, 1700000005000,
                {},     "http 410", "gone \"x\"\\"};
  updates[2] = {ids[3],     "a", delivery_state::retrying, 2, 1700000000000, 1700000001000, 1700000009000,
                "http 503", ""};
  s.record(updates, {{"a", ids[2]}});
  s.record({}, {{"a", ids[0]}});  // a watermark never moves back
  EXPECT_EQ(value(db, "SELECT done_through FROM appointment_relay.endpoint_cursor WHERE endpoint = 'a'"),
            ids[2]);
  EXPECT_EQ(db.query_value("SELECT dead_reason FROM appointment_relay.delivery WHERE event_id = " +
                           std::to_string(ids[1])),
            "gone \"x\"\\");
  EXPECT_TRUE(s.read_pending("a", 100).empty());

  s.reset_read_positions();
  auto again = s.read_pending("a", 100);
  ASSERT_EQ(ids_of(again), (std::vector<std::int64_t>{ids[3], ids[4]}));
  EXPECT_EQ(again[0].attempts, 2);
  EXPECT_EQ(again[0].first_attempt_ms, 1700000000000);
  EXPECT_EQ(again[0].next_attempt_ms, 1700000009000);
  EXPECT_EQ(again[1].attempts, 0);
  EXPECT_FALSE(again[1].next_attempt_ms);

  store fresh(db.url());  // a new process resumes at the watermark too
  EXPECT_EQ(ids_of(fresh.read_pending("a", 100)), (std::vector<std::int64_t>{ids[3], ids[4]}));
}

TEST(store, should_not_read_again_what_a_batch_record_settled_above_a_lagging_watermark) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  for (int i = 0; i < 6; ++i) book(db, p.id, note);
  store s(db.url());
  auto ids = ids_of(s.read_pending("a", 100));
  ASSERT_EQ(ids.size(), 6u);
  ASSERT_TRUE(s.read_pending("a", 100).empty());
  // ids[2] waits for a retry, which holds the watermark at ids[1]; the others were delivered at once.
  std::vector<delivery_update> updates;
  for (auto i : {0, 1, 3, 5})
    updates.push_back({ids[i], "a", delivery_state::delivered, 1, 1700000000000, 1700000000100, {}, "", ""});
  updates.push_back({ids[2], "a", delivery_state::retrying, 1, 1700000000000, 1700000000100, 1700000009000,
                     "http 503", ""});
  s.record(updates, {{"a", ids[1]}});
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivery"), "1") << "only the retry";
  EXPECT_EQ(db.query_value("SELECT done_ids::text FROM appointment_relay.delivery_batch"),
            "{" + std::to_string(ids[0]) + "," + std::to_string(ids[1]) + "," + std::to_string(ids[3]) + "," +
                std::to_string(ids[3]) + "," + std::to_string(ids[5]) + "," + std::to_string(ids[5]) + "}");
  EXPECT_EQ(db.query_value("SELECT string_agg(event_id::text, ',' ORDER BY event_id)"
                           " FROM appointment_relay.delivered_events WHERE endpoint = 'a'"),
            std::to_string(ids[0]) + "," + std::to_string(ids[1]) + "," + std::to_string(ids[3]) + "," +
                std::to_string(ids[5]));
  auto st = s.status({"a"});
  EXPECT_EQ(st[0].backlog, 2);  // ids[2] and ids[4]

  store fresh(db.url());  // a restart: reads from the watermark, skips what the batch record says is done
  EXPECT_EQ(ids_of(fresh.read_pending("a", 100)), (std::vector<std::int64_t>{ids[2], ids[4]}));
}

TEST(store, should_record_thousands_of_updates_in_one_call_with_duplicates) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  db.exec(
      "INSERT INTO appointment_relay.outbox (source_table, operation, row_id)"
      " SELECT 'api_appointment', 'INSERT', g FROM generate_series(1, 5000) g");
  std::vector<delivery_update> updates;
  for (std::int64_t id = 1; id <= 5000; ++id)
    updates.push_back(
        {id, "a", delivery_state::retrying, 1, 1700000000000, 1700000000000, 1700000001000, "e", ""});
  for (std::int64_t id = 1; id <= 5000; ++id)
    updates.push_back({id, "a", delivery_state::delivered, 2, 1700000000000, 1700000002000, {}, "", ""});
  updates.push_back({999999, "a", delivery_state::delivered, 1, 1, 1, {}, "", ""});  // purged meanwhile
  store s(db.url());
  for (const char* endpoint : {"a", "b"}) {  // read positions settled past every row (see the watermark)
    s.read_pending(endpoint, 10000);
    s.read_pending(endpoint, 10000);
  }
  auto start = std::chrono::steady_clock::now();
  s.record(updates, {{"a", 5000}, {"b", 10}});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivery WHERE state = 'delivered'"),
            "5000");
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.endpoint_cursor"), "2");
}

TEST(store, should_report_status_replay_dead_letters_and_return_them_as_replayed) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  for (int i = 0; i < 3; ++i) book(db, p.id, note);
  store s(db.url());
  auto ids = ids_of(s.read_pending("a", 100));
  ASSERT_EQ(ids.size(), 3u);
  s.record({{ids[0], "a", delivery_state::dead, 5, 1, 2, {}, "http 410", "http 410"},
            {ids[1], "a", delivery_state::dead, 5, 1, 2, {}, "http 410", "http 410"},
            {ids[2], "a", delivery_state::delivered, 1, 1, 2, {}, "", ""}},
           {{"a", ids[2]}});
  auto st = s.status({"a", "b"});
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].backlog, 0);
  EXPECT_EQ(st[0].dead_by_reason, (std::map<std::string, std::int64_t>{{"http 410", 2}}));
  EXPECT_EQ(st[1].backlog, 3);
  ASSERT_TRUE(st[1].oldest_pending_age_seconds);
  EXPECT_GE(*st[1].oldest_pending_age_seconds, 0.0);

  replay_filter only_first;
  only_first.event_id = ids[0];
  only_first.endpoint = "a";
  EXPECT_EQ(s.replay(only_first), 1);
  EXPECT_EQ(s.replay(only_first), 0);
  auto back = s.read_pending("a", 100);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].id, ids[0]);
  EXPECT_TRUE(back[0].replayed);
  EXPECT_EQ(back[0].attempts, 0);
  EXPECT_EQ(db.query_value("SELECT state FROM appointment_relay.delivery WHERE event_id = " +
                           std::to_string(ids[0])),
            "replay");  // until an outcome is recorded
  EXPECT_TRUE(s.read_pending("a", 100).empty());
  s.record({{ids[0], "a", delivery_state::delivered, 1, 1, 2, {}, "", ""}}, {});

  replay_filter window;
  window.since = 946684800;  // 2000-01-01
  window.until = 946771200;
  EXPECT_EQ(s.replay(window), 0);
  EXPECT_EQ(s.replay(replay_filter{}), 1);
  EXPECT_EQ(ids_of(s.read_pending("a", 100)), std::vector<std::int64_t>{ids[1]});
}

// Partitions of two ids each in place of the migration's (empty) ones of 100,000.
void use_small_partitions(const scratch_database& db, store& s) {
  db.exec(
      "DO $$ DECLARE p text; BEGIN FOR p IN SELECT name FROM appointment_relay.outbox_partitions()"
      " WHERE first_id IS NOT NULL LOOP EXECUTE format('DROP TABLE appointment_relay.%I,"
      " appointment_relay.%I', p, 'delivery_batch_p' || substr(p, 9)); END LOOP; END $$");
  ASSERT_EQ(s.add_partitions(2, 4), 4);
}

std::set<std::int64_t> ids_in(const scratch_database& db, const std::string& table) {
  std::set<std::int64_t> ids;
  auto list = db.query_value("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM " + table);
  for (std::size_t pos = 0; pos < list.size();) {
    auto comma = list.find(',', pos);
    ids.insert(std::stoll(list.substr(pos, comma - pos)));
    pos = comma == std::string::npos ? list.size() : comma + 1;
  }
  return ids;
}

TEST(store, should_drop_old_partitions_every_endpoint_is_done_with_keeping_dead_letters) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  store s(db.url());
  use_small_partitions(db, s);  // [1,3) [3,5) [5,7) [7,9)
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  for (int i = 0; i < 7; ++i) book(db, p.id, note);
  auto ids = ids_of(s.read_pending("a", 100));
  ASSERT_EQ(ids, (std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7}));
  ASSERT_TRUE(s.read_pending("a", 100).empty());  // settles the read floor past every row
  db.exec("UPDATE appointment_relay.outbox SET captured_at = now() - interval '10 days' WHERE id <> 5");
  // 1 delivered after a retry (a delivery row), 2 dead, 3 retrying, 4 and 6 delivered at once, 5 young,
  // 7 past the watermark.
  s.record({{1, "a", delivery_state::delivered, 2, 1, 1, {}, "", ""},
            {2, "a", delivery_state::dead, 1, 1, 1, {}, "x", "x"},
            {3, "a", delivery_state::retrying, 1, 1, 1, 4102444800000, "http 503", ""},
            {4, "a", delivery_state::delivered, 1, 1, 1, {}, "", ""},
            {6, "a", delivery_state::delivered, 1, 1, 1, {}, "", ""}},
           {{"a", 6}});
  const auto week = std::chrono::hours(24 * 7);
  EXPECT_EQ(s.purge(week, {"a", "b"}), 0);  // b has done nothing
  EXPECT_EQ(s.purge(week, {"a"}), 2);       // [1,3): 3 is retrying, 5 is young, 7 not done
  EXPECT_EQ(s.purge(week, {"a"}), 0);
  EXPECT_EQ(ids_in(db, "appointment_relay.outbox"), (std::set<std::int64_t>{3, 4, 5, 6, 7}));
  EXPECT_EQ(ids_in(db, "appointment_relay.outbox_kept"), (std::set<std::int64_t>{2}));
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivery WHERE event_id = 1"), "0");
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.outbox_partitions() WHERE end_id = 3"),
            "0")
      << "dropped, not emptied row by row";
  EXPECT_EQ(db.query_value("SELECT to_regclass('appointment_relay.delivery_batch_p1') IS NULL"), "t")
      << "its batch records go with it";
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivery_batch"), "1")
      << "the batch record of 4 and 6 starts in [3,5), which stays";
  EXPECT_EQ(s.status({"a"})[0].dead_by_reason, (std::map<std::string, std::int64_t>{{"x", 1}}));

  // The dead letter comes back from outbox_kept, whole.
  replay_filter dead;
  dead.endpoint = "a";
  EXPECT_EQ(s.replay(dead), 1);
  auto back = s.read_pending("a", 100);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].id, 2);
  EXPECT_TRUE(back[0].replayed);
  EXPECT_EQ(change_of(back[0]).appointment_external_id,
            external_id(db, change_of(back[0]).appointment_id.value()));
  // Its outcome is recorded though its row is in outbox_kept: it leaves the replay state (else every restart
  // would send it again).
  delivery_update again{2, "a", delivery_state::delivered, 1, 1, 1, {}, "", ""};
  again.replayed = true;
  s.record({again}, {});
  EXPECT_EQ(db.query_value("SELECT state FROM appointment_relay.delivery WHERE event_id = 2"), "delivered");
  // 3 delivered, 5 old now: [3,5) and [5,7) go.
  s.record({{3, "a", delivery_state::delivered, 2, 1, 1, {}, "", ""}}, {});
  db.exec("UPDATE appointment_relay.outbox SET captured_at = now() - interval '10 days' WHERE id = 5");
  EXPECT_EQ(s.purge(week, {"a"}), 4);
  EXPECT_EQ(ids_in(db, "appointment_relay.outbox"), (std::set<std::int64_t>{7}));
}

TEST(store, should_empty_the_default_partition_once_its_rows_may_go) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  store s(db.url());
  db.exec(
      "DO $$ DECLARE p text; BEGIN FOR p IN SELECT name FROM appointment_relay.outbox_partitions()"
      " WHERE first_id IS NOT NULL LOOP EXECUTE format('DROP TABLE appointment_relay.%I,"
      " appointment_relay.%I', p, 'delivery_batch_p' || substr(p, 9)); END LOOP; END $$");
  auto p = add_patient(db);
  auto note = add_note(db, p.id);
  for (int i = 0; i < 3; ++i) book(db, p.id, note);  // no partition for them: the default takes them
  EXPECT_EQ(ids_in(db, "appointment_relay.outbox_default"), (std::set<std::int64_t>{1, 2, 3}));
  // New partitions start beyond the default's rows.
  EXPECT_EQ(s.add_partitions(10, 2), 2);
  book(db, p.id, note);
  EXPECT_EQ(ids_in(db, "appointment_relay.outbox_default"), (std::set<std::int64_t>{1, 2, 3}));
  auto ids = ids_of(s.read_pending("a", 100));
  ASSERT_EQ(ids.size(), 4u);
  ASSERT_TRUE(s.read_pending("a", 100).empty());
  db.exec("UPDATE appointment_relay.outbox SET captured_at = now() - interval '10 days'");
  std::vector<delivery_update> done;
  for (auto id : ids) done.push_back({id, "a", delivery_state::delivered, 1, 1, 1, {}, "", ""});
  s.record(done, {{"a", 3}});
  EXPECT_EQ(s.purge(std::chrono::hours(24), {"a"}), 3);
  EXPECT_TRUE(ids_in(db, "appointment_relay.outbox_default").empty());
  EXPECT_EQ(ids_in(db, "appointment_relay.outbox"), (std::set<std::int64_t>{ids[3]}));
}

TEST(store, should_refuse_an_unmigrated_database_with_a_clear_message) {
  AR_REQUIRE_DATABASE();
  scratch_database db(false);
  try {
    store s(db.url());
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "the database is not migrated: run appointment-relay migrate");
  }
}

TEST(store, should_migrate_once_even_twice_or_concurrently) {
  AR_REQUIRE_DATABASE();
  scratch_database db(false);
  std::vector<int> all;  // every migration shipped: 1, 2, ...
  for (const auto& entry : std::filesystem::directory_iterator(default_migrations_dir()))
    if (entry.path().extension() == ".sql")
      all.push_back(std::stoi(entry.path().filename().string().substr(0, 4)));
  std::sort(all.begin(), all.end());
  ASSERT_GE(all.size(), 2u);
  std::vector<int> r1, r2;
  std::thread t1([&] { r1 = migrate(db.url(), default_migrations_dir()); });
  std::thread t2([&] { r2 = migrate(db.url(), default_migrations_dir()); });
  t1.join();
  t2.join();
  EXPECT_TRUE((r1 == all && r2.empty()) || (r2 == all && r1.empty()));
  EXPECT_TRUE(migrate(db.url(), default_migrations_dir()).empty());
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.schema_migrations"),
            std::to_string(all.size()));
  EXPECT_EQ(db.query_value("SELECT length(id) FROM appointment_relay.installation"), "12");
  store s(db.url());
  EXPECT_EQ(s.installation_id().size(), 12u);
}

TEST(store, should_upgrade_an_installation_of_the_first_migration_to_the_lighter_triggers) {
  AR_REQUIRE_DATABASE();
  scratch_database db(false);
  auto first_only = std::filesystem::temp_directory_path() / ("ar-migrations-" + std::to_string(::getpid()));
  std::filesystem::create_directories(first_only);
  std::filesystem::copy_file(default_migrations_dir() / "0001_outbox.sql", first_only / "0001_outbox.sql",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_EQ(migrate(db.url(), first_only), std::vector<int>{1});
  auto with_setting =
      "SELECT count(*) FROM pg_proc WHERE pronamespace = 'appointment_relay'::regnamespace"
      " AND proname LIKE 'capture%' AND proconfig IS NOT NULL";
  EXPECT_EQ(db.query_value(with_setting), "2");
  // Up to 0002 only (later migrations may change the triggers again).
  std::filesystem::copy_file(default_migrations_dir() / "0002_lighter_capture.sql",
                             first_only / "0002_lighter_capture.sql",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_EQ(migrate(db.url(), first_only), std::vector<int>{2});
  std::filesystem::remove_all(first_only);
  EXPECT_EQ(db.query_value(with_setting), "0");
  // The replaced triggers still capture: a booking and its cancellation become two outbox rows.
  db.exec(
      "SELECT canvas_test.cancel(canvas_test.book_appointment(canvas_test.create_patient(),"
      " now() + interval '1 day', 30))");
  EXPECT_EQ(db.query_value(
                "SELECT string_agg(coalesce(state, '-'), ',' ORDER BY id) FROM appointment_relay.outbox"),
            "-,CLD");
}

TEST(store, should_connect_with_its_application_name_and_keepalives) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  store s(db.url());
  EXPECT_EQ(db.query_value("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND application_name = 'appointment-relay'"),
            "1");
}

TEST(store, should_add_tcp_user_timeout_unless_the_url_sets_it) {
  EXPECT_NE(with_connection_options("postgresql://u@h/db").find("?keepalives=1&"), std::string::npos);
  EXPECT_NE(with_connection_options("postgresql://u@h/db").find("&tcp_user_timeout=15000"),
            std::string::npos);
  EXPECT_NE(with_connection_options("host=h dbname=db").find(" tcp_user_timeout=15000"), std::string::npos);
  auto kept = with_connection_options("postgresql://u@h/db?tcp_user_timeout=5000&keepalives_idle=30");
  EXPECT_NE(kept.find("tcp_user_timeout=5000"), std::string::npos);
  EXPECT_EQ(kept.find("tcp_user_timeout=15000"), std::string::npos);
  EXPECT_EQ(kept.find("keepalives_idle=10"), std::string::npos);
  EXPECT_EQ(with_connection_options("host=h tcp_user_timeout=1").find("tcp_user_timeout=15000"),
            std::string::npos);
}

TEST(store, should_set_the_daemons_session_settings) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  store s(db.url());
  const auto statement_timeout = s.session_setting("statement_timeout");
  s.use_daemon_session();
  // Over TCP (the test server is on 127.0.0.1): the server's keepalives apply to this socket.
  EXPECT_EQ(s.session_setting("tcp_keepalives_idle"), "5");
  EXPECT_EQ(s.session_setting("tcp_keepalives_interval"), "3");
  EXPECT_EQ(s.session_setting("tcp_keepalives_count"), "3");
  EXPECT_EQ(s.session_setting("tcp_user_timeout"), "15000");  // its SHOW prints milliseconds bare
  EXPECT_EQ(s.session_setting("statement_timeout"), "1min");
  EXPECT_EQ(s.session_setting("idle_session_timeout"), "15s");
  EXPECT_NE(statement_timeout, "1min");
  session_settings custom;
  custom.statement_timeout = std::chrono::milliseconds(1500);
  custom.idle_session_timeout = std::chrono::milliseconds(0);
  s.use_daemon_session(custom);
  EXPECT_EQ(s.session_setting("statement_timeout"), "1500ms");
  EXPECT_EQ(s.session_setting("idle_session_timeout"), "0");
  // Only this session: another connection keeps the server's defaults.
  EXPECT_EQ(db.query_value("SHOW statement_timeout"), statement_timeout);
}

TEST(store, should_end_a_session_left_idle_past_its_idle_timeout) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  store s(db.url());
  session_settings quick;
  quick.idle_session_timeout = std::chrono::milliseconds(300);
  s.use_daemon_session(quick);
  s.heartbeat();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // far past the timeout: the server closes it
  EXPECT_THROW(s.heartbeat(), pqxx::broken_connection);
}

TEST(store, should_hold_leadership_until_its_session_ends) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  store first(db.url());
  store second(db.url());
  EXPECT_TRUE(first.try_lock_leadership());
  EXPECT_FALSE(second.try_lock_leadership());
  db.exec(
      "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
      " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())");
  bool taken = false;
  for (int i = 0; i < 50 && !taken; ++i) {
    taken = second.try_lock_leadership();
    if (!taken) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(taken);
  EXPECT_THROW(first.try_lock_leadership(), pqxx::broken_connection);
}

TEST(store, should_count_notifications_of_committed_changes) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  store s(db.url());
  s.listen();
  EXPECT_GE(s.socket(), 0);
  EXPECT_EQ(s.take_notifications(), 0u);
  auto p = add_patient(db);
  book(db, p.id, add_note(db, p.id));
  std::size_t n = 0;
  for (int i = 0; i < 100 && n == 0; ++i) {
    n = s.take_notifications();
    if (n == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(n, 1u);
}

attempt_record failed(int attempt, int status, std::string error, double latency_ms, std::string body) {
  attempt_record a;
  a.attempt = attempt;
  a.at_ms = 1700000000000 + attempt;
  a.status = status;
  a.error = std::move(error);
  a.latency_ms = latency_ms;
  a.response_body = std::move(body);
  return a;
}

std::vector<std::int64_t> ids_of(const std::vector<event_summary>& events) {
  std::vector<std::int64_t> ids;
  for (const auto& e : events) ids.push_back(e.id);
  return ids;
}

TEST(store, should_keep_failed_attempts_with_their_outcome_and_show_each_events_state_and_history) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  store s(db.url());
  use_small_partitions(db, s);  // [1,3) [3,5) [5,7) [7,9)
  auto p = add_patient(db);
  for (int i = 0; i < 5; ++i) book(db, p.id, add_note(db, p.id));
  ASSERT_EQ(ids_of(s.read_pending("a", 100)), (std::vector<std::int64_t>{1, 2, 3, 4, 5}));
  ASSERT_TRUE(s.read_pending("a", 100).empty());  // settles the read floor past every row
  // 1: failed, then delivered in the same batch (the first update's attempt is kept all the same); 2: dead;
  // 3: retrying after a reset; 4: delivered at once (a batch record, no attempt row); 5: pending.
  delivery_update retry1{1, "a", delivery_state::retrying, 1, 1, 1, 4102444800000, "http 503", ""};
  retry1.failed_attempt = failed(1, 503, "", 12.5, "down \xef\xbf\xbd for maintenance");
  delivery_update dead2{2, "a", delivery_state::dead, 1, 1, 1, {}, "http 400", "http 400: refused"};
  dead2.failed_attempt = failed(1, 400, "", 3, "{\"error\":\"bad \\\"payload\\\"\"}");
  delivery_update retry3{3, "a", delivery_state::retrying, 1, 1, 1, 4102444800000, "connection reset", ""};
  retry3.failed_attempt = failed(1, 0, "connection reset", 2, "");
  s.record({retry1,
            {1, "a", delivery_state::delivered, 2, 1, 2, {}, "", ""},
            dead2,
            retry3,
            {4, "a", delivery_state::delivered, 1, 1, 1, {}, "", ""}},
           {{"a", 2}});
  EXPECT_EQ(db.query_value("SELECT string_agg(event_id::text, ',' ORDER BY event_id)"
                           " FROM appointment_relay.failed_attempt"),
            "1,2,3");

  auto all = s.events({}, {"a"});
  ASSERT_EQ(ids_of(all), (std::vector<std::int64_t>{5, 4, 3, 2, 1}));
  const std::vector<std::string> states = {"pending", "delivered", "retrying", "dead", "delivered"};
  const std::vector<int> attempts = {0, 1, 1, 1, 2};
  for (std::size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].state, states[i]) << all[i].id;
    EXPECT_EQ(all[i].attempts, attempts[i]) << all[i].id;
    EXPECT_EQ(all[i].endpoint, "a");
    EXPECT_EQ(all[i].kind, "created");
    EXPECT_FALSE(all[i].appointment.empty());
    EXPECT_GT(all[i].captured_at_ms, 0);
  }
  EXPECT_EQ(all[3].dead_reason, "http 400: refused");
  EXPECT_EQ(all[2].last_error, "connection reset");

  auto detail = s.event(1, {"a"});
  ASSERT_EQ(detail.size(), 1u);
  EXPECT_EQ(detail[0].summary.state, "delivered");
  EXPECT_EQ(detail[0].webhook_id, "msg_" + s.installation_id() + "_1_a");
  EXPECT_NE(detail[0].payload.find("\"created\":true"), std::string::npos) << detail[0].payload;
  ASSERT_EQ(detail[0].attempts.size(), 1u);
  EXPECT_EQ(detail[0].attempts[0].attempt, 1);
  EXPECT_EQ(detail[0].attempts[0].at_ms, 1700000000001);
  EXPECT_EQ(detail[0].attempts[0].status, 503);
  EXPECT_EQ(detail[0].attempts[0].error, "");
  EXPECT_DOUBLE_EQ(detail[0].attempts[0].latency_ms, 12.5);
  EXPECT_EQ(detail[0].attempts[0].response_body, "down \xef\xbf\xbd for maintenance");
  EXPECT_EQ(s.event(2, {"a"})[0].attempts.at(0).response_body, "{\"error\":\"bad \\\"payload\\\"\"}");
  EXPECT_EQ(s.event(3, {"a"})[0].attempts.at(0).error, "connection reset");
  EXPECT_TRUE(s.event(4, {"a"})[0].attempts.empty());
  EXPECT_TRUE(s.event(99, {"a"}).empty());
  // Two endpoints: one row each; b never saw anything (no watermark): pending there.
  auto both = s.event(1, {"a", "b"});
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[1].summary.endpoint, "b");
  EXPECT_EQ(both[1].summary.state, "pending");
  EXPECT_TRUE(both[1].attempts.empty());

  auto only = [&](auto change) {
    event_filter f;
    change(f);
    return ids_of(s.events(f, {"a"}));
  };
  EXPECT_EQ(only([](auto& f) { f.state = "dead"; }), (std::vector<std::int64_t>{2}));
  EXPECT_EQ(only([](auto& f) { f.state = "retrying"; }), (std::vector<std::int64_t>{3}));
  EXPECT_EQ(only([](auto& f) { f.state = "pending"; }), (std::vector<std::int64_t>{5}));
  EXPECT_EQ(only([](auto& f) { f.state = "delivered"; }), (std::vector<std::int64_t>{4, 1}));
  EXPECT_EQ(only([](auto& f) { f.kind = "cancelled"; }), (std::vector<std::int64_t>{}));
  EXPECT_EQ(only([](auto& f) { f.limit = 2; }), (std::vector<std::int64_t>{5, 4}));
  EXPECT_EQ(only([&](auto& f) { f.appointment = all[2].appointment; }), (std::vector<std::int64_t>{3}));
  // An endpoint that wants other kinds: what it has no record of is skipped there.
  EXPECT_EQ(only([](auto& f) {
              f.state = "skipped";
              f.endpoint_kinds["a"] = {"cancelled"};
            }),
            (std::vector<std::int64_t>{5}));
  EXPECT_THROW(only([](auto& f) { f.state = "lost"; }), std::invalid_argument);
  // Captured long ago: --until finds it by id, --since leaves it out.
  db.exec("UPDATE appointment_relay.outbox SET captured_at = now() - interval '10 days' WHERE id < 5");
  const auto day_ago = value(db, "SELECT extract(epoch FROM now() - interval '1 day')::bigint");
  EXPECT_EQ(only([&](auto& f) { f.since = day_ago; }), (std::vector<std::int64_t>{5}));
  EXPECT_EQ(only([&](auto& f) { f.until = day_ago; }), (std::vector<std::int64_t>{4, 3, 2, 1}));

  // Retention drops [1,3): 1's delivery row goes and its attempts with it; the dead letter 2 is kept, with
  // its history.
  EXPECT_EQ(s.purge(std::chrono::hours(24 * 7), {"a"}), 2);
  EXPECT_EQ(db.query_value("SELECT string_agg(event_id::text, ',' ORDER BY event_id)"
                           " FROM appointment_relay.failed_attempt"),
            "2,3");
  EXPECT_EQ(ids_of(s.events({}, {"a"})), (std::vector<std::int64_t>{5, 4, 3, 2}));
  auto kept = s.event(2, {"a"});
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].summary.state, "dead");
  EXPECT_EQ(kept[0].attempts.size(), 1u);
}

}  // namespace
}  // namespace appointment_relay
