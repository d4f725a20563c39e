#pragma once
// The admin API's database reads, on a thread of their own: the io thread never waits for PostgreSQL. One
// connection, made at the first job and made anew after one is lost; a bounded queue; jobs run one at a
// time in the order queued.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "appointment_relay/store.hpp"

namespace appointment_relay {

// What the admin API reads (the store's calls of the same names). Used on the worker's thread only.
class admin_data {
 public:
  virtual ~admin_data() = default;
  virtual std::vector<endpoint_status> status(const std::vector<std::string>& endpoints) = 0;
  virtual std::vector<event_summary> events(const event_filter& filter,
                                            const std::vector<std::string>& endpoints) = 0;
  virtual std::vector<event_detail> event(std::int64_t id, const std::vector<std::string>& endpoints,
                                          const std::map<std::string, std::vector<std::string>>& kinds) = 0;
  // False once the connection is lost: the worker makes a new one.
  virtual bool usable() const = 0;
};

// Makes a connection; throws when it cannot.
using admin_data_factory = std::function<std::unique_ptr<admin_data>()>;

// A store connection to database_url whose statements are cancelled after statement_timeout (the session
// otherwise keeps the server's defaults; no idle timeout, as the API may stay unused for long).
admin_data_factory store_admin_data(std::string database_url, std::chrono::milliseconds statement_timeout);

struct admin_job {
  // Runs on the worker's thread. May throw: if the connection was lost, it is made anew and run is called
  // once more; otherwise (or when that fails too) fail is called with the error's text.
  std::function<void(admin_data&)> run;
  std::function<void(const std::string& error)> fail;
};

class admin_worker {
 public:
  // Starts the thread. queue_limit: jobs waiting (not counting the one running) before submit refuses.
  admin_worker(admin_data_factory make, std::size_t queue_limit);
  // shutdown().
  ~admin_worker();
  admin_worker(const admin_worker&) = delete;
  admin_worker& operator=(const admin_worker&) = delete;

  // Queues job; false (job dropped) when queue_limit jobs are waiting already. Any thread.
  bool submit(admin_job job);
  // Drops the jobs still queued (neither run nor fail is called), waits for the running one and ends the
  // thread; submit refuses from then on. Idempotent; not from within a job.
  void shutdown();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace appointment_relay
