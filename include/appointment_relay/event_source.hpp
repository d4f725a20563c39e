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
  // when the database is unreachable). At most one fetch per endpoint outstanding; a new one replaces a
  // waiting one (which is answered with nothing). wait: read only once something may be new since this
  // endpoint's previous read began (a notification, the poll tick), not at once: a caller that has read
  // everything parks its next read this way, and the source runs it as soon as news arrives.
  // session: the one the caller was activated in (db_worker_callbacks::on_active). A fetch of an earlier
  // session is answered with nothing and never read: its rows would count as read in the new session's read
  // position while its caller drops them.
  virtual void fetch(std::string endpoint, std::uint64_t session, std::size_t limit,
                     std::function<void(std::vector<pending_event>)> done, bool wait) = 0;
  // Outcomes to write, batched with others, kept across reconnects until written; done_through: endpoint ->
  // every event up to that id that it was handed (in the reads up to acked_read, in that session) is done
  // there. A watermark of an earlier session is not written (the outcomes are: they are certain).
  virtual void record(std::vector<delivery_update> updates,
                      std::map<std::string, watermark> done_through) = 0;
  // An endpoint's health changed (the breaker): written with the next outcomes, the latest per endpoint.
  virtual void save_health(endpoint_health_update) {}
  // The endpoint reads nothing until its next fetch, whatever arrives (its window is full, it is paused, or
  // its breaker is open): news need not wake the caller on its account. Its next fetch ends the hold.
  virtual void hold(std::string /*endpoint*/, std::uint64_t /*session*/) {}
};

}  // namespace appointment_relay
