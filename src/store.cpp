#include "appointment_relay/store.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

#include <pqxx/pqxx>

namespace appointment_relay {
namespace {

// Session advisory lock keys (per database): one for `migrate`, one for the active instance.
constexpr std::int64_t migrate_lock_key = 0x61725f6d696772;  // "ar_migr"
constexpr std::int64_t leader_lock_key = 0x61725f6c656164;   // "ar_lead"
constexpr const char* notify_channel = "appointment_relay";

bool is_uri(const std::string& url) {
  return url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0;
}

// The caller's connection string plus TCP keepalives, a connect timeout and our application_name, each
// unless the caller set it already.
std::string with_connection_options(const std::string& url) {
  static const std::pair<const char*, const char*> options[] = {
      {"keepalives", "1"},       {"keepalives_idle", "10"}, {"keepalives_interval", "5"},
      {"keepalives_count", "3"}, {"connect_timeout", "10"}, {"application_name", "appointment-relay"},
  };
  std::string out = url;
  bool uri = is_uri(url);
  bool has_query = uri && url.find('?') != std::string::npos;
  for (const auto& [key, value] : options) {
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

// The columns of one pending event: outbox o LEFT JOIN delivery d (d may be absent).
constexpr const char* event_columns =
    "o.id, floor(extract(epoch FROM o.captured_at) * 1000000)::bigint, o.source_table, o.operation, o.state, "
    "o.appointment_id, o.appointment_external_id, o.rescheduled_from_id, "
    "floor(extract(epoch FROM o.start_time))::bigint, o.duration_minutes, o.entered_in_error, o.patient_id, "
    "o.patient_key, d.attempts, floor(extract(epoch FROM d.first_attempt_at) * 1000)::bigint, "
    "floor(extract(epoch FROM d.next_attempt_at) * 1000)::bigint";
constexpr int event_column_count = 16;

std::optional<std::string_view> text_of(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return std::string_view(f.c_str(), f.size());
}

std::optional<std::int64_t> int_of(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::int64_t>();
}

pending_event to_event(const pqxx::row& r, bool replayed) {
  pending_event e;
  e.id = r[0].as<std::int64_t>();
  e.captured_at_us = r[1].as<std::int64_t>();
  outbox_row_text t;
  t.source_table = text_of(r[2]);
  t.operation = text_of(r[3]);
  t.state = text_of(r[4]);
  t.appointment_id = text_of(r[5]);
  t.appointment_external_id = text_of(r[6]);
  t.rescheduled_from_id = text_of(r[7]);
  t.start_time = text_of(r[8]);
  t.duration_minutes = text_of(r[9]);
  t.entered_in_error = text_of(r[10]);
  t.patient_id = text_of(r[11]);
  t.patient_key = text_of(r[12]);
  e.change = decode_outbox_row(t);
  e.attempts = r[13].is_null() ? 0 : r[13].as<int>();
  e.first_attempt_ms = int_of(r[14]);
  e.next_attempt_ms = int_of(r[15]);
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
  }
  std::size_t count = 0;
  bool replayed = false;  // `replay` put dead letters back: look for them at the next read
};

// Where one endpoint has read up to. Outbox ids are allocated at insert, not at commit, so a lower id can
// become visible after a higher one was read. Every id <= floor is settled (read, done, or will never
// exist); ids in (floor, top] may still appear, and those already read are in seen. Each read that returned
// rows leaves a horizon (next_xid, top): next_xid is a transaction id assigned after that read's snapshot,
// so every transaction that could still add an id <= top has an xid below it (the capture triggers assign
// the xid before allocating the outbox id). Once a later snapshot's xmin reaches next_xid those transactions
// are all finished and visible, and after that read the floor may move up to top.
struct read_position {
  std::int64_t floor = 0;
  std::int64_t top = 0;
  std::set<std::int64_t> seen;
  struct horizon {
    std::int64_t next_xid;
    std::int64_t top;
  };
  std::deque<horizon> horizons;
  // Replayed dead letters already handed out, and when to look for new ones.
  std::set<std::int64_t> side_seen;
  bool side_first = true;
  std::chrono::steady_clock::time_point next_side_read{};
};

}  // namespace

struct store::impl {
  explicit impl(const std::string& url) : conn(with_connection_options(url)) { inhibit_reactivation(conn); }
  pqxx::connection conn;
  std::unique_ptr<counting_receiver> receiver;
  std::map<std::string, read_position> positions;
  bool read_prepared = false;
  bool record_prepared = false;
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

void store::reset_read_positions() {
  impl_->positions.clear();
}

std::vector<pending_event> store::read_pending(const std::string& endpoint, std::size_t limit) {
  std::vector<pending_event> out;
  if (limit == 0) return out;
  auto& conn = impl_->conn;
  auto found = impl_->positions.find(endpoint);
  if (found == impl_->positions.end()) {
    pqxx::nontransaction tx(conn);
    auto r = tx.exec_params("SELECT done_through FROM appointment_relay.endpoint_cursor WHERE endpoint = $1",
                            endpoint);
    read_position p;
    p.floor = p.top = r.empty() ? 0 : r[0][0].as<std::int64_t>();
    found = impl_->positions.emplace(endpoint, std::move(p)).first;
  }
  auto& pos = found->second;
  const auto lim = static_cast<std::int64_t>(limit);

  // Dead letters put back by `replay` (state 'replay', attempts reset) may lie below the floor, so they are
  // read on the side, each once per read position. They keep that state until an outcome is recorded; one
  // recorded as retrying and then left by a crash lies below the watermark, so the first side read of a
  // position also takes retrying rows up to it (normal retrying rows are always above it).
  if (impl_->receiver && impl_->receiver->replayed) {
    impl_->receiver->replayed = false;
    for (auto& [name, p] : impl_->positions) p.next_side_read = {};
  }
  if (pos.side_first || std::chrono::steady_clock::now() >= pos.next_side_read) {
    // Also every few seconds, in case the notification was missed.
    pos.next_side_read = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    pqxx::nontransaction tx(conn);
    array_literal side_seen;
    for (auto id : pos.side_seen) side_seen.add(id);
    auto r = tx.exec_params(
        std::string("SELECT ") + event_columns +
            " FROM appointment_relay.delivery d JOIN appointment_relay.outbox o ON o.id = d.event_id"
            " WHERE d.endpoint = $1 AND (d.state = 'replay' OR ($2 AND d.state = 'retrying' AND d.event_id "
            "<= $3))"
            " AND NOT (d.event_id = ANY ($4::bigint[]))"
            " ORDER BY o.id LIMIT $5",
        endpoint, pos.side_first, pos.floor, side_seen.str(), lim);
    pos.side_first = false;
    for (const auto& row : r) {
      out.push_back(to_event(row, true));
      pos.side_seen.insert(out.back().id);
      if (out.back().id > pos.floor) pos.seen.insert(out.back().id);
    }
  }
  if (out.size() >= limit) return out;
  const auto remaining = static_cast<std::int64_t>(limit - out.size());

  std::int64_t xmin = 0;
  std::optional<std::int64_t> next_xid;
  std::size_t fresh = 0;
  std::int64_t last_id = 0;
  {
    // One statement, so one snapshot: its xmin, the rows it sees and, when there are rows, a transaction id
    // assigned during the statement, hence after its snapshot (the horizon of read_position). One round trip.
    if (!impl_->read_prepared) {
      impl_->conn.prepare(
          "ar_read_pending",
          std::string("WITH snap AS MATERIALIZED (SELECT txid_snapshot_xmin(txid_current_snapshot()) "
                      "AS xmin), rows AS MATERIALIZED (SELECT ") +
              event_columns +
              " FROM appointment_relay.outbox o"
              // One index probe per outbox row (OFFSET 0 keeps the planner from turning it
              // into a merge join that scans and sorts the whole delivery table each read).
              " LEFT JOIN LATERAL (SELECT * FROM appointment_relay.delivery d"
              "  WHERE d.event_id = o.id AND d.endpoint = $1 OFFSET 0) d ON true"
              " WHERE o.id > $2 AND (d.state IS NULL OR d.state = 'retrying')"
              " AND NOT (o.id = ANY ($3::bigint[]))"
              " ORDER BY o.id LIMIT $4)"
              " SELECT rows.*, (SELECT xmin FROM snap),"
              " (SELECT CASE WHEN EXISTS (SELECT 1 FROM rows) THEN txid_current() END)"
              " FROM (SELECT 1) AS one LEFT JOIN rows ON true ORDER BY 1");
      impl_->read_prepared = true;
    }
    pqxx::nontransaction tx(conn);
    array_literal seen;
    for (auto id : pos.seen) seen.add(id);
    auto r = tx.exec_prepared("ar_read_pending", endpoint, pos.floor, seen.str(), remaining);
    constexpr int xmin_column = event_column_count, next_xid_column = event_column_count + 1;
    xmin = r[0][xmin_column].as<std::int64_t>();
    next_xid = int_of(r[0][next_xid_column]);
    for (const auto& row : r) {
      if (row[0].is_null()) break;  // no rows: the one line carries only the snapshot
      ++fresh;
      out.push_back(to_event(row, false));
      last_id = out.back().id;
      pos.seen.insert(last_id);
      pos.top = std::max(pos.top, last_id);
    }
  }

  // Everything visible in (floor, bound] has now been read; with a full page, rows past the last may remain.
  const std::int64_t bound =
      fresh == static_cast<std::size_t>(remaining) ? last_id : std::numeric_limits<std::int64_t>::max();
  while (!pos.horizons.empty() && pos.horizons.front().next_xid <= xmin) {
    const auto h = pos.horizons.front();
    pos.floor = std::max(pos.floor, std::min(h.top, bound));
    if (h.top > bound) break;
    pos.horizons.pop_front();
  }
  pos.seen.erase(pos.seen.begin(), pos.seen.upper_bound(pos.floor));
  if (next_xid && pos.top > pos.floor && (pos.horizons.empty() || pos.horizons.back().top < pos.top))
    pos.horizons.push_back({*next_xid, pos.top});
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

void store::record(const std::vector<delivery_update>& updates,
                   const std::map<std::string, std::int64_t>& done_through) {
  if (updates.empty() && done_through.empty()) return;
  // One row per (event, endpoint), the last outcome wins: ON CONFLICT cannot touch a row twice.
  std::map<std::pair<std::int64_t, std::string_view>, const delivery_update*> last;
  for (const auto& u : updates) last[{u.event_id, u.endpoint}] = &u;
  array_literal ids, endpoints, states, attempts, first, lasts, next, errors, reasons;
  for (const auto& [key, u] : last) {
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
  // A watermark never passes this session's floor: below it no late-committed row can still appear.
  array_literal names, values;
  for (const auto& [name, id] : done_through) {
    auto pos = impl_->positions.find(name);
    if (pos == impl_->positions.end()) continue;  // read positions were reset: the caller's view is stale
    names.add(name);
    values.add(std::min(id, pos->second.floor));
  }
  if (last.empty() && names.str() == "{}") return;
  // Outcomes and watermarks in one statement: atomic without a transaction block, so one round trip (a
  // BEGIN ... COMMIT would cost three more, each a wake-up of this thread).
  if (!impl_->record_prepared) {
    impl_->conn.prepare(
        "ar_record",
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
        // An event purged meanwhile has nothing left to record (and would break the foreign key).
        " WHERE EXISTS (SELECT 1 FROM appointment_relay.outbox o WHERE o.id = u.event_id)"
        " ON CONFLICT (event_id, endpoint) DO UPDATE SET state = EXCLUDED.state, attempts = "
        "EXCLUDED.attempts,"
        "  first_attempt_at = EXCLUDED.first_attempt_at, last_attempt_at = EXCLUDED.last_attempt_at,"
        "  next_attempt_at = EXCLUDED.next_attempt_at, delivered_at = EXCLUDED.delivered_at,"
        "  last_error = EXCLUDED.last_error, dead_reason = EXCLUDED.dead_reason"
        " RETURNING 1),"
        " watermarks AS ("
        " INSERT INTO appointment_relay.endpoint_cursor AS c (endpoint, done_through, updated_at)"
        " SELECT w.endpoint, w.done_through, now() FROM unnest($10::text[], $11::bigint[]) AS w(endpoint,"
        "  done_through)"
        " ON CONFLICT (endpoint) DO UPDATE"
        " SET done_through = GREATEST(c.done_through, EXCLUDED.done_through), updated_at = now()"
        " RETURNING 1)"
        " SELECT (SELECT count(*) FROM outcomes), (SELECT count(*) FROM watermarks)");
    impl_->record_prepared = true;
  }
  pqxx::nontransaction tx(impl_->conn);
  tx.exec_prepared("ar_record", ids.str(), endpoints.str(), states.str(), attempts.str(), first.str(),
                   lasts.str(), next.str(), errors.str(), reasons.str(), names.str(), values.str());
}

std::vector<endpoint_status> store::status(const std::vector<std::string>& endpoints) {
  std::vector<endpoint_status> out;
  pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(impl_->conn);
  for (const auto& name : endpoints) {
    endpoint_status s;
    s.endpoint = name;
    auto r = tx.exec_params(
        "SELECT count(*), extract(epoch FROM now() - min(o.captured_at))::float8"
        " FROM appointment_relay.outbox o"
        " LEFT JOIN appointment_relay.delivery d ON d.event_id = o.id AND d.endpoint = $1"
        " WHERE o.id > coalesce((SELECT done_through FROM appointment_relay.endpoint_cursor WHERE endpoint = "
        "$1), 0)"
        " AND (d.state IS NULL OR d.state IN ('retrying', 'replay'))",
        name);
    s.backlog = r[0][0].as<std::int64_t>();
    if (!r[0][1].is_null()) s.oldest_pending_age_seconds = r[0][1].as<double>();
    for (const auto& row :
         tx.exec_params("SELECT coalesce(dead_reason, ''), count(*) FROM appointment_relay.delivery"
                        " WHERE endpoint = $1 AND state = 'dead' GROUP BY 1 ORDER BY 1",
                        name))
      s.dead_by_reason[row[0].c_str()] = row[1].as<std::int64_t>();
    out.push_back(std::move(s));
  }
  tx.commit();
  return out;
}

std::int64_t store::replay(const replay_filter& filter) {
  pqxx::work tx(impl_->conn);
  std::string event_id = filter.event_id ? std::to_string(*filter.event_id) : std::string();
  auto c = [](const std::optional<std::string>& s) -> const char* { return s ? s->c_str() : nullptr; };
  auto seconds = [](const std::optional<std::int64_t>& t) { return t ? std::to_string(*t) : std::string(); };
  std::string since = seconds(filter.since), until = seconds(filter.until);
  auto r = tx.exec_params(
      "WITH flipped AS ("
      " UPDATE appointment_relay.delivery d SET state = 'replay', dead_reason = NULL, attempts = 0,"
      "  first_attempt_at = NULL, next_attempt_at = NULL, last_error = NULL"
      " FROM appointment_relay.outbox o"
      " WHERE o.id = d.event_id AND d.state = 'dead'"
      " AND ($1::text IS NULL OR d.endpoint = $1::text)"
      " AND ($2::bigint IS NULL OR d.event_id = $2::bigint)"
      " AND ($3::bigint IS NULL OR o.captured_at >= to_timestamp($3::bigint))"
      " AND ($4::bigint IS NULL OR o.captured_at < to_timestamp($4::bigint))"
      " RETURNING 1)"
      " SELECT count(*) FROM flipped",
      c(filter.endpoint), filter.event_id ? event_id.c_str() : nullptr,
      filter.since ? since.c_str() : nullptr, filter.until ? until.c_str() : nullptr);
  auto n = r[0][0].as<std::int64_t>();
  if (n > 0) tx.exec(std::string("SELECT pg_notify('") + notify_channel + "', 'replay')");
  tx.commit();
  for (auto& [name, p] : impl_->positions) p.next_side_read = {};
  return n;
}

std::int64_t store::purge(std::chrono::seconds retention, const std::vector<std::string>& endpoints,
                          int batch) {
  if (endpoints.empty() || batch <= 0) return 0;
  array_literal names;
  for (const auto& e : endpoints) names.add(e);
  pqxx::work tx(impl_->conn);
  auto r = tx.exec_params(
      "WITH gone AS ("
      " DELETE FROM appointment_relay.outbox WHERE id IN ("
      "  SELECT o.id FROM appointment_relay.outbox o"
      "  WHERE o.captured_at < now() - make_interval(secs => $1)"
      "  AND o.id <= (SELECT min(coalesce(c.done_through, 0)) FROM unnest($2::text[]) AS e(endpoint)"
      "               LEFT JOIN appointment_relay.endpoint_cursor c ON c.endpoint = e.endpoint)"
      "  AND NOT EXISTS (SELECT 1 FROM appointment_relay.delivery d"
      "                  WHERE d.event_id = o.id AND d.state IN ('dead', 'replay', 'retrying'))"
      "  ORDER BY o.id LIMIT $3)"
      " RETURNING 1)"
      " SELECT count(*) FROM gone",
      static_cast<std::int64_t>(retention.count()), names.str(), batch);
  tx.commit();
  return r[0][0].as<std::int64_t>();
}

bool store::is_open() const {
  return impl_->conn.is_open();
}

}  // namespace appointment_relay
