#pragma once
// Logging: spdlog's default logger writes to stderr (journald adds its own timestamps but keeps ours),
// as text or as one JSON object per line. Thread-safe: any thread may log and call set_log_level.
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <spdlog/common.h>
#include <spdlog/formatter.h>

#include "appointment_relay/json_escape.hpp"

namespace appointment_relay {

// "trace", "debug", "info", "warn", "error", "critical", "off"; empty for anything else.
std::optional<spdlog::level::level_enum> parse_log_level(std::string_view level) noexcept;

// Replaces spdlog's default logger with a stderr logger (stderr_sink_mt) of this format ("text": pattern
// "%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v"; "json": json_formatter) and level. Throws std::invalid_argument for
// an unknown format or level. Call at start-up, before other threads log.
void setup_logging(std::string_view format, std::string_view level);

// Changes the default logger's level (SIGHUP reload). Throws std::invalid_argument for an unknown level.
void set_log_level(std::string_view level);

// One JSON object per line: {"ts":"2024-05-01T12:00:00.123Z","level":"info","msg":"..."}; ts in UTC
// with milliseconds, level as spdlog names it (warn is "warning"), msg escaped (control characters as
// \u00XX, invalid UTF-8 as U+FFFD) so that every line is valid JSON whatever was logged.
class json_formatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

// s as the inside of a JSON string (without the quotes), appended to out.

}  // namespace appointment_relay
