#pragma once
// The relay's side of PostgreSQL: its schema (migrations), reading pending events per endpoint, writing
// delivery outcomes, status, replay and retention. Blocking libpqxx calls: used on the database worker's
// thread and by the one-shot commands (migrate, status, replay), never on the io thread.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "appointment_relay/outbox_row.hpp"

namespace appointment_relay {

// One outbox event as one endpoint sees it: the captured change and that endpoint's delivery state.
struct pending_event {
  std::int64_t id = 0;
  std::int64_t captured_at_us = 0;               // unix microseconds (clock of the capturing transaction)
  decoded_row change;                            // the classifier's input, or why the row is unreadable
  int attempts = 0;                              // attempts already made for this endpoint
  std::optional<std::int64_t> first_attempt_ms;  // unix milliseconds
  std::optional<std::int64_t> next_attempt_ms;   // unix milliseconds: not before
  bool replayed = false;                         // came back from the dead letters by `replay`
  std::uint64_t read = 0;  // which read of its endpoint handed it out (see watermark::acked_read)
};

// How far one endpoint's events are done, as reported by the one who was handed them.
struct watermark {
  static constexpr std::uint64_t every_read = ~std::uint64_t{0};
  watermark() = default;
  // A bare id: every read so far taken into account (tests, one-shot tools).
  watermark(std::int64_t through) : done_through(through) {}  // NOLINT(google-explicit-constructor)
  watermark(std::int64_t through, std::uint64_t acked, std::uint64_t in_session)
      : done_through(through), acked_read(acked), session(in_session) {}

