#include "appointment_relay/cli.hpp"

#include <array>
#include <charconv>
#include <chrono>
#include <utility>

namespace appointment_relay::cli {
namespace {

constexpr std::array<std::pair<std::string_view, command>, 11> command_names{{
    {"run", command::run},
    {"migrate", command::migrate},
    {"check-config", command::check_config},
    {"status", command::status},
    {"replay", command::replay},
    {"events", command::events},
    {"pause", command::pause},
    {"resume", command::resume},
    {"health", command::health},
    {"version", command::version},
    {"help", command::help},
}};

std::optional<command> find_command(std::string_view name) {
  for (const auto& [n, c] : command_names)
    if (n == name) return c;
  return std::nullopt;
}

bool takes_config(command c) {
  return c != command::version && c != command::help;
}

// Reads exactly `digits` decimal digits at text[pos].
std::optional<int> digits_at(std::string_view text, std::size_t pos, std::size_t digits) {
  if (pos + digits > text.size()) return std::nullopt;
  int v = 0;
  for (std::size_t i = pos; i < pos + digits; ++i) {
    if (text[i] < '0' || text[i] > '9') return std::nullopt;
    v = v * 10 + (text[i] - '0');
  }
  return v;
}

const char* const exit_codes_text =
    "Exit codes:\n"
    "  0   success\n"
    "  1   runtime failure (database unreachable, migration failed, ...)\n"
    "  2   bad command line\n"
    "  78  invalid configuration\n";

const char* const config_option_text =
    "  -c, --config FILE   TOML configuration file (see config/appointment-relay.toml). Without it the\n"
    "                      configuration comes from the environment alone.\n"
    "  -h, --help          show this help\n";

const char* const environment_text =
    "Environment:\n"
    "  Every key of the file can be set as APPOINTMENT_RELAY_<SECTION>_<KEY> (it wins over the file), e.g.\n"
    "  APPOINTMENT_RELAY_DATABASE_POLL_INTERVAL=2s, and per endpoint "
    "APPOINTMENT_RELAY_ENDPOINTS_<NAME>_<KEY>.\n"
    "  Short names that work without a file:\n"
    "    APPOINTMENT_RELAY_DATABASE_URL     libpq URI or conninfo (or ..._FILE: read from a file)\n"
    "    APPOINTMENT_RELAY_ENDPOINT_URL     the URL of endpoint \"default\" (receives every kind)\n"
    "    APPOINTMENT_RELAY_SIGNING_SECRET   its whsec_ secret(s), comma separated (or ..._FILE)\n"
    "    APPOINTMENT_RELAY_ADMIN_LISTEN, APPOINTMENT_RELAY_LOG_FORMAT, APPOINTMENT_RELAY_LOG_LEVEL\n"
    "  An unknown APPOINTMENT_RELAY_* variable is a configuration error.\n";

}  // namespace

std::string_view to_string(command c) noexcept {
  for (const auto& [n, cmd] : command_names)
    if (cmd == c) return n;
  return "?";
}

std::optional<std::int64_t> parse_time(std::string_view text) {
  // YYYY-MM-DD
  auto y = digits_at(text, 0, 4);
  auto mo = digits_at(text, 5, 2);
  auto d = digits_at(text, 8, 2);
  if (!y || !mo || !d || text[4] != '-' || text[7] != '-') return std::nullopt;
  std::chrono::year_month_day ymd{std::chrono::year(*y), std::chrono::month(static_cast<unsigned>(*mo)),
                                  std::chrono::day(static_cast<unsigned>(*d))};
  if (!ymd.ok()) return std::nullopt;
  std::int64_t t = std::chrono::sys_days(ymd).time_since_epoch().count() * std::int64_t{86400};
  if (text.size() == 10) return t;
  // THH:MM:SS[.fff](Z|+HH:MM|-HH:MM)
  if (text[10] != 'T' && text[10] != 't' && text[10] != ' ') return std::nullopt;
  auto h = digits_at(text, 11, 2);
  auto mi = digits_at(text, 14, 2);
  auto s = digits_at(text, 17, 2);
  if (!h || !mi || !s || text[13] != ':' || text[16] != ':' || *h > 23 || *mi > 59 || *s > 60)
    return std::nullopt;
  t += *h * 3600 + *mi * 60 + *s;
  std::size_t pos = 19;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    std::size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') ++pos;
    if (pos == start) return std::nullopt;
  }
  if (pos >= text.size()) return std::nullopt;  // the offset is required: no guessing the zone
  if ((text[pos] == 'Z' || text[pos] == 'z') && pos + 1 == text.size()) return t;
  if (text[pos] != '+' && text[pos] != '-') return std::nullopt;
  auto oh = digits_at(text, pos + 1, 2);
  auto om = digits_at(text, pos + 4, 2);
  if (!oh || !om || text[pos + 3] != ':' || pos + 6 != text.size() || *oh > 23 || *om > 59)
    return std::nullopt;
  std::int64_t offset = *oh * 3600 + *om * 60;
  return text[pos] == '+' ? t - offset : t + offset;
}

