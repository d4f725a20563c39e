#include "appointment_relay/logging.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <stdexcept>

#include <spdlog/details/log_msg.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace appointment_relay {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool is_key_start(char c) {
  return (c >= 'a' && c <= 'z') || c == '_';
}
bool is_key_char(char c) {
  return is_key_start(c) || (c >= '0' && c <= '9');
}

// The length of the key of a `key=` token starting at p (at the start or after whitespace), else 0.
std::size_t key_at(std::string_view s, std::size_t p) {
  if (p >= s.size() || !is_key_start(s[p]) || (p > 0 && !is_space(s[p - 1]))) return 0;
  std::size_t e = p + 1;
  while (e < s.size() && is_key_char(s[e])) ++e;
  return e < s.size() && s[e] == '=' ? e - p : 0;
}

// Whether a key= token follows the whitespace at p.
bool key_follows(std::string_view s, std::size_t p) {
  return p < s.size() && is_space(s[p]) && key_at(s, p + 1);
}

// A JSON number as RFC 8259 writes it: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
bool is_json_number(std::string_view v) {
  std::size_t i = 0;
  auto digits = [&] {
    const auto from = i;
    while (i < v.size() && v[i] >= '0' && v[i] <= '9') ++i;
    return i > from;
  };
  if (i < v.size() && v[i] == '-') ++i;
  if (i < v.size() && v[i] == '0')
    ++i;
  else if (!digits())
    return false;
  if (i < v.size() && v[i] == '.' && (++i, !digits())) return false;
  if (i < v.size() && (v[i] == 'e' || v[i] == 'E')) {
    ++i;
    if (i < v.size() && (v[i] == '+' || v[i] == '-')) ++i;
    if (!digits()) return false;
  }
  return i == v.size();
}

// Keys whose values name things: a string even when it looks like a number (an appointment key "1234"), so
// that a log pipeline sees one type per field.
bool always_string(std::string_view key) {
  static constexpr std::array<std::string_view, 6> keys{"appointment", "endpoint", "kind",
                                                        "reason",      "body",     "installation"};
  for (auto k : keys)
    if (k == key) return true;
  return false;
}

bool reserved(std::string_view key) {
  return key == "ts" || key == "level" || key == "msg";
}

}  // namespace

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view level) noexcept {
  static constexpr std::array<std::pair<std::string_view, spdlog::level::level_enum>, 7> levels{{
      {"trace", spdlog::level::trace},
      {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},
      {"warn", spdlog::level::warn},
      {"error", spdlog::level::err},
      {"critical", spdlog::level::critical},
      {"off", spdlog::level::off},
  }};
  for (const auto& [name, l] : levels)
    if (name == level) return l;
  return std::nullopt;
}

bool is_journal_stream(int fd, const char* journal_stream) noexcept {
  if (journal_stream == nullptr) return false;
  unsigned long long device = 0, inode = 0;
  char rest = 0;
  if (std::sscanf(journal_stream, "%llu:%llu%c", &device, &inode, &rest) != 2) return false;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == device &&
         static_cast<unsigned long long>(st.st_ino) == inode;
}

std::string_view journal_priority_prefix(spdlog::level::level_enum level) noexcept {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return "<7>";
    case spdlog::level::info:
      return "<6>";
    case spdlog::level::warn:
      return "<4>";
    case spdlog::level::err:
      return "<3>";
    case spdlog::level::critical:
      return "<2>";
    default:
      return "<6>";
  }
}

journal_formatter::journal_formatter(std::unique_ptr<spdlog::formatter> inner) : inner_(std::move(inner)) {}

void journal_formatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  spdlog::memory_buf_t line;
  inner_->format(msg, line);
  const auto prefix = journal_priority_prefix(msg.level);
  const std::string_view text(line.data(), line.size());
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    end = end == std::string_view::npos ? text.size() : end + 1;
    dest.append(prefix.data(), prefix.data() + prefix.size());
    dest.append(text.data() + start, text.data() + end);
    start = end;
  }
}

std::unique_ptr<spdlog::formatter> journal_formatter::clone() const {
  return std::make_unique<journal_formatter>(inner_->clone());
}