  std::int64_t done_through = 0;  // every event up to it is done
  // The last read (pending_event::read) whose events the report took into account. A late-committed row
  // that a later read handed out, below done_through, is not covered: the store keeps the watermark below it.
  std::uint64_t acked_read = every_read;
  std::uint64_t session = 0;  // the session it was made in (db_worker drops those of an earlier one); 0: any
};

enum class delivery_state { retrying, delivered, dead };

// One failed attempt, kept in appointment_relay.failed_attempt as long as its delivery row (migration 0006).
// A success writes none: its outcome is the delivery row or the batch record.
struct attempt_record {
  int attempt = 0;
  std::int64_t at_ms = 0;  // unix ms, when it ended
  int status = 0;          // HTTP status, 0 without a response
  std::string error;       // transport error, or empty
  double latency_ms = 0;
  std::string response_body;  // a non-2xx response's first 1 KiB, valid UTF-8
};

// One outcome to record for (event_id, endpoint).
struct delivery_update {
  std::int64_t event_id = 0;
  std::string endpoint;
  delivery_state state = delivery_state::retrying;
  int attempts = 0;
  std::int64_t first_attempt_ms = 0;
  std::int64_t last_attempt_ms = 0;
  std::optional<std::int64_t> next_attempt_ms;     // retrying
  std::string last_error;                          // "http 503", "connection refused", ...
  std::string dead_reason;                         // dead
  bool replayed = false;                           // a dead letter put back by replay (it has a delivery row)
  std::optional<attempt_record> failed_attempt{};  // retrying, dead: the attempt that failed, for its history
};

// Delivered on its first attempt and never replayed: no delivery row of its own, only a range of ids in its
// endpoint's batch record (appointment_relay.delivery_batch).
inline bool recorded_in_batch(const delivery_update& u) {
  return u.state == delivery_state::delivered && u.attempts <= 1 && !u.replayed;
}

// An endpoint's health as the daemon keeps it (appointment_relay.endpoint_state): healthy, failing (failed
// attempts in a row, the breaker closed) or open (the breaker: one probe at a time).
enum class endpoint_health { healthy, failing, open };
const char* to_string(endpoint_health h);

struct endpoint_health_update {
  std::string endpoint;
  endpoint_health health = endpoint_health::healthy;
  std::string reason;                       // failing/open: the last failure
  std::optional<std::int64_t> since_ms;     // unix ms: in this state since
  std::optional<std::int64_t> probe_at_ms;  // open: the next probe
  std::int64_t probe_delay_ms = 0;          // open: the delay before that probe (it doubles)
};

// What the database says of one endpoint: its health as last written, and whether it is paused.
struct endpoint_control {
  endpoint_health_update health;
  bool paused = false;
  std::string paused_by;
  std::string pause_reason;
  std::optional<std::int64_t> paused_at_ms;
  std::optional<std::int64_t> start_id;  // where it started, when the installation first saw it
  std::string start_reason;
  std::optional<std::int64_t> started_at_ms;
};

// An endpoint the installation had never seen, started now (store::start_endpoints).
struct endpoint_start {
  std::string endpoint;
  std::int64_t start_id = 0;  // its first watermark: it gets the events after it
  std::string reason;
};

struct endpoint_status {
  std::string endpoint;
  endpoint_control control;
  std::int64_t backlog = 0;  // events past its watermark not yet delivered or dead
  std::optional<double> oldest_pending_age_seconds;
  std::optional<double> oldest_dead_letter_age_seconds;  // by its last attempt
  std::map<std::string, std::int64_t> dead_by_reason;
};

// What one read_pending cost in the database: rows the statements returned (pending events, rows already
// done there, late rows), hole ranges probed, and statements run (one, plus one per page that held only
// rows done already).
struct read_stats {
  std::size_t rows = 0;
  std::size_t holes_probed = 0;
  std::size_t statements = 0;
};

// The daemon's session settings (store::use_daemon_session). With the defaults a dead or frozen peer's
// session, and the leadership lock it holds, ends within about 15 s: TCP keepalives probe after 5 s idle,
// every 3 s, 3 times; unacknowledged data fails the connection after 15 s (tcp_user_timeout); a session
// idle for 15 s outside a transaction is closed (the worker runs a heartbeat every second, so only a frozen
// peer's session is that idle, e.g. when a proxy keeps its TCP connection open). A zero disables one.
struct session_settings {
  std::chrono::seconds keepalives_idle{5};
  std::chrono::seconds keepalives_interval{3};
  int keepalives_count = 3;
  std::chrono::milliseconds tcp_user_timeout{15000};
  // Long enough for the slowest legitimate statement (status's count over a backlog of millions), short
  // enough that a stuck one (a lock wait) fails and the worker reconnects instead of hanging.
  std::chrono::milliseconds statement_timeout{60000};
  // Longer than the longest database.leader_lease (10 s): a frozen instance has stopped sending before its
  // session, and the lock, end; a standby then takes over within this + a lease (~20 s by default).
  std::chrono::milliseconds idle_session_timeout{15000};
};

// The caller's connection string plus client-side TCP keepalives, tcp_user_timeout (when libpq has it,
// 12+), a connect timeout and our application_name, each unless the string sets it already. Keyword/value
// strings and postgresql:// URIs both.
std::string with_connection_options(const std::string& url);

struct replay_filter {
  std::optional<std::string> endpoint;
  std::optional<std::int64_t> event_id;
  std::optional<std::int64_t> since;       // unix seconds, on captured_at (inclusive)
  std::optional<std::int64_t> until;       // unix seconds (exclusive)
  std::optional<std::string> appointment;  // appointment_external_id
  bool delivered = false;  // delivered events (sent again, same webhook-id) instead of dead letters
  std::vector<std::string> endpoints;  // only these endpoints (the configured ones); empty: any
};

// One event a replay would send again (replay_preview).
struct replay_candidate {
  std::int64_t event_id = 0;
  std::string endpoint;
  std::string appointment;
  std::int64_t captured_at_ms = 0;
};

// Issue 13: what `appointment-relay events`, `events show` and the admin API read.
struct event_filter {
  std::optional<std::string> appointment;  // appointment_external_id
  std::optional<std::string> endpoint;
  std::optional<std::string> state;   // pending | delivered | retrying | dead | skipped (event_summary)
  std::optional<std::string> kind;    // created | rescheduled | cancelled | no_show | reverted | checked_in
  std::optional<std::int64_t> since;  // unix seconds, on captured_at (inclusive)
  std::optional<std::int64_t> until;  // unix seconds (exclusive)
  std::size_t limit = 100;
  // The kinds each endpoint wants (its `kinds`), when the caller knows them: an event of another kind is
  // "skipped" there. An endpoint not named here wants every kind.
  std::map<std::string, std::vector<std::string>> endpoint_kinds;
};

// One event as one endpoint sees it.
struct event_summary {
  std::int64_t id = 0;
  std::string endpoint;
  std::string kind;         // as classified; empty when the row is not a notification
  std::string appointment;  // appointment_external_id
  std::int64_t captured_at_ms = 0;
  // pending | delivered | retrying | dead, or skipped: never to be sent there (not a notification, a kind
  // the endpoint does not want, captured before the endpoint started). A dead letter put back by replay is
  // pending. Below the endpoint's watermark without a record of its own (dropped with an older partition's
  // batch records), a wanted notification is delivered.
  std::string state;
  int attempts = 0;
  std::optional<std::int64_t> last_attempt_ms;
  std::string last_error;
  std::string dead_reason;
};

struct event_detail {
  event_summary summary;
  std::string payload;     // the JSON body sent
  std::string webhook_id;  // webhook_id(installation, id, endpoint)
  std::vector<attempt_record> attempts;
};

// Applies sql/migrations/NNNN_name.sql in order, each in its own transaction, recorded in
// appointment_relay.schema_migrations, under an advisory lock (safe to run twice, and concurrently).
// Returns the versions applied now. Throws on failure (nothing half-applied).
std::vector<int> migrate(const std::string& database_url, const std::filesystem::path& migrations_dir);

// Where the migrations are: $APPOINTMENT_RELAY_SQL_DIR, then next to the binary (../share/...), then the
// source tree.
std::filesystem::path default_migrations_dir();

class store {
 public:
  // Connects (TCP keepalives on) and checks that the schema is migrated; throws pqxx/std errors.
  explicit store(const std::string& database_url);
  ~store();
  store(const store&) = delete;
  store& operator=(const store&) = delete;

