#pragma once
// One endpoint's outcomes waiting to be written: delivery updates in the order they happened, and how far
// every event is done (the watermark), reported when it has grown or when outcomes go with it. The lane hands
// a batch over when it is full or when its flush timer fires.
//
// Pure: no executor, no I/O; one owner, not thread-safe.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "appointment_relay/store.hpp"

namespace appointment_relay {

class outcome_batch {
 public:
  // Hand over at once when this many updates wait (a drain of a backlog writes in large batches anyway).
  static constexpr std::size_t full_size = 512;

  void add(delivery_update u) { updates_.push_back(std::move(u)); }
  // Every event up to through is done (delivered, dead, or not for this endpoint), of those handed out by
  // the reads up to acked_read (pending_event::read).
  void done_through(std::int64_t through, std::uint64_t acked_read = watermark::every_read) {
    if (through > done_) done_ = through;
    acked_read_ = acked_read;
  }
  bool full() const { return updates_.size() >= full_size; }
  // Nothing to hand over: no update, and the watermark has not grown since the last take().
  bool empty() const { return updates_.empty() && done_ <= reported_; }

  struct taken {
    std::vector<delivery_update> updates;
    std::optional<std::int64_t> done_through;  // set when it grew since the last take(), or with updates
    std::uint64_t acked_read = watermark::every_read;
  };
  taken take();

  // A new generation reads afresh: forget the watermark (updates still wait to be written: they are certain).
  void reset_watermark() { done_ = reported_ = -1; }

 private:
  std::vector<delivery_update> updates_;
  std::int64_t done_ = -1;
  std::int64_t reported_ = -1;
  std::uint64_t acked_read_ = watermark::every_read;
};

}  // namespace appointment_relay
