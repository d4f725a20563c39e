#pragma once
// The attempts one endpoint has in flight. Each attempt is known by a token (unique for the table's life):
// the answer to an HTTP request carries the token, and an answer whose token has already ended (the attempt
// was given up, or the table was cleared) is recognised and ignored. Each attempt records the HTTP client's
// request id, so that giving up on it can cancel the request, and its deadline, past which the lane gives up.
//
// Pure: no executor, no clock (times are passed in); one owner, not thread-safe.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

namespace appointment_relay {

class attempt_table {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  struct attempt {
    std::uint64_t token = 0;
    std::int64_t event_id = 0;
    std::uint64_t request = 0;  // the HTTP client's request id (0 until set)
    time_point deadline;
  };

  // Starts an attempt of event_id that must end by deadline; returns its token (never 0).
  std::uint64_t start(std::int64_t event_id, time_point deadline);
  // Records which HTTP request carries the attempt. No-op for an ended token.
  void set_request(std::uint64_t token, std::uint64_t request);
  // Ends the attempt: returns it, or empty when the token has ended already (a stale answer).
  std::optional<attempt> finish(std::uint64_t token);
  // The attempts still running past their deadline at now (they stay until finished).
  std::vector<attempt> overdue(time_point now) const;
  // Ends every attempt and returns them (to cancel their requests).
  std::vector<attempt> take_all();
  // Whether an attempt of event_id is running (a scan: the table holds at most max_in_flight attempts).
  bool running(std::int64_t event_id) const;
  std::size_t size() const { return running_.size(); }
  bool empty() const { return running_.empty(); }

 private:
  std::unordered_map<std::uint64_t, attempt> running_;
  std::uint64_t last_token_ = 0;
};

}  // namespace appointment_relay
