#pragma once
// Which of one endpoint's events may be sent next. Events are held per appointment (their ordering key) in
// id order; only an appointment's first event (its head) is ever ready or in flight, so at most one attempt
// per appointment is in flight at any moment and the next one waits until the head is done. A head that
// failed waits for its retry time, and a head read back from the database may carry one too.
//
// Pure: no executor, no clock (times are unix milliseconds passed in), no I/O; one owner, not thread-safe.
// The lane (src/dispatcher.cpp) keeps each event's payload beside it, by id. Event ids are positive.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace appointment_relay {

class appointment_order {
 public:
  // Holds event id of appointment key, not to be sent before not_before_ms (0: at once). An appointment's
  // events must be added in increasing id order. False, and nothing changes, when id is already held.
  bool add(std::int64_t id, std::string_view key, std::int64_t not_before_ms);

  // The next event to send at now_ms, now in flight; empty when none is due. Heads are taken in the order
  // they became due (those waiting for a time join the line when it has come, earliest first).
  std::optional<std::int64_t> take(std::int64_t now_ms);

  // The attempt of an in-flight event failed: it stays its appointment's head and is due again at
  // not_before_ms. No-op unless id is in flight.
  void retry(std::int64_t id, std::int64_t not_before_ms);

  // The event is done (delivered or dead-lettered): it is dropped and the next event of its appointment, if
  // any, becomes the head (due at its own time). No-op for an id not held.
  void complete(std::int64_t id);

  // When the earliest head that waits for its time becomes due (unix ms); empty when none waits.
  std::optional<std::int64_t> next_due() const;

  bool contains(std::int64_t id) const { return events_.contains(id); }
  std::size_t size() const { return events_.size(); }
  std::size_t in_flight() const { return in_flight_; }
  // The smallest id held; empty when nothing is held.
  std::optional<std::int64_t> lowest() const;

  // Forgets everything (a new generation reads afresh from the database).
  void clear();

 private:
  enum class stage { queued, waiting, ready, in_flight };
  struct entry {
    std::string key;
    std::int64_t not_before_ms = 0;
    std::int64_t next = 0;  // the next event of the same appointment, 0: none
    stage at = stage::queued;
  };
  struct queue {
    std::int64_t head = 0;
    std::int64_t tail = 0;
  };

  void make_head(std::int64_t id, entry& e);

  std::map<std::int64_t, entry> events_;  // by id: everything held
  std::unordered_map<std::string, queue> queues_;
  std::deque<std::int64_t> ready_;                     // heads due now, in the order they became due
  std::multimap<std::int64_t, std::int64_t> waiting_;  // not_before -> head id: heads waiting for their time
  std::size_t in_flight_ = 0;
};

}  // namespace appointment_relay
