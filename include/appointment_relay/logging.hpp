#pragma once
// Logging: spdlog's default logger writes to stderr (journald adds its own timestamps but keeps ours),
// as text or as one JSON object per line. Thread-safe: any thread may log and call set_log_level.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/common.h>
#include <spdlog/formatter.h>

#include "appointment_relay/json_escape.hpp"

namespace appointment_relay {

// "trace", "debug", "info", "warn", "error", "critical", "off"; empty for anything else.
std::optional<spdlog::level::level_enum> parse_log_level(std::string_view level) noexcept;

// Replaces spdlog's default logger with a stderr logger (stderr_sink_mt) of this format ("text": pattern
// "%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v"; "json": json_formatter) and level. When stderr is the journal's stream
// (is_journal_stream with $JOURNAL_STREAM), each line starts with its priority prefix (journal_formatter).
// Throws std::invalid_argument for an unknown format or level. Call at start-up, before other threads log.
void setup_logging(std::string_view format, std::string_view level);

// Changes the default logger's level (SIGHUP reload). Throws std::invalid_argument for an unknown level.
void set_log_level(std::string_view level);

// True when fd is the stream systemd connected to journald: journal_stream (the value of $JOURNAL_STREAM,
// "DEVICE:INODE", may be null) names fd's device and inode. Comparing them, not only testing that the
// variable is set, keeps the prefixes out of a file or pipe that a child of a service was redirected to.
bool is_journal_stream(int fd, const char* journal_stream) noexcept;

// The sd-daemon priority prefix of a level: "<7>" trace and debug, "<6>" info, "<4>" warn, "<3>" error,
// "<2>" critical (sd-daemon.h's SD_DEBUG ... SD_CRIT). journald strips it and files the line at that
// priority, so `journalctl -p err` finds the errors.
std::string_view journal_priority_prefix(spdlog::level::level_enum level) noexcept;

// Wraps another formatter and starts each line of its output with journal_priority_prefix: a multi-line
// message (the configuration printed at start-up) keeps its priority on every line, since journald makes
// each line an entry of its own.
class journal_formatter final : public spdlog::formatter {
 public:
  explicit journal_formatter(std::unique_ptr<spdlog::formatter> inner);
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;

 private:
  std::unique_ptr<spdlog::formatter> inner_;
};

// A key=value pair of a log message: `key=value` or `key="quoted value"`, where key is [a-z_][a-z0-9_]* at
// the start of the message or after whitespace. Views into the message.
struct log_field {
  std::string_view key;
  std::string_view value;  // without the quotes
  bool quoted = false;
};

// The key=value pairs of a message, in order (a key seen twice: the first), so that the JSON log can carry
// them as fields: "delivered event=7 kind=created ... status=200 latency_ms=13.4". The messages are written
// for people, so the rules follow how this program writes them:
// - a quoted value ends at the first quote followed by the end or by whitespace and the next key=, else at
//   the last quote (a reason may itself contain quotes);
// - an unquoted value runs up to the next key= on the same line ("status=connect: Connection refused
//   latency_ms=..."), or, when no key follows, is one word without a trailing ':' ("endpoint=crm: no
//   answer").
// Pure.
std::vector<log_field> log_fields(std::string_view message);

// One JSON object per line: {"ts":"2024-05-01T12:00:00.123Z","level":"info","msg":"...", fields...}; ts in
// UTC with milliseconds, level as spdlog names it (warn is "warning"), msg the whole message; then each
// log_fields pair (but ts, level and msg), as a JSON number when unquoted and a JSON number in form, except
// for the keys that name things (appointment, endpoint, kind, reason, body, installation), which are always
// strings so that a field keeps one type. Strings are escaped (control characters as \u00XX, invalid UTF-8
// as U+FFFD) so that every line is valid JSON whatever was logged.
class json_formatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

}  // namespace appointment_relay
