#include "appointment_relay/logging.hpp"

#include <array>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <stdexcept>

#include <spdlog/details/log_msg.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace appointment_relay {
namespace {

// The length of the valid UTF-8 sequence at s[i], or 0 when it is not one (overlongs, surrogates and
// code points above U+10FFFF are invalid too).

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
  std::string line;
  line.reserve(64 + msg.payload.size());
  line += "{\"ts\":\"";
  line += ts;
  line += "\",\"level\":\"";
  auto level = spdlog::level::to_string_view(msg.level);
  line.append(level.data(), level.size());
  line += "\",\"msg\":\"";
  append_json_escaped(std::string_view(msg.payload.data(), msg.payload.size()), line);
  line += "\"}\n";
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