std::variant<invocation, usage_error> parse_command_line(int argc, const char* const* argv) {
  std::vector<std::string_view> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return parse_command_line(args);
}

std::variant<invocation, usage_error> parse_command_line(const std::vector<std::string_view>& args) {
  invocation inv;
  std::optional<command> cmd;
  std::optional<command> help_topic;  // `help COMMAND`
  bool version_flag = false;
  // Options are checked against the command once it is known (they may precede it).
  struct seen_option {
    std::string name;
    std::optional<std::string> value;
  };
  std::vector<seen_option> options;

  auto err = [](std::string message) -> std::variant<invocation, usage_error> {
    return usage_error{std::move(message)};
  };
  auto takes_value = [](std::string_view name) {
    return name == "--config" || name == "-c" || name == "--endpoint" || name == "--appointment" ||
           name == "--reason" || name == "--event-id" || name == "--since" || name == "--until" ||
           name == "--admin" || name == "--state" || name == "--kind" || name == "--limit";
  };
  bool events_show_id = false;  // `events show` has had its EVENT_ID

  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    if (a.size() > 1 && a[0] == '-') {
      std::string name(a);
      std::optional<std::string> value;
      if (auto eq = a.find('='); a.starts_with("--") && eq != std::string_view::npos) {
        name = std::string(a.substr(0, eq));
        value = std::string(a.substr(eq + 1));
      }
      if (takes_value(name)) {
        if (!value) {
          if (i + 1 >= args.size()) return err("option '" + name + "' needs a value");
          value = std::string(args[++i]);
        }
      } else if (value) {
        return err("option '" + name + "' takes no value");
      }
      options.push_back({name, value});
      continue;
    }
    if (!cmd) {
      cmd = find_command(a);
      if (!cmd) return err("unknown command '" + std::string(a) + "'");
      continue;
    }
    if (*cmd == command::events && !inv.events.show && !events_show_id && a == "show") {
      inv.events.show = 0;
      continue;
    }
    if (*cmd == command::events && inv.events.show && !events_show_id) {
      std::int64_t id = 0;
      auto [ptr, ec] = std::from_chars(a.data(), a.data() + a.size(), id);
      if (ec != std::errc{} || ptr != a.data() + a.size() || id <= 0)
        return err("events show: EVENT_ID must be a positive integer, got '" + std::string(a) + "'");
      inv.events.show = id;
      events_show_id = true;
      continue;
    }
    if (*cmd == command::help && !help_topic) {
      help_topic = find_command(a);
      if (!help_topic) return err("unknown command '" + std::string(a) + "'");
      continue;
    }
    return err("unexpected argument '" + std::string(a) + "' for '" + std::string(to_string(*cmd)) + "'");
  }

  for (const auto& o : options)
    if (o.name == "--version") version_flag = true;
  if (version_flag && !cmd) cmd = command::version;
  if (!cmd) {
    for (const auto& o : options)
      if (o.name == "--help" || o.name == "-h") {
        inv.cmd = command::help;
        inv.help = true;
        return inv;
      }
    return err(
        "no command given (run, migrate, check-config, status, replay, events, pause, resume, health, "
        "version, help)");
  }
  inv.cmd = *cmd;
  if (*cmd == command::help) {
    inv.help = true;
    inv.cmd = help_topic.value_or(command::help);
  }

  const std::string cmd_name(to_string(*cmd));
  for (const auto& o : options) {
    const auto& n = o.name;
    if (n == "--help" || n == "-h") {
      inv.help = true;
    } else if (n == "--version") {
      if (*cmd != command::version) return err("option '--version' is a command of its own");
    } else if ((n == "--config" || n == "-c") && takes_config(*cmd)) {
      if (o.value->empty()) return err("option '" + n + "' needs a file name");
      inv.config_path = *o.value;
    } else if (n == "--admin" && *cmd == command::health) {
      if (o.value->empty()) return err("option '--admin' needs an address such as 127.0.0.1:9187");
      inv.admin = *o.value;
    } else if (n == "--endpoint" && (*cmd == command::pause || *cmd == command::resume)) {
      if (o.value->empty()) return err("option '--endpoint' needs an endpoint name");
      inv.endpoint = *o.value;
    } else if (n == "--reason" && *cmd == command::pause) {
      inv.reason = *o.value;
    } else if (n == "--json" && (*cmd == command::status || *cmd == command::events)) {
      inv.json = true;
    } else if (*cmd == command::events && (n == "--appointment" || n == "--endpoint")) {
      if (o.value->empty()) return err("option '" + n + "' needs a value");
      (n == "--appointment" ? inv.events.appointment : inv.events.endpoint) = *o.value;
    } else if (n == "--state" && *cmd == command::events) {
      const auto& v = *o.value;
      if (v != "pending" && v != "delivered" && v != "retrying" && v != "dead" && v != "skipped")
        return err("option '--state' needs pending, delivered, retrying, dead or skipped, got '" + v + "'");
      inv.events.state = v;
    } else if (n == "--kind" && *cmd == command::events) {
      const auto& v = *o.value;
      if (v != "created" && v != "rescheduled" && v != "cancelled" && v != "no_show" && v != "reverted" &&
          v != "checked_in")
        return err(
            "option '--kind' needs created, rescheduled, cancelled, no_show, reverted or checked_in, got '" +
            v + "'");
      inv.events.kind = v;
    } else if (n == "--limit" && *cmd == command::events) {
      std::size_t limit = 0;
      const auto& v = *o.value;
      auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), limit);
      if (v.empty() || ec != std::errc{} || ptr != v.data() + v.size() || limit < 1 || limit > 10000)
        return err("option '--limit' needs a number from 1 to 10000, got '" + v + "'");
      inv.events.limit = limit;
    } else if ((n == "--since" || n == "--until") && *cmd == command::events) {
      auto t = parse_time(*o.value);
      if (!t)
        return err("option '" + n + "' needs a time such as 2024-05-01T12:00:00Z or 2024-05-01, got '" +
                   *o.value + "'");
      (n == "--since" ? inv.events.since : inv.events.until) = t;
    } else if (n == "--all" && *cmd == command::replay) {
      inv.replay.all = true;
    } else if (n == "--delivered" && *cmd == command::replay) {
      inv.replay.delivered = true;
    } else if (n == "--dry-run" && *cmd == command::replay) {
      inv.replay.dry_run = true;
    } else if (n == "--appointment" && *cmd == command::replay) {
      if (o.value->empty()) return err("option '--appointment' needs an appointment's external id");
      inv.replay.appointment = *o.value;
    } else if (n == "--endpoint" && *cmd == command::replay) {
      if (o.value->empty()) return err("option '--endpoint' needs an endpoint name");
      inv.replay.endpoint = *o.value;
    } else if (n == "--event-id" && *cmd == command::replay) {
      std::int64_t id = 0;
      const auto& v = *o.value;
      auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), id);
      if (v.empty() || ec != std::errc{} || ptr != v.data() + v.size() || id <= 0)
        return err("option '--event-id' needs a positive integer, got '" + v + "'");
      inv.replay.event_id = id;
    } else if ((n == "--since" || n == "--until") && *cmd == command::replay) {
      auto t = parse_time(*o.value);
      if (!t)
        return err("option '" + n + "' needs a time such as 2024-05-01T12:00:00Z or 2024-05-01, got '" +
                   *o.value + "'");
      (n == "--since" ? inv.replay.since : inv.replay.until) = t;
    } else {
      return err("unknown option '" + n + "' for '" + cmd_name + "'");
    }
  }

  if (inv.help) return inv;
  if (*cmd == command::events) {
    const auto& e = inv.events;
    if (e.show && !events_show_id) return err("events show: say which event: events show EVENT_ID");
    if (e.show && (e.appointment || e.endpoint || e.state || e.kind || e.since || e.until))
      return err("events show: takes no filter, only EVENT_ID (and --json)");
    if (e.since && e.until && *e.since >= *e.until) return err("events: --since must be before --until");
  }
  if (*cmd == command::health && inv.admin && inv.config_path)
    return err("health: give --admin or --config, not both");
  if ((*cmd == command::pause || *cmd == command::resume) && inv.endpoint.empty())
    return err(cmd_name + ": say which endpoint: --endpoint NAME");
  if (*cmd == command::replay) {
    const auto& r = inv.replay;
    bool narrowed = r.endpoint || r.event_id || r.since || r.until || r.appointment;
    if (r.all && r.delivered)
      return err(
          "replay: --delivered needs a filter (--appointment, --event-id, --since, --until, --endpoint), not "
          "--all");
    if (r.all && narrowed)
      return err("replay: --all excludes --endpoint, --event-id, --appointment, --since and --until");
    if (!r.all && !narrowed)
      return err(
          "replay: say what to replay: --all, or --endpoint, --event-id, --appointment, --since, --until");
    if (r.since && r.until && *r.since >= *r.until) return err("replay: --since must be before --until");
  }
  return inv;
}

