#pragma once
// The listener stage: its own thread owns the database connection (LISTEN, catch-up reads, outcome
// writes, leadership, reconnect with backoff, retention); the io thread talks to it through a bounded
// command queue and gets results posted back to its executor. A slow database never blocks the io thread.
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "appointment_relay/event_source.hpp"
#include "appointment_relay/net.hpp"
#include "appointment_relay/store.hpp"

namespace appointment_relay {

class metrics;

struct db_worker_settings {
  std::string database_url;
  std::vector<std::string> endpoints;  // names, for retention
  // Where an endpoint the installation has never seen starts (store::start_endpoints), by name.
  std::map<std::string, std::chrono::milliseconds> backfill;
  std::chrono::milliseconds poll_interval{5000};
  std::chrono::seconds retention{std::chrono::hours(24 * 7)};
  std::chrono::seconds dead_letter_retention{std::chrono::hours(24 * 30)};
  std::chrono::milliseconds reconnect_min{200};
  std::chrono::milliseconds reconnect_max{10000};
  std::chrono::milliseconds standby_retry{1000};  // how often a standby tries the leadership lock
  // Fencing. The leader confirms its leadership with every round trip (at least one per heartbeat); when
  // none has succeeded for a lease, it stops sending (on_inactive, decided on a watcher thread of its own,
  // so even a database thread blocked in a frozen connection cannot delay it) until one succeeds again. A new
  // leader waits a lease after taking the lock, so an instance that lost its lock without knowing it has
  // stopped before anyone else sends. The server-side session timeouts (store::use_daemon_session) must be
  // longer than the lease: a frozen instance's lock is released only after it has stopped.
  std::chrono::milliseconds lease{5000};
  std::chrono::milliseconds heartbeat{1000};
};

struct db_worker_callbacks {
  // All run on the io executor.
  // Leadership (re)gained and confirmed: read positions reset; session tags this activation's fetches.
  std::function<void(std::string installation_id, std::uint64_t session)> on_active;
  // Connection lost or leadership not confirmed within the lease: stop sending at once.
  std::function<void()> on_inactive;
  // New rows may be there (NOTIFY, poll tick, catch-up after (re)connect); not called when every endpoint
  // has a waiting fetch (which the worker then runs itself) or holds (event_source::hold).
  std::function<void()> on_wake;
  std::function<void()> on_standby;  // connected, but another instance holds the leadership
  // Every endpoint's row of endpoint_state: right after on_active (initial: the health to start from), and
  // whenever `pause` or `resume` changed one (or at a poll tick; initial false: only the pause counts).
  std::function<void(std::vector<endpoint_control>, bool initial)> on_control;
};

class db_worker : public event_source {
 public:
  virtual ~db_worker() = default;
  // Reads the next events for endpoint (store::read_pending); done runs on the io executor, with nothing
  // when the connection is down. Call on the io thread; at most one fetch per endpoint outstanding.
  // A fetch of another session than the current active one is answered with nothing and not read.
  void fetch(std::string endpoint, std::uint64_t session, std::size_t limit,
             std::function<void(std::vector<pending_event>)> done, bool wait) override = 0;
  // Queues outcomes to write (batched with others); kept across reconnects until written.
  void record(std::vector<delivery_update> updates,
              std::map<std::string, watermark> done_through) override = 0;
  // The configured endpoints changed (SIGHUP): retention and the backlog figures follow them.
  virtual void set_endpoints(std::vector<std::string> names,
                             std::map<std::string, std::chrono::milliseconds> backfill = {}) = 0;
  // Writes what is queued, then ends the thread. Idempotent; blocks for at most the given time.
  virtual void stop(std::chrono::milliseconds flush_deadline) = 0;
};

std::unique_ptr<db_worker> start_db_worker(executor io, db_worker_settings settings,
                                           db_worker_callbacks callbacks, metrics& m);

}  // namespace appointment_relay
