#include "appointment_relay/db_worker.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

#include <spdlog/spdlog.h>
#include <pqxx/except>

#include "appointment_relay/metrics.hpp"

namespace appointment_relay {
namespace {

using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr auto purge_every = std::chrono::seconds(60);
// Outbox partitions (migration 0004), made ahead of the ids at every poll tick: 100,000 ids each; at the
// ~2,800 captured rows per second measured flat out (bench), three of them last well over a minute.
constexpr std::int64_t partition_width = 100000;
constexpr int partitions_ahead = 3;

struct fetch_command {
  std::string endpoint;
  std::uint64_t session = 0;
  std::size_t limit = 0;
  std::function<void(std::vector<pending_event>)> done;
};

struct record_batch {
  std::vector<delivery_update> updates;
  std::map<std::string, watermark> done_through;

  void merge(record_batch&& other) {
    if (updates.empty())
      updates = std::move(other.updates);
    else
      updates.insert(updates.end(), std::make_move_iterator(other.updates.begin()),
                     std::make_move_iterator(other.updates.end()));
    for (auto& [endpoint, w] : other.done_through) {
      auto [it, inserted] = done_through.emplace(endpoint, w);
      if (inserted) continue;
      // One lane's reports only grow within a session; a later session's replaces an earlier one's.
      auto& kept = it->second;
      if (w.session != kept.session) {
        if (w.session > kept.session) kept = w;
      } else {
        kept.done_through = std::max(kept.done_through, w.done_through);
        kept.acked_read = std::max(kept.acked_read, w.acked_read);
      }
    }
  }
  bool empty() const { return updates.empty() && done_through.empty(); }
};

// Everything the worker thread touches. Shared with the thread so that a thread still blocked in libpq when
// stop()'s deadline passes can be detached safely.
struct state {
  state(executor io_, db_worker_settings settings_, db_worker_callbacks callbacks_, metrics& m_)
      : io(std::move(io_)), settings(std::move(settings_)), callbacks(std::move(callbacks_)), m(m_) {
    wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd < 0) throw std::runtime_error("eventfd failed");
  }
  ~state() { ::close(wake_fd); }
  state(const state&) = delete;
  state& operator=(const state&) = delete;

  executor io;
  const db_worker_settings settings;
  // The configured endpoints (retention, backlog figures); replaced on a reload, read on the worker thread.
  std::vector<std::string> endpoints() {
    std::lock_guard lock(mutex);
    return endpoint_names;
  }
  std::vector<std::string> endpoint_names = settings.endpoints;
  std::map<std::string, milliseconds> backfill = settings.backfill;
  std::set<std::string> started;  // worker thread: endpoints given their start on this connection
  std::map<std::string, endpoint_health_update> health;  // to write, the latest per endpoint
  const db_worker_callbacks callbacks;
  metrics& m;
  int wake_fd = -1;

  std::mutex mutex;
  std::condition_variable finished_cv;
  bool stopping = false;  // no more work accepted; flush and end
  bool finished = false;
  std::deque<fetch_command> fetches;                // to run now
  std::map<std::string, fetch_command> parked;      // waiting fetches, by endpoint: run on news
  std::set<std::string> holding;                    // endpoints that read nothing until they fetch again
  std::uint64_t news = 0;                           // notifications (and poll ticks) seen so far
  std::map<std::string, std::uint64_t> read_begun;  // endpoint -> `news` when its last read began
  record_batch records;
  std::uint64_t session = 0;        // the active session (0: none): fetches of another one are not read
  std::uint64_t sessions_made = 0;  // the worker thread's count, for the next session number
  std::string installation;         // the worker thread's copy, for a resumed session
  std::int64_t max_read_id = 0;     // the worker thread's: the highest outbox id a read returned

  // Fencing (db_worker_settings::lease): written by the worker thread, read by the lease watcher's thread.
  std::atomic<std::int64_t> confirmed_ns{0};      // steady clock: the last successful round trip
  std::atomic<std::uint64_t> leading_session{0};  // the session the io side was told about (0: none)
  std::atomic<std::uint64_t> lapsed_session{0};   // a session the io side stopped for want of confirmation
  std::mutex lease_mutex;  // orders confirm()'s on_active after check_lease()'s on_inactive

