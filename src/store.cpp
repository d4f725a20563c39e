#include "appointment_relay/store.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include <pg_config.h>  // PG_VERSION_NUM: the version of the libpq built against
#include <spdlog/spdlog.h>
#include <pqxx/pqxx>

#include "appointment_relay/classifier.hpp"
#include "appointment_relay/dispatcher.hpp"  // webhook_id
#include "appointment_relay/read_position.hpp"

namespace appointment_relay {
namespace {

// Session advisory lock keys (per database): one for `migrate`, one for the active instance.
constexpr std::int64_t migrate_lock_key = 0x61725f6d696772;  // "ar_migr"
constexpr std::int64_t leader_lock_key = 0x61725f6c656164;   // "ar_lead"
constexpr const char* notify_channel = "appointment_relay";

bool is_uri(const std::string& url) {
  return url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0;
}

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void inhibit_reactivation(pqxx::connection& c) {
  // A silently re-opened session would have lost the leadership lock and LISTEN: a broken connection must
  // surface as an error so the worker rebuilds everything. Deprecated in 6.4 but still the only switch.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  c.inhibit_reactivation(true);
#pragma GCC diagnostic pop
}

// PostgreSQL array literals: libpqxx 6.4 cannot bind arrays, so they travel as one text parameter each.
class array_literal {
 public:
  void add_null() { sep() += "NULL"; }
  void add(std::int64_t v) { sep() += std::to_string(v); }
  void add(const std::optional<std::int64_t>& v) { v ? add(*v) : add_null(); }
  void add(std::string_view s) {
    auto& o = sep();
    o += '"';
    for (char c : s) {
      if (c == '"' || c == '\\') o += '\\';
      o += c;
    }
    o += '"';
  }
  std::string str() const { return "{" + text_ + "}"; }

