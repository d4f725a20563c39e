#include "appointment_relay/outcome_batch.hpp"

namespace appointment_relay {

outcome_batch::taken outcome_batch::take() {
  taken t;
  t.updates.swap(updates_);
  // Also when it did not grow but outcomes go with it: the store may have held the last one back below a
  // late-committed row that these outcomes settle (its floor), and writes it once it may.
  if (done_ > reported_ || (!t.updates.empty() && done_ >= 0)) {
    t.done_through = done_;
    t.acked_read = acked_read_;
    reported_ = done_;
  }
  return t;
}

}  // namespace appointment_relay
