#include "fault_support.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "appointment_relay/store.hpp"
#include "support/database_roles.hpp"

// An installation of before the partitioned outbox, upgraded in place (issue 11): it was set up as the
// README says (roles and grants of sql/privileges.sql, migrations 0001-0003 as the owner role), Canvas wrote
// appointments' lives, and the relay of that time left events in every state. Then today's `migrate` and
// today's daemon: every event still owed to the endpoint arrives, in order per appointment; what was
// delivered is not sent again; the dead letter stays visible and replayable, also once retention has dropped
// the old table (now the outbox's first partition); the captured rows are all still there, unchanged, until
// then; new Canvas writes continue above the old ids.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

const fs::path sql_dir = fs::path(APPOINTMENT_RELAY_SOURCE_DIR) / "sql";
constexpr const char* endpoint_name = "default";  // the endpoint APPOINTMENT_RELAY_ENDPOINT_URL makes

// One value (first column of the first row, "" for NULL) read on a fresh connection as url's role.
std::string value_as(const std::string& url, const std::string& sql) {
  pqxx::connection c(url);
  pqxx::nontransaction tx(c);
  auto r = tx.exec(sql);
  return r.empty() || r[0][0].is_null() ? "" : r[0][0].c_str();
}

std::string iso_utc(std::int64_t unix_seconds) {  // 2023-11-14T22:13:20+00:00, as the payloads carry it
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S+00:00", &tm);
  return buf;
}

// The lines of a log that contain one of the words.
std::string lines_with(const std::string& log, const std::vector<std::string>& words) {
  std::istringstream in(log);
  std::string out, line;
  while (std::getline(in, line))
    for (const auto& w : words)
      if (line.find(w) != std::string::npos) {
        out += line + "\n";
        break;
      }
  return out;
}

// What the relay of before had recorded for an event at the endpoint. `pending`: nothing (above the
// watermark); `nothing`: a change that notifies nobody, no row either.
enum class old_state { delivered, retrying, dead, replay, pending, nothing };

struct old_event {
  std::int64_t id = 0;       // outbox id
  std::string ordering_key;  // the appointment's external id
  std::string kind;
  std::string body;  // the payload it must carry ("" for nothing)
  old_state state = old_state::pending;
};

struct appointment {
  std::string id;
  std::string external_id;
  std::string patient_key;
};

// Canvas's writes as its application role, one transaction each as Canvas makes them, each checked to
// capture exactly one outbox row (read as the superuser: Canvas's role cannot read the outbox).
class canvas_writer {
 public:
  canvas_writer(const scratch_database& db, const std::string& app_url) : db_(db), conn_(app_url) {}

  appointment book(std::int64_t start, int minutes, old_event& e) {
    static int patients = 0;
    char key[33];
    std::snprintf(key, sizeof key, "5eed%08x%020d", static_cast<unsigned>(::getpid()), ++patients);
    appointment a;
    a.patient_key = key;
    a.id = capture("SELECT canvas_test.book_appointment(canvas_test.create_patient('" + a.patient_key +
                       "'), " + sql_time(start) + ", " + std::to_string(minutes) + ")",
                   e);
    a.external_id = one("SELECT externally_exposable_id FROM api_appointment WHERE id = " + a.id);
    expect(e, a, "created", times(start, minutes));
    return a;
  }

  appointment reschedule(const appointment& from, std::int64_t start, int minutes, old_event& e) {
    appointment a = from;
    a.id = capture("SELECT canvas_test.reschedule(" + from.id + ", " + sql_time(start) + ", " +
                       std::to_string(minutes) + ")",
                   e);
    a.external_id = one("SELECT externally_exposable_id FROM api_appointment WHERE id = " + a.id);
    expect(e, a, "rescheduled", times(start, minutes));
    return a;
  }

  // helper: cancel, restore, no_show, check_in (sql/canvas/002_helpers.sql).
  void state(const appointment& a, const std::string& helper, const std::string& kind, old_event& e) {
    capture("SELECT canvas_test." + helper + "(" + a.id + ")", e);
    expect(e, a, kind, "");
  }

