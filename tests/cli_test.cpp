#include "appointment_relay/cli.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "appointment_relay/config.hpp"

namespace appointment_relay::cli {
namespace {

std::variant<invocation, usage_error> parse(std::vector<std::string_view> args) {
  return parse_command_line(args);
}

invocation ok(std::vector<std::string_view> args) {
  auto r = parse(args);
  if (auto* e = std::get_if<usage_error>(&r)) ADD_FAILURE() << "usage error: " << e->message;
  return std::holds_alternative<invocation>(r) ? std::get<invocation>(r) : invocation{};
}

usage_error bad(std::vector<std::string_view> args) {
  auto r = parse(args);
  if (std::holds_alternative<invocation>(r)) {
    ADD_FAILURE() << "accepted";
    return usage_error{""};
  }
  return std::get<usage_error>(r);
}

TEST(cli, should_recognise_every_command) {
  struct row {
    std::string_view arg;
    command expected;
  };
  for (const auto& r : std::vector<row>{{"run", command::run},
                                        {"migrate", command::migrate},
                                        {"check-config", command::check_config},
                                        {"status", command::status},
                                        {"version", command::version}}) {
    auto inv = ok({r.arg});
    EXPECT_EQ(inv.cmd, r.expected) << r.arg;
    EXPECT_FALSE(inv.help) << r.arg;
    EXPECT_FALSE(inv.config_path) << r.arg;
    EXPECT_EQ(to_string(inv.cmd), r.arg);
  }
  EXPECT_EQ(ok({"replay", "--all"}).cmd, command::replay);
}

TEST(cli, should_take_the_config_file_before_or_after_the_command) {
  for (const auto& args : std::vector<std::vector<std::string_view>>{{"--config", "/etc/r.toml", "run"},
                                                                     {"run", "--config", "/etc/r.toml"},
                                                                     {"run", "-c", "/etc/r.toml"},
                                                                     {"-c", "/etc/r.toml", "run"},
                                                                     {"run", "--config=/etc/r.toml"}}) {
    auto inv = ok(args);
    EXPECT_EQ(inv.cmd, command::run);
    EXPECT_EQ(inv.config_path, "/etc/r.toml");
  }
  EXPECT_EQ(ok({"migrate", "-c", "a.toml"}).config_path, "a.toml");
  EXPECT_EQ(ok({"check-config", "-c", "a.toml"}).config_path, "a.toml");
  EXPECT_EQ(ok({"status", "-c", "a.toml"}).config_path, "a.toml");
}

TEST(cli, should_give_help_for_each_command_and_the_overview) {
  for (auto name : {"run", "migrate", "check-config", "status", "replay", "version"}) {
    for (auto flag : {"--help", "-h"}) {
      auto inv = ok({name, flag});
      EXPECT_TRUE(inv.help) << name;
      EXPECT_EQ(to_string(inv.cmd), name);
    }
    auto via_help = ok({"help", name});
    EXPECT_TRUE(via_help.help);
    EXPECT_EQ(to_string(via_help.cmd), name);
  }
  for (const auto& args : std::vector<std::vector<std::string_view>>{{"--help"}, {"-h"}, {"help"}}) {
    auto inv = ok(args);
    EXPECT_TRUE(inv.help);
    EXPECT_EQ(inv.cmd, command::help);
  }
  // Help wins over what is still missing: `replay --help` needs no filter.
  EXPECT_TRUE(ok({"replay", "--help"}).help);
}

TEST(cli, should_document_usage_options_exit_codes_and_an_example_in_each_help) {
  for (auto c : {command::run, command::migrate, command::check_config, command::status, command::replay,
                 command::help}) {
    auto text = help_text(c);
    EXPECT_NE(text.find("Usage: appointment-relay"), std::string::npos) << to_string(c);
    EXPECT_NE(text.find("--config"), std::string::npos) << to_string(c);
    EXPECT_NE(text.find("78"), std::string::npos) << to_string(c);
    EXPECT_NE(text.find("Example"), std::string::npos) << to_string(c);
    EXPECT_NE(text.find("APPOINTMENT_RELAY_DATABASE_URL"), std::string::npos) << to_string(c);
    EXPECT_EQ(text.back(), '\n');
  }
  EXPECT_NE(help_text(command::replay).find("--event-id"), std::string::npos);
  EXPECT_NE(help_text(command::status).find("--json"), std::string::npos);
  for (auto name : {"run", "migrate", "check-config", "status", "replay", "version"})
    EXPECT_NE(help_text(command::help).find(name), std::string::npos) << name;
}

// Holds what a text says about SIGHUP to the configuration's key table: "SIGHUP ... applies <the
// reloadable keys, or their tables> ... Other changes (<the restart-only keys>) need a restart".
void expect_the_reload_rules_of_the_key_table(std::string text) {
  for (auto& c : text)
    if (c == '\n') c = ' ';
  auto sighup = text.find("SIGHUP");
  auto other = text.find("Other changes", sighup);
  auto restart = text.find("need a restart", other);
  ASSERT_NE(restart, std::string::npos) << text;
  const std::string applied = text.substr(sighup, other - sighup);
  const std::string needs_restart = text.substr(other, restart - other);
  auto names = [](const std::string& part, const std::string& what) {
    return part.find(what) != std::string::npos;
  };
  const auto keys = config_keys();
  for (const auto& k : keys) {
    const std::string key = k.section + "." + k.name;
    const std::string table = k.section == "endpoints" ? "[endpoints.NAME]" : "[" + k.section + "]";
    if (k.reloadable) {
      EXPECT_TRUE(names(applied, key) || names(applied, table)) << key << " is applied: " << applied;
      EXPECT_FALSE(names(needs_restart, key)) << key << " is applied: " << needs_restart;
    } else {
      EXPECT_TRUE(names(needs_restart, key)) << key << " needs a restart: " << needs_restart;
      EXPECT_FALSE(names(applied, key)) << key << " needs a restart: " << applied;
      EXPECT_FALSE(names(applied, table)) << key << " needs a restart, its table is named: " << applied;
    }
  }
}

TEST(cli, should_say_in_the_run_help_what_sighup_applies_and_what_needs_a_restart) {
  expect_the_reload_rules_of_the_key_table(help_text(command::run));
}

TEST(cli, should_say_in_the_readme_what_sighup_applies_as_the_run_help_does) {
  std::ifstream in(std::filesystem::path(APPOINTMENT_RELAY_SOURCE_DIR) / "README.md");
  std::stringstream readme;
  readme << in.rdbuf();
  const std::string text = readme.str();
  auto start = text.find("- Signals:");
  ASSERT_NE(start, std::string::npos);
  auto end = text.find("\n- ", start);
  expect_the_reload_rules_of_the_key_table(text.substr(start, end - start));
}

TEST(cli, should_print_the_version_for_the_flag_and_the_command) {
  EXPECT_EQ(ok({"--version"}).cmd, command::version);
  EXPECT_EQ(ok({"version"}).cmd, command::version);
}

TEST(cli, should_read_status_json) {
  EXPECT_TRUE(ok({"status", "--json"}).json);
  EXPECT_FALSE(ok({"status"}).json);
}

TEST(cli, should_read_the_replay_filters) {
  auto all = ok({"replay", "--all"});
  EXPECT_TRUE(all.replay.all);

  auto inv = ok({"replay", "--endpoint", "crm", "--event-id=42", "--since", "2024-05-01T12:00:00Z", "--until",
                 "2024-05-02"});
  EXPECT_FALSE(inv.replay.all);
  EXPECT_EQ(inv.replay.endpoint, "crm");
  EXPECT_EQ(inv.replay.event_id, 42);
  EXPECT_EQ(inv.replay.since, 1714564800);
  EXPECT_EQ(inv.replay.until, 1714608000);

  EXPECT_EQ(ok({"replay", "--event-id", "7"}).replay.event_id, 7);
  EXPECT_EQ(ok({"replay", "--since", "2024-05-01T14:00:00+02:00"}).replay.since, 1714564800);
}

TEST(cli, should_read_the_events_filters_and_events_show) {
  auto plain = ok({"events"});
  EXPECT_EQ(plain.cmd, command::events);
  EXPECT_EQ(to_string(plain.cmd), "events");
  EXPECT_FALSE(plain.events.show);
  EXPECT_FALSE(plain.json);
  EXPECT_EQ(plain.events.limit, 100u);
  EXPECT_FALSE(plain.events.appointment || plain.events.endpoint || plain.events.state || plain.events.kind ||
               plain.events.since || plain.events.until);

  auto inv = ok({"events", "--appointment", "226dec40-7b4c", "--endpoint=crm", "--state", "dead", "--kind",
                 "no_show", "--since", "2024-05-01", "--until=2024-05-02T00:00:00+02:00", "--limit", "20",
                 "--json", "-c", "r.toml"});
  EXPECT_EQ(inv.events.appointment, "226dec40-7b4c");
  EXPECT_EQ(inv.events.endpoint, "crm");
  EXPECT_EQ(inv.events.state, "dead");
  EXPECT_EQ(inv.events.kind, "no_show");
  EXPECT_EQ(inv.events.since, 1714521600);
  EXPECT_EQ(inv.events.until, 1714600800);
  EXPECT_EQ(inv.events.limit, 20u);
  EXPECT_TRUE(inv.json);
  EXPECT_EQ(inv.config_path, "r.toml");
  for (auto state : {"pending", "delivered", "retrying", "dead", "skipped"})
    EXPECT_EQ(ok({"events", "--state", state}).events.state, state);
  for (auto kind : {"created", "rescheduled", "cancelled", "no_show", "reverted", "checked_in"})
    EXPECT_EQ(ok({"events", "--kind", kind}).events.kind, kind);

  auto show = ok({"events", "show", "42", "--json"});
  EXPECT_EQ(show.cmd, command::events);
  EXPECT_EQ(show.events.show, 42);
  EXPECT_TRUE(show.json);
  EXPECT_EQ(ok({"--json", "events", "show", "7"}).events.show, 7);
  EXPECT_TRUE(ok({"events", "show", "--help"}).help);

  auto text = help_text(command::events);
  for (auto needed : {"Usage: appointment-relay events", "events show EVENT_ID", "--appointment",
                      "--endpoint", "--state", "--kind", "--since", "--until", "--limit", "--json",
                      "--config", "78", "Example", "APPOINTMENT_RELAY_DATABASE_URL", "webhook-id"})
    EXPECT_NE(text.find(needed), std::string::npos) << needed;
  EXPECT_NE(help_text(command::help).find("events"), std::string::npos);
}

TEST(cli, should_reject_bad_events_arguments) {
  struct row {
    std::vector<std::string_view> args;
    std::string expected;
  };
  for (const auto& r : std::vector<row>{
           {{"events", "--state", "lost"}, "'--state' needs pending, delivered, retrying, dead or skipped"},
           {{"events", "--kind", "booked"}, "'--kind' needs created"},
           {{"events", "--limit", "0"}, "'--limit' needs a number from 1 to 10000"},
           {{"events", "--limit", "10001"}, "'--limit' needs a number"},
           {{"events", "--limit", "ten"}, "'--limit' needs a number"},
           {{"events", "--since", "yesterday"}, "'--since' needs a time"},
           {{"events", "--since", "2024-05-02", "--until", "2024-05-01"}, "--since must be before --until"},
           {{"events", "--appointment="}, "'--appointment' needs a value"},
           {{"events", "show"}, "events show: say which event"},
           {{"events", "show", "abc"}, "EVENT_ID must be a positive integer, got 'abc'"},
           {{"events", "show", "0"}, "EVENT_ID must be a positive integer"},
           {{"events", "show", "1", "2"}, "unexpected argument '2' for 'events'"},
           {{"events", "show", "1", "--state", "dead"}, "events show: takes no filter"},
           {{"events", "list"}, "unexpected argument 'list' for 'events'"},
           {{"events", "--all"}, "unknown option '--all' for 'events'"},
           {{"status", "--limit", "3"}, "unknown option '--limit' for 'status'"},
       }) {
    auto e = bad(r.args);
    EXPECT_NE(e.message.find(r.expected), std::string::npos) << e.message;
    EXPECT_EQ(e.exit_code, exit_usage);
  }
}

TEST(cli, should_read_times_in_rfc3339_and_as_dates) {
  struct row {
    std::string_view text;
    std::optional<std::int64_t> expected;
  };
  for (const auto& r : std::vector<row>{{"1970-01-01", 0},
                                        {"2024-05-01T12:00:00Z", 1714564800},
                                        {"2024-05-01 12:00:00z", 1714564800},
                                        {"2024-05-01T12:00:00.123456Z", 1714564800},
                                        {"2024-05-01T10:30:00-01:30", 1714564800},
                                        {"2024-02-29", 1709164800},
                                        {"2023-02-29", std::nullopt},
                                        {"2024-05-01T12:00:00", std::nullopt},
                                        {"2024-05-01T25:00:00Z", std::nullopt},
                                        {"yesterday", std::nullopt},
                                        {"2024-5-1", std::nullopt},
                                        {"", std::nullopt}}) {
    EXPECT_EQ(parse_time(r.text), r.expected) << r.text;
  }
}

TEST(cli, should_reject_a_bad_command_line_with_exit_code_2_and_a_hint) {
  struct row {
    std::vector<std::string_view> args;
    std::string expected;
  };
  for (const auto& r : std::vector<row>{
           {{}, "no command given"},
           {{"start"}, "unknown command 'start'"},
           {{"run", "--verbose"}, "unknown option '--verbose' for 'run'"},
           {{"run", "extra"}, "unexpected argument 'extra' for 'run'"},
           {{"run", "--config"}, "option '--config' needs a value"},
           {{"run", "--config="}, "option '--config' needs a file name"},
           {{"run", "--json"}, "unknown option '--json' for 'run'"},
           {{"status", "--all"}, "unknown option '--all' for 'status'"},
           {{"status", "--json=yes"}, "option '--json' takes no value"},
           {{"replay"}, "replay: say what to replay"},
           {{"replay", "--all", "--endpoint", "crm"}, "--all excludes"},
           {{"replay", "--event-id", "abc"}, "'--event-id' needs a positive integer, got 'abc'"},
           {{"replay", "--event-id", "0"}, "needs a positive integer"},
           {{"replay", "--since", "last week"}, "'--since' needs a time"},
           {{"replay", "--since", "2024-05-02", "--until", "2024-05-01"}, "--since must be before --until"},
           {{"replay", "--endpoint"}, "option '--endpoint' needs a value"},
           {{"help", "frobnicate"}, "unknown command 'frobnicate'"},
           {{"version", "--config", "x"}, "unknown option '--config' for 'version'"},
           {{"run", "--version"}, "'--version' is a command of its own"},
       }) {
    auto e = bad(r.args);
    EXPECT_NE(e.message.find(r.expected), std::string::npos) << e.message;
    EXPECT_EQ(e.exit_code, exit_usage);
    EXPECT_EQ(e.hint, "see appointment-relay --help");
  }
}

TEST(cli, should_read_the_health_command_and_its_admin_address) {
  auto plain = ok({"health"});
  EXPECT_EQ(plain.cmd, command::health);
  EXPECT_EQ(to_string(plain.cmd), "health");
  EXPECT_FALSE(plain.admin);
  EXPECT_EQ(ok({"health", "--admin", "127.0.0.1:9187"}).admin, "127.0.0.1:9187");
  EXPECT_EQ(ok({"health", "--admin=[::1]:9187"}).admin, "[::1]:9187");
  EXPECT_EQ(ok({"health", "-c", "r.toml"}).config_path, "r.toml");
  EXPECT_TRUE(ok({"help", "health"}).help);

  for (const auto& [args, expected] : std::vector<std::pair<std::vector<std::string_view>, std::string>>{
           {{"health", "--admin"}, "option '--admin' needs a value"},
           {{"health", "--admin="}, "option '--admin' needs an address"},
           {{"health", "--admin", "127.0.0.1:1", "-c", "r.toml"}, "give --admin or --config, not both"},
           {{"status", "--admin", "127.0.0.1:1"}, "unknown option '--admin' for 'status'"},
       }) {
    auto e = bad(args);
    EXPECT_NE(e.message.find(expected), std::string::npos) << e.message;
    EXPECT_EQ(e.exit_code, exit_usage);
  }

  // Its help says what a probe needs to know: the options, the address it asks, and that it exits 0 or 1.
  const auto text = help_text(command::health);
  for (auto what : {"Usage: appointment-relay health", "--admin HOST:PORT", "--config", "/healthz",
                    "APPOINTMENT_RELAY_ADMIN_LISTEN", "127.0.0.1:9187", "Exit codes", "Example"})
    EXPECT_NE(text.find(what), std::string::npos) << what;
  EXPECT_NE(help_text(command::help).find("health"), std::string::npos);
}

TEST(cli, should_parse_pause_and_resume_with_their_endpoint_and_reason) {
  auto p = ok({"pause", "--endpoint", "crm", "--reason", "CRM maintenance until 14:00", "-c", "r.toml"});
  EXPECT_EQ(p.cmd, command::pause);
  EXPECT_EQ(p.endpoint, "crm");
  EXPECT_EQ(p.reason, "CRM maintenance until 14:00");
  EXPECT_EQ(p.config_path, "r.toml");
  auto r = ok({"resume", "--endpoint=crm"});
  EXPECT_EQ(r.cmd, command::resume);
  EXPECT_EQ(r.endpoint, "crm");
  EXPECT_NE(bad({"pause"}).message.find("pause: say which endpoint: --endpoint NAME"), std::string::npos);
  EXPECT_NE(bad({"resume", "--reason", "x", "--endpoint", "crm"}).message.find("unknown option '--reason'"),
            std::string::npos);
  EXPECT_NE(bad({"status", "--endpoint", "crm"}).message.find("unknown option '--endpoint' for 'status'"),
            std::string::npos);
  for (auto c : {command::pause, command::resume}) {
    const auto text = help_text(c);
    for (auto what : {"--endpoint NAME", "Example", "in order"})
      EXPECT_NE(text.find(what), std::string::npos) << what;
  }
  EXPECT_NE(help_text(command::pause).find("--reason TEXT"), std::string::npos);
  EXPECT_NE(help_text(command::help).find("pause"), std::string::npos);
}

TEST(cli, should_parse_a_replay_of_delivered_events_with_a_filter_and_a_dry_run) {
  auto r = ok({"replay", "--delivered", "--appointment", "a1b2", "--since", "2024-05-01", "--dry-run"});
  EXPECT_EQ(r.cmd, command::replay);
  EXPECT_TRUE(r.replay.delivered);
  EXPECT_TRUE(r.replay.dry_run);
  EXPECT_EQ(r.replay.appointment, "a1b2");
  EXPECT_TRUE(r.replay.since);
  EXPECT_FALSE(ok({"replay", "--appointment=x"}).replay.delivered);  // dead letters of one appointment
  EXPECT_NE(bad({"replay", "--delivered", "--all"}).message.find("--delivered needs a filter"),
            std::string::npos);
  EXPECT_NE(bad({"replay", "--delivered"}).message.find("say what to replay"), std::string::npos);
  EXPECT_NE(bad({"replay", "--appointment"}).message.find("needs a value"), std::string::npos);
  const auto text = help_text(command::replay);
  for (auto what : {"--delivered", "--dry-run", "--appointment ID", "webhook-id"})
    EXPECT_NE(text.find(what), std::string::npos) << what;
}

TEST(cli, should_name_the_exit_codes) {
  EXPECT_EQ(exit_ok, 0);
  EXPECT_EQ(exit_failure, 1);
  EXPECT_EQ(exit_usage, 2);
  EXPECT_EQ(exit_config, 78);
}

TEST(cli, should_parse_argv_without_the_program_name) {
  const char* argv[] = {"appointment-relay", "status", "--json", "-c", "r.toml"};
  auto r = parse_command_line(5, argv);
  ASSERT_TRUE(std::holds_alternative<invocation>(r));
  EXPECT_EQ(std::get<invocation>(r).cmd, command::status);
  EXPECT_TRUE(std::get<invocation>(r).json);
  EXPECT_EQ(std::get<invocation>(r).config_path, "r.toml");
}

}  // namespace
}  // namespace appointment_relay::cli
