#include "appointment_relay/metrics.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>

#include "appointment_relay/version.hpp"

namespace appointment_relay {
namespace {

// Upper bounds of the delivery latency histogram, in seconds, and their labels as rendered. The labels
// are spelled out so the text stays stable (no "5e-04" from a shortest round-trip formatter).
constexpr std::array<double, 17> latency_bounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                0.5,    1,     2.5,    5,     10,   30,    60,   300};
constexpr std::array<const char*, 17> latency_bound_labels{
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
    "0.5",    "1",     "2.5",    "5",     "10",   "30",    "60",   "300"};

// A series key of two label values. The comparator is transparent so that a lookup with string_views
// finds an existing series without allocating: the dispatcher updates these per event.
struct two_labels {
  std::string first;
  std::string second;
};
struct two_labels_less {
  using is_transparent = void;
  using view = std::pair<std::string_view, std::string_view>;
  static view as_view(const two_labels& k) { return {k.first, k.second}; }
  static view as_view(const view& v) { return v; }
  template <class A, class B>
  bool operator()(const A& a, const B& b) const {
    return as_view(a) < as_view(b);
  }
};

template <class Value>
using two_label_map = std::map<two_labels, Value, two_labels_less>;
template <class Value>
using one_label_map = std::map<std::string, Value, std::less<>>;

template <class Value>
Value& series(two_label_map<Value>& m, std::string_view a, std::string_view b) {
  auto it = m.find(two_labels_less::view{a, b});
  if (it == m.end()) it = m.emplace(two_labels{std::string(a), std::string(b)}, Value{}).first;
  return it->second;
}

template <class Value>
Value& series(one_label_map<Value>& m, std::string_view a) {
  auto it = m.find(a);
  if (it == m.end()) it = m.emplace(std::string(a), Value{}).first;
  return it->second;
}

struct kind_counters {
  std::uint64_t captured = 0;
  std::uint64_t attempts = 0;
  std::uint64_t retries = 0;
  std::uint64_t delivered = 0;
};

struct histogram {
  std::array<std::uint64_t, latency_bounds.size()> buckets{};  // per bucket, not cumulative
  double sum = 0;
  std::uint64_t count = 0;
};

struct backlog {
  std::int64_t pending = 0;
  double oldest_age_seconds = 0;
};

// Label values: backslash, double quote and line feed are escaped (text format 0.0.4).
void append_escaped(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
}

void append_number(std::string& out, std::uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void append_number(std::string& out, std::int64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
    out.append(buf, r.ptr);
  }
}

void append_header(std::string& out, std::string_view name, std::string_view help, std::string_view type) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

// name{k1="v1",k2="v2"} value
template <class Number>
void append_sample(std::string& out, std::string_view name,
                   std::initializer_list<std::pair<std::string_view, std::string_view>> labels,
                   Number value) {
  out += name;
  if (labels.size() != 0) {
    out += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) out += ',';
      first = false;
      out += k;
      out += "=\"";
      append_escaped(out, v);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  append_number(out, value);
  out += '\n';
}

// The whole of a small /proc file; nullopt when it cannot be read.
std::optional<std::string> read_proc_file(const char* path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return std::nullopt;
  return text;
}

template <class Number>
bool parse_field(std::string_view s, Number& out) {
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

void append_process_metrics(std::string& out, const process_stats& p) {
  append_header(out, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                "counter");
  append_sample(out, "process_cpu_seconds_total", {}, p.cpu_seconds);
  append_header(out, "process_open_fds", "Number of open file descriptors.", "gauge");
  append_sample(out, "process_open_fds", {}, p.open_fds);
  append_header(out, "process_max_fds", "Maximum number of open file descriptors.", "gauge");
  append_sample(out, "process_max_fds", {}, p.max_fds);
  append_header(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge");
  append_sample(out, "process_virtual_memory_bytes", {}, p.virtual_memory_bytes);
  append_header(out, "process_resident_memory_bytes", "Resident memory size in bytes.", "gauge");
  append_sample(out, "process_resident_memory_bytes", {}, p.resident_memory_bytes);
  append_header(out, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                "gauge");
  append_sample(out, "process_start_time_seconds", {}, p.start_time_seconds);
}

}  // namespace

std::optional<process_stats> parse_proc_pid_stat(std::string_view text, long ticks_per_second, long page_size,
                                                 double boot_time_seconds) {
  if (ticks_per_second <= 0 || page_size <= 0) return std::nullopt;
  const auto name_end = text.rfind(')');
  if (name_end == std::string_view::npos) return std::nullopt;
  // Field 3 (state) is the first after the name; field n is at index n - 3 of what follows.
  std::array<std::string_view, 22> f{};  // fields 3 to 24
  std::size_t n = 0;
  std::size_t i = name_end + 1;
  while (n < f.size()) {
    while (i < text.size() && text[i] == ' ') ++i;
    if (i >= text.size()) return std::nullopt;
    const auto start = i;
    while (i < text.size() && text[i] != ' ' && text[i] != '\n') ++i;
    f[n++] = text.substr(start, i - start);
  }
  std::uint64_t utime = 0, stime = 0, starttime = 0, vsize = 0;
  std::int64_t rss = 0;
  if (!parse_field(f[14 - 3], utime) || !parse_field(f[15 - 3], stime) ||
      !parse_field(f[22 - 3], starttime) || !parse_field(f[23 - 3], vsize) || !parse_field(f[24 - 3], rss))
    return std::nullopt;
  process_stats p;
  const auto ticks = static_cast<double>(ticks_per_second);
  p.cpu_seconds = static_cast<double>(utime + stime) / ticks;
  p.start_time_seconds = boot_time_seconds + static_cast<double>(starttime) / ticks;
  p.virtual_memory_bytes = vsize;
  p.resident_memory_bytes =
      rss > 0 ? static_cast<std::uint64_t>(rss) * static_cast<std::uint64_t>(page_size) : 0;
  return p;
}

std::optional<double> parse_boot_time(std::string_view proc_stat) {
  for (std::size_t i = 0; i < proc_stat.size();) {
    auto end = proc_stat.find('\n', i);
    if (end == std::string_view::npos) end = proc_stat.size();
    const auto line = proc_stat.substr(i, end - i);
    if (line.starts_with("btime ")) {
      std::uint64_t seconds = 0;
      if (!parse_field(line.substr(6), seconds)) return std::nullopt;
      return static_cast<double>(seconds);
    }
    i = end + 1;
  }
  return std::nullopt;
}

std::optional<process_stats> read_process_stats() {
  const auto stat = read_proc_file("/proc/self/stat");
  const auto system_stat = read_proc_file("/proc/stat");
  if (!stat || !system_stat) return std::nullopt;
  const auto boot_time = parse_boot_time(*system_stat);
  if (!boot_time) return std::nullopt;
  auto p = parse_proc_pid_stat(*stat, ::sysconf(_SC_CLK_TCK), ::sysconf(_SC_PAGESIZE), *boot_time);
  if (!p) return std::nullopt;
  std::error_code ec;
  // Counts the descriptor the iteration itself holds open, as the Prometheus client libraries do.
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec))
    ++p->open_fds;
  if (ec) return std::nullopt;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) p->max_fds = limit.rlim_cur;
  return p;
}