  void schedule_block(std::int64_t start, old_event& e) {
    capture("SELECT canvas_test.schedule_block(" + sql_time(start) + ", 30)", e);
    e.kind = "nothing";
  }

 private:
  static std::string sql_time(std::int64_t unix_seconds) {
    return "to_timestamp(" + std::to_string(unix_seconds) + ")";
  }
  static std::string times(std::int64_t start, int minutes) {
    return R"("start_time":")" + iso_utc(start) + R"(","end_time":")" + iso_utc(start + minutes * 60) + "\",";
  }
  static void expect(old_event& e, const appointment& a, const std::string& kind, const std::string& times) {
    e.ordering_key = a.external_id;
    e.kind = kind;
    e.body = R"({"canvas_patient_key":")" + a.patient_key + R"(","appointment_external_id":")" +
             a.external_id + "\"," + times + "\"" + kind + "\":true}";
  }

  std::string one(const std::string& sql) {
    pqxx::nontransaction tx(conn_);
    return tx.exec(sql)[0][0].c_str();
  }

  // Runs sql; e.id becomes the one outbox row it captured. Returns the statement's value.
  std::string capture(const std::string& sql, old_event& e) {
    const std::string top = "SELECT coalesce(max(id), 0) FROM appointment_relay.outbox";
    const auto before = std::stoll(db_.query_value(top));
    auto value = one(sql);
    const auto rows = std::stoll(db_.query_value("SELECT count(*) FROM appointment_relay.outbox WHERE id > " +
                                                 std::to_string(before)));
    if (rows != 1) throw std::runtime_error(std::to_string(rows) + " outbox rows captured by: " + sql);
    e.id = std::stoll(db_.query_value(top));
    return value;
  }

  const scratch_database& db_;
  pqxx::connection conn_;
};

// The delivery row the relay of before wrote for e (none for pending and nothing).
std::string old_delivery_row(const old_event& e) {
  const std::string head =
      "INSERT INTO appointment_relay.delivery (event_id, endpoint, state, attempts, "
      "first_attempt_at, last_attempt_at, next_attempt_at, delivered_at, last_error, "
      "dead_reason) VALUES (" +
      std::to_string(e.id) + ", '" + endpoint_name + "', ";
  switch (e.state) {
    case old_state::delivered:
      return head +
             "'delivered', 1, now() - interval '20 min', now() - interval '20 min', NULL, "
             "now() - interval '20 min', NULL, NULL)";
    case old_state::retrying:  // answered 503 twice, due again a minute ago
      return head +
             "'retrying', 2, now() - interval '10 min', now() - interval '5 min', "
             "now() - interval '1 min', NULL, 'http 503', NULL)";
    case old_state::dead:
      return head +
             "'dead', 1, now() - interval '15 min', now() - interval '15 min', NULL, NULL, 'http 400', "
             "'http 400')";
    case old_state::replay:  // what `replay` leaves of a dead letter (store::replay)
      return head + "'replay', 0, NULL, now() - interval '1 hour', NULL, NULL, NULL, NULL)";
    case old_state::pending:
    case old_state::nothing:
      break;
  }
  return "";
}

class upgrade : public ::testing::Test {
 protected:
  void SetUp() override {
    AR_REQUIRE_DATABASE();
    roles_ = std::make_unique<test_roles>("ar_up_");
    db_ = std::make_unique<scratch_database>(false);
  }
  void TearDown() override {
    relay_.reset();
    server_.reset();
    db_.reset();  // first: the roles own the schema in it
    roles_.reset();
  }

  std::string owner_url() const { return as_role(db_->url(), roles_->owner); }
  std::string daemon_url() const { return as_role(db_->url(), roles_->daemon); }
  std::string app_url() const { return as_role(db_->url(), roles_->app); }