  void signal() const {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd, &one, sizeof one);  // EAGAIN only when already signalled
  }
  void drain() const {
    std::uint64_t v = 0;
    [[maybe_unused]] auto n = ::read(wake_fd, &v, sizeof v);
  }
  bool is_stopping() {
    std::lock_guard lock(mutex);
    return stopping;
  }

  template <class F>
  void post(F f) {
    net::post(io, std::move(f));
  }
  void post_wake() {
    post([cb = callbacks.on_wake] {
      if (cb) cb();
    });
  }
  // Worker thread: a new active session; the io thread is told (on_active) after the fetches of the previous
  // session are void.
  void begin_session(const std::string& installation_id) {
    std::uint64_t n;
    {
      std::lock_guard lock(mutex);
      n = session = ++sessions_made;
      installation = installation_id;
      holding.clear();
    }
    confirmed_ns = steady::now().time_since_epoch().count();
    lapsed_session = 0;
    leading_session = n;
    post([cb = callbacks.on_active, installation_id, n] {
      if (cb) cb(installation_id, n);
    });
  }
  // Worker thread: the connection is gone; nothing is active.
  void end_session() {
    std::lock_guard lock(mutex);
    session = 0;
    leading_session = 0;
  }
  // Worker thread, after a successful round trip: the leadership is confirmed. When the io side had stopped
  // for want of confirmation (a slow, not a dead, connection: the lock is still ours), it resumes in a new
  // session (read positions reset). Under lease_mutex, so that its on_active cannot overtake the lease
  // watcher's on_inactive.
  void confirm(store& db) {
    std::lock_guard lease_lock(lease_mutex);
    confirmed_ns = steady::now().time_since_epoch().count();
    const auto lapsed = lapsed_session.load();
    if (lapsed == 0 || lapsed != leading_session.load()) return;
    spdlog::info("database: leadership confirmed again; sending resumes");
    db.reset_read_positions();
    std::string id;
    {
      std::lock_guard lock(mutex);
      id = installation;
    }
    m.set_database_up(true);
    begin_session(id);
  }

  // The lease watcher's thread: an active session whose leadership was not confirmed within the lease stops
  // sending now. Its own thread, so that a database thread blocked in libpq cannot hold it up.
  void check_lease() {
    std::lock_guard lease_lock(lease_mutex);
    const auto session = leading_session.load();
    const auto age = steady::now().time_since_epoch() - steady::duration(confirmed_ns.load());
    if (session == 0 || lapsed_session.load() == session || age <= settings.lease) return;
    lapsed_session = session;
    spdlog::warn(
        "database: leadership not confirmed for {} ms (lease {} ms): sending nothing until it is; requests "
        "in "
        "flight are cancelled",
        std::chrono::duration_cast<milliseconds>(age).count(), settings.lease.count());
    m.set_database_up(false);
    post([cb = callbacks.on_inactive] {
      if (cb) cb();
    });
  }

  void answer(fetch_command& f, std::vector<pending_event> rows) {
    post([done = std::move(f.done), rows = std::move(rows)]() mutable {
      if (done) done(std::move(rows));
    });
  }
  // The connection is down or not ours: every outstanding fetch gets nothing.
  void fail_fetches() {
    std::deque<fetch_command> taken;
    {
      std::lock_guard lock(mutex);
      taken.swap(fetches);
      for (auto& [endpoint, f] : parked) taken.push_back(std::move(f));
      parked.clear();
      read_begun.clear();  // a new connection reads afresh
    }
    for (auto& f : taken) answer(f, {});
  }
  // Caller holds the mutex: may rows have arrived since the endpoint's last read began?
  bool may_have_news(const std::string& endpoint) const {
    auto it = read_begun.find(endpoint);
    return it == read_begun.end() || it->second < news;
  }
  // Is a waiting fetch due (news since its endpoint's last read began)? Then the loop must not sleep.
  bool waiting_fetch_due() {
    std::lock_guard lock(mutex);
    return std::any_of(parked.begin(), parked.end(), [&](const auto& p) { return may_have_news(p.first); });
  }
  // A notification or the poll tick: waiting fetches become due; the io thread is woken only for endpoints
  // with neither a waiting fetch nor a hold (reading, or not yet started).
  void on_news() {
    bool all_waiting;
    {
      std::lock_guard lock(mutex);
      ++news;
      all_waiting = !endpoint_names.empty() &&
                    std::all_of(endpoint_names.begin(), endpoint_names.end(),
                                [&](const auto& n) { return parked.contains(n) || holding.contains(n); });
    }
    if (!all_waiting) post_wake();
  }

