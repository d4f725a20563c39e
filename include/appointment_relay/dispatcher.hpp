#pragma once
// The dispatch stage: for each endpoint, a lane that reads pending events from the listener stage in
// bounded batches, classifies them, POSTs the payloads (signed, in order per appointment, many appointments
// in parallel), applies the retry policy and hands the outcomes back to be recorded.
// Lifecycle: made on the io executor; every member is called on it (one thread).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "appointment_relay/config.hpp"
#include "appointment_relay/event_source.hpp"
#include "appointment_relay/http_client.hpp"
#include "appointment_relay/net.hpp"

namespace appointment_relay {

class metrics;

struct dispatcher_settings {
  std::vector<endpoint_config> endpoints;
  retry_settings retry;
  std::size_t max_pending_per_endpoint = 2000;
  std::size_t batch_size = 1000;
  // How long outcomes wait to be written together (or until 512 wait). Each write is a batch row and a
  // cursor update in Canvas's database, so at a steady few hundred events per second 100 ms makes a few
  // bytes of WAL per event instead of a write per event; a crash sends the last 100 ms again (same
  // webhook-id).
  std::chrono::milliseconds record_flush_interval{100};
  // How a lane makes its HTTP client (empty: make_http_client). A unit test may hand in its own.
  std::function<std::shared_ptr<http_client>(executor, const url&, const http_client_options&)> make_client;
};

class dispatcher {
 public:
  virtual ~dispatcher() = default;
  // This instance leads: start reading every endpoint from its persisted position. installation_id is part
  // of every webhook-id; session tags every fetch (event_source::fetch). Resets whatever was held in memory,
  // cancelling any request still in flight from before.
  virtual void activate(std::string installation_id, std::uint64_t session) = 0;
  // The database is gone, the leadership is not confirmed, or another instance leads: send nothing more.
  // Requests in flight are cancelled (none of them reaches a receiver after this returns; their events stay
  // pending in the database, to be sent again by whoever leads next, with the same webhook-id); outcomes
  // already known are handed to the event source.
  virtual void deactivate() = 0;
  // New events may be pending.
  virtual void wake() = 0;
  // Endpoint state from the database: pauses (always), and with initial (right after activation) the
  // breaker's state to start from. Endpoints not listed are neither paused nor open.
  virtual void control(const std::vector<endpoint_control>& controls, bool initial) = 0;
  // New endpoint settings (SIGHUP), applied all at once or not at all: every lane, HTTP client, CA, key and
  // signing secret is made first; on any error (thrown, std::runtime_error) nothing has changed. Lanes are
  // then added, changed in place, or retired (a retired endpoint's requests in flight are cancelled).
  virtual void reconfigure(const dispatcher_settings& settings) = 0;
  // Stop taking new events, let in-flight requests finish until the deadline (then cancel what is left),
  // hand the outcomes over, then call done (once). Idempotent.
  virtual void drain(std::chrono::milliseconds deadline, std::function<void()> done) = 0;
  virtual std::size_t in_flight() const = 0;
  // Attempts given up because the HTTP client gave no answer past the request deadline plus a grace period
  // (a defect of the client if it ever happens: tests assert it stays 0).
  virtual std::uint64_t abandoned_attempts() const = 0;
};

// Throws std::runtime_error when an endpoint's TLS files cannot be loaded.
std::unique_ptr<dispatcher> make_dispatcher(executor ex, dispatcher_settings settings, event_source& source,
                                            metrics& m);

// "msg_<installation>_<event id>_<endpoint>": the same on every attempt of one event to one endpoint.
std::string webhook_id(std::string_view installation_id, std::int64_t event_id, std::string_view endpoint);

}  // namespace appointment_relay