  // The installation of before: the README's roles, only the migrations that existed then, as the owner.
  void install_with_migrations_before_0004() {
    const auto& r = *roles_;
    db_->exec(with_names(read_text_file(sql_dir / "privileges.sql"), r.names(*db_)));
    create_canvas_application_role(*db_, r.app);
    auto old_dir = fs::temp_directory_path() / ("ar_upgrade_migrations_" + std::to_string(::getpid()));
    fs::remove_all(old_dir);
    fs::create_directories(old_dir);
    for (const auto& e : fs::directory_iterator(sql_dir / "migrations"))
      if (e.path().filename().string() < "0004") fs::copy_file(e.path(), old_dir / e.path().filename());
    std::vector<int> applied;
    EXPECT_NO_THROW(applied = migrate(owner_url(), old_dir));
    fs::remove_all(old_dir);
    ASSERT_EQ(applied, (std::vector<int>{1, 2, 3}));
  }

  // Appointments' lives through Canvas, then the relay of before's records, as the daemon role wrote them:
  // everything up to the watermark was done (delivered; one dead letter since replayed; one replayed and
  // answered 503 once before the relay stopped, which leaves a retrying row below the watermark); above it,
  // events delivered out of id order across appointments, one retrying, one dead, the rest not yet sent.
  void make_old_events() {
    canvas_writer canvas(*db_, app_url());
    std::int64_t slot = 1700000000;
    auto next_slot = [&] { return slot += 5400; };
    // Each reference is used by one call only, before the next push_back.
    auto add = [&](old_state s) -> old_event& {
      events_.push_back({});
      events_.back().state = s;
      return events_.back();
    };
    using s = old_state;
    auto p = canvas.book(next_slot(), 30, add(s::delivered));
    auto q = canvas.book(next_slot(), 45, add(s::delivered));
    auto t = canvas.book(next_slot(), 20, add(s::delivered));
    canvas.state(q, "cancel", "cancelled", add(s::replay));
    auto r = canvas.book(next_slot(), 60, add(s::delivered));
    canvas.state(t, "no_show", "no_show", add(s::retrying));
    canvas.state(q, "restore", "reverted", add(s::delivered));
    auto d = canvas.book(next_slot(), 15, add(s::delivered));
    canvas.state(t, "check_in", "checked_in", add(s::delivered));
    watermark_ = events_.back().id;
    canvas.state(r, "no_show", "no_show", add(s::retrying));
    canvas.state(p, "cancel", "cancelled", add(s::delivered));
    canvas.state(d, "cancel", "cancelled", add(s::dead));
    auto n = canvas.book(next_slot(), 30, add(s::pending));
    canvas.state(d, "restore", "reverted", add(s::delivered));
    canvas.schedule_block(next_slot(), add(s::nothing));
    canvas.state(r, "check_in", "checked_in", add(s::pending));
    canvas.state(p, "restore", "reverted", add(s::pending));
    n = canvas.reschedule(n, next_slot(), 40, add(s::pending));
    canvas.state(d, "check_in", "checked_in", add(s::pending));
    canvas.state(p, "no_show", "no_show", add(s::pending));
    canvas.state(n, "cancel", "cancelled", add(s::pending));
    canvas.state(p, "check_in", "checked_in", add(s::pending));

    pqxx::connection c(daemon_url());
    pqxx::work tx(c);
    for (const auto& e : events_) {
      auto row = old_delivery_row(e);
      if (!row.empty()) tx.exec(row);
    }
    // The one below the watermark: a replayed dead letter answered 503 once since.
    tx.exec(
        "UPDATE appointment_relay.delivery SET attempts = 1, first_attempt_at = now() - interval '2 min',"
        " last_attempt_at = now() - interval '2 min', next_attempt_at = now() - interval '1 min'"
        " WHERE state = 'retrying' AND event_id <= " +
        std::to_string(watermark_));
    tx.exec("INSERT INTO appointment_relay.endpoint_cursor (endpoint, done_through) VALUES ('" +
            std::string(endpoint_name) + "', " + std::to_string(watermark_) + ")");
    tx.commit();
  }