std::vector<log_field> log_fields(std::string_view s) {
  std::vector<log_field> fields;
  auto seen = [&](std::string_view key) {
    for (const auto& f : fields)
      if (f.key == key) return true;
    return false;
  };
  std::size_t i = 0;
  while (i < s.size()) {
    const auto key_length = key_at(s, i);
    if (key_length == 0) {
      ++i;
      continue;
    }
    log_field f;
    f.key = s.substr(i, key_length);
    const auto v = i + key_length + 1;
    if (v < s.size() && s[v] == '"') {
      f.quoted = true;
      auto close = std::string_view::npos;
      for (auto j = v + 1; j < s.size(); ++j)
        if (s[j] == '"' && (j + 1 == s.size() || key_follows(s, j + 1))) {
          close = j;
          break;
        }
      if (close == std::string_view::npos) {
        close = s.rfind('"');
        if (close == v) close = s.size();  // no closing quote: the rest of the message
      }
      f.value = s.substr(v + 1, close - v - 1);
      i = close + 1;
    } else {
      auto next = std::string_view::npos;
      for (auto j = v; j < s.size() && s[j] != '\n'; ++j)
        if (key_follows(s, j)) {
          next = j;
          break;
        }
      if (next != std::string_view::npos) {
        f.value = s.substr(v, next - v);
        i = next;
      } else {
        auto end = v;
        while (end < s.size() && !is_space(s[end])) ++end;
        f.value = s.substr(v, end - v);
        if (f.value.ends_with(':')) f.value.remove_suffix(1);
        i = end;
      }
    }
    if (!seen(f.key)) fields.push_back(f);
  }
  return fields;
}

void json_formatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  using namespace std::chrono;
  auto since_epoch = msg.time.time_since_epoch();
  auto secs = duration_cast<seconds>(since_epoch);
  auto millis = duration_cast<milliseconds>(since_epoch - secs).count();
  std::time_t tt = static_cast<std::time_t>(secs.count());
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char ts[96];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(millis));
  const std::string_view message(msg.payload.data(), msg.payload.size());
  std::string line;
  line.reserve(64 + 2 * message.size());
  line += "{\"ts\":\"";
  line += ts;
  line += "\",\"level\":\"";
  auto level = spdlog::level::to_string_view(msg.level);
  line.append(level.data(), level.size());
  line += "\",\"msg\":\"";
  append_json_escaped(message, line);
  line += '"';
  for (const auto& f : log_fields(message)) {
    if (reserved(f.key)) continue;
    line += ",\"";
    line += f.key;  // [a-z_][a-z0-9_]*: nothing to escape
    line += "\":";
    if (!f.quoted && !always_string(f.key) && is_json_number(f.value)) {
      line += f.value;
    } else {
      line += '"';
      append_json_escaped(f.value, line);
      line += '"';
    }
  }
  line += "}\n";
  dest.append(line.data(), line.data() + line.size());
}

std::unique_ptr<spdlog::formatter> json_formatter::clone() const {
  return std::make_unique<json_formatter>();
}

void setup_logging(std::string_view format, std::string_view level) {
  auto l = parse_log_level(level);
  if (!l) throw std::invalid_argument("unknown log level '" + std::string(level) + "'");
  std::unique_ptr<spdlog::formatter> formatter;
  if (format == "text")
    formatter = std::make_unique<spdlog::pattern_formatter>("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  else if (format == "json")
    formatter = std::make_unique<json_formatter>();
  else
    throw std::invalid_argument("unknown log format '" + std::string(format) + "' (text or json)");
  if (is_journal_stream(STDERR_FILENO, std::getenv("JOURNAL_STREAM")))
    formatter = std::make_unique<journal_formatter>(std::move(formatter));
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  sink->set_formatter(std::move(formatter));
  auto logger = std::make_shared<spdlog::logger>("appointment-relay", std::move(sink));
  logger->set_level(*l);
  // stderr is written through at once (the sink flushes every line), so a crash loses nothing.
  spdlog::set_default_logger(std::move(logger));
}

void set_log_level(std::string_view level) {
  auto l = parse_log_level(level);
  if (!l) throw std::invalid_argument("unknown log level '" + std::string(level) + "'");
  spdlog::default_logger()->set_level(*l);
}

}  // namespace appointment_relay