struct metrics::impl {
  mutable std::mutex mutex;
  two_label_map<kind_counters> by_kind;        // endpoint, kind
  two_label_map<std::uint64_t> dead_letters;   // endpoint, reason
  one_label_map<histogram> latency;            // endpoint
  one_label_map<backlog> backlogs;             // endpoint
  one_label_map<std::string> endpoint_states;  // endpoint -> healthy | failing | open | paused
  std::uint64_t database_reconnects = 0;
  bool database_up = false;
  bool leader = false;
};

metrics::metrics() : impl_(std::make_unique<impl>()) {}
metrics::~metrics() = default;

void metrics::event_captured(std::string_view endpoint, std::string_view kind) {
  std::lock_guard lock(impl_->mutex);
  ++series(impl_->by_kind, endpoint, kind).captured;
}

void metrics::attempt(std::string_view endpoint, std::string_view kind) {
  std::lock_guard lock(impl_->mutex);
  ++series(impl_->by_kind, endpoint, kind).attempts;
}

void metrics::retry(std::string_view endpoint, std::string_view kind) {
  std::lock_guard lock(impl_->mutex);
  ++series(impl_->by_kind, endpoint, kind).retries;
}

void metrics::delivered(std::string_view endpoint, std::string_view kind, double commit_to_2xx_seconds) {
  // A clock step can make the measured latency negative; count it in the first bucket rather than lose it.
  if (!(commit_to_2xx_seconds >= 0)) commit_to_2xx_seconds = 0;
  std::size_t bucket = 0;
  while (bucket < latency_bounds.size() && commit_to_2xx_seconds > latency_bounds[bucket]) ++bucket;
  std::lock_guard lock(impl_->mutex);
  ++series(impl_->by_kind, endpoint, kind).delivered;
  auto& h = series(impl_->latency, endpoint);
  if (bucket < h.buckets.size()) ++h.buckets[bucket];  // beyond the last bound: only +Inf (= count)
  h.sum += commit_to_2xx_seconds;
  ++h.count;
}

void metrics::dead_letter(std::string_view endpoint, std::string_view reason) {
  std::lock_guard lock(impl_->mutex);
  ++series(impl_->dead_letters, endpoint, reason);
}

void metrics::set_backlog(std::string_view endpoint, std::int64_t pending, double oldest_age_seconds) {
  std::lock_guard lock(impl_->mutex);
  auto& b = series(impl_->backlogs, endpoint);
  b.pending = pending;
  b.oldest_age_seconds = oldest_age_seconds;
}

void metrics::set_endpoint_state(std::string_view endpoint, std::string_view state) {
  std::lock_guard lock(impl_->mutex);
  series(impl_->endpoint_states, endpoint) = std::string(state);
}

