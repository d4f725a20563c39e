#pragma once
// What the dispatch stage needs of the listener stage: pending events per endpoint, and a place to record
// outcomes. db_worker implements it; a unit test may fake it.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "appointment_relay/store.hpp"

namespace appointment_relay {

class event_source {
 public:
  virtual ~event_source() = default;
  // The next events for endpoint, at most limit, in id order; done runs on the io executor (with nothing
  // when the database is unreachable). At most one fetch per endpoint outstanding.
  virtual void fetch(std::string endpoint, std::size_t limit,
                     std::function<void(std::vector<pending_event>)> done) = 0;
  // Outcomes to write, batched with others, kept across reconnects until written; done_through: endpoint ->
  // every event up to that id is done there.
  virtual void record(std::vector<delivery_update> updates,
                      std::map<std::string, std::int64_t> done_through) = 0;
};

}  // namespace appointment_relay