 private:
  std::string& sep() {
    if (!text_.empty()) text_ += ',';
    return text_;
  }
  std::string text_;
};

const char* to_text(delivery_state s) {
  switch (s) {
    case delivery_state::retrying:
      return "retrying";
    case delivery_state::delivered:
      return "delivered";
    case delivery_state::dead:
      return "dead";
  }
  return "retrying";
}

// The columns of one outbox row o LEFT JOIN its delivery d for the endpoint (d may be absent), read by name.
// `done`: delivered, dead or replayed there already (the main read returns such rows only as read markers).
constexpr const char* event_columns =
    "o.id AS id, floor(extract(epoch FROM o.captured_at) * 1000000)::bigint AS captured_at_us,"
    " o.source_table, o.operation, o.state, o.appointment_id, o.appointment_external_id,"
    " o.rescheduled_from_id, floor(extract(epoch FROM o.start_time))::bigint AS start_time,"
    " o.duration_minutes, o.entered_in_error, o.patient_id, o.patient_key, d.attempts,"
    " floor(extract(epoch FROM d.first_attempt_at) * 1000)::bigint AS first_attempt_ms,"
    " floor(extract(epoch FROM d.next_attempt_at) * 1000)::bigint AS next_attempt_ms,"
    " coalesce(d.state <> 'retrying', false) AS done";

// One probe of the delivery table per outbox row (OFFSET 0 keeps the planner from turning it into a merge
// join that scans and sorts the whole delivery table each read). $1: the endpoint.
constexpr const char* delivery_join =
    " LEFT JOIN LATERAL (SELECT * FROM appointment_relay.delivery d"
    "  WHERE d.event_id = o.id AND d.endpoint = $1 OFFSET 0) d ON true";

// The column numbers of event_columns in one result, looked up by name once per result.
struct event_fields {
  explicit event_fields(const pqxx::result& r)
      : id(r.column_number("id")),
        captured_at_us(r.column_number("captured_at_us")),
        source_table(r.column_number("source_table")),
        operation(r.column_number("operation")),
        state(r.column_number("state")),
        appointment_id(r.column_number("appointment_id")),
        appointment_external_id(r.column_number("appointment_external_id")),
        rescheduled_from_id(r.column_number("rescheduled_from_id")),
        start_time(r.column_number("start_time")),
        duration_minutes(r.column_number("duration_minutes")),
        entered_in_error(r.column_number("entered_in_error")),
        patient_id(r.column_number("patient_id")),
        patient_key(r.column_number("patient_key")),
        attempts(r.column_number("attempts")),
        first_attempt_ms(r.column_number("first_attempt_ms")),
        next_attempt_ms(r.column_number("next_attempt_ms")),
        done(r.column_number("done")) {}
  pqxx::row::size_type id, captured_at_us, source_table, operation, state, appointment_id,
      appointment_external_id, rescheduled_from_id, start_time, duration_minutes, entered_in_error,
      patient_id, patient_key, attempts, first_attempt_ms, next_attempt_ms, done;
};

std::optional<std::string_view> text_of(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return std::string_view(f.c_str(), f.size());
}

std::optional<std::int64_t> int_of(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::int64_t>();
}

pending_event to_event(const pqxx::row& r, const event_fields& c, bool replayed) {
  pending_event e;
  e.id = r[c.id].as<std::int64_t>();
  e.captured_at_us = r[c.captured_at_us].as<std::int64_t>();
  outbox_row_text t;
  t.source_table = text_of(r[c.source_table]);
  t.operation = text_of(r[c.operation]);
  t.state = text_of(r[c.state]);
  t.appointment_id = text_of(r[c.appointment_id]);
  t.appointment_external_id = text_of(r[c.appointment_external_id]);
  t.rescheduled_from_id = text_of(r[c.rescheduled_from_id]);
  t.start_time = text_of(r[c.start_time]);
  t.duration_minutes = text_of(r[c.duration_minutes]);
  t.entered_in_error = text_of(r[c.entered_in_error]);
  t.patient_id = text_of(r[c.patient_id]);
  t.patient_key = text_of(r[c.patient_key]);
  e.change = decode_outbox_row(t);
  e.attempts = r[c.attempts].is_null() ? 0 : r[c.attempts].as<int>();
  e.first_attempt_ms = int_of(r[c.first_attempt_ms]);
  e.next_attempt_ms = int_of(r[c.next_attempt_ms]);
  e.replayed = replayed;
  return e;
}

struct migration_file {
  int version;
  std::string name;
  std::filesystem::path path;
};

std::vector<migration_file> list_migrations(const std::filesystem::path& dir) {
  std::vector<migration_file> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.size() < 10 || name.substr(name.size() - 4) != ".sql" ||
        name[4] != '_' ||
        !std::all_of(name.begin(), name.begin() + 4, [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    files.push_back({std::stoi(name.substr(0, 4)), name.substr(5, name.size() - 9), entry.path()});
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.version < b.version; });
  for (std::size_t i = 1; i < files.size(); ++i)
    if (files[i].version == files[i - 1].version)
      throw std::runtime_error("two migrations with version " + std::to_string(files[i].version) + " in " +
                               dir.string());
  return files;
}

}  // namespace

std::string with_connection_options(const std::string& url) {
  // tcp_user_timeout (libpq 12+; an older libpq refuses an option it does not know; PQlibVersion would
  // need a direct link to libpq, the headers' version is the one we run with in practice): a query sent on a
  // connection whose peer vanished (a blackholed route: no RST, keepalives are not sent while data is
  // unacknowledged) fails after 15 s instead of the kernel's ~15 minutes of retransmissions.
  constexpr bool has_user_timeout = PG_VERSION_NUM >= 120000;
  static const std::pair<const char*, const char*> options[] = {
      {"keepalives", "1"},           {"keepalives_idle", "10"}, {"keepalives_interval", "5"},
      {"keepalives_count", "3"},     {"connect_timeout", "10"}, {"application_name", "appointment-relay"},
      {"tcp_user_timeout", "15000"},
  };
  std::string out = url;
  bool uri = is_uri(url);
  bool has_query = uri && url.find('?') != std::string::npos;
  for (const auto& [key, value] : options) {
    if (!has_user_timeout && std::string_view(key) == "tcp_user_timeout") continue;
    std::string k = std::string(key) + "=";
    // Good enough: "keepalives=" is not a suffix of another option name we add, and the others are unique.
    bool present = false;
    for (auto pos = out.find(k); pos != std::string::npos; pos = out.find(k, pos + 1)) {
      char before = pos == 0 ? ' ' : out[pos - 1];
      if (before == ' ' || before == '?' || before == '&') present = true;
    }
    if (present) continue;
    if (uri) {
      out += has_query ? '&' : '?';
      has_query = true;
      out += k + value;
    } else {
      if (!out.empty()) out += ' ';
      out += k + value;
    }
  }
  return out;
}

std::vector<int> migrate(const std::string& database_url, const std::filesystem::path& migrations_dir) {
  auto files = list_migrations(migrations_dir);
  pqxx::connection conn(with_connection_options(database_url));
  inhibit_reactivation(conn);
  {
    // Serializes concurrent migrates; taken before looking at what is applied, so the second one sees it all.
    pqxx::nontransaction tx(conn);
    tx.exec("SELECT pg_advisory_lock(" + std::to_string(migrate_lock_key) + ")");
    tx.exec("CREATE SCHEMA IF NOT EXISTS appointment_relay");
    tx.exec(
        "CREATE TABLE IF NOT EXISTS appointment_relay.schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
  }
  std::set<int> applied;
  {
    pqxx::nontransaction tx(conn);
    for (const auto& row : tx.exec("SELECT version FROM appointment_relay.schema_migrations"))
      applied.insert(row[0].as<int>());
  }
  std::vector<int> now_applied;
  for (const auto& f : files) {
    if (applied.count(f.version)) continue;
    pqxx::work tx(conn);
    tx.exec(read_text(f.path));
    tx.exec_params("INSERT INTO appointment_relay.schema_migrations (version, name) VALUES ($1, $2)",
                   f.version, f.name);
    tx.commit();
    now_applied.push_back(f.version);
  }
  pqxx::nontransaction tx(conn);
  tx.exec("SELECT pg_advisory_unlock(" + std::to_string(migrate_lock_key) + ")");
  return now_applied;
}

std::filesystem::path default_migrations_dir() {
  namespace fs = std::filesystem;
  if (const char* v = std::getenv("APPOINTMENT_RELAY_SQL_DIR"); v != nullptr && *v != '\0') {
    fs::path p(v);
    return fs::is_directory(p / "migrations") ? p / "migrations" : p;
  }
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path p = exe.parent_path() / ".." / "share" / "appointment-relay" / "sql" / "migrations";
    if (fs::is_directory(p, ec)) return p.lexically_normal();
  }
  return fs::path(APPOINTMENT_RELAY_SOURCE_DIR) / "sql" / "migrations";
}

namespace {

class counting_receiver final : public pqxx::notification_receiver {
 public:
  explicit counting_receiver(pqxx::connection_base& c) : pqxx::notification_receiver(c, notify_channel) {}
  void operator()(const std::string& payload, int) noexcept override {
    ++count;
    if (payload == "replay") replayed = true;
    if (payload == "control") control = true;
  }
  std::size_t count = 0;
  bool replayed = false;  // `replay` put dead letters back: look for them at the next read
  bool control = false;   // `pause` or `resume` changed endpoint_state
};

// Dead letters put back by `replay` (state 'replay'), and, at the first side read of a position, rows left
// retrying below the watermark. A dead letter's row may have moved to outbox_kept when retention dropped its
// partition. $1 endpoint, $2 first side read, $3 floor, $4 ids handed out already, $5
// limit.
const std::string side_read_sql = std::string("SELECT ") + event_columns +
                                  " FROM appointment_relay.delivery d"
                                  " JOIN (SELECT * FROM appointment_relay.outbox UNION ALL"
                                  "  SELECT * FROM appointment_relay.outbox_kept) o ON o.id = d.event_id"
                                  " WHERE d.endpoint = $1 AND (d.state = 'replay' OR ($2 AND d.state = "
                                  "'retrying' AND d.event_id <= $3))"
                                  " AND NOT (d.event_id = ANY ($4::bigint[]))"
                                  " ORDER BY o.id LIMIT $5";

// The main read (read_position.hpp), one statement, so one snapshot and one round trip:
//   $1 endpoint, $2 top, $3/$4 the holes' first and last ids, $5 how many pending events at most,
//   $6 a watermark to write (0: none).
// The snapshot comes from txid_current_snapshot(), which assigns no transaction id. The holes' bound is the
// next unassigned transaction id, read after the snapshot without assigning one: age(xid) measures from
// it (GetStableLatestTransactionId: the next xid when the transaction has none), taken relative to the
// snapshot's xmax (32-bit, and never a special xid below 3) and added back to the 64-bit xmax. age() runs
// in the executor, after the statement's snapshot was taken; its argument comes from the snapshot, so the
// planner cannot evaluate it earlier.
// Hole rows come first, at most $5 of them (cut: the caller settles nothing); the page takes what the
// pending hole rows leave. Rows done already come back too, as markers: without them their ids would look
// missing. The watermark insert writes (and assigns a transaction id) only when $6 > 0.
const std::string read_pending_sql =
    std::string(
        "WITH snap AS MATERIALIZED ("
        " SELECT txid_snapshot_xmin(s) AS xmin, CASE WHEN txid_snapshot_xmax(s) % 4294967296 < 3"
        "  THEN txid_snapshot_xmax(s) - 3 ELSE txid_snapshot_xmax(s) END AS ref"
        " FROM (SELECT txid_current_snapshot() AS s) AS q),"
        " bound AS MATERIALIZED ("
        " SELECT xmin, ref + age((ref % 4294967296)::text::xid) AS next_xid FROM snap),"
        " late AS MATERIALIZED (SELECT ") +
    event_columns +
    // Each hole probed on its own (LATERAL): a join over the holes lets the planner walk the whole outbox in
    // id order for the ORDER BY ... LIMIT, which cost ~35 ms per read on 100,000 rows.
    " FROM unnest($3::bigint[], $4::bigint[]) AS h(first_id, last_id)"
    " CROSS JOIN LATERAL (SELECT * FROM appointment_relay.outbox o"
    "  WHERE o.id BETWEEN h.first_id AND h.last_id ORDER BY o.id LIMIT $5) AS o" +
    delivery_join +
    " ORDER BY o.id LIMIT $5),"
    " page AS MATERIALIZED (SELECT " +
    event_columns + " FROM appointment_relay.outbox o" + delivery_join +
    " WHERE o.id > $2 ORDER BY o.id LIMIT greatest(0, $5 - (SELECT count(*) FROM late WHERE NOT done))),"
    " watermark AS ("
    " INSERT INTO appointment_relay.endpoint_cursor AS c (endpoint, done_through, updated_at)"
    " SELECT $1, $6::bigint, now() WHERE $6::bigint > 0"
    " ON CONFLICT (endpoint) DO UPDATE"
    " SET done_through = GREATEST(c.done_through, EXCLUDED.done_through), updated_at = now()"
    " RETURNING 1)"
    " SELECT rows.*, bound.xmin AS snapshot_xmin, bound.next_xid AS next_xid,"
    " (SELECT count(*) FROM watermark) AS watermarks_written"
    " FROM bound LEFT JOIN ("
    "  SELECT true AS in_hole, * FROM late UNION ALL SELECT false AS in_hole, * FROM page) AS rows ON true"
    " ORDER BY rows.id";

// Outcomes, watermarks and batch records in one statement: atomic without a transaction block, so one round
// trip (a BEGIN ... COMMIT would cost three more, each a wake-up of the database thread). Only retried, dead
// and replayed events get a delivery row; first-attempt successes are ranges of ids in one batch row per
// endpoint (recorded_in_batch): a few bytes of WAL each instead of a row, its index entry and the lock the
// old foreign key took on the outbox row.
constexpr const char* record_outcomes_sql =
    "WITH outcomes AS ("
    " INSERT INTO appointment_relay.delivery AS d (event_id, endpoint, state, attempts, first_attempt_at,"
    "  last_attempt_at, next_attempt_at, delivered_at, last_error, dead_reason)"
    " SELECT u.event_id, u.endpoint, u.state, u.attempts, to_timestamp(u.first_ms / 1000.0),"
    "  to_timestamp(u.last_ms / 1000.0), to_timestamp(u.next_ms / 1000.0),"
    "  CASE WHEN u.state = 'delivered' THEN coalesce(to_timestamp(u.last_ms / 1000.0), now()) END,"
    "  NULLIF(u.last_error, ''), NULLIF(u.dead_reason, '')"
    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::integer[], $5::bigint[], $6::bigint[],"
    "  $7::bigint[], $8::text[], $9::text[])"
    "  AS u(event_id, endpoint, state, attempts, first_ms, last_ms, next_ms, last_error, dead_reason)"
    // An event purged meanwhile has nothing left to record; a dead letter kept apart (its partition dropped)
    // and replayed has its row in outbox_kept: its outcome must be recorded, or it would stay 'replay'.
    " WHERE (EXISTS (SELECT 1 FROM appointment_relay.outbox o WHERE o.id = u.event_id)"
    "  OR EXISTS (SELECT 1 FROM appointment_relay.outbox_kept k WHERE k.id = u.event_id))"
    " ON CONFLICT (event_id, endpoint) DO UPDATE SET state = EXCLUDED.state, attempts = EXCLUDED.attempts,"
    "  first_attempt_at = EXCLUDED.first_attempt_at, last_attempt_at = EXCLUDED.last_attempt_at,"
    "  next_attempt_at = EXCLUDED.next_attempt_at, delivered_at = EXCLUDED.delivered_at,"
    "  last_error = EXCLUDED.last_error, dead_reason = EXCLUDED.dead_reason"
    " RETURNING d.event_id, d.endpoint),";
// Failed attempts, for the history, in the statement of their outcomes: only those whose outcome was
// recorded, so that every attempt row has the delivery row that ends it. A batch without any (first-attempt
// successes, the drain's usual case) runs the statement without this part: measured, the empty part cost ~35
// us per statement (0.52 against 0.48 s per 1,000 batches of 512) and no WAL.
constexpr const char* record_attempts_sql =
    " attempts AS ("
    " INSERT INTO appointment_relay.failed_attempt (event_id, endpoint, attempt, at, http_status, error,"
    "  latency_ms, response_body)"
    " SELECT a.event_id, a.endpoint, a.attempt, to_timestamp(a.at_ms / 1000.0), a.status, NULLIF(a.error, "
    "''),"
    "  a.latency_ms, NULLIF(a.body, '')"
    " FROM unnest($18::bigint[], $19::text[], $20::integer[], $21::bigint[], $22::integer[], $23::text[],"
    "  $24::real[], $25::text[]) AS a(event_id, endpoint, attempt, at_ms, status, error, latency_ms, body)"
    " WHERE (a.event_id, a.endpoint) IN (SELECT event_id, endpoint FROM outcomes)"
    " RETURNING 1),";
constexpr const char* record_rest_sql =
    " watermarks AS ("
    " INSERT INTO appointment_relay.endpoint_cursor AS c (endpoint, done_through, updated_at)"
    " SELECT w.endpoint, w.done_through, now() FROM unnest($10::text[], $11::bigint[]) AS w(endpoint,"
    "  done_through)"
    " ON CONFLICT (endpoint) DO UPDATE"
    " SET done_through = GREATEST(c.done_through, EXCLUDED.done_through), updated_at = now()"
    " RETURNING 1),"
    " batches AS ("
    " INSERT INTO appointment_relay.delivery_batch (endpoint, first_id, last_id, done_ids, first_at, last_at)"
    " SELECT b.endpoint, b.first_id, b.last_id, b.done_ids::bigint[], to_timestamp(b.first_ms / 1000.0),"
    "  to_timestamp(b.last_ms / 1000.0)"
    " FROM unnest($12::text[], $13::bigint[], $14::bigint[], $15::text[], $16::bigint[], $17::bigint[])"
    "  AS b(endpoint, first_id, last_id, done_ids, first_ms, last_ms)"
    " RETURNING 1)"
    " SELECT (SELECT count(*) FROM outcomes), (SELECT count(*) FROM watermarks), (SELECT count(*) FROM "
    "batches)";
const std::string record_sql = std::string(record_outcomes_sql) + record_rest_sql;
const std::string record_with_attempts_sql =
    std::string(record_outcomes_sql) + record_attempts_sql + record_rest_sql;

// One endpoint's backlog and the age of its oldest pending event, cheap enough for every poll tick on the
// database thread (where a slow statement would delay the lease's confirmation): counts, not a probe of
// every row. The backlog is the outbox rows past the watermark less those done there (delivery rows, batch
// ranges); an event delivered twice after a restart counts twice, so it may read low by that many, never
// below 0. The oldest pending event is the oldest retrying or replayed one, or else the first row past both
// the watermark and the endpoint's last batch record that is not done. $1: endpoint.
constexpr const char* status_sql =
    "WITH wm AS MATERIALIZED (SELECT coalesce((SELECT done_through FROM appointment_relay.endpoint_cursor"
    "  WHERE endpoint = $1), 0) AS v),"
    " recorded AS MATERIALIZED (SELECT greatest(wm.v, coalesce(max(b.last_id), 0)) AS v"
    "  FROM wm LEFT JOIN appointment_relay.delivery_batch b ON b.endpoint = $1 AND b.last_id > wm.v"
    "  GROUP BY wm.v)"
    " SELECT (SELECT count(*) FROM appointment_relay.outbox o WHERE o.id > (SELECT v FROM wm))"
    "  - (SELECT count(*) FROM appointment_relay.delivery d WHERE d.endpoint = $1"
    "     AND d.event_id > (SELECT v FROM wm) AND d.state IN ('delivered', 'dead'))"
    "  - (SELECT coalesce(sum(r.hi - greatest(r.lo, wm.v + 1) + 1), 0)"
    "     FROM wm, appointment_relay.delivery_batch b,"
    "     LATERAL (SELECT b.done_ids[i] AS lo, b.done_ids[i + 1] AS hi"
    "      FROM generate_series(1, cardinality(b.done_ids) - 1, 2) AS i) AS r"
    "     WHERE b.endpoint = $1 AND b.last_id > wm.v AND r.hi > wm.v),"
    " extract(epoch FROM now() - least("
    "  (SELECT min(o.captured_at) FROM appointment_relay.delivery d"
    "   JOIN (SELECT id, captured_at FROM appointment_relay.outbox UNION ALL"
    "    SELECT id, captured_at FROM appointment_relay.outbox_kept) o ON o.id = d.event_id"
    "   WHERE d.endpoint = $1 AND d.state IN ('retrying', 'replay')),"
    "  (SELECT o.captured_at FROM appointment_relay.outbox o WHERE o.id > (SELECT v FROM recorded)"
    "   AND NOT EXISTS (SELECT 1 FROM appointment_relay.delivery d WHERE d.event_id = o.id"
    "    AND d.endpoint = $1 AND d.state IN ('delivered', 'dead'))"
    "   ORDER BY o.id LIMIT 1)))::float8";

// Sets the settings that the server has, in one round trip; returns the names it has.
constexpr const char* set_session_sql =
    "SELECT s.name, set_config(s.name, s.value, false)"
    " FROM unnest($1::text[], $2::text[]) AS s(name, value)"
    " WHERE s.name IN (SELECT name FROM pg_catalog.pg_settings)";

// One endpoint's reader: its read position (read_position.hpp) and its side read of replayed dead letters.
struct endpoint_reader {
  explicit endpoint_reader(std::int64_t start) : position(start) {}
  read_position position;
  // Events above the persisted watermark that a batch record says are done (delivered by an earlier session
  // while the watermark lagged): sorted, disjoint, inclusive ranges, loaded when the position is made.
  std::vector<std::pair<std::int64_t, std::int64_t>> done_in_batches;
  bool in_batches(std::int64_t id) const {
    auto it = std::upper_bound(done_in_batches.begin(), done_in_batches.end(), id,
                               [](std::int64_t v, const auto& r) { return v < r.first; });
    return it != done_in_batches.begin() && std::prev(it)->second >= id;
  }
  // Replayed dead letters already handed out, and when to look for new ones.
  std::set<std::int64_t> side_seen;
  bool side_first = true;
  std::chrono::steady_clock::time_point next_side_read{};
};

// The ranges of an endpoint's batch records above its watermark, merged into sorted disjoint ranges (a
// redelivery after a restart may record an id twice).
std::vector<std::pair<std::int64_t, std::int64_t>> done_ranges_above(pqxx::transaction_base& tx,
                                                                     const std::string& endpoint,
                                                                     std::int64_t watermark) {
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  auto r = tx.exec_params(
      "SELECT r.lo, r.hi FROM appointment_relay.delivery_batch b,"
      " LATERAL (SELECT b.done_ids[i] AS lo, b.done_ids[i + 1] AS hi"
      "  FROM generate_series(1, cardinality(b.done_ids) - 1, 2) AS i) AS r"
      " WHERE b.endpoint = $1 AND b.last_id > $2 AND r.hi > $2 ORDER BY r.lo",
      endpoint, watermark);
  for (const auto& row : r) {
    const auto lo = row[0].as<std::int64_t>(), hi = row[1].as<std::int64_t>();
    if (!ranges.empty() && lo <= ranges.back().second + 1)
      ranges.back().second = std::max(ranges.back().second, hi);
    else
      ranges.emplace_back(lo, hi);
  }
  return ranges;
}

// One endpoint's batch record in the making: the ids recorded_in_batch, and when they were delivered.
struct batch_record {
  std::vector<std::int64_t> ids;
  std::int64_t first_ms = 0;
  std::int64_t last_ms = 0;
};

endpoint_health health_of(std::string_view s) {
  if (s == "failing") return endpoint_health::failing;
  if (s == "open") return endpoint_health::open;
  return endpoint_health::healthy;
}

const char* const controls_sql =
    "SELECT endpoint, health, coalesce(health_reason, ''),"
    " (extract(epoch FROM health_since) * 1000)::bigint, (extract(epoch FROM probe_at) * 1000)::bigint,"
    " probe_delay_ms, paused, coalesce(paused_by, ''), coalesce(pause_reason, ''),"
    " (extract(epoch FROM paused_at) * 1000)::bigint, start_id, coalesce(start_reason, ''),"
    " (extract(epoch FROM started_at) * 1000)::bigint"
    " FROM appointment_relay.endpoint_state";

endpoint_control control_of(const pqxx::row& r) {
  endpoint_control c;
  c.health.endpoint = r[0].c_str();
  c.health.health = health_of(r[1].c_str());
  c.health.reason = r[2].c_str();
  c.health.since_ms = int_of(r[3]);
  c.health.probe_at_ms = int_of(r[4]);
  c.health.probe_delay_ms = r[5].as<std::int64_t>();
  c.paused = r[6].as<bool>();
  c.paused_by = r[7].c_str();
  c.pause_reason = r[8].c_str();
  c.paused_at_ms = int_of(r[9]);
  c.start_id = int_of(r[10]);
  c.start_reason = r[11].c_str();
  c.started_at_ms = int_of(r[12]);
  return c;
}

}  // namespace

struct store::impl {
  explicit impl(const std::string& url) : conn(with_connection_options(url)) { inhibit_reactivation(conn); }
  pqxx::connection conn;
  std::unique_ptr<counting_receiver> receiver;
  std::map<std::string, endpoint_reader> positions;
  bool read_prepared = false;
  bool record_prepared = false;
  read_stats last_read;
};

store::store(const std::string& database_url) : impl_(std::make_unique<impl>(database_url)) {
  pqxx::nontransaction tx(impl_->conn);
  auto r = tx.exec(
      "SELECT to_regclass('appointment_relay.schema_migrations') IS NOT NULL"
      " AND to_regclass('appointment_relay.outbox') IS NOT NULL");
  bool migrated = r[0][0].as<bool>();
  if (migrated) {
    migrated =
        tx.exec("SELECT EXISTS (SELECT 1 FROM appointment_relay.schema_migrations WHERE version = 1)")[0][0]
            .as<bool>();
  }
  if (!migrated) throw std::runtime_error("the database is not migrated: run appointment-relay migrate");
}

store::~store() = default;

void store::use_asynchronous_commit() {
  pqxx::nontransaction tx(impl_->conn);
  tx.exec("SET synchronous_commit = off");
}

void store::use_daemon_session(const session_settings& settings) {
  auto ms = [](std::chrono::milliseconds d) { return std::to_string(d.count()); };
  const std::pair<const char*, std::string> wanted[] = {
      {"tcp_keepalives_idle", std::to_string(settings.keepalives_idle.count())},
      {"tcp_keepalives_interval", std::to_string(settings.keepalives_interval.count())},
      {"tcp_keepalives_count", std::to_string(settings.keepalives_count)},
      {"tcp_user_timeout", ms(settings.tcp_user_timeout)},
      {"statement_timeout", ms(settings.statement_timeout)},
      {"idle_session_timeout", ms(settings.idle_session_timeout)},
  };
  array_literal names, values;
  for (const auto& [name, value] : wanted) {
    names.add(name);
    values.add(value);
  }
  pqxx::nontransaction tx(impl_->conn);
  auto r = tx.exec_params(set_session_sql, names.str(), values.str());
  std::set<std::string> applied;
  for (const auto& row : r) applied.insert(row[0].c_str());
  for (const auto& [name, value] : wanted)
    if (!applied.count(name))
      spdlog::warn(
          "database: the server has no setting {} (PostgreSQL too old?); the session runs without it", name);
}

void store::heartbeat() {
  pqxx::nontransaction tx(impl_->conn);
  tx.exec("SELECT 1");
}

std::string store::session_setting(const std::string& name) {
  pqxx::nontransaction tx(impl_->conn);
  return tx.exec_params("SELECT current_setting($1)", name)[0][0].c_str();
}

std::string store::installation_id() {
  pqxx::nontransaction tx(impl_->conn);
  auto r = tx.exec("SELECT id FROM appointment_relay.installation LIMIT 1");
  if (r.empty()) throw std::runtime_error("appointment_relay.installation is empty");
  return r[0][0].c_str();
}

bool store::try_lock_leadership() {
  pqxx::nontransaction tx(impl_->conn);
  return tx.exec("SELECT pg_try_advisory_lock(" + std::to_string(leader_lock_key) + ")")[0][0].as<bool>();
}

void store::listen() {
  if (!impl_->receiver) impl_->receiver = std::make_unique<counting_receiver>(impl_->conn);
}

int store::socket() const {
  return impl_->conn.sock();
}

std::size_t store::take_notifications() {
  impl_->conn.get_notifs();
  if (!impl_->conn.is_open()) throw pqxx::broken_connection("the database connection was lost");
  if (!impl_->receiver) return 0;
  return std::exchange(impl_->receiver->count, 0);
}

std::optional<std::int64_t> store::set_listening(listen_state state) {
  pqxx::nontransaction tx(impl_->conn);
  if (!tx.exec_params("SELECT appointment_relay.set_listening($1)", static_cast<int>(state))[0][0].as<bool>())
    return std::nullopt;
  // A statement of its own: its snapshot is taken after the change (see migration 0008).
  return tx.exec("SELECT txid_snapshot_xmax(txid_current_snapshot())")[0][0].as<std::int64_t>();
}

bool store::ended_below(std::int64_t xid) {
  pqxx::nontransaction tx(impl_->conn);
  return tx.exec_params("SELECT txid_snapshot_xmin(txid_current_snapshot()) >= $1", xid)[0][0].as<bool>();
}

void store::reset_read_positions() {
  impl_->positions.clear();
}

std::vector<pending_event> store::read_pending(const std::string& endpoint, std::size_t limit) {
  std::vector<pending_event> out;
  impl_->last_read = {};
  if (limit == 0) return out;
  auto& conn = impl_->conn;
  auto& stats = impl_->last_read;
  auto found = impl_->positions.find(endpoint);
  if (found == impl_->positions.end()) {
    pqxx::nontransaction tx(conn);
    auto r = tx.exec_params("SELECT done_through FROM appointment_relay.endpoint_cursor WHERE endpoint = $1",
                            endpoint);
    const std::int64_t start = r.empty() ? 0 : r[0][0].as<std::int64_t>();
    found = impl_->positions.emplace(endpoint, endpoint_reader(start)).first;
    found->second.done_in_batches = done_ranges_above(tx, endpoint, start);
  }
  auto& reader = found->second;
  auto& pos = reader.position;

  // Dead letters put back by `replay` (state 'replay', attempts reset) may lie below the floor, so they are
  // read on the side, each once per read position. They keep that state until an outcome is recorded; one
  // recorded as retrying and then left by a crash lies below the watermark, so the first side read of a
  // position also takes retrying rows up to it (normal retrying rows are always above it).
  if (impl_->receiver && impl_->receiver->replayed) {
    impl_->receiver->replayed = false;
    for (auto& [name, p] : impl_->positions) p.next_side_read = {};
  }
  if (reader.side_first || std::chrono::steady_clock::now() >= reader.next_side_read) {
    // Also every few seconds, in case the notification was missed.
    reader.next_side_read = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    pqxx::nontransaction tx(conn);
    array_literal side_seen;
    for (auto id : reader.side_seen) side_seen.add(id);
    auto r = tx.exec_params(side_read_sql, endpoint, reader.side_first, pos.floor(), side_seen.str(),
                            static_cast<std::int64_t>(limit));
    reader.side_first = false;
    ++stats.statements;
    stats.rows += r.size();
    if (!r.empty()) {
      const event_fields f(r);
      for (const auto& row : r) {
        out.push_back(to_event(row, f, true));
        reader.side_seen.insert(out.back().id);
      }
    }
  }

  if (!impl_->read_prepared) {
    conn.prepare("ar_read_pending", read_pending_sql);
    impl_->read_prepared = true;
  }
  // One statement, unless a page held rows done already (after a restart below a lagging watermark): then
  // the next page, so that a short answer still means "nothing more to read now".
  while (out.size() < limit) {
    const auto remaining = static_cast<std::int64_t>(limit - out.size());
    const auto holes = pos.holes();
    array_literal firsts, lasts;
    for (const auto& h : holes) {
      firsts.add(h.first);
      lasts.add(h.last);
    }
    const auto watermark = pos.watermark_to_write();
    pqxx::result r;
    {
      pqxx::nontransaction tx(conn);
      r = tx.exec_prepared("ar_read_pending", endpoint, pos.top(), firsts.str(), lasts.str(), remaining,
                           watermark.value_or(0));
    }
    ++stats.statements;
    stats.holes_probed = std::max(stats.holes_probed, holes.size());
    const event_fields f(r);
    const auto in_hole = r.column_number("in_hole");
    read_observation seen;
    seen.xmin = r[0][r.column_number("snapshot_xmin")].as<std::int64_t>();
    seen.next_xid = r[0][r.column_number("next_xid")].as<std::int64_t>();
    std::int64_t late_rows = 0, late_pending = 0, page_rows = 0;
    const auto handed_before = out.size();
    for (const auto& row : r) {
      if (row[f.id].is_null()) break;  // no rows: the one line carries only the snapshot
      ++stats.rows;
      const auto id = row[f.id].as<std::int64_t>();
      // A replayed row handed out by the side read may come here too, once its outcome is recorded.
      const bool pending = !row[f.done].as<bool>() && !reader.side_seen.count(id) && !reader.in_batches(id);
      if (row[in_hole].as<bool>()) {
        ++late_rows;
        if (!row[f.done].as<bool>()) ++late_pending;
        seen.found_ids.push_back(id);
        if (pending) seen.found_pending_ids.push_back(id);
      } else {
        ++page_rows;
        seen.page_ids.push_back(id);
      }
      if (pending) out.push_back(to_event(row, f, false));
    }
    seen.holes_probed = late_rows < remaining;
    const auto read_number = pos.apply(seen);
    for (auto e = out.begin() + static_cast<std::ptrdiff_t>(handed_before); e != out.end(); ++e)
      e->read = read_number;
    if (watermark && r[0][r.column_number("watermarks_written")].as<std::int64_t>() > 0)
      pos.written(*watermark);
    const auto page_limit = std::max<std::int64_t>(0, remaining - late_pending);
    if (page_limit == 0 || page_rows < page_limit) break;
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

read_stats store::last_read_stats() const {
  return impl_->last_read;
}

void store::record(const std::vector<delivery_update>& updates,
                   const std::map<std::string, watermark>& done_through) {
  // One row per (event, endpoint), the last outcome wins: ON CONFLICT cannot touch a row twice.
  std::map<std::pair<std::int64_t, std::string_view>, const delivery_update*> last;
  for (const auto& u : updates) last[{u.event_id, u.endpoint}] = &u;
  array_literal ids, endpoints, states, attempts, first, lasts, next, errors, reasons;
  std::map<std::string_view, batch_record> batches;
  // Every failed attempt, also of an update that a later one of the same event replaces.
  array_literal attempt_ids, attempt_endpoints, attempt_numbers, attempt_at, attempt_status, attempt_errors,
      attempt_latency, attempt_bodies;
  std::size_t attempt_count = 0;
  for (const auto& u : updates) {
    if (!u.failed_attempt) continue;
    ++attempt_count;
    const auto& a = *u.failed_attempt;
    attempt_ids.add(u.event_id);
    attempt_endpoints.add(u.endpoint);
    attempt_numbers.add(static_cast<std::int64_t>(a.attempt));
    attempt_at.add(a.at_ms);
    attempt_status.add(static_cast<std::int64_t>(a.status));
    attempt_errors.add(a.error);
    attempt_latency.add(std::to_string(a.latency_ms));
    attempt_bodies.add(a.response_body);
  }
  for (const auto& [key, u] : last) {
    if (recorded_in_batch(*u)) {
      auto& b = batches[u->endpoint];
      b.ids.push_back(u->event_id);  // in id order: the map's
      b.first_ms = b.first_ms == 0 ? u->last_attempt_ms : std::min(b.first_ms, u->last_attempt_ms);
      b.last_ms = std::max(b.last_ms, u->last_attempt_ms);
      continue;
    }
    ids.add(u->event_id);
    endpoints.add(u->endpoint);
    states.add(to_text(u->state));
    attempts.add(static_cast<std::int64_t>(u->attempts));
    u->first_attempt_ms != 0 ? first.add(u->first_attempt_ms) : first.add_null();
    u->last_attempt_ms != 0 ? lasts.add(u->last_attempt_ms) : lasts.add_null();
    next.add(u->next_attempt_ms);
    errors.add(u->last_error);
    reasons.add(u->dead_reason);
  }
  // A watermark never passes this session's floor: below it no late-committed row can still appear. What is
  // wanted beyond it is kept (read_position::want) and written once the floor allows, here or at a read.
  for (const auto& [name, w] : done_through) {
    auto pos = impl_->positions.find(name);
    if (pos != impl_->positions.end()) pos->second.position.want(w.done_through, w.acked_read);
    // else: read positions were reset, the caller's view is stale
  }
  array_literal names, values;
  std::vector<std::pair<read_position*, std::int64_t>> writing;
  for (auto& [name, reader] : impl_->positions) {
    if (auto v = reader.position.watermark_to_write()) {
      names.add(name);
      values.add(*v);
      writing.emplace_back(&reader.position, *v);
    }
  }
  array_literal batch_endpoints, batch_firsts, batch_lasts, batch_ranges, batch_first_ms, batch_last_ms;
  for (const auto& [endpoint, b] : batches) {
    array_literal ranges;  // inclusive [lo, hi] pairs of consecutive ids
    for (std::size_t i = 0; i < b.ids.size();) {
      std::size_t j = i;
      while (j + 1 < b.ids.size() && b.ids[j + 1] == b.ids[j] + 1) ++j;
      ranges.add(b.ids[i]);
      ranges.add(b.ids[j]);
      i = j + 1;
    }
    batch_endpoints.add(endpoint);
    batch_firsts.add(b.ids.front());
    batch_lasts.add(b.ids.back());
    batch_ranges.add(ranges.str());
    batch_first_ms.add(b.first_ms);
    batch_last_ms.add(b.last_ms);
  }
  if (last.empty() && writing.empty()) return;
  if (!impl_->record_prepared) {
    impl_->conn.prepare("ar_record", record_sql);
    impl_->conn.prepare("ar_record_attempts", record_with_attempts_sql);
    impl_->record_prepared = true;
  }
  pqxx::nontransaction tx(impl_->conn);
  if (attempt_count == 0)
    tx.exec_prepared("ar_record", ids.str(), endpoints.str(), states.str(), attempts.str(), first.str(),
                     lasts.str(), next.str(), errors.str(), reasons.str(), names.str(), values.str(),
                     batch_endpoints.str(), batch_firsts.str(), batch_lasts.str(), batch_ranges.str(),
                     batch_first_ms.str(), batch_last_ms.str());
  else
    tx.exec_prepared("ar_record_attempts", ids.str(), endpoints.str(), states.str(), attempts.str(),
                     first.str(), lasts.str(), next.str(), errors.str(), reasons.str(), names.str(),
                     values.str(), batch_endpoints.str(), batch_firsts.str(), batch_lasts.str(),
                     batch_ranges.str(), batch_first_ms.str(), batch_last_ms.str(), attempt_ids.str(),
                     attempt_endpoints.str(), attempt_numbers.str(), attempt_at.str(), attempt_status.str(),
                     attempt_errors.str(), attempt_latency.str(), attempt_bodies.str());
  for (auto [pos, v] : writing) pos->written(v);
}

std::vector<endpoint_status> store::status(const std::vector<std::string>& endpoints) {
  std::vector<endpoint_status> out;
  pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(impl_->conn);
  for (const auto& name : endpoints) {
    endpoint_status s;
    s.endpoint = name;
    s.control.health.endpoint = name;
    if (auto c = tx.exec_params(std::string(controls_sql) + " WHERE endpoint = $1", name); !c.empty())
      s.control = control_of(c[0]);
    auto r = tx.exec_params(status_sql, name);
    s.backlog = std::max<std::int64_t>(0, r[0][0].as<std::int64_t>());
    if (!r[0][1].is_null()) s.oldest_pending_age_seconds = r[0][1].as<double>();
    for (const auto& row :
         tx.exec_params("SELECT coalesce(dead_reason, ''), count(*) FROM appointment_relay.delivery"
                        " WHERE endpoint = $1 AND state = 'dead' GROUP BY 1 ORDER BY 1",
                        name))
      s.dead_by_reason[row[0].c_str()] = row[1].as<std::int64_t>();
    if (auto r = tx.exec_params(
            "SELECT extract(epoch FROM now() - min(coalesce(last_attempt_at, first_attempt_at)))"
            " FROM appointment_relay.delivery WHERE endpoint = $1 AND state = 'dead'",
            name);
        !r[0][0].is_null())
      s.oldest_dead_letter_age_seconds = r[0][0].as<double>();
    out.push_back(std::move(s));
  }
  tx.commit();
  return out;
}

const char* to_string(endpoint_health h) {
  switch (h) {
    case endpoint_health::healthy:
      return "healthy";
    case endpoint_health::failing:
      return "failing";
    case endpoint_health::open:
      return "open";
  }
  return "healthy";
}

std::vector<endpoint_start> store::start_endpoints(
    const std::vector<std::string>& endpoints,
    const std::map<std::string, std::chrono::milliseconds>& backfill) {
  std::vector<endpoint_start> out;
  if (endpoints.empty()) return out;
  array_literal names, seconds;
  for (const auto& e : endpoints) {
    names.add(e);
    auto b = backfill.find(e);
    seconds.add(b == backfill.end() ? std::int64_t{0}
                                    : std::chrono::duration_cast<std::chrono::seconds>(b->second).count());
  }
  pqxx::work tx(impl_->conn);
  // One at a time per installation (a second instance starting, a `status` racing): the advisory lock
  // ends with the transaction.
  tx.exec("SELECT pg_advisory_xact_lock(" + std::to_string(leader_lock_key + 1) + ")");
  auto r = tx.exec_params(
      "WITH cfg AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS c(endpoint, backfill_s)"
      "  WHERE NOT EXISTS (SELECT 1 FROM appointment_relay.endpoint_cursor e WHERE e.endpoint = c.endpoint)),"
      " fresh AS (SELECT NOT EXISTS (SELECT 1 FROM appointment_relay.endpoint_cursor) AS yes),"
      " newest AS (SELECT coalesce(max(id), 0) AS id FROM appointment_relay.outbox),"
      " starts AS (SELECT c.endpoint, CASE"
      "   WHEN f.yes THEN 0"
      "   WHEN c.backfill_s = 0 THEN n.id"
      "   ELSE coalesce((SELECT min(o.id) - 1 FROM appointment_relay.outbox o"
      "                  WHERE o.captured_at >= now() - make_interval(secs => c.backfill_s)), n.id) END AS "
      "id,"
      "  CASE WHEN f.yes THEN 'the installation''s first endpoints: everything captured since migrate'"
      "   WHEN c.backfill_s = 0 THEN 'new endpoint: from the newest event on'"
      "   ELSE 'new endpoint: backfill of ' || make_interval(secs => c.backfill_s)::text END AS reason"
      "  FROM cfg c, fresh f, newest n),"
      " cursors AS (INSERT INTO appointment_relay.endpoint_cursor (endpoint, done_through)"
      "  SELECT endpoint, id FROM starts ON CONFLICT (endpoint) DO NOTHING RETURNING endpoint),"
      " states AS (INSERT INTO appointment_relay.endpoint_state AS s (endpoint, start_id, start_reason, "
      "started_at)"
      "  SELECT endpoint, id, reason, now() FROM starts"
      "  ON CONFLICT (endpoint) DO UPDATE SET start_id = excluded.start_id, start_reason = "
      "excluded.start_reason,"
      "   started_at = excluded.started_at, updated_at = now())"
      " SELECT s.endpoint, s.id, s.reason FROM starts s JOIN cursors c USING (endpoint) ORDER BY 1",
      names.str(), seconds.str());
  tx.commit();
  for (const auto& row : r) out.push_back({row[0].c_str(), row[1].as<std::int64_t>(), row[2].c_str()});
  return out;
}

std::vector<endpoint_control> store::endpoint_controls() {
  std::vector<endpoint_control> out;
  pqxx::nontransaction tx(impl_->conn);
  for (const auto& row : tx.exec(std::string(controls_sql) + " ORDER BY endpoint"))
    out.push_back(control_of(row));
  return out;
}

void store::save_health(const std::vector<endpoint_health_update>& updates) {
  if (updates.empty()) return;
  array_literal names, healths, reasons, since, probe_at, delay;
  for (const auto& u : updates) {
    names.add(u.endpoint);
    healths.add(to_string(u.health));
    reasons.add(u.reason);
    since.add(u.since_ms);
    probe_at.add(u.probe_at_ms);
    delay.add(u.probe_delay_ms);
  }
  pqxx::nontransaction tx(impl_->conn);
  tx.exec_params(
      "INSERT INTO appointment_relay.endpoint_state AS s (endpoint, health, health_reason, health_since,"
      "  probe_at, probe_delay_ms, updated_at)"
      " SELECT u.endpoint, u.health, nullif(u.reason, ''), to_timestamp(u.since / 1000.0),"
      "  to_timestamp(u.probe_at / 1000.0), u.delay, now()"
      " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])"
      "  AS u(endpoint, health, reason, since, probe_at, delay)"
      " ON CONFLICT (endpoint) DO UPDATE SET health = excluded.health, health_reason = "
      "excluded.health_reason,"
      "  health_since = excluded.health_since, probe_at = excluded.probe_at,"
      "  probe_delay_ms = excluded.probe_delay_ms, updated_at = now()",
      names.str(), healths.str(), reasons.str(), since.str(), probe_at.str(), delay.str());
}

bool store::set_paused(const std::string& endpoint, bool paused, const std::string& by,
                       const std::string& reason) {
  pqxx::work tx(impl_->conn);
  auto r = tx.exec_params(
      "INSERT INTO appointment_relay.endpoint_state AS s (endpoint, paused, paused_by, paused_at, "
      "pause_reason)"
      " VALUES ($1, $2, $3, now(), nullif($4, ''))"
      " ON CONFLICT (endpoint) DO UPDATE SET paused = excluded.paused, paused_by = excluded.paused_by,"
      "  paused_at = excluded.paused_at, pause_reason = excluded.pause_reason, updated_at = now()"
      "  WHERE s.paused IS DISTINCT FROM excluded.paused"
      " RETURNING 1",
      endpoint, paused, by, reason);
  if (r.empty()) return false;
  tx.exec(std::string("SELECT pg_notify('") + notify_channel + "', 'control')");
  tx.commit();
  return true;
}

bool store::take_control_news() {
  if (!impl_->receiver) return false;
  return std::exchange(impl_->receiver->control, false);
}

namespace {

// The events a replay takes: dead letters (delivery rows in state dead), or delivered events (the
// delivered_events view: delivery rows and batch ranges), with the filters; their outbox row may be in
// outbox_kept. $1 endpoint, $2 event id, $3 since, $4 until (unix s), $5 appointment, $6 endpoints (text[],
// NULL: any), $7 delivered.
const char* const replay_candidates_sql =
    "SELECT c.event_id, c.endpoint, coalesce(o.appointment_external_id, ''),"
    " (extract(epoch FROM o.captured_at) * 1000)::bigint"
    " FROM (SELECT d.event_id, d.endpoint FROM appointment_relay.delivery d WHERE NOT $7 AND d.state = 'dead'"
    "       UNION"
    "       SELECT v.event_id, v.endpoint FROM appointment_relay.delivered_events v WHERE $7) c"
    " JOIN (SELECT id, captured_at, appointment_external_id FROM appointment_relay.outbox UNION ALL"
    "       SELECT id, captured_at, appointment_external_id FROM appointment_relay.outbox_kept) o ON o.id = "
    "c.event_id"
    " WHERE ($1::text IS NULL OR c.endpoint = $1::text)"
    " AND ($2::bigint IS NULL OR c.event_id = $2::bigint)"
    " AND ($3::bigint IS NULL OR o.captured_at >= to_timestamp($3::bigint))"
    " AND ($4::bigint IS NULL OR o.captured_at < to_timestamp($4::bigint))"
    " AND ($5::text IS NULL OR o.appointment_external_id = $5::text)"
    " AND ($6::text[] IS NULL OR c.endpoint = ANY ($6::text[]))";

template <class Tx>
pqxx::result replay_query(Tx& tx, const std::string& sql, const replay_filter& filter) {
  auto c = [](const std::optional<std::string>& s) -> const char* { return s ? s->c_str() : nullptr; };
  auto text = [](const std::optional<std::int64_t>& v) { return v ? std::to_string(*v) : std::string(); };
  const std::string event_id = text(filter.event_id), since = text(filter.since), until = text(filter.until);
  array_literal endpoints;
  for (const auto& e : filter.endpoints) endpoints.add(e);
  const std::string names = endpoints.str();
  return tx.exec_params(sql, c(filter.endpoint), filter.event_id ? event_id.c_str() : nullptr,
                        filter.since ? since.c_str() : nullptr, filter.until ? until.c_str() : nullptr,
                        c(filter.appointment), filter.endpoints.empty() ? nullptr : names.c_str(),
                        filter.delivered);
}

}  // namespace

std::int64_t store::replay(const replay_filter& filter) {
  pqxx::work tx(impl_->conn);
  // A delivered event in a batch record has no delivery row: one is made, in state replay.
  auto r =
      replay_query(tx,
                   std::string("WITH c AS (") + replay_candidates_sql +
                       "), flipped AS ("
                       " INSERT INTO appointment_relay.delivery AS d (event_id, endpoint, state, attempts)"
                       " SELECT event_id, endpoint, 'replay', 0 FROM c"
                       " ON CONFLICT (event_id, endpoint) DO UPDATE SET state = 'replay', dead_reason = NULL,"
                       "  attempts = 0, first_attempt_at = NULL, next_attempt_at = NULL, last_error = NULL"
                       "  WHERE d.state = CASE WHEN $7 THEN 'delivered' ELSE 'dead' END"
                       " RETURNING 1)"
                       " SELECT count(*) FROM flipped",
                   filter);
  auto n = r[0][0].as<std::int64_t>();
  if (n > 0) tx.exec(std::string("SELECT pg_notify('") + notify_channel + "', 'replay')");
  tx.commit();
  for (auto& [name, p] : impl_->positions) p.next_side_read = {};
  return n;
}

std::pair<std::vector<replay_candidate>, std::int64_t> store::replay_preview(const replay_filter& filter,
                                                                             std::size_t limit) {
  pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(impl_->conn);
  auto r = replay_query(tx, std::string(replay_candidates_sql) + " ORDER BY c.event_id, c.endpoint", filter);
  std::vector<replay_candidate> out;
  for (const auto& row : r) {
    if (out.size() == limit) break;
    out.push_back({row[0].as<std::int64_t>(), row[1].c_str(), row[2].c_str(), row[3].as<std::int64_t>()});
  }
  return {out, static_cast<std::int64_t>(r.size())};
}

std::int64_t store::purge(std::chrono::seconds retention, const std::vector<std::string>& endpoints,
                          int max_partitions) {
  if (endpoints.empty()) return 0;
  array_literal names;
  for (const auto& e : endpoints) names.add(e);
  std::int64_t removed = 0;
  // One partition per statement (each its own transaction): a lock not had undoes only that one.
  for (int i = 0; i < max_partitions; ++i) {
    pqxx::nontransaction tx(impl_->conn);
    auto r = tx.exec_params("SELECT appointment_relay.drop_partition($1::text[], make_interval(secs => $2))",
                            names.str(), static_cast<std::int64_t>(retention.count()));
    if (r[0][0].is_null()) break;  // nothing more may go now
    removed += r[0][0].as<std::int64_t>();
  }
  return removed;
}

std::int64_t store::purge_dead_letters(std::chrono::seconds older_than) {
  pqxx::nontransaction tx(impl_->conn);
  return tx
      .exec_params("SELECT appointment_relay.purge_dead_letters(make_interval(secs => $1))",
                   static_cast<std::int64_t>(older_than.count()))[0][0]
      .as<std::int64_t>();
}

int store::add_partitions(std::int64_t width, int ahead) {
  pqxx::nontransaction tx(impl_->conn);
  return tx.exec_params("SELECT appointment_relay.add_partitions($1, $2)", width, ahead)[0][0].as<int>();
}

namespace {

// Events are looked up by id, the outbox's partition key: a time bound becomes an id bound, found by
// bisection. That relies on captured_at following the id: both are the defaults of one row, computed
// together (nextval, clock_timestamp), so they disagree only by a concurrent insert's few microseconds; a
// minute of slack covers that, not a clock stepped back further.
constexpr std::int64_t time_slack_seconds = 60;

// The first id whose row (or the first row after it) was captured at or after unix_seconds, in [lo, hi];
// hi when none.
std::int64_t first_id_captured_at(pqxx::transaction_base& tx, std::int64_t unix_seconds, std::int64_t lo,
                                  std::int64_t hi) {
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    auto r = tx.exec_params(
        "SELECT o.captured_at >= to_timestamp($2) FROM appointment_relay.outbox o WHERE o.id >= $1"
        " ORDER BY o.id LIMIT 1",
        mid, unix_seconds);
    if (r.empty() || r[0][0].as<bool>())
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// One page of events, newest first, with each endpoint's record: $1 endpoints, $2 ids below, $3 ids from,
// $4 appointment, $5/$6 captured since/until (unix seconds), $7 how many events. `narrowing` is one more
// condition on o (built from validated values only). An event's batch record is looked for only above the
// endpoint's watermark: below it, an event without a delivery row was done there anyway (state_of).
std::string events_page_sql(const std::string& narrowing) {
  return std::string(
             "WITH eps AS MATERIALIZED ("
             " SELECT e.endpoint, coalesce(c.done_through, 0) AS done_through, s.start_id"
             " FROM unnest($1::text[]) AS e(endpoint)"
             " LEFT JOIN appointment_relay.endpoint_cursor c ON c.endpoint = e.endpoint"
             " LEFT JOIN appointment_relay.endpoint_state s ON s.endpoint = e.endpoint),"
             " o AS MATERIALIZED ("
             " SELECT * FROM (SELECT * FROM appointment_relay.outbox UNION ALL"
             "  SELECT * FROM appointment_relay.outbox_kept) o"
             " WHERE o.id < $2 AND o.id >= $3"
             " AND ($4::text IS NULL OR o.appointment_external_id = $4::text)"
             " AND ($5::bigint IS NULL OR o.captured_at >= to_timestamp($5::bigint))"
             " AND ($6::bigint IS NULL OR o.captured_at < to_timestamp($6::bigint)) ") +
         narrowing +
         " ORDER BY o.id DESC LIMIT $7)"
         " SELECT " +
         event_columns +
         ", e.endpoint AS endpoint, e.done_through, e.start_id, d.state AS delivery_state,"
         " floor(extract(epoch FROM d.last_attempt_at) * 1000)::bigint AS last_attempt_ms,"
         " coalesce(d.last_error, '') AS last_error, coalesce(d.dead_reason, '') AS dead_reason,"
         " b.last_ms AS batch_ms"
         " FROM o CROSS JOIN eps e"
         " LEFT JOIN appointment_relay.delivery d ON d.event_id = o.id AND d.endpoint = e.endpoint"
         " LEFT JOIN LATERAL (SELECT floor(extract(epoch FROM b.last_at) * 1000)::bigint AS last_ms"
         "  FROM appointment_relay.delivery_batch b"
         "  WHERE o.id > e.done_through AND b.endpoint = e.endpoint AND b.last_id >= o.id AND b.first_id <= "
         "o.id"
         "  AND EXISTS (SELECT 1 FROM generate_series(1, cardinality(b.done_ids) - 1, 2) AS i"
         "   WHERE o.id BETWEEN b.done_ids[i] AND b.done_ids[i + 1])"
         "  LIMIT 1) b ON true"
         " ORDER BY o.id DESC, e.endpoint";
}

// What one row of events_page_sql says of its event at its endpoint; the notification when it is one.
struct event_row {
  event_summary summary;
  std::optional<notification> sent;
};

event_row read_event_row(const pqxx::row& row, const event_fields& f,
                         const std::map<std::string, std::vector<std::string>>& endpoint_kinds) {
  const auto& r = row;
  event_row out;
  auto& s = out.summary;
  const auto e = to_event(r, f, false);
  s.id = e.id;
  s.captured_at_ms = e.captured_at_us / 1000;
  s.endpoint = r["endpoint"].c_str();
  if (const auto* change = std::get_if<captured_change>(&e.change)) {
    s.appointment = change->appointment_external_id.value_or("");
    auto result = classify(*change);
    if (auto* n = std::get_if<notification>(&result)) {
      s.kind = std::string(to_string(n->kind));
      out.sent = std::move(*n);
    }
  } else if (!r["appointment_external_id"].is_null()) {
    s.appointment = r["appointment_external_id"].c_str();
  }
  s.last_attempt_ms = int_of(r["last_attempt_ms"]);
  s.last_error = r["last_error"].c_str();
  s.dead_reason = r["dead_reason"].c_str();
  s.attempts = e.attempts;
  const auto kinds = endpoint_kinds.find(s.endpoint);
  const bool wanted = !s.kind.empty() &&
                      (kinds == endpoint_kinds.end() ||
                       std::find(kinds->second.begin(), kinds->second.end(), s.kind) != kinds->second.end());
  const auto start_id = int_of(r["start_id"]);
  if (!r["delivery_state"].is_null()) {
    const std::string_view d = r["delivery_state"].c_str();
    s.state = d == "replay" ? "pending" : std::string(d);
  } else if (!r["batch_ms"].is_null()) {
    s.state = "delivered";
    s.attempts = 1;
    s.last_attempt_ms = int_of(r["batch_ms"]);
  } else if (!wanted || (start_id && s.id <= *start_id)) {
    s.state = "skipped";
  } else if (s.id <= r["done_through"].as<std::int64_t>()) {
    s.state = "delivered";  // its batch record went with an older partition
    s.attempts = 1;
  } else {
    s.state = "pending";
  }
  return out;
}

}  // namespace

std::vector<event_summary> store::events(const event_filter& filter,
                                         const std::vector<std::string>& endpoints) {
  std::vector<event_summary> out;
  static const std::set<std::string> states = {"pending", "delivered", "retrying", "dead", "skipped"};
  if (filter.state && !states.count(*filter.state))
    throw std::invalid_argument("unknown state '" + *filter.state + "'");
  std::vector<std::string> names = endpoints;
  if (filter.endpoint) names = {*filter.endpoint};
  if (names.empty() || filter.limit == 0) return out;
  array_literal name_list;
  for (const auto& n : names) name_list.add(n);

  pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(impl_->conn);
  // The ids to look at: [lo, hi).
  auto bounds = tx.exec(
      "SELECT coalesce(least((SELECT min(id) FROM appointment_relay.outbox),"
      " (SELECT min(id) FROM appointment_relay.outbox_kept)), 1),"
      " coalesce(greatest((SELECT max(id) FROM appointment_relay.outbox),"
      " (SELECT max(id) FROM appointment_relay.outbox_kept)), 0),"
      " coalesce((SELECT min(id) FROM appointment_relay.outbox), 1),"
      " coalesce((SELECT max(id) FROM appointment_relay.outbox), 0)");
  std::int64_t lo = bounds[0][0].as<std::int64_t>(), hi = bounds[0][1].as<std::int64_t>() + 1;
  const std::int64_t outbox_lo = bounds[0][2].as<std::int64_t>(),
                     outbox_hi = bounds[0][3].as<std::int64_t>() + 1;
  // Rows of outbox_kept are older than the outbox's: a time bound inside the outbox's ids holds for them too.
  // When no outbox row is older than the bound, kept rows may still be newer than it: no bound then.
  if (filter.since) {
    const auto bound = first_id_captured_at(tx, *filter.since - time_slack_seconds, outbox_lo, outbox_hi);
    if (bound > outbox_lo) lo = std::max(lo, bound);
  }
  if (filter.until && outbox_lo < outbox_hi) {
    const auto bound = first_id_captured_at(tx, *filter.until + time_slack_seconds, outbox_lo, outbox_hi);
    if (bound < outbox_hi) hi = std::min(hi, bound);
  }
  // A state narrows the ids too: to the delivery rows in it, or to those above the lowest watermark (and the
  // dead letters put back by replay), so that a filter that matches little does not read the whole outbox.
  std::string narrowing;
  if (filter.state == "dead" || filter.state == "retrying") {
    narrowing = "AND o.id IN (SELECT d.event_id FROM appointment_relay.delivery d WHERE d.state = '" +
                *filter.state + "' AND d.endpoint = ANY ($1::text[]))";
    auto r = tx.exec_params(
        "SELECT min(event_id) FROM appointment_relay.delivery WHERE state = $1 AND endpoint = ANY "
        "($2::text[])",
        *filter.state, name_list.str());
    if (r[0][0].is_null()) return out;
    lo = std::max(lo, r[0][0].as<std::int64_t>());
  } else if (filter.state == "pending") {
    auto r = tx.exec_params(
        "SELECT min(coalesce(c.done_through, 0)),"
        " (SELECT min(event_id) FROM appointment_relay.delivery WHERE state = 'replay'"
        "  AND endpoint = ANY ($1::text[]))"
        " FROM unnest($1::text[]) AS e(endpoint)"
        " LEFT JOIN appointment_relay.endpoint_cursor c ON c.endpoint = e.endpoint",
        name_list.str());
    const auto floor = r[0][0].as<std::int64_t>();
    narrowing = "AND (o.id > " + std::to_string(floor) +
                " OR o.id IN (SELECT d.event_id FROM appointment_relay.delivery d WHERE d.state = 'replay'"
                " AND d.endpoint = ANY ($1::text[])))";
    lo = std::max(lo, r[0][1].is_null() ? floor + 1 : std::min(floor + 1, r[0][1].as<std::int64_t>()));
  }
  const std::string sql = events_page_sql(narrowing);
  const auto page = static_cast<std::int64_t>(std::max<std::size_t>(filter.limit, 200));
  const auto text = [](const std::optional<std::int64_t>& v) {
    return v ? std::to_string(*v) : std::string();
  };
  const std::string since = text(filter.since), until = text(filter.until);
  while (out.size() < filter.limit && lo < hi) {
    auto r = tx.exec_params(
        sql, name_list.str(), hi, lo, filter.appointment ? filter.appointment->c_str() : nullptr,
        filter.since ? since.c_str() : nullptr, filter.until ? until.c_str() : nullptr, page);
    if (r.empty()) break;
    const event_fields f(r);
    std::int64_t events_seen = 0, last_id = 0;
    for (const auto& row : r) {
      const auto id = row[f.id].as<std::int64_t>();
      if (id != last_id) ++events_seen, last_id = id;
      if (out.size() >= filter.limit) continue;
      auto e = read_event_row(row, f, filter.endpoint_kinds);
      if (filter.state && e.summary.state != *filter.state) continue;
      if (filter.kind && e.summary.kind != *filter.kind) continue;
      out.push_back(std::move(e.summary));
    }
    if (events_seen < page) break;
    hi = last_id;
  }
  tx.commit();
  return out;
}

std::vector<event_detail> store::event(
    std::int64_t id, const std::vector<std::string>& endpoints,
    const std::map<std::string, std::vector<std::string>>& endpoint_kinds) {
  std::vector<event_detail> out;
  if (endpoints.empty()) return out;
  array_literal name_list;
  for (const auto& n : endpoints) name_list.add(n);
  pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(impl_->conn);
  const char* const none = nullptr;
  auto r = tx.exec_params(events_page_sql(""), name_list.str(), id + 1, id, none, none, none, 1);
  if (r.empty()) return out;
  auto installation = tx.exec("SELECT id FROM appointment_relay.installation LIMIT 1");
  const std::string installation_id = installation.empty() ? "" : installation[0][0].c_str();
  const event_fields f(r);
  std::map<std::string, std::size_t> by_endpoint;
  for (const auto& row : r) {
    auto e = read_event_row(row, f, endpoint_kinds);
    event_detail d;
    d.summary = std::move(e.summary);
    if (e.sent) d.payload = std::move(e.sent->payload);
    d.webhook_id = webhook_id(installation_id, id, d.summary.endpoint);
    by_endpoint[d.summary.endpoint] = out.size();
    out.push_back(std::move(d));
  }
  for (const auto& row : tx.exec_params(
           "SELECT endpoint, attempt, floor(extract(epoch FROM at) * 1000)::bigint, http_status,"
           " coalesce(error, ''), latency_ms, coalesce(response_body, '')"
           " FROM appointment_relay.failed_attempt WHERE event_id = $1 AND endpoint = ANY ($2::text[])"
           " ORDER BY endpoint, at, attempt",
           id, name_list.str())) {
    auto found = by_endpoint.find(row[0].c_str());
    if (found == by_endpoint.end()) continue;
    attempt_record a;
    a.attempt = row[1].as<int>();
    a.at_ms = row[2].as<std::int64_t>();
    a.status = row[3].as<int>();
    a.error = row[4].c_str();
    a.latency_ms = row[5].as<double>();
    a.response_body = row[6].c_str();
    out[found->second].attempts.push_back(std::move(a));
  }
  tx.commit();
  return out;
}

bool store::is_open() const {
  return impl_->conn.is_open();
}

}  // namespace appointment_relay
