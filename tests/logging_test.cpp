#include "appointment_relay/logging.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <gtest/gtest.h>
#include <spdlog/details/log_msg.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

namespace appointment_relay {
namespace {

std::string format_json(std::string_view message, spdlog::level::level_enum level,
                        std::chrono::system_clock::time_point t = std::chrono::system_clock::now()) {
  spdlog::details::log_msg msg(t, spdlog::source_loc{}, "test", level,
                               spdlog::string_view_t(message.data(), message.size()));
  json_formatter f;
  spdlog::memory_buf_t buf;
  f.format(msg, buf);
  return std::string(buf.data(), buf.size());
}

TEST(logging, should_format_one_json_object_per_line) {
  auto t = std::chrono::system_clock::time_point(std::chrono::milliseconds(1714564800123));
  auto line = format_json("relay started", spdlog::level::info, t);
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["ts"], "2024-05-01T12:00:00.123Z");
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["msg"], "relay started");
  EXPECT_EQ(j.size(), 3u);
}

TEST(logging, should_escape_every_message_into_valid_json) {
  using namespace std::string_literals;
  struct row {
    std::string in;
    std::string decoded;  // what a JSON reader gets back
  };
  for (const auto& r : std::vector<row>{
           {"quote \" backslash \\ slash /", "quote \" backslash \\ slash /"},
           {"two\nlines\r\n\ttab", "two\nlines\r\n\ttab"},
           {"nul \0 bell \x07 esc \x1b del \x7f"s, "nul \0 bell \x07 esc \x1b del \x7f"s},
           {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"},
           {"bad \xff byte", "bad \xef\xbf\xbd byte"},                  // invalid byte -> U+FFFD
           {"cut \xe2\x82", "cut \xef\xbf\xbd\xef\xbf\xbd"},            // truncated sequence
           {"overlong \xc0\xaf", "overlong \xef\xbf\xbd\xef\xbf\xbd"},  // overlong '/'
           {"surrogate \xed\xa0\x80", "surrogate \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
           {"{\"json\":\"inside\"}", "{\"json\":\"inside\"}"},
       }) {
    auto line = format_json(r.in, spdlog::level::warn);
    EXPECT_EQ(line.find('\n'), line.size() - 1) << line;
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(line)) << line;
    EXPECT_EQ(j["msg"].get<std::string>(), r.decoded) << line;
    EXPECT_EQ(j["level"], "warning");
  }
}

TEST(logging, should_clone_the_json_formatter) {
  json_formatter f;
  auto copy = f.clone();
  ASSERT_NE(dynamic_cast<json_formatter*>(copy.get()), nullptr);
}

TEST(logging, should_parse_exactly_the_documented_levels) {
  EXPECT_EQ(parse_log_level("trace"), spdlog::level::trace);
  EXPECT_EQ(parse_log_level("debug"), spdlog::level::debug);
  EXPECT_EQ(parse_log_level("info"), spdlog::level::info);
  EXPECT_EQ(parse_log_level("warn"), spdlog::level::warn);
  EXPECT_EQ(parse_log_level("error"), spdlog::level::err);
  EXPECT_EQ(parse_log_level("critical"), spdlog::level::critical);
  EXPECT_EQ(parse_log_level("off"), spdlog::level::off);
  EXPECT_FALSE(parse_log_level("INFO"));
  EXPECT_FALSE(parse_log_level("verbose"));
  EXPECT_FALSE(parse_log_level(""));
}

TEST(logging, should_refuse_an_unknown_format_or_level) {
  EXPECT_THROW(setup_logging("xml", "info"), std::invalid_argument);
  EXPECT_THROW(setup_logging("text", "loud"), std::invalid_argument);
  EXPECT_THROW(set_log_level("loud"), std::invalid_argument);
}

// Runs body with stderr redirected to a temporary file; returns what was written.
template <typename F>
std::string capture_stderr(F body) {
  std::fflush(stderr);
  char path[] = "/tmp/ar-logging-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) throw std::runtime_error("mkstemp");
  int saved = dup(2);
  dup2(fd, 2);
  body();
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(fd);
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::remove(path);
  return ss.str();
}

TEST(logging, should_write_json_lines_to_stderr_at_the_configured_level) {
  auto previous = spdlog::default_logger();
  auto out = capture_stderr([] {
    setup_logging("json", "info");
    spdlog::debug("hidden");
    spdlog::info("shown {}", 1);
    set_log_level("debug");
    spdlog::debug("now \"visible\"");
    set_log_level("error");
    spdlog::warn("hidden again");
  });
  spdlog::set_default_logger(previous);
  std::istringstream lines(out);
  std::vector<nlohmann::json> parsed;
  for (std::string line; std::getline(lines, line);) parsed.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(parsed.size(), 2u) << out;
  EXPECT_EQ(parsed[0]["msg"], "shown 1");
  EXPECT_EQ(parsed[0]["level"], "info");
  EXPECT_EQ(parsed[1]["msg"], "now \"visible\"");
  EXPECT_EQ(parsed[1]["level"], "debug");
}

TEST(logging, should_write_text_lines_with_an_iso_timestamp) {
  auto previous = spdlog::default_logger();
  auto out = capture_stderr([] {
    setup_logging("text", "info");
    spdlog::warn("disk almost full");
  });
  spdlog::set_default_logger(previous);
  // 2024-05-01T12:00:00.123+00:00 warning disk almost full
  ASSERT_GE(out.size(), 30u) << out;
  EXPECT_EQ(out[4], '-');
  EXPECT_EQ(out[10], 'T');
  EXPECT_EQ(out[19], '.');
  EXPECT_NE(out.find(" warning disk almost full\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace appointment_relay