  // The daemon's own writes (delivery state, watermarks) do not wait for the WAL flush. A PostgreSQL crash
  // may lose the last moments of them, never an event (captured by Canvas's own, durable transactions): the
  // worst outcome is a re-delivery with the same webhook-id. Not for one-shot commands such as replay.
  void use_asynchronous_commit();

  // The daemon's session settings (see session_settings), set with SET for this session: server-side TCP
  // keepalives and tcp_user_timeout, statement_timeout and idle_session_timeout. A setting the server lacks
  // (tcp_user_timeout before 12, idle_session_timeout before 14) is skipped with a warning. Only for the
  // daemon's connection: the one-shot commands keep the server's defaults.
  void use_daemon_session(const session_settings& settings = {});

  // One cheap round trip: proves the session (and the leadership lock it holds) is alive, and keeps it from
  // being idle for idle_session_timeout. Throws when the connection is lost.
  void heartbeat();

  // The session's current value of a setting (SHOW), e.g. to check use_daemon_session.
  std::string session_setting(const std::string& name);

  // appointment_relay.installation: a random id made by the first migration; part of every webhook-id.
  std::string installation_id();

  // Leadership: a session advisory lock; false when another instance holds it.
  bool try_lock_leadership();

  // LISTEN appointment_relay. The socket to watch, and the notifications that arrived (consumed).
  void listen();
  int socket() const;
  std::size_t take_notifications();

  // Whether the capture triggers notify (migration 0008): listen_state::polling while this instance reads on
  // its own timer, unsettled before it waits for notifications, settled once no transaction that skipped one
  // can be left. For unsettled, the next transaction id to be assigned after the change (every transaction
  // that may have skipped its notification is below it), or nothing when it was settled already.
  enum class listen_state { polling = 0, settled = 1, unsettled = 2 };
  std::optional<std::int64_t> set_listening(listen_state state);
  // Whether every transaction with an id below xid has ended (committed or rolled back): their rows, if
  // any, are visible to the next read.
  bool ended_below(std::int64_t xid);