void metrics::database_reconnect() {
  std::lock_guard lock(impl_->mutex);
  ++impl_->database_reconnects;
}

void metrics::set_leader(bool active) {
  std::lock_guard lock(impl_->mutex);
  impl_->leader = active;
}

void metrics::set_database_up(bool connected_and_listening) {
  std::lock_guard lock(impl_->mutex);
  impl_->database_up = connected_and_listening;
}

bool metrics::database_up() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->database_up;
}

std::string metrics::render() const {
  // Read before taking the lock: the dispatcher's updates need not wait for /proc.
  const auto process = read_process_stats();
  std::string out;
  out.reserve(4096);
  std::lock_guard lock(impl_->mutex);

  struct counter_family {
    const char* name;
    const char* help;
    std::uint64_t kind_counters::*field;
  };
  static constexpr counter_family families[] = {
      {"appointment_relay_events_captured_total", "Outbox events read for an endpoint.",
       &kind_counters::captured},
      {"appointment_relay_delivery_attempts_total", "HTTP delivery attempts.", &kind_counters::attempts},
      {"appointment_relay_retries_total", "Delivery attempts scheduled again after a retryable failure.",
       &kind_counters::retries},
      {"appointment_relay_events_delivered_total", "Events acknowledged by the endpoint with a 2xx status.",
       &kind_counters::delivered},
  };
  for (const auto& f : families) {
    append_header(out, f.name, f.help, "counter");
    for (const auto& [key, c] : impl_->by_kind)
      append_sample(out, f.name, {{"endpoint", key.first}, {"kind", key.second}}, c.*(f.field));
  }

  append_header(out, "appointment_relay_dead_letters_total", "Events given up on, by reason.", "counter");
  for (const auto& [key, n] : impl_->dead_letters)
    append_sample(out, "appointment_relay_dead_letters_total",
                  {{"endpoint", key.first}, {"reason", key.second}}, n);

  append_header(out, "appointment_relay_delivery_latency_seconds",
                "Time from the database commit of a change to the 2xx response of its delivery.",
                "histogram");
  for (const auto& [endpoint, h] : impl_->latency) {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < h.buckets.size(); ++i) {
      cumulative += h.buckets[i];
      append_sample(out, "appointment_relay_delivery_latency_seconds_bucket",
                    {{"endpoint", endpoint}, {"le", latency_bound_labels[i]}}, cumulative);
    }
    append_sample(out, "appointment_relay_delivery_latency_seconds_bucket",
                  {{"endpoint", endpoint}, {"le", "+Inf"}}, h.count);
    append_sample(out, "appointment_relay_delivery_latency_seconds_sum", {{"endpoint", endpoint}}, h.sum);
    append_sample(out, "appointment_relay_delivery_latency_seconds_count", {{"endpoint", endpoint}}, h.count);
  }

  append_header(out, "appointment_relay_backlog_events", "Events pending delivery for an endpoint.", "gauge");
  for (const auto& [endpoint, b] : impl_->backlogs)
    append_sample(out, "appointment_relay_backlog_events", {{"endpoint", endpoint}}, b.pending);
  append_header(out, "appointment_relay_oldest_pending_age_seconds",
                "Age of the oldest event pending delivery for an endpoint.", "gauge");
  for (const auto& [endpoint, b] : impl_->backlogs)
    append_sample(out, "appointment_relay_oldest_pending_age_seconds", {{"endpoint", endpoint}},
                  b.oldest_age_seconds);

  append_header(
      out, "appointment_relay_endpoint_state",
      "An endpoint's state: 1 for the one it is in (healthy, failing, open: the breaker, paused), else 0.",
      "gauge");
  for (const auto& [endpoint, state] : impl_->endpoint_states)
    for (std::string_view each : {"healthy", "failing", "open", "paused"})
      append_sample(out, "appointment_relay_endpoint_state", {{"endpoint", endpoint}, {"state", each}},
                    std::int64_t{state == each ? 1 : 0});
  append_header(out, "appointment_relay_database_reconnects_total", "Reconnections to the database.",
                "counter");
  append_sample(out, "appointment_relay_database_reconnects_total", {}, impl_->database_reconnects);
  append_header(out, "appointment_relay_database_up",
                "1 when the database connection is up and listening for notifications, else 0.", "gauge");
  append_sample(out, "appointment_relay_database_up", {}, std::int64_t{impl_->database_up ? 1 : 0});
  append_header(
      out, "appointment_relay_leader",
      "1 while this instance is the active one and delivers, 0 while it stands by or is not active.",
      "gauge");
  append_sample(out, "appointment_relay_leader", {}, std::int64_t{impl_->leader ? 1 : 0});
  append_header(out, "appointment_relay_build_info", "Build information; the value is always 1.", "gauge");
  append_sample(out, "appointment_relay_build_info", {{"version", version}}, std::int64_t{1});
  if (process) append_process_metrics(out, *process);
  return out;
}

}  // namespace appointment_relay
