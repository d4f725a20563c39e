#include "appointment_relay/logging.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <gtest/gtest.h>
#include <spdlog/details/log_msg.h>
#include <spdlog/pattern_formatter.h>
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

// The fields log_fields finds, as "key=value" (quoted ones as key="value"), for a compact comparison.
std::vector<std::string> fields_of(std::string_view message) {
  std::vector<std::string> out;
  for (const auto& f : log_fields(message))
    out.push_back(std::string(f.key) + "=" + (f.quoted ? "\"" : "") + std::string(f.value) +
                  (f.quoted ? "\"" : ""));
  return out;
}

TEST(logging, should_find_the_key_value_pairs_of_the_relay_s_log_lines) {
  using v = std::vector<std::string>;
  EXPECT_EQ(
      fields_of("delivered event=7 kind=created appointment=a6d285f0-1 endpoint=crm attempt=1 status=200 "
                "latency_ms=13.4"),
      (v{"event=7", "kind=created", "appointment=a6d285f0-1", "endpoint=crm", "attempt=1", "status=200",
         "latency_ms=13.4"}));
  // A transport error as the status: several words, up to the next key.
  EXPECT_EQ(
      fields_of("retry event=8 kind=no_show appointment=k endpoint=crm attempt=2 status=connect: Connection "
                "refused latency_ms=0.4 next_in_ms=120"),
      (v{"event=8", "kind=no_show", "appointment=k", "endpoint=crm", "attempt=2",
         "status=connect: Connection refused", "latency_ms=0.4", "next_in_ms=120"}));
  // A quoted reason holding quotes and a key=value of its own.
  EXPECT_EQ(
      fields_of(R"(dead letter event=9 endpoint=crm reason="rejected: note "n1" has no appointment=x")"),
      (v{"event=9", "endpoint=crm", R"(reason="rejected: note "n1" has no appointment=x")"}));
  EXPECT_EQ(fields_of(R"(x reason="first" status=500)"), (v{R"(reason="first")", "status=500"}));
  EXPECT_EQ(fields_of(R"(x reason="said "no" twice" then prose)"), (v{R"(reason="said "no" twice")"}));
  EXPECT_EQ(fields_of(R"(x reason="never closed)"), (v{R"(reason="never closed")"}));
  // The last key of a line is one word, without the ':' that introduces the prose after it.
  EXPECT_EQ(fields_of("event=5 endpoint=crm: no answer from the HTTP client; cancelled"),
            (v{"event=5", "endpoint=crm"}));
  EXPECT_EQ(fields_of("event=5 endpoint=crm ignored: not an appointment"), (v{"event=5", "endpoint=crm"}));
  // Not keys: inside a word, upper case, a space before '=', prose alone.
  EXPECT_EQ(fields_of("url=x:a=b KEY=1 key = 2 relay started"), (v{"url=x:a=b"}));
  EXPECT_EQ(fields_of("effective configuration:\n[log]\nlevel = \"info\""), v{});
  EXPECT_EQ(fields_of(""), v{});
  // Empty values, a repeated key (the first wins), a key on the next line.
  EXPECT_EQ(fields_of("a= b=2 a=3\nc=4"), (v{"a=", "b=2", "c=4"}));
}

TEST(logging, should_give_json_lines_the_message_s_fields_next_to_msg) {
  const std::string message =
      "delivered event=7 kind=created appointment=1234 endpoint=crm attempt=1 status=200 latency_ms=13.4";
  auto j = nlohmann::json::parse(format_json(message, spdlog::level::info));
  EXPECT_EQ(j["msg"], message);
  EXPECT_EQ(j["event"], 7);
  EXPECT_EQ(j["kind"], "created");
  EXPECT_EQ(j["appointment"], "1234");  // names stay strings even when they look like numbers
  EXPECT_EQ(j["endpoint"], "crm");
  EXPECT_EQ(j["attempt"], 1);
  EXPECT_EQ(j["status"], 200);
  EXPECT_EQ(j["latency_ms"], 13.4);
  EXPECT_EQ(j.size(), 3u + 7u);

  j = nlohmann::json::parse(format_json(
      R"(dead letter event=9 endpoint=7 attempt=3 status=connect: refused reason="4xx \ "x"" ts=1 msg=no level=x)",
      spdlog::level::err));
  EXPECT_EQ(j["endpoint"], "7");
  EXPECT_EQ(j["status"], "connect: refused");
  EXPECT_EQ(j["reason"], R"(4xx \ "x")");
  EXPECT_EQ(j["level"], "error");  // the message's ts, msg and level do not replace the line's own
  EXPECT_EQ(j["msg"].get<std::string>().substr(0, 11), "dead letter");
  EXPECT_TRUE(j["ts"].is_string());

  // Only JSON's own number forms become numbers.
  j = nlohmann::json::parse(format_json("a=-1.5e3 b=0x10 c=01 d=1. e=\"42\" f=NaN g=0", spdlog::level::info));
  EXPECT_EQ(j["a"], -1500.0);
  EXPECT_EQ(j["b"], "0x10");
  EXPECT_EQ(j["c"], "01");
  EXPECT_EQ(j["d"], "1.");
  EXPECT_EQ(j["e"], "42");  // quoted: a string
  EXPECT_EQ(j["f"], "NaN");
  EXPECT_EQ(j["g"], 0);
}

TEST(logging, should_map_levels_to_sd_daemon_priorities) {
  EXPECT_EQ(journal_priority_prefix(spdlog::level::trace), "<7>");
  EXPECT_EQ(journal_priority_prefix(spdlog::level::debug), "<7>");
  EXPECT_EQ(journal_priority_prefix(spdlog::level::info), "<6>");
  EXPECT_EQ(journal_priority_prefix(spdlog::level::warn), "<4>");
  EXPECT_EQ(journal_priority_prefix(spdlog::level::err), "<3>");
  EXPECT_EQ(journal_priority_prefix(spdlog::level::critical), "<2>");
}

TEST(logging, should_prefix_every_line_of_a_message_with_its_priority) {
  journal_formatter f(std::make_unique<spdlog::pattern_formatter>("%l %v"));
  auto format = [&](std::string_view text, spdlog::level::level_enum level) {
    spdlog::details::log_msg msg(spdlog::source_loc{}, "test", level,
                                 spdlog::string_view_t(text.data(), text.size()));
    spdlog::memory_buf_t buf;
    f.format(msg, buf);
    return std::string(buf.data(), buf.size());
  };
  EXPECT_EQ(format("database gone", spdlog::level::err), "<3>error database gone\n");
  EXPECT_EQ(format("configuration:\n[log]\nlevel = 1", spdlog::level::warn),
            "<4>warning configuration:\n<4>[log]\n<4>level = 1\n");
  auto copy = f.clone();
  spdlog::details::log_msg msg(spdlog::source_loc{}, "test", spdlog::level::critical, "down");
  spdlog::memory_buf_t buf;
  copy->format(msg, buf);
  EXPECT_EQ(std::string(buf.data(), buf.size()), "<2>critical down\n");
}

// "DEVICE:INODE" of a descriptor, as systemd sets JOURNAL_STREAM.
std::string device_inode(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw std::runtime_error("fstat");
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

TEST(logging, should_recognise_the_journal_stream_by_device_and_inode) {
  char path[] = "/tmp/ar-journal-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::remove(path);
  const auto id = device_inode(fd);
  EXPECT_TRUE(is_journal_stream(fd, id.c_str()));
  EXPECT_FALSE(is_journal_stream(fd, nullptr));
  EXPECT_FALSE(is_journal_stream(fd, ""));
  EXPECT_FALSE(is_journal_stream(fd, (id + "1").c_str()));  // another inode
  EXPECT_FALSE(is_journal_stream(fd, (id + "x").c_str()));
  EXPECT_FALSE(is_journal_stream(fd, "journal"));
  ::close(fd);
  EXPECT_FALSE(is_journal_stream(fd, id.c_str()));  // closed
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

TEST(logging, should_prefix_lines_with_their_priority_only_when_stderr_is_the_journal_stream) {
  auto previous = spdlog::default_logger();
  const char* saved = std::getenv("JOURNAL_STREAM");
  const std::string saved_value = saved ? saved : "";
  auto journal = capture_stderr([] {
    ::setenv("JOURNAL_STREAM", device_inode(2).c_str(), 1);
    setup_logging("text", "debug");
    spdlog::error("database gone");
    spdlog::info("started");
    setup_logging("json", "debug");
    spdlog::warn("retry event=1");
  });
  auto elsewhere = capture_stderr([] {
    ::setenv("JOURNAL_STREAM", "1:1", 1);  // inherited by a process whose stderr is not the journal's
    setup_logging("text", "debug");
    spdlog::error("database gone");
  });
  if (saved)
    ::setenv("JOURNAL_STREAM", saved_value.c_str(), 1);
  else
    ::unsetenv("JOURNAL_STREAM");
  spdlog::set_default_logger(previous);

  std::istringstream lines(journal);
  std::vector<std::string> got;
  for (std::string line; std::getline(lines, line);) got.push_back(line);
  ASSERT_EQ(got.size(), 3u) << journal;
  EXPECT_TRUE(got[0].starts_with("<3>")) << got[0];
  EXPECT_TRUE(got[0].ends_with(" error database gone")) << got[0];
  EXPECT_TRUE(got[1].starts_with("<6>")) << got[1];
  ASSERT_TRUE(got[2].starts_with("<4>{")) << got[2];
  EXPECT_EQ(nlohmann::json::parse(got[2].substr(3))["event"], 1);
  EXPECT_NE(elsewhere.find(" error database gone\n"), std::string::npos) << elsewhere;
  EXPECT_EQ(elsewhere.find('<'), std::string::npos) << elsewhere;
}

}  // namespace
}  // namespace appointment_relay