  // The old installation with events in every state, then today's `migrate` as the owner role, as the README
  // says to after an upgrade: every captured row is still there, unchanged, and the daemon's role reads it.
  void upgrade_an_old_installation() {
    ASSERT_NO_FATAL_FAILURE(install_with_migrations_before_0004());
    ASSERT_NO_THROW(make_old_events());
    last_old_id_ = events_.back().id;
    rows_before_ = outbox_digest(db_->url(), last_old_id_);
    installation_ = db_->query_value("SELECT id FROM appointment_relay.installation");

    auto m = run_relay_command({"migrate"}, {{"APPOINTMENT_RELAY_DATABASE_URL", owner_url()},
                                             {"APPOINTMENT_RELAY_SQL_DIR", sql_dir.string()}});
    ASSERT_EQ(m.exit_code, 0) << m.out << m.err;
    std::set<std::string> versions;
    for (const auto& e : fs::directory_iterator(sql_dir / "migrations"))
      if (e.path().extension() == ".sql") versions.insert(e.path().filename().string().substr(0, 4));
    std::string all_versions;
    for (const auto& v : versions) all_versions += (all_versions.empty() ? "" : ",") + v;
    EXPECT_EQ(db_->query_value("SELECT string_agg(lpad(version::text, 4, '0'), ',' ORDER BY version) FROM "
                               "appointment_relay.schema_migrations"),
              all_versions);
    EXPECT_EQ(db_->query_value("SELECT id FROM appointment_relay.installation"), installation_)
        << "webhook-ids would change";
    EXPECT_EQ(outbox_digest(daemon_url(), last_old_id_), rows_before_);
    EXPECT_EQ(value_as(daemon_url(), "SELECT count(*) FROM appointment_relay.outbox"),
              std::to_string(events_.size()));
  }

  // Today's daemon, as the daemon role, against one receiver that accepts everything (kept across restarts).
  void start_relay() {
    if (!server_) server_ = std::make_unique<test_http_server>(always_status(200));
    auto env = relay_env(*db_, server_->url("/canvas"));
    env["APPOINTMENT_RELAY_DATABASE_URL"] = daemon_url();
    relay_ = std::make_unique<relay_process>(env);
    ASSERT_TRUE(relay_->wait_for_log("this instance is active", 30s)) << relay_->log();
  }
  std::vector<recorded_request> received() const { return server_->requests(); }

  // What the relay of before still owed: the pending, retrying and replayed events. Each appointment's in id
  // order; nothing delivered or dead before is sent.
  void expect_the_owed_events_delivered() {
    owed_ = expected_in({old_state::pending, old_state::retrying, old_state::replay});
    ASSERT_EQ(owed_.size(), 11u);
    auto requests = [&] { return received(); };
    EXPECT_TRUE(wait_for_deliveries(owed_, requests, 60s))
        << count_delivered(owed_, received()) << " of " << owed_.size() << " delivered";
    auto settled = status_when([](const nlohmann::json& s) { return s.at("backlog") == 0; });
    EXPECT_EQ(settled.at("backlog"), 0) << settled.dump();
    std::this_thread::sleep_for(1500ms);  // a poll interval more: a wrong re-send would have come by now
    expect_received(owed_, received(), true);
  }

  // The dead letter is still one, visible in status; replayed, it is delivered.
  void expect_the_dead_letter_replayable() {
    const auto& dead = the_one(old_state::dead);
    auto dead_letters = status_when([](const nlohmann::json& s) { return !s.at("dead_letters").empty(); });
    EXPECT_EQ(dead_letters.at("dead_letters"), nlohmann::json({{"http 400", 1}})) << dead_letters.dump();
    auto text = run_relay_command({"status"}, cli_env());
    EXPECT_NE(text.out.find("http 400"), std::string::npos) << text.out << text.err;
    auto replay = run_relay_command({"replay", "--event-id", std::to_string(dead.id)}, cli_env());
    EXPECT_EQ(replay.exit_code, 0) << replay.err;
    EXPECT_EQ(replay.out, "1 dead letters back to pending\n");
    EXPECT_TRUE(wait_for_deliveries(
        {{dead.ordering_key, dead.kind, dead.body}}, [&] { return received(); }, 30s))
        << "the replayed dead letter";
  }

