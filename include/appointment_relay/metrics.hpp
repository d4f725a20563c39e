#pragma once
// Counters, gauges and a latency histogram, rendered in the Prometheus text format. Thread-safe: the
// dispatcher updates it on the io thread, the database worker on its own thread, /metrics reads it.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace appointment_relay {

class metrics {
 public:
  metrics();
  ~metrics();
  metrics(const metrics&) = delete;
  metrics& operator=(const metrics&) = delete;

  void event_captured(std::string_view endpoint, std::string_view kind);  // read from the outbox for endpoint
  void attempt(std::string_view endpoint, std::string_view kind);
  void retry(std::string_view endpoint, std::string_view kind);
  void delivered(std::string_view endpoint, std::string_view kind, double commit_to_2xx_seconds);
  void dead_letter(std::string_view endpoint, std::string_view reason);  // reason: a short label
  void set_backlog(std::string_view endpoint, std::int64_t pending, double oldest_age_seconds);
  void database_reconnect();
  void set_database_up(bool connected_and_listening);
  bool database_up() const;

  std::string render() const;  // text/plain; version=0.0.4

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace appointment_relay
