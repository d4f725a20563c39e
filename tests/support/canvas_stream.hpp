#pragma once
// A stream of Canvas changes for end-to-end tests, and the check of what a receiver got against it.
//
// canvas_stream plays `lives` appointment lives through the canvas_test.* helpers
// (sql/canvas/002_helpers.sql), over `connections` database connections (one thread each, each with a few
// lives interleaved), one SQL call (one transaction) per action: book, reschedule, cancel, restore, no-show,
// check-in, and the changes that notify nothing (SCH/BKD state events, updates, schedule blocks, state events
// of appointments entered in error and of notes without appointment). It records, per appointment external id
// and in commit order, the payload each notification must carry by the Canvas rules. Within one appointment
// external id each notification kind occurs at most once, so every expected payload (body) is unique.
//
// check_deliveries compares a receiver's recorded requests with that record.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support/test_http_server.hpp"

namespace appointment_relay::testing {

struct stream_options {
  int lives = 300;
  int connections = 2;
  int interleaved = 6;  // lives in progress at once per connection
  std::uint64_t seed = 42;
};

struct expected_notification {
  std::string ordering_key;  // appointment external id
  std::string kind;          // created, rescheduled, cancelled, no_show, reverted, checked_in
  std::string body;          // the exact payload
};

class canvas_stream {
 public:
  // database_url: a scratch database with the Canvas schema and the relay's migrations.
  canvas_stream(std::string database_url, stream_options options);
  ~canvas_stream();  // joins
  canvas_stream(const canvas_stream&) = delete;
  canvas_stream& operator=(const canvas_stream&) = delete;

  void start();  // plays in the background
  void join();   // waits for the end; rethrows the first error of a player thread
  void play() {
    start();
    join();
  }

  // Holds the players between two actions (returns once every player is parked or done) / lets them go on.
  void pause();
  void resume();

  std::size_t actions_done() const { return actions_.load(); }
  // True once at least n actions have committed (false on timeout or when the stream ended before).
  bool wait_for_actions(std::size_t n, std::chrono::milliseconds timeout) const;

  // After join(): every expected notification (per ordering key in commit order).
  std::vector<expected_notification> expected() const;

  // The application_name of the stream's own connections (so a test can spare them when it terminates
  // backends).
  static constexpr const char* application_name = "canvas_stream";

 private:
  void player(int index);

  std::string url_;
  stream_options options_;
  std::vector<std::thread> threads_;
  std::vector<std::vector<expected_notification>> per_thread_;
  std::atomic<std::size_t> actions_{0};
  std::atomic<int> finished_{0};

  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  bool paused_ = false;
  int parked_ = 0;
  std::exception_ptr error_;
};

struct delivery_check_options {
  bool require_order = true;     // per ordering key, first arrivals in commit order
  bool allow_duplicates = true;  // false: each payload exactly once
  std::string signing_secret;    // when set, every request's signature is verified
};

// Problems found (empty: all good): a payload expected but not received, a payload not expected, a duplicate
// with another webhook-id, one webhook-id for two payloads, first arrivals out of commit order.
std::vector<std::string> check_deliveries(const std::vector<expected_notification>& expected,
                                          const std::vector<recorded_request>& received,
                                          const delivery_check_options& options = {});

// How many of the expected payloads have been received at least once.
std::size_t count_delivered(const std::vector<expected_notification>& expected,
                            const std::vector<recorded_request>& received);

// Waits until every expected payload has arrived at one of the servers (requests are read from `received`).
bool wait_for_deliveries(const std::vector<expected_notification>& expected,
                         const std::function<std::vector<recorded_request>()>& received,
                         std::chrono::milliseconds timeout);

// A short text of the problems (at most `max` of them) for a test failure message.
std::string describe(const std::vector<std::string>& problems, std::size_t max = 20);

}  // namespace appointment_relay::testing