  // A Canvas write after the upgrade: ids go on above every old one, and it is delivered too. Then the
  // endpoint has nothing left, and every payload received is checked: in order per appointment but for the
  // replayed dead letter, which comes after its appointment's later events by nature.
  void expect_new_writes_delivered_and_nothing_left() {
    old_event booked, cancelled;
    {
      canvas_writer canvas(*db_, app_url());
      auto z = canvas.book(1800000000, 30, booked);
      canvas.state(z, "cancel", "cancelled", cancelled);
    }
    EXPECT_GT(booked.id, last_old_id_);
    EXPECT_GT(cancelled.id, booked.id);
    new_ids_ = {{booked.body, booked.id}, {cancelled.body, cancelled.id}};
    std::vector<expected_notification> fresh = {{booked.ordering_key, booked.kind, booked.body},
                                                {cancelled.ordering_key, cancelled.kind, cancelled.body}};
    EXPECT_TRUE(wait_for_deliveries(
        fresh, [&] { return received(); }, 30s));
    auto done = status_when(
        [](const nlohmann::json& s) { return s.at("backlog") == 0 && s.at("dead_letters").empty(); });
    EXPECT_EQ(done.at("backlog"), 0) << done.dump();
    EXPECT_TRUE(done.at("dead_letters").empty()) << done.dump();

    const auto& dead = the_one(old_state::dead);
    auto everything = owed_;
    everything.insert(everything.end(), fresh.begin(), fresh.end());
    std::vector<recorded_request> but_replayed;
    for (const auto& r : received())
      if (r.body != dead.body) but_replayed.push_back(r);
    expect_received(everything, but_replayed, true);
    everything.push_back({dead.ordering_key, dead.kind, dead.body});
    expect_received(everything, received(), false);
  }

  // The daemon met no error on the way (a right missing in the upgraded schema shows as a failed statement:
  // a reconnect, or housekeeping tried again later), nor gave up on an event; and its role still cannot
  // write captured rows in any table that holds them (the relay signs and sends what they hold).
  void expect_a_clean_run() {
    EXPECT_EQ(lines_with(relay_->log(), {" warning ", " error "}), "");
    EXPECT_EQ(
        db_->query_value("SELECT string_agg(c.relname, ', ') FROM pg_class c WHERE c.relnamespace = "
                         "'appointment_relay'::regnamespace AND c.relkind IN ('r', 'p') AND c.relname LIKE "
                         "'outbox%' AND has_table_privilege('" +
                         roles_->daemon + "', c.oid, 'INSERT, UPDATE')"),
        "")
        << "tables of captured rows the daemon's role may write";
  }

  // The events in the given states, in id order, as the delivery check takes them.
  std::vector<expected_notification> expected_in(std::set<old_state> states) const {
    std::vector<expected_notification> out;
    for (const auto& e : events_)
      if (states.count(e.state)) out.push_back({e.ordering_key, e.kind, e.body});
    return out;
  }
  const old_event& the_one(old_state s) const {
    for (const auto& e : events_)
      if (e.state == s) return e;
    throw std::logic_error("no such event");
  }

  // A digest of the captured rows up to id `through`, in the columns every migration has had.
  std::string outbox_digest(const std::string& url, std::int64_t through) const {
    return value_as(url,
                    "SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', id, captured_at, source_table, "
                    "operation, row_id, state, appointment_id, appointment_external_id, rescheduled_from_id, "
                    "start_time, duration_minutes, entered_in_error, patient_id, patient_key, ordering_key), "
                    "',' ORDER BY id)) FROM appointment_relay.outbox WHERE id <= " +
                        std::to_string(through));
  }

  // status and replay as the daemon role, as the README says.
  environment cli_env() const {
    return {{"APPOINTMENT_RELAY_DATABASE_URL", daemon_url()},
            {"APPOINTMENT_RELAY_ENDPOINT_URL", server_->url("/canvas")}};
  }

  // `status --json` for the endpoint, polled until done(status) or 30 s.
  nlohmann::json status_when(const std::function<bool(const nlohmann::json&)>& done) const {
    nlohmann::json s;
    for (int i = 0; i < 300; ++i) {
      auto r = run_relay_command({"status", "--json"}, cli_env());
      EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
      if (r.exit_code != 0) return s;
      s = nlohmann::json::parse(r.out).at(0);
      if (done(s)) break;
      std::this_thread::sleep_for(100ms);
    }
    return s;
  }