std::string help_text(command c) {
  std::string t;
  switch (c) {
    case command::help:
      t = "appointment-relay: turns appointment changes in a Canvas Medical database into signed "
          "webhooks.\n\n"
          "Usage: appointment-relay <command> [options]\n\n"
          "Commands:\n"
          "  run            run the relay (the daemon; systemd Type=notify)\n"
          "  migrate        create or upgrade the relay's tables and triggers in the database\n"
          "  check-config   validate the configuration and print it, secrets masked\n"
          "  status         show the outbox: pending, dead-lettered and delivered events per endpoint\n"
          "  replay         queue dead-lettered events for delivery again\n"
          "  events         list events with their state per endpoint; 'events show ID': one with its "
          "attempts\n"
          "  pause          stop sending to one endpoint (its events wait) until 'resume'\n"
          "  resume         let a paused endpoint's waiting events go out again, in order\n"
          "  health         ask a running relay's admin server whether it is alive (exit 0 or 1)\n"
          "  version        print the version\n"
          "  help [COMMAND] show this overview or a command's help\n\n"
          "Global options:\n";
      t += config_option_text;
      t += "  --version           same as the version command\n\n"
           "'appointment-relay <command> --help' explains a command, its options and its environment.\n\n";
      t += environment_text;
      t += "\n";
      t += exit_codes_text;
      t += "\nExample:\n  appointment-relay check-config --config "
           "/etc/appointment-relay/appointment-relay.toml\n";
      return t;
    case command::run:
      t = "Usage: appointment-relay run [--config FILE]\n\n"
          "Runs the relay: listens for outbox notifications in PostgreSQL, classifies each appointment "
          "change,\n"
          "and POSTs the notification to every endpoint that wants its kind, signed (Standard Webhooks), in\n"
          "order per appointment, retrying with backoff until retry.max_age, then dead-lettering. The admin\n"
          "server (admin.listen) serves /healthz, /readyz and /metrics. Tells systemd READY=1 once "
          "connected.\n"
          "Signals: SIGHUP reads the configuration again and applies [endpoints.NAME] (added, removed or\n"
          "changed), [retry], log.level, relay.max_pending_per_endpoint, relay.shutdown_timeout and\n"
          "database.batch_size. Other changes (database.url, database.poll_interval, database.retention,\n"
          "database.dead_letter_retention, database.leader_lease, admin.listen, admin.token_file, "
          "log.format,\n"
          "relay.watchdog_interval) need a restart: a\n"
          "warning names them. A reload is applied whole or not at all: if any endpoint cannot be set up\n"
          "(an unreadable CA file, a bad key), nothing changes and the error is logged. SIGTERM or SIGINT\n"
          "drain in-flight deliveries for up to relay.shutdown_timeout; a second signal exits at once.\n"
          "The relay's tables must exist: run 'appointment-relay migrate' first.\n\n"
          "Options:\n";
      t += config_option_text;
      t += "\n";
      t += environment_text;
      t += "\n";
      t += exit_codes_text;
      t += "\nExample:\n"
           "  APPOINTMENT_RELAY_DATABASE_URL=postgresql://relay@db/canvas \\\n"
           "  APPOINTMENT_RELAY_ENDPOINT_URL=https://crm.example.com/hooks/canvas \\\n"
           "  APPOINTMENT_RELAY_SIGNING_SECRET_FILE=/run/secrets/crm appointment-relay run\n";
      return t;
    case command::migrate:
      t = "Usage: appointment-relay migrate [--config FILE]\n\n"
          "Applies the relay's database migrations (its outbox and delivery tables and the triggers on the "
          "Canvas\n"
          "appointment tables) in one transaction each, recording them; migrations already applied are "
          "skipped,\n"
          "so running it again is safe. Needs only database.url and a role allowed to create tables and\n"
          "triggers.\n\n"
          "Options:\n";
      t += config_option_text;
      t += "\nEnvironment:\n  APPOINTMENT_RELAY_DATABASE_URL (or APPOINTMENT_RELAY_DATABASE_URL_FILE), and "
           "the others of\n"
           "  'appointment-relay --help'.\n\n";
      t += exit_codes_text;
      t += "\nExample:\n  appointment-relay migrate -c /etc/appointment-relay/appointment-relay.toml\n";
      return t;
    case command::check_config:
      t = "Usage: appointment-relay check-config [--config FILE]\n\n"
          "Reads the configuration file and the environment exactly as 'run' does, validates every value "
          "and\n"
          "prints the effective configuration as TOML with every secret shown as whsec_*** and the database\n"
          "password masked. Connects to nothing. An error names the file and line or the variable, the key,\n"
          "and what is wrong.\n\n"
          "Options:\n";
      t += config_option_text;
      t += "\n";
      t += environment_text;
      t += "\n";
      t += exit_codes_text;
      t += "\nExample:\n  appointment-relay check-config --config ./appointment-relay.toml && echo ok\n";
      return t;
    case command::status:
      t = "Usage: appointment-relay status [--config FILE] [--json]\n\n"
          "Shows the outbox in the database: per endpoint the events pending, in retry, dead-lettered and\n"
          "delivered, and the age of the oldest pending one. Reads the database only.\n\n"
          "Options:\n";
      t += config_option_text;
      t += "  --json              print one JSON object instead of a table (for scripts)\n\n"
           "Environment:\n  APPOINTMENT_RELAY_DATABASE_URL (or _FILE) and the others of 'appointment-relay "
           "--help'.\n\n";
      t += exit_codes_text;
      t += "\nExample:\n  appointment-relay status --json -c /etc/appointment-relay/appointment-relay.toml\n";
      return t;
    case command::replay:
      t = "Usage: appointment-relay replay [--config FILE] [--delivered] [--dry-run]\n"
          "         (--all | [--endpoint NAME] [--event-id N] [--appointment ID] [--since TIME] [--until "
          "TIME])\n\n"
          "Queues dead-lettered deliveries again (or, with --delivered, delivered ones: to send again what "
          "a\n"
          "receiver lost): their attempts are reset and a running relay picks them up at once (NOTIFY). "
          "They\n"
          "keep their webhook-id (receivers deduplicate on it) and go out in order per appointment. Prints "
          "how\n"
          "many were queued. The filters combine (AND); at least one is required, and --all (dead letters\n"
          "only) excludes the others.\n\n"
          "Options:\n";
      t += config_option_text;
      t += "  --all               every dead-lettered delivery\n"
           "  --delivered         delivered events instead of dead letters (needs a filter)\n"
           "  --dry-run           list what would be sent again, change nothing\n"
           "  --endpoint NAME     deliveries to this endpoint only\n"
           "  --event-id N        the outbox event with this id only\n"
           "  --appointment ID    events of this appointment (its external id) only\n"
           "  --since TIME        events captured at or after TIME\n"
           "  --until TIME        events captured before TIME\n"
           "TIME: 2024-05-01T12:00:00Z, 2024-05-01T14:00:00+02:00 or a date (2024-05-01, midnight UTC).\n\n"
           "Environment:\n  APPOINTMENT_RELAY_DATABASE_URL (or _FILE) and the others of 'appointment-relay "
           "--help'.\n\n";
      t += exit_codes_text;
      t += "\nExamples:\n  appointment-relay replay --endpoint crm --since 2024-05-01T00:00:00Z -c "
           "relay.toml\n"
           "  appointment-relay replay --delivered --appointment 8c1d2e4f-... --dry-run -c relay.toml\n";
      return t;
    case command::events:
      t = "Usage: appointment-relay events [--config FILE] [--appointment ID] [--endpoint NAME] [--state S]\n"
          "                                [--kind K] [--since TIME] [--until TIME] [--limit N] [--json]\n"
          "       appointment-relay events show EVENT_ID [--config FILE] [--json]\n\n"
          "Lists captured events, newest first, one line per event and endpoint: its id, when it was "
          "captured,\n"
          "its kind, the appointment, its state there, the attempts made and the last error. 'events show'\n"
          "prints one event: the payload, the webhook-id, and every attempt per endpoint (when, the HTTP "
          "status\n"
          "or the transport error, the latency, the first 1 KiB of the response body). A successful first\n"
          "attempt is recorded only as the outcome. Dead letters are listed as long as they are kept; other\n"
          "events until retention removes them. Reads the database only. The filters combine (AND).\n\n"
          "States: pending (not done yet, or put back by replay), delivered, retrying, dead, skipped (never\n"
          "sent there: not a notification, a kind the endpoint does not want, or captured before the\n"
          "endpoint started).\n\n"
          "Options:\n";
      t += config_option_text;
      t += "  --appointment ID    the appointment's external id (reads every event in the time range)\n"
           "  --endpoint NAME     this endpoint only (else every configured one)\n"
           "  --state S           pending, delivered, retrying, dead or skipped\n"
           "  --kind K            created, rescheduled, cancelled, no_show, reverted or checked_in\n"
           "  --since TIME        events captured at or after TIME\n"
           "  --until TIME        events captured before TIME\n"
           "  --limit N           at most N lines (1 to 10000; default 100)\n"
           "  --json              print JSON instead of a table (for scripts)\n"
           "TIME: 2024-05-01T12:00:00Z, 2024-05-01T14:00:00+02:00 or a date (2024-05-01, midnight UTC).\n\n"
           "Environment:\n  APPOINTMENT_RELAY_DATABASE_URL (or _FILE) and the others of 'appointment-relay "
           "--help'.\n\n";
      t += exit_codes_text;
      t += "\nExamples:\n"
           "  appointment-relay events --appointment 226dec40-7b4c-4d6c-9a0e-5d2c0b6a1f00 -c relay.toml\n"
           "  appointment-relay events --state dead --since 2024-05-01 --json -c relay.toml\n"
           "  appointment-relay events show 1234 -c relay.toml\n";
      return t;
    case command::pause:
    case command::resume:
      t = c == command::pause
              ? "Usage: appointment-relay pause [--config FILE] --endpoint NAME [--reason TEXT]\n\n"
                "Pauses an endpoint: the running relay (leader or standby, any instance) sends "
                "nothing more to it\n"
                "within a second (NOTIFY); requests in flight finish. Its events wait, in order, "
                "and none is\n"
                "dead-lettered for the pause. The pause is kept in the database: a restart keeps "
                "it. 'status'\n"
                "shows who paused it, when and why.\n\n"
              : "Usage: appointment-relay resume [--config FILE] --endpoint NAME\n\n"
                "Resumes a paused endpoint: its waiting events go out again, in order, within a "
                "second.\n\n";
      t += "Options:\n";
      t += config_option_text;
      t += "  --endpoint NAME     the endpoint, as named in the configuration ([endpoints.NAME])\n";
      if (c == command::pause) t += "  --reason TEXT       why, shown by 'status' and in the relay's log\n";
      t += "\nEnvironment:\n  APPOINTMENT_RELAY_DATABASE_URL (or _FILE) and the others of 'appointment-relay "
           "--help'.\n\n";
      t += exit_codes_text;
      t += c == command::pause
               ? "\nExample:\n  appointment-relay pause --endpoint crm --reason \"CRM maintenance "
                 "until 14:00\" -c relay.toml\n"
               : "\nExample:\n  appointment-relay resume --endpoint crm -c relay.toml\n";
      return t;
    case command::health:
      t = "Usage: appointment-relay health [--config FILE | --admin HOST:PORT]\n\n"
          "Asks a running relay's admin server for /healthz and prints one line: 'healthy: ...' and exit 0\n"
          "when it answers 200 within 2 s, else 'unhealthy: ...' (refused, no answer, another status, the\n"
          "admin server disabled, a configuration that cannot be read) and exit 1. For a container's\n"
          "HEALTHCHECK or a script: it needs no curl. The address is --admin, else admin.listen of the\n"
          "configuration (--config FILE and the environment), else APPOINTMENT_RELAY_ADMIN_LISTEN, else\n"
          "127.0.0.1:9187; a wildcard address (0.0.0.0, [::]) is asked on the loopback address.\n\n"
          "Options:\n";
      t += config_option_text;
      t += "  --admin HOST:PORT   the admin server's address (127.0.0.1:9187, [::1]:9187); no configuration\n"
           "                      is read\n\n"
           "Exit codes:\n"
           "  0   healthy\n"
           "  1   not healthy, or not reachable\n"
           "  2   bad command line\n"
           "\nExample:\n  appointment-relay health --admin 127.0.0.1:9187\n";
      return t;
    case command::version:
      return "Usage: appointment-relay version (or --version)\n\n"
             "Prints the version of appointment-relay and exits 0.\n\n"
             "Example:\n  appointment-relay --version\n";
  }
  return t;
}

}  // namespace appointment_relay::cli
