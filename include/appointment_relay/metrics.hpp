#pragma once
// Counters, gauges and a latency histogram, rendered in the Prometheus text format. Thread-safe: the
// dispatcher updates it on the io thread, the database worker on its own thread, /metrics reads it.
#include <cstdint>
#include <memory>
#include <optional>
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
  // healthy | failing | open (the breaker) | paused
  void set_endpoint_state(std::string_view endpoint, std::string_view state);
  void database_reconnect();
  void set_database_up(bool connected_and_listening);
  bool database_up() const;
  // True while this instance is the active one (it delivers), false as a standby or while not active: the
  // appointment_relay_leader gauge, so that "no leader" and "two leaders" can be alerted on.
  void set_leader(bool active);

  // text/plain; version=0.0.4. The process_* families are read from /proc at each call (read_process_stats);
  // they are left out when /proc cannot be read.
  std::string render() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// What the kernel says of a process, for the process_* metrics (the names and meanings of the Prometheus
// client libraries' process collector).
struct process_stats {
  double cpu_seconds = 0;         // user + system time
  double start_time_seconds = 0;  // since the Unix epoch
  std::uint64_t resident_memory_bytes = 0;
  std::uint64_t virtual_memory_bytes = 0;
  std::uint64_t open_fds = 0;
  std::uint64_t max_fds = 0;  // the soft limit (RLIMIT_NOFILE)
};

// The text of /proc/PID/stat: utime and stime (fields 14 and 15, in clock ticks), starttime (22, ticks after
// boot), vsize (23, bytes) and rss (24, pages). The process name (field 2) may hold spaces and parentheses:
// the fields are counted from its last ')'. boot_time_seconds is /proc/stat's btime. The fd counts are left
// 0. Nullopt when the text is not of that form. Pure.
std::optional<process_stats> parse_proc_pid_stat(std::string_view text, long ticks_per_second, long page_size,
                                                 double boot_time_seconds);

// The boot time ("btime N" line) of /proc/stat's text, in seconds since the Unix epoch. Pure.
std::optional<double> parse_boot_time(std::string_view proc_stat);

// This process's figures, read now from /proc/self/stat, /proc/stat, /proc/self/fd and getrlimit. Nullopt
// when /proc cannot be read (not mounted, or not Linux).
std::optional<process_stats> read_process_stats();

}  // namespace appointment_relay
