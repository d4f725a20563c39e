#include "appointment_relay/metrics.hpp"

#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "appointment_relay/version.hpp"

namespace appointment_relay {
namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool has_line(const std::string& text, const std::string& line) {
  for (const auto& l : lines_of(text))
    if (l == line) return true;
  return false;
}

// The value of the sample line that starts with "series " (the name with its labels), or "" when absent.
std::string value_of(const std::string& text, const std::string& series) {
  for (const auto& l : lines_of(text))
    if (l.rfind(series + " ", 0) == 0) return l.substr(series.size() + 1);
  return "";
}

TEST(metrics, should_render_counters_per_endpoint_and_kind) {
  metrics m;
  m.event_captured("crm", "appointment.created");
  m.event_captured("crm", "appointment.created");
  m.event_captured("crm", "appointment.cancelled");
  m.event_captured("erp", "appointment.created");
  m.attempt("crm", "appointment.created");
  m.attempt("crm", "appointment.created");
  m.attempt("crm", "appointment.created");
  m.retry("crm", "appointment.created");
  m.delivered("crm", "appointment.created", 0.2);
  m.dead_letter("crm", "http_4xx");
  m.dead_letter("crm", "http_4xx");
  m.dead_letter("erp", "attempts_exhausted");

  const std::string text = m.render();
  const struct {
    std::string line;
  } expected[] = {
      {R"(appointment_relay_events_captured_total{endpoint="crm",kind="appointment.created"} 2)"},
      {R"(appointment_relay_events_captured_total{endpoint="crm",kind="appointment.cancelled"} 1)"},
      {R"(appointment_relay_events_captured_total{endpoint="erp",kind="appointment.created"} 1)"},
      {R"(appointment_relay_delivery_attempts_total{endpoint="crm",kind="appointment.created"} 3)"},
      {R"(appointment_relay_delivery_attempts_total{endpoint="erp",kind="appointment.created"} 0)"},
      {R"(appointment_relay_retries_total{endpoint="crm",kind="appointment.created"} 1)"},
      {R"(appointment_relay_events_delivered_total{endpoint="crm",kind="appointment.created"} 1)"},
      {R"(appointment_relay_events_delivered_total{endpoint="crm",kind="appointment.cancelled"} 0)"},
      {R"(appointment_relay_dead_letters_total{endpoint="crm",reason="http_4xx"} 2)"},
      {R"(appointment_relay_dead_letters_total{endpoint="erp",reason="attempts_exhausted"} 1)"},
      {"# HELP appointment_relay_events_captured_total Outbox events read for an endpoint."},
      {"# TYPE appointment_relay_events_captured_total counter"},
      {"# TYPE appointment_relay_delivery_attempts_total counter"},
      {"# TYPE appointment_relay_retries_total counter"},
      {"# TYPE appointment_relay_events_delivered_total counter"},
      {"# TYPE appointment_relay_dead_letters_total counter"},
      {"# TYPE appointment_relay_delivery_latency_seconds histogram"},
      {"# TYPE appointment_relay_backlog_events gauge"},
      {"# TYPE appointment_relay_oldest_pending_age_seconds gauge"},
      {"# TYPE appointment_relay_database_reconnects_total counter"},
      {"# TYPE appointment_relay_database_up gauge"},
      {"# TYPE appointment_relay_build_info gauge"},
  };
  for (const auto& e : expected) EXPECT_TRUE(has_line(text, e.line)) << "missing: " << e.line << "\n" << text;
}

TEST(metrics, should_render_a_cumulative_latency_histogram_with_sum_and_count) {
  metrics m;
  m.delivered("crm", "k", 0.0004);  // <= 0.0005
  m.delivered("crm", "k", 0.001);   // exactly on a bound: counted in it
  m.delivered("crm", "k", 0.3);     // <= 0.5
  m.delivered("crm", "k", 400);     // above every bound: only +Inf
  const std::string text = m.render();

  const struct {
    const char* le;
    const char* cumulative;
  } buckets[] = {{"0.0005", "1"}, {"0.001", "2"}, {"0.0025", "2"}, {"0.25", "2"}, {"0.5", "3"},
                 {"1", "3"},      {"60", "3"},    {"300", "3"},    {"+Inf", "4"}};
  for (const auto& b : buckets)
    EXPECT_EQ(value_of(text, std::string(
                                 R"(appointment_relay_delivery_latency_seconds_bucket{endpoint="crm",le=")") +
                                 b.le + "\"}"),
              b.cumulative)
        << "le=" << b.le << "\n"
        << text;
  EXPECT_EQ(std::stod(value_of(text, R"(appointment_relay_delivery_latency_seconds_sum{endpoint="crm"})")),
            0.0004 + 0.001 + 0.3 + 400);
  EXPECT_EQ(value_of(text, R"(appointment_relay_delivery_latency_seconds_count{endpoint="crm"})"), "4");

  // 17 bounds + Inf, each once for the one endpoint.
  int bucket_lines = 0;
  for (const auto& l : lines_of(text))
    if (l.rfind("appointment_relay_delivery_latency_seconds_bucket{", 0) == 0) ++bucket_lines;
  EXPECT_EQ(bucket_lines, 18);
}

TEST(metrics, should_render_gauges_database_state_and_build_info) {
  metrics m;
  EXPECT_FALSE(m.database_up());
  EXPECT_TRUE(has_line(m.render(), "appointment_relay_database_up 0"));
  m.set_backlog("crm", 12, 3.5);
  m.set_backlog("crm", 7, 1.25);  // a gauge: the last value wins
  m.database_reconnect();
  m.database_reconnect();
  m.set_database_up(true);
  EXPECT_TRUE(m.database_up());

  const std::string text = m.render();
  EXPECT_TRUE(has_line(text, R"(appointment_relay_backlog_events{endpoint="crm"} 7)")) << text;
  EXPECT_TRUE(has_line(text, R"(appointment_relay_oldest_pending_age_seconds{endpoint="crm"} 1.25)")) << text;
  EXPECT_TRUE(has_line(text, "appointment_relay_database_reconnects_total 2")) << text;
  EXPECT_TRUE(has_line(text, "appointment_relay_database_up 1")) << text;
  EXPECT_TRUE(has_line(text, std::string(R"(appointment_relay_build_info{version=")") + version + "\"} 1"))
      << text;
}

TEST(metrics, should_escape_backslash_quote_and_newline_in_label_values) {
  metrics m;
  m.dead_letter("a\\b\"c\nd", "r");
  const std::string text = m.render();
  EXPECT_TRUE(has_line(text, R"(appointment_relay_dead_letters_total{endpoint="a\\b\"c\nd",reason="r"} 1)"))
      << text;
}

TEST(metrics, should_end_every_line_with_a_newline_and_only_use_comment_or_sample_lines) {
  metrics m;
  m.delivered("crm", "k", 0.01);
  const std::string text = m.render();
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  for (const auto& l : lines_of(text)) {
    ASSERT_FALSE(l.empty());
    if (l[0] == '#') {
      EXPECT_TRUE(l.rfind("# HELP appointment_relay_", 0) == 0 ||
                  l.rfind("# TYPE appointment_relay_", 0) == 0 || l.rfind("# HELP process_", 0) == 0 ||
                  l.rfind("# TYPE process_", 0) == 0)
          << l;
    } else {
      EXPECT_TRUE(l.rfind("appointment_relay_", 0) == 0 || l.rfind("process_", 0) == 0) << l;
      EXPECT_NE(l.find(' '), std::string::npos) << l;
    }
  }
}

TEST(metrics, should_count_exactly_under_concurrent_updates) {
  metrics m;
  constexpr int per_thread = 10000;
  auto work = [&] {
    for (int i = 0; i < per_thread; ++i) {
      m.attempt("crm", "appointment.created");
      m.delivered("crm", "appointment.created", 0.002);
    }
  };
  std::thread a(work), b(work);
  std::string during;
  for (int i = 0; i < 10; ++i) during = m.render();  // reads concurrently with the writers
  a.join();
  b.join();
  const std::string text = m.render();
  EXPECT_EQ(
      value_of(text,
               R"(appointment_relay_delivery_attempts_total{endpoint="crm",kind="appointment.created"})"),
      "20000");
  EXPECT_EQ(
      value_of(text,
               R"(appointment_relay_events_delivered_total{endpoint="crm",kind="appointment.created"})"),
      "20000");
  EXPECT_EQ(value_of(text, R"(appointment_relay_delivery_latency_seconds_count{endpoint="crm"})"), "20000");
  EXPECT_FALSE(during.empty());
}

TEST(metrics, should_render_the_leader_gauge_as_the_relay_last_set_it) {
  metrics m;
  EXPECT_TRUE(has_line(m.render(), "# TYPE appointment_relay_leader gauge"));
  EXPECT_TRUE(has_line(m.render(), "appointment_relay_leader 0"));  // not active until told so
  m.set_leader(true);
  EXPECT_TRUE(has_line(m.render(), "appointment_relay_leader 1"));
  m.set_leader(false);
  EXPECT_TRUE(has_line(m.render(), "appointment_relay_leader 0"));
}

TEST(metrics, should_read_the_process_figures_from_proc_pid_stat_counting_fields_after_the_last_paren) {
  // A name with spaces and parentheses, as a process may give itself (prctl PR_SET_NAME).
  const std::string stat =
      "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 3 0 5000 123456789 2048 "
      "18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0\n";
  auto p = parse_proc_pid_stat(stat, 100, 4096, 1700000000);
  ASSERT_TRUE(p);
  EXPECT_DOUBLE_EQ(p->cpu_seconds, 3.8);                // (250 + 130) ticks / 100
  EXPECT_DOUBLE_EQ(p->start_time_seconds, 1700000050);  // boot + 5000 ticks / 100
  EXPECT_EQ(p->virtual_memory_bytes, 123456789u);       // bytes already
  EXPECT_EQ(p->resident_memory_bytes, 2048u * 4096u);   // pages
  EXPECT_EQ(p->open_fds, 0u);
}

TEST(metrics, should_refuse_a_proc_pid_stat_text_it_cannot_read) {
  EXPECT_FALSE(parse_proc_pid_stat("", 100, 4096, 0));
  EXPECT_FALSE(parse_proc_pid_stat("1234 no paren S 1 2 3", 100, 4096, 0));
  EXPECT_FALSE(
      parse_proc_pid_stat("1234 (short) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 130", 100, 4096, 0));
  // utime not a number
  EXPECT_FALSE(parse_proc_pid_stat(
      "1 (x) S 1 1 1 0 -1 0 0 0 0 0 2x5 130 0 0 20 0 3 0 5000 123456789 2048 0\n", 100, 4096, 0));
  const std::string good = "1 (x) S 1 1 1 0 -1 0 0 0 0 0 250 130 0 0 20 0 3 0 5000 123456789 2048 0\n";
  EXPECT_TRUE(parse_proc_pid_stat(good, 100, 4096, 0));
  EXPECT_FALSE(parse_proc_pid_stat(good, 0, 4096, 0));
}

TEST(metrics, should_find_the_boot_time_in_proc_stat) {
  EXPECT_EQ(parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1733000000\nprocesses 9\n"), 1733000000.0);
  EXPECT_FALSE(parse_boot_time("cpu  1 2 3\nprocesses 9\n"));
  EXPECT_FALSE(parse_boot_time("btime soon\n"));
}

TEST(metrics, should_read_plausible_figures_of_this_process) {
  auto before = read_process_stats();
  ASSERT_TRUE(before);
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_GT(before->resident_memory_bytes, 1u << 20);
  EXPECT_GE(before->virtual_memory_bytes, before->resident_memory_bytes);
  EXPECT_GT(before->start_time_seconds, now - 3600);  // this test binary started within the hour
  EXPECT_LE(before->start_time_seconds, now + 1);
  EXPECT_GE(before->cpu_seconds, 0.0);
  EXPECT_GE(before->open_fds, 3u);  // stdin, stdout, stderr
  EXPECT_GE(before->max_fds, before->open_fds);

  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  auto after = read_process_stats();
  ::close(fds[0]);
  ::close(fds[1]);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->open_fds, before->open_fds + 2);
}

TEST(metrics, should_render_the_process_families_with_this_process_figures) {
  metrics m;
  const std::string text = m.render();
  for (const auto& [name, type] : std::vector<std::pair<std::string, std::string>>{
           {"process_cpu_seconds_total", "counter"},
           {"process_open_fds", "gauge"},
           {"process_max_fds", "gauge"},
           {"process_virtual_memory_bytes", "gauge"},
           {"process_resident_memory_bytes", "gauge"},
           {"process_start_time_seconds", "gauge"},
       }) {
    EXPECT_TRUE(has_line(text, "# TYPE " + name + " " + type)) << name << "\n" << text;
    EXPECT_NE(value_of(text, name), "") << name << "\n" << text;
  }
  EXPECT_GT(std::stod(value_of(text, "process_resident_memory_bytes")), 1 << 20) << text;
}

}  // namespace
}  // namespace appointment_relay
