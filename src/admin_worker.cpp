#include "appointment_relay/admin_worker.hpp"

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

namespace appointment_relay {
namespace {

class store_data final : public admin_data {
 public:
  store_data(const std::string& url, std::chrono::milliseconds statement_timeout) : db_(url) {
    session_settings s;
    s.statement_timeout = statement_timeout;
    s.idle_session_timeout = std::chrono::milliseconds(0);  // an unused API keeps its connection
    db_.use_daemon_session(s);
  }
  std::vector<endpoint_status> status(const std::vector<std::string>& endpoints) override {
    return db_.status(endpoints);
  }
  std::vector<event_summary> events(const event_filter& filter,
                                    const std::vector<std::string>& endpoints) override {
    return db_.events(filter, endpoints);
  }
  std::vector<event_detail> event(std::int64_t id, const std::vector<std::string>& endpoints,
                                  const std::map<std::string, std::vector<std::string>>& kinds) override {
    return db_.event(id, endpoints, kinds);
  }
  bool usable() const override { return db_.is_open(); }

 private:
  store db_;
};

}  // namespace

admin_data_factory store_admin_data(std::string database_url, std::chrono::milliseconds statement_timeout) {
  return [url = std::move(database_url), statement_timeout]() -> std::unique_ptr<admin_data> {
    return std::make_unique<store_data>(url, statement_timeout);
  };
}

struct admin_worker::impl {
  impl(admin_data_factory make, std::size_t limit) : make(std::move(make)), limit(limit) {
    thread = std::thread([this] { loop(); });
  }

  void loop() {
    std::unique_lock lock(mutex);
    for (;;) {
      wake.wait(lock, [&] { return stopping || !queue.empty(); });
      if (stopping) return;
      admin_job job = std::move(queue.front());
      queue.pop_front();
      lock.unlock();
      run(job);
      job = {};  // its captures (a response on its way to the io thread) go before the next job
      lock.lock();
    }
  }

  void run(admin_job& job) {
    std::string error;
    for (int attempt = 0; attempt < 2; ++attempt) {
      try {
        if (!data || !data->usable()) data = make();
        job.run(*data);
        return;
      } catch (const std::exception& e) {
        error = e.what();
      } catch (...) {
        error = "unknown error";
      }
      // Only a lost connection is worth a second try (a server restart since the last request); a
      // statement that failed on a live connection would fail again.
      if (data && data->usable()) break;
      data.reset();
      spdlog::debug("admin API: database connection lost ({}); connecting again", error);
    }
    job.fail(error);
  }

  admin_data_factory make;
  std::size_t limit;
  std::unique_ptr<admin_data> data;  // the worker thread's only
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<admin_job> queue;
  bool stopping = false;
  std::thread thread;
};

admin_worker::admin_worker(admin_data_factory make, std::size_t queue_limit)
    : impl_(std::make_unique<impl>(std::move(make), queue_limit)) {}

admin_worker::~admin_worker() {
  shutdown();
}

void admin_worker::shutdown() {
  std::deque<admin_job> dropped;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
    dropped.swap(impl_->queue);
  }
  impl_->wake.notify_one();
  if (impl_->thread.joinable()) impl_->thread.join();
}

bool admin_worker::submit(admin_job job) {
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->stopping || impl_->queue.size() >= impl_->limit) return false;
    impl_->queue.push_back(std::move(job));
  }
  impl_->wake.notify_one();
  return true;
}

}  // namespace appointment_relay