  // Forget every endpoint's read position: the next read starts at its persisted watermark.
  void reset_read_positions();
  // The next events for endpoint, in id order, at most limit: new ones past what was read before (also rows
  // committed late with a lower id, never twice), not delivered or dead there; plus dead letters replayed.
  // One statement in the usual case, which costs the page plus the few unsettled holes below it (see
  // read_position.hpp), whatever transactions are open; it assigns no transaction id, unless it also writes
  // a watermark that the read floor now allows (see record).
  std::vector<pending_event> read_pending(const std::string& endpoint, std::size_t limit);
  // What the last read_pending cost.
  read_stats last_read_stats() const;

  // Records outcomes, their failed attempts and watermarks (endpoint -> every event up to it that it was
  // handed is done there), in one statement. A watermark is written up to the endpoint's read floor, never
  // past a row that may still appear; the store remembers the part above the floor and writes it later (at a
  // read, or the next record) once the floor has passed it, so a quiet endpoint's watermark still reaches its
  // last row.
  void record(const std::vector<delivery_update>& updates,
              const std::map<std::string, watermark>& done_through);

  std::vector<endpoint_status> status(const std::vector<std::string>& endpoints);

  // Gives every endpoint the installation has never seen (no watermark yet) its first watermark: everything
  // captured so far when the installation has no endpoint at all yet (its first start after migrate),
  // otherwise the newest event now, or backfill (name -> duration, absent or 0: none) before now. Recorded
  // in endpoint_state. Returns the endpoints started now.
  std::vector<endpoint_start> start_endpoints(
      const std::vector<std::string>& endpoints,
      const std::map<std::string, std::chrono::milliseconds>& backfill);
  // Every endpoint's row of endpoint_state.
  std::vector<endpoint_control> endpoint_controls();
  void save_health(const std::vector<endpoint_health_update>& updates);
  // pause / resume: sets the flag (by: who, reason: why), notifies the running daemon. False when the
  // endpoint was in that state already.
  bool set_paused(const std::string& endpoint, bool paused, const std::string& by, const std::string& reason);
  // Whether a `pause` or `resume` was notified since the last call.
  bool take_control_news();
  // Dead letters (or, with filter.delivered, delivered events) back to pending, to be sent again with their
  // webhook-id, in order per appointment; a running daemon hears of it (NOTIFY). Returns how many.
  std::int64_t replay(const replay_filter& filter);
  // What replay(filter) would put back, in id order, at most limit of them, and how many in all.
  std::pair<std::vector<replay_candidate>, std::int64_t> replay_preview(const replay_filter& filter,
                                                                        std::size_t limit);
  // Retention: drops outbox partitions (or empties the default one) whose rows every endpoint is done with
  // and whose newest row is older than retention, at most max_partitions of them; dead letters in them are
  // kept apart first, and a partition with retrying or replayed events waits. Returns the rows removed.
  // Throws when a lock is not had within 100 ms (a transaction holds the outbox): try again later.
  std::int64_t purge(std::chrono::seconds retention, const std::vector<std::string>& endpoints,
                     int max_partitions = 16);
  // Removes dead letters whose last attempt is older than older_than (migration 0007); returns how many.
  // Throws like purge.
  std::int64_t purge_dead_letters(std::chrono::seconds older_than);
  // Makes outbox partitions of width ids until ahead of them lie beyond the next id; returns how many it
  // made. Throws like purge.
  int add_partitions(std::int64_t width, int ahead);

  // The events matching filter at the endpoints given (only filter.endpoint when it names one), newest first,
  // at most filter.limit (event, endpoint) rows; dead letters kept in outbox_kept too. Reads by id (the
  // partition key): --since/--until become id bounds, a state narrows to its delivery rows or to the ids
  // above the watermarks; an appointment filter reads every row in the id range (no index on it). One
  // snapshot. Throws std::invalid_argument for an unknown state.
  // event: one event at each endpoint with its payload, webhook-id and every failed attempt, oldest first
  // (empty when the id is unknown).
  std::vector<event_summary> events(const event_filter& filter, const std::vector<std::string>& endpoints);
  // endpoint_kinds: as event_filter's.
  std::vector<event_detail> event(std::int64_t id, const std::vector<std::string>& endpoints,
                                  const std::map<std::string, std::vector<std::string>>& endpoint_kinds = {});

  bool is_open() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace appointment_relay