  // Every expected payload arrives, with the webhook-id of its own event (the installation's id kept) and a
  // valid signature; nothing else arrives.
  void expect_received(const std::vector<expected_notification>& expected,
                       const std::vector<recorded_request>& got, bool in_order) const {
    delivery_check_options o;
    o.signing_secret = fault_secret;
    o.require_order = in_order;
    auto problems = check_deliveries(expected, got, o);
    EXPECT_TRUE(problems.empty()) << describe(problems);
    std::map<std::string, std::int64_t> id_of;
    for (const auto& e : events_) id_of[e.body] = e.id;
    for (const auto& [body, id] : new_ids_) id_of[body] = id;
    for (const auto& r : got) {
      auto id = id_of.find(r.body);
      if (id == id_of.end()) continue;  // reported above
      EXPECT_EQ(r.header("webhook-id").value_or(""),
                "msg_" + installation_ + "_" + std::to_string(id->second) + "_" + endpoint_name)
          << r.body;
    }
  }

  std::unique_ptr<test_roles> roles_;
  std::unique_ptr<scratch_database> db_;
  std::unique_ptr<test_http_server> server_;
  std::unique_ptr<relay_process> relay_;
  std::vector<old_event> events_;
  std::int64_t watermark_ = 0;
  std::int64_t last_old_id_ = 0;
  std::string rows_before_;  // outbox_digest of the old rows before the upgrade
  std::string installation_;
  std::vector<expected_notification> owed_;
  std::map<std::string, std::int64_t> new_ids_;  // body -> id of the events written after the upgrade
};

TEST_F(upgrade, should_keep_pending_retrying_and_dead_lettered_events_of_an_installation_before_0004) {
  ASSERT_NO_FATAL_FAILURE(upgrade_an_old_installation());
  ASSERT_NO_FATAL_FAILURE(start_relay());
  expect_the_owed_events_delivered();
  expect_the_dead_letter_replayable();
  expect_new_writes_delivered_and_nothing_left();
  // Nothing was lost in the table either (retention has not come yet).
  EXPECT_EQ(outbox_digest(daemon_url(), last_old_id_), rows_before_);
  EXPECT_EQ(value_as(daemon_url(), "SELECT count(*) FROM appointment_relay.outbox"),
            std::to_string(events_.size() + 2));
  expect_a_clean_run();
}

// Retention after the upgrade: the old table, now the first partition, is dropped whole once its events are
// done and past retention, as the daemon's role drops it; the dead letter in it stays visible and replayable.
TEST_F(upgrade, should_keep_an_old_dead_letter_when_retention_drops_the_partition_that_held_it) {
  ASSERT_NO_FATAL_FAILURE(upgrade_an_old_installation());
  store daemon_store(daemon_url());
  const std::vector<std::string> endpoints = {endpoint_name};
  EXPECT_EQ(daemon_store.purge(0s, endpoints), 0) << "pending, retrying and replayed events hold it";
  ASSERT_NO_FATAL_FAILURE(start_relay());
  expect_the_owed_events_delivered();
  // Stopped for the drop, so that no read of the running daemon makes it wait for its lock.
  ASSERT_TRUE(relay_->send_signal(SIGTERM));
  EXPECT_EQ(relay_->wait_exit(10s), 0);
  EXPECT_EQ(daemon_store.purge(0s, endpoints), static_cast<std::int64_t>(events_.size()))
      << "every old row, in one partition";
  EXPECT_EQ(value_as(daemon_url(), "SELECT count(*) FROM appointment_relay.outbox"), "0");
  EXPECT_EQ(value_as(daemon_url(), "SELECT string_agg(id::text, ',') FROM appointment_relay.outbox_kept"),
            std::to_string(the_one(old_state::dead).id));
  auto first_run = relay_->log();
  ASSERT_NO_FATAL_FAILURE(start_relay());
  expect_the_dead_letter_replayable();
  expect_new_writes_delivered_and_nothing_left();
  EXPECT_EQ(lines_with(first_run, {" warning ", " error "}), "");
  expect_a_clean_run();
}

}  // namespace
}  // namespace appointment_relay::testing