  // Waits for a command or the timeout; outside the active loop, fetches are answered with nothing.
  void idle_wait(milliseconds timeout) {
    pollfd p{wake_fd, POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(std::max<milliseconds::rep>(0, timeout.count())));
    if (p.revents & POLLIN) drain();
    fail_fetches();
  }
};

// libpq's messages span lines; a log line is one line.
std::string one_line(std::string text) {
  for (auto& c : text)
    if (c == '\n' || c == '\t') c = ' ';
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

void write_records(state& s, store& db) {
  record_batch batch;
  {
    std::lock_guard lock(s.mutex);
    std::swap(batch, s.records);
  }
  if (batch.empty()) return;
  {
    // A watermark of an earlier session speaks of reads of a position that is gone: the new one may have
    // handed out since a row below it.
    std::lock_guard lock(s.mutex);
    std::erase_if(batch.done_through,
                  [&](const auto& e) { return e.second.session != 0 && e.second.session != s.session; });
  }
  if (batch.empty()) return;
  try {
    db.record(batch.updates, batch.done_through);
  } catch (...) {
    // Not written: back in front of what arrived meanwhile, for the next connection.
    std::lock_guard lock(s.mutex);
    batch.merge(std::move(s.records));
    s.records = std::move(batch);
    throw;
  }
}

// Worker thread: endpoints never seen by the installation get their first watermark (store::start_endpoints)
// before their first read, so that a new one starts where its backfill says, not at the oldest event.
void start_endpoints(state& s, store& db, std::vector<std::string> names) {
  std::map<std::string, milliseconds> backfill;
  {
    std::lock_guard lock(s.mutex);
    std::erase_if(names, [&](const auto& n) { return s.started.contains(n); });
    backfill = s.backfill;
  }
  if (names.empty()) return;
  for (const auto& st : db.start_endpoints(names, backfill))
    spdlog::info("endpoint {} seen for the first time: starts after event {} ({})", st.endpoint, st.start_id,
                 st.reason);
  std::lock_guard lock(s.mutex);
  s.started.insert(names.begin(), names.end());
}

void write_health(state& s, store& db) {
  std::map<std::string, endpoint_health_update> taken;
  {
    std::lock_guard lock(s.mutex);
    taken.swap(s.health);
  }
  if (taken.empty()) return;
  std::vector<endpoint_health_update> updates;
  for (auto& [name, u] : taken) updates.push_back(u);
  try {
    db.save_health(updates);
  } catch (...) {
    std::lock_guard lock(s.mutex);
    for (auto& [name, u] : taken) s.health.emplace(name, std::move(u));  // a newer one wins
    throw;
  }
}

void post_controls(state& s, store& db, bool initial) {
  s.post([cb = s.callbacks.on_control, controls = db.endpoint_controls(), initial]() mutable {
    if (cb) cb(std::move(controls), initial);
  });
}

void run_fetches(state& s, store& db) {
  std::deque<fetch_command> taken;
  {
    std::lock_guard lock(s.mutex);
    taken.swap(s.fetches);
    for (auto it = s.parked.begin(); it != s.parked.end();) {
      if (s.may_have_news(it->first)) {
        taken.push_back(std::move(it->second));
        it = s.parked.erase(it);
      } else {
        ++it;
      }
    }
  }
  while (!taken.empty()) {
    try {
      {
        std::lock_guard lock(s.mutex);
        if (taken.front().session != s.session) {
          // Queued by an earlier session: reading it would mark its rows read in this session's position
          // while its caller drops the answer.
          s.answer(taken.front(), {});
          taken.pop_front();
          continue;
        }
        s.read_begun[taken.front().endpoint] = s.news;
      }
      start_endpoints(s, db, {taken.front().endpoint});
      auto rows = db.read_pending(taken.front().endpoint, taken.front().limit);
      if (!rows.empty()) s.max_read_id = std::max(s.max_read_id, rows.back().id);
      s.answer(taken.front(), std::move(rows));
      taken.pop_front();
    } catch (...) {
      std::lock_guard lock(s.mutex);
      for (auto it = taken.rbegin(); it != taken.rend(); ++it) s.fetches.push_front(std::move(*it));
      throw;
    }
  }
}

// Retention and partitions are housekeeping: a lock not had now (a transaction holds the outbox), or an id
// that landed in a partition being made, is tried again at the next tick, never a reason to reconnect.
// A lock timeout (100 ms, set by the functions) is routine while a reader or a Canvas transaction holds
// the outbox: info, and a warning only once the same task has failed for `patience` without a success.
class housekeeping_task {
 public:
  explicit housekeeping_task(const char* what, steady::duration patience = std::chrono::minutes(1))
      : what_(what), patience_(patience) {}

  template <class F>
  void operator()(F&& run) {
    try {
      run();
      failing_since_.reset();
    } catch (const pqxx::sql_error& e) {
      auto now = steady::now();
      if (!failing_since_) failing_since_ = now;
      bool lock_timeout = e.sqlstate() == "55P03";
      if (lock_timeout && now - *failing_since_ < patience_)
        spdlog::info("database: {}: a lock was busy; trying again later", what_);
      else
        spdlog::warn("database: {}: {}; trying again later", what_, one_line(e.what()));
    }
  }

 private:
  const char* what_;
  steady::duration patience_;
  std::optional<steady::time_point> failing_since_;
};

// How the active instance learns of new rows (migration 0008). Listening: the capture triggers notify, and
// each notification wakes the reads at once. When changes come faster than poll_above per window, it turns
// the notifications off (each one would make its transaction commit alone, see the migration) and reads
// every poll_every instead: at such rates a read finds a few rows each time. When they slow below
// listen_below, it turns them on again, and settles: a transaction that skipped its notification meanwhile
// may still be open, so it reads and checks, at growing intervals up to settle_max, until every transaction
// below the id the switch returned has ended, then marks the state settled, reads once more and waits for
// notifications alone. A later leader that finds it settled has nothing to check.
class wake_control {
 public:
  static constexpr milliseconds window{100};
  static constexpr std::int64_t poll_above = 64;    // rows per window: 640/s
  static constexpr std::int64_t listen_below = 32;  // rows per window: 320/s
  static constexpr milliseconds poll_every{1};
  static constexpr milliseconds settle_max{100};

  // A new session: notifications on, and settle unless an earlier leader left it settled.
  void start(store& db, std::int64_t max_read_id, steady::time_point now) {
    settle(db, now);
    window_first_id_ = max_read_id;
    window_end_ = now + window;
  }

  // Runs the mode's work that is due: true when the reads should run (news).
  bool step(store& db, std::int64_t max_read_id, steady::time_point now) {
    if (now >= window_end_) {
      const auto rows = max_read_id - window_first_id_;
      if (at_ != mode::polling && rows >= poll_above) {
        db.set_listening(store::listen_state::polling);
        at_ = mode::polling;
        next_ = now;
        spdlog::debug("database: {} rows in {} ms: reading every {} ms, notifications off", rows,
                      window.count(), poll_every.count());
      } else if (at_ == mode::polling && rows < listen_below) {
        settle(db, now);
        spdlog::debug("database: {} rows in {} ms: notifications on", rows, window.count());
      }
      window_first_id_ = max_read_id;
      window_end_ = now + window;
    }
    if (at_ == mode::listening || now < next_) return false;
    if (at_ == mode::polling) {
      next_ = now + poll_every;
      return true;
    }
    if (db.ended_below(settle_xid_)) {
      db.set_listening(store::listen_state::settled);
      at_ = mode::listening;
      return true;  // the last read that may find a transaction that skipped its notification
    }
    next_ = now + settle_wait_;
    settle_wait_ = std::min(settle_wait_ * 2, settle_max);
    // Read meanwhile: the bound is the whole cluster's, so an unrelated transaction left open for minutes (in
    // any database) holds it back, while one that skipped its notification may have committed already.
    return true;
  }

  // Stopping: notifications on again for whoever reads next (an instance built before migration 0008 relies
  // on them). Best effort: the next leader turns them on at its start anyway.
  void stop(store& db) {
    if (at_ == mode::listening) return;
    try {
      db.set_listening(store::listen_state::unsettled);
    } catch (const std::exception& e) {
      spdlog::debug("database: turning notifications on at stop: {}", e.what());
    }
  }

  // When step has work next: the loop sleeps no longer.
  steady::time_point next(steady::time_point later) const {
    return at_ == mode::listening ? std::min(later, window_end_) : std::min({later, window_end_, next_});
  }

 private:
  enum class mode { listening, polling, settling };

  void settle(store& db, steady::time_point now) {
    auto below = db.set_listening(store::listen_state::unsettled);
    if (!below) {  // settled already: no transaction can have skipped its notification
      at_ = mode::listening;
      return;
    }
    settle_xid_ = *below;
    at_ = mode::settling;
    settle_wait_ = poll_every;
    next_ = now;
  }

  mode at_ = mode::settling;
  std::int64_t settle_xid_ = 0;
  milliseconds settle_wait_ = poll_every;
  steady::time_point next_;
  steady::time_point window_end_;
  std::int64_t window_first_id_ = 0;
};

// The leader's loop; returns when stopping (records flushed), throws when the connection is lost.
void active_loop(state& s, store& db) {
  wake_control wake;
  wake.start(db, s.max_read_id, steady::now());
  auto next_tick = steady::now() + s.settings.poll_interval;
  auto next_purge = steady::now() + std::chrono::seconds(5);
  auto next_heartbeat = steady::now() + s.settings.heartbeat;
  housekeeping_task make_partitions{"making outbox partitions"};
  housekeeping_task retention{"retention"};
  housekeeping_task dead_letters{"dead letter retention"};
  for (;;) {
    // Reads first: they are on the latency path, outcome writes are not.
    if (!s.is_stopping()) run_fetches(s, db);
    write_records(s, db);
    write_health(s, db);
    if (s.is_stopping()) {
      write_records(s, db);  // what was recorded while the last write ran: stop() comes after it
      wake.stop(db);
      return;
    }
    auto now = steady::now();
    if (now >= next_heartbeat) {
      db.heartbeat();
      next_heartbeat = now + s.settings.heartbeat;
    }
    s.confirm(db);
    if (db.take_control_news()) post_controls(s, db, false);
    if (now >= next_tick) {
      next_tick = now + s.settings.poll_interval;
      s.on_news();
      post_controls(s, db, false);  // in case a notification was missed
      // Backlog and oldest pending event per endpoint, from the database (the dispatcher only knows its
      // window): the figures /metrics shows.
      const auto endpoints = s.endpoints();
      if (!endpoints.empty()) {
        for (const auto& st : db.status(endpoints))
          s.m.set_backlog(st.endpoint, st.backlog, st.oldest_pending_age_seconds.value_or(0.0));
      }
      make_partitions([&] {
        if (auto n = db.add_partitions(partition_width, partitions_ahead); n > 0)
          spdlog::info("database: made {} outbox partitions of {} ids ahead of the captured rows", n,
                       partition_width);
      });
      if (now >= next_purge) {
        next_purge = now + purge_every;
        if (!endpoints.empty()) {
          retention([&] {
            auto n = db.purge(s.settings.retention, endpoints);
            if (n > 0) spdlog::info("database: retention dropped {} delivered outbox rows", n);
          });
          dead_letters([&] {
            if (auto n = db.purge_dead_letters(s.settings.dead_letter_retention); n > 0)
              spdlog::warn("database: {} dead letters older than dead_letter_retention ({} days) removed", n,
                           s.settings.dead_letter_retention.count() / 86400);
          });
        }
      }
    }
    // libpq reads notifications while it waits for a query's result (any of the above): they are in its
    // queue, not on the socket, and would not wake the poll. Count them, and run the fetches they made
    // due before sleeping.
    if (db.take_notifications() > 0) s.on_news();
    if (wake.step(db, s.max_read_id, steady::now())) s.on_news();
    if (s.waiting_fetch_due()) continue;
    int sock = db.socket();
    if (sock < 0) throw std::runtime_error("the database connection has no socket");
    pollfd fds[2] = {{sock, POLLIN, 0}, {s.wake_fd, POLLIN, 0}};
    auto timeout = std::chrono::duration_cast<milliseconds>(wake.next(std::min(next_tick, next_heartbeat)) -
                                                            steady::now())
                       .count() +
                   1;
    int r = ::poll(fds, 2, static_cast<int>(std::max<milliseconds::rep>(0, timeout)));
    if (r < 0 && errno != EINTR) throw std::runtime_error("poll failed");
    if (fds[1].revents & POLLIN) s.drain();
    if (fds[0].revents & (POLLIN | POLLERR | POLLHUP)) {
      if (db.take_notifications() > 0) s.on_news();
    }
  }
}

void run(std::shared_ptr<state> sp) {
  state& s = *sp;
  std::mt19937_64 rng{std::random_device{}()};
  int failures = 0;
  bool connected_before = false;
  while (!s.is_stopping()) {
    bool active = false;
    try {
      store db(s.settings.database_url);
      db.use_asynchronous_commit();
      // Server-side keepalives, tcp_user_timeout, statement and idle-session timeouts: a dead or frozen
      // instance's session, and the leadership lock with it, ends on the server within ~15 s (longer than
      // any lease the configuration allows, so that instance has stopped sending by then).
      db.use_daemon_session();
      if (connected_before) s.m.database_reconnect();
      connected_before = true;
      bool leader = db.try_lock_leadership();
      if (!leader) {
        spdlog::info("database: another instance is active; standing by");
        s.post([cb = s.callbacks.on_standby] {
          if (cb) cb();
        });
      }
      while (!leader) {
        s.idle_wait(s.settings.standby_retry);
        if (s.is_stopping()) break;
        leader = db.try_lock_leadership();  // also proves the connection is alive
      }
      if (!leader) break;
      // Fencing: whoever held the lock before may not know it lost it; it stops sending within a lease of
      // its last confirmation, so wait that long (keeping this session busy) before sending anything.
      spdlog::info("database: leadership lock taken; waiting {} ms (the lease) before sending",
                   s.settings.lease.count());
      for (auto until = steady::now() + s.settings.lease; !s.is_stopping() && steady::now() < until;) {
        s.idle_wait(
            std::min(s.settings.heartbeat, std::chrono::duration_cast<milliseconds>(until - steady::now())));
        db.heartbeat();
      }
      if (s.is_stopping()) break;
      db.listen();
      db.reset_read_positions();
      auto id = db.installation_id();
      {
        std::lock_guard lock(s.mutex);
        s.started.clear();
      }
      start_endpoints(s, db, s.endpoints());
      active = true;
      failures = 0;
      spdlog::info("database: connected and active (installation {})", id);
      s.m.set_database_up(true);  // before the io side hears of it: /readyz agrees with "active"
      s.begin_session(id);
      post_controls(s, db, true);
      s.post_wake();
      active_loop(s, db);
      break;
    } catch (const std::exception& e) {
      spdlog::warn("database: {}; reconnecting", one_line(e.what()));
    }
    s.end_session();
    if (active) {
      s.post([cb = s.callbacks.on_inactive] {
        if (cb) cb();
      });
    }
    s.m.set_database_up(false);
    s.fail_fetches();
    if (s.is_stopping()) break;
    // Exponential backoff with full jitter between reconnect_min and the capped exponential.
    auto lo = s.settings.reconnect_min.count();
    auto cap = std::min<std::int64_t>(s.settings.reconnect_max.count(), lo << std::min(failures, 20));
    ++failures;
    std::uniform_int_distribution<std::int64_t> pick(lo, std::max<std::int64_t>(lo, cap));
    auto until = steady::now() + milliseconds(pick(rng));
    while (!s.is_stopping() && steady::now() < until)
      s.idle_wait(std::chrono::duration_cast<milliseconds>(until - steady::now()));
  }
  s.m.set_database_up(false);
  s.fail_fetches();
  std::lock_guard lock(s.mutex);
  s.finished = true;
  s.finished_cv.notify_all();
}

class worker final : public db_worker {
 public:
  worker(executor io, db_worker_settings settings, db_worker_callbacks callbacks, metrics& m)
      : state_(std::make_shared<state>(io, std::move(settings), std::move(callbacks), m)),
        thread_(run, state_),
        lease_thread_([this] { watch_lease(); }) {}
  ~worker() override { stop(std::chrono::seconds(5)); }

  void fetch(std::string endpoint, std::uint64_t session, std::size_t limit,
             std::function<void(std::vector<pending_event>)> done, bool wait) override {
    fetch_command f{std::move(endpoint), session, limit, std::move(done)};
    std::optional<fetch_command> replaced;
    {
      std::lock_guard lock(state_->mutex);
      if (!state_->stopping && session == state_->session) {
        state_->holding.erase(f.endpoint);
        if (auto it = state_->parked.find(f.endpoint); it != state_->parked.end()) {
          replaced = std::move(it->second);
          state_->parked.erase(it);
        }
        if (wait && !state_->may_have_news(f.endpoint)) {
          auto key = f.endpoint;
          state_->parked.emplace(std::move(key), std::move(f));  // nothing to do until news: no wake-up
        } else {
          state_->fetches.push_back(std::move(f));
          state_->signal();
        }
        f.done = nullptr;
      }
    }
    if (replaced) state_->answer(*replaced, {});
    if (f.done) state_->answer(f, {});
  }

  void hold(std::string endpoint, std::uint64_t session) override {
    std::lock_guard lock(state_->mutex);
    if (!state_->stopping && session == state_->session) state_->holding.insert(std::move(endpoint));
  }

  void record(std::vector<delivery_update> updates, std::map<std::string, watermark> done_through) override {
    std::lock_guard lock(state_->mutex);
    state_->records.merge(record_batch{std::move(updates), std::move(done_through)});
    state_->signal();
  }

  void set_endpoints(std::vector<std::string> names, std::map<std::string, milliseconds> backfill) override {
    std::lock_guard lock(state_->mutex);
    state_->endpoint_names = std::move(names);
    state_->backfill = std::move(backfill);
  }

  void save_health(endpoint_health_update u) override {
    std::lock_guard lock(state_->mutex);
    auto name = u.endpoint;
    state_->health.insert_or_assign(std::move(name), std::move(u));
    state_->signal();
  }

  void stop(std::chrono::milliseconds flush_deadline) override {
    {
      std::lock_guard lock(lease_wait_mutex_);
      lease_stop_ = true;
    }
    lease_wake_.notify_all();
    if (lease_thread_.joinable()) lease_thread_.join();
    if (!thread_.joinable()) return;
    std::unique_lock lock(state_->mutex);
    state_->stopping = true;
    state_->signal();
    bool done = state_->finished_cv.wait_for(lock, flush_deadline, [&] { return state_->finished; });
    lock.unlock();
    if (done) {
      thread_.join();
    } else {
      // Still blocked in libpq: it owns a share of the state and ends on its own.
      spdlog::warn("database: the worker did not finish within {} ms; leaving it behind",
                   flush_deadline.count());
      thread_.detach();
    }
  }

 private:
  void watch_lease() {
    const auto period = std::max<milliseconds>(milliseconds(20), state_->settings.lease / 5);
    std::unique_lock lock(lease_wait_mutex_);
    while (!lease_wake_.wait_for(lock, period, [&] { return lease_stop_; })) state_->check_lease();
  }

  std::shared_ptr<state> state_;
  std::thread thread_;
  std::mutex lease_wait_mutex_;
  std::condition_variable lease_wake_;
  bool lease_stop_ = false;
  std::thread lease_thread_;  // last: started once everything it uses exists
};

}  // namespace

std::unique_ptr<db_worker> start_db_worker(executor io, db_worker_settings settings,
                                           db_worker_callbacks callbacks, metrics& m) {
  return std::make_unique<worker>(std::move(io), std::move(settings), std::move(callbacks), m);
}

}  // namespace appointment_relay
