// appointment-relay: the command line. Every command but `run` is a short one-shot against the database.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>

#include <malloc.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "appointment_relay/admin_views.hpp"
#include "appointment_relay/cli.hpp"
#include "appointment_relay/config.hpp"
#include "appointment_relay/health.hpp"
#include "appointment_relay/logging.hpp"
#include "appointment_relay/relay.hpp"
#include "appointment_relay/store.hpp"
#include "appointment_relay/version.hpp"

namespace ar = appointment_relay;
namespace cli = appointment_relay::cli;

namespace {

std::vector<std::string> endpoint_names(const ar::config& cfg) {
  std::vector<std::string> names;
  for (const auto& e : cfg.endpoints) names.push_back(e.name);
  return names;
}

// What status shows of an endpoint's state: paused over the breaker's.
std::string state_of(const ar::endpoint_control& c) {
  return c.paused ? "paused" : ar::to_string(c.health.health);
}

int print_status(const ar::config& cfg, bool json) {
  ar::store db(cfg.database.url);
  auto report = db.status(endpoint_names(cfg));
  if (json) {
    // The admin API's /api/status answers the same (admin_views.cpp).
    std::cout << ar::status_json(report);
    return cli::exit_ok;
  }
  for (const auto& w : ar::config_warnings(cfg)) std::printf("warning: %s\n", w.c_str());
  for (const auto& s : report) {
    std::int64_t dead = 0;
    for (const auto& [reason, n] : s.dead_by_reason) dead += n;
    const auto& c = s.control;
    std::printf("endpoint %s\n  state: %s\n", s.endpoint.c_str(), state_of(c).c_str());
    if (c.paused)
      std::printf("  paused by %s at %s: %s\n", c.paused_by.c_str(), ar::utc_text(c.paused_at_ms).c_str(),
                  c.pause_reason.empty() ? "(no reason given)" : c.pause_reason.c_str());
    if (c.health.health != ar::endpoint_health::healthy)
      std::printf("  %s since %s: %s\n",
                  c.health.health == ar::endpoint_health::open ? "breaker open" : "failing",
                  ar::utc_text(c.health.since_ms).c_str(), c.health.reason.c_str());
    if (c.health.health == ar::endpoint_health::open)
      std::printf("  next probe at %s\n", ar::utc_text(c.health.probe_at_ms).c_str());
    if (c.start_id)
      std::printf("  started after event %lld at %s (%s)\n", static_cast<long long>(*c.start_id),
                  ar::utc_text(c.started_at_ms).c_str(), c.start_reason.c_str());
    std::printf("  backlog: %lld pending\n", static_cast<long long>(s.backlog));
    if (s.oldest_pending_age_seconds)
      std::printf("  oldest pending: %.1f s old\n", *s.oldest_pending_age_seconds);
    std::printf("  dead letters: %lld\n", static_cast<long long>(dead));
    for (const auto& [reason, n] : s.dead_by_reason)
      std::printf("    %6lld  %s\n", static_cast<long long>(n), reason.c_str());
    if (s.oldest_dead_letter_age_seconds) {
      const double age_days = *s.oldest_dead_letter_age_seconds / 86400.0;
      const double keep_days = static_cast<double>(cfg.database.dead_letter_retention.count()) / 86400.0;
      std::printf("  oldest dead letter: %.1f days old (removed after dead_letter_retention, %.0f days)\n",
                  age_days, keep_days);
      if (age_days > keep_days / 2)
        std::printf(
            "  warning: dead letters of %s are removed in %.1f days unless replayed: "
            "appointment-relay replay --endpoint %s\n",
            s.endpoint.c_str(), std::max(0.0, keep_days - age_days), s.endpoint.c_str());
    }
  }
  return cli::exit_ok;
}

int replay(const ar::config& cfg, const cli::replay_filter& f) {
  ar::store db(cfg.database.url);
  ar::replay_filter filter;
  filter.endpoint = f.endpoint;
  filter.event_id = f.event_id;
  filter.since = f.since;
  filter.until = f.until;
  filter.appointment = f.appointment;
  filter.delivered = f.delivered;
  filter.endpoints = endpoint_names(cfg);  // an endpoint no longer configured would never send them
  const char* what = f.delivered ? "delivered events" : "dead letters";
  if (f.dry_run) {
    auto [listed, total] = db.replay_preview(filter, 50);
    std::printf("dry run: %lld %s would be sent again (nothing changed)\n", static_cast<long long>(total),
                what);
    for (const auto& c : listed)
      std::printf("  event %lld  endpoint %s  appointment %s  captured %s\n",
                  static_cast<long long>(c.event_id), c.endpoint.c_str(), c.appointment.c_str(),
                  ar::utc_text(c.captured_at_ms).c_str());
    if (total > static_cast<std::int64_t>(listed.size()))
      std::printf("  ... and %lld more\n",
                  static_cast<long long>(total - static_cast<std::int64_t>(listed.size())));
    return cli::exit_ok;
  }
  auto n = db.replay(filter);
  std::printf("%lld %s back to pending\n", static_cast<long long>(n), what);
  return cli::exit_ok;
}

// events / events show: a table for people; --json as the admin API's /api/events answers (admin_views).
int events(const ar::config& cfg, const cli::invocation& inv) {
  const auto& q = inv.events;
  std::map<std::string, std::vector<std::string>> kinds;
  for (const auto& e : cfg.endpoints)
    for (auto k : e.kinds) kinds[e.name].emplace_back(ar::to_string(k));
  ar::store db(cfg.database.url);
  if (q.show) {
    auto detail = db.event(*q.show, endpoint_names(cfg), kinds);
    if (detail.empty()) {
      std::fprintf(stderr, "appointment-relay: no event %lld (unknown, or removed by retention)\n",
                   static_cast<long long>(*q.show));
      return cli::exit_failure;
    }
    if (inv.json) {
      std::cout << ar::event_json(*q.show, detail, true);
      return cli::exit_ok;
    }
    const auto& first = detail.front().summary;
    std::printf("event %lld  captured %s  kind %s  appointment %s\n", static_cast<long long>(first.id),
                ar::utc_text(first.captured_at_ms).c_str(), first.kind.empty() ? "-" : first.kind.c_str(),
                first.appointment.empty() ? "-" : first.appointment.c_str());
    std::printf("payload: %s\n", detail.front().payload.empty() ? "(none: not a notification)"
                                                                : detail.front().payload.c_str());
    for (const auto& d : detail) {
      const auto& s = d.summary;
      std::printf("\nendpoint %s: %s, %d attempt%s\n  webhook-id: %s\n", s.endpoint.c_str(), s.state.c_str(),
                  s.attempts, s.attempts == 1 ? "" : "s", d.webhook_id.c_str());
      if (!s.dead_reason.empty()) std::printf("  dead: %s\n", s.dead_reason.c_str());
      for (const auto& a : d.attempts) {
        std::printf("  attempt %d at %s: %s, %.1f ms\n", a.attempt, ar::utc_text(a.at_ms).c_str(),
                    a.status > 0 ? ("http " + std::to_string(a.status)).c_str() : a.error.c_str(),
                    a.latency_ms);
        if (!a.response_body.empty()) std::printf("    body: %s\n", a.response_body.c_str());
      }
      // The success itself is recorded only as the outcome.
      if (s.state == "delivered")
        std::printf("  attempt %d%s%s: delivered\n", s.attempts, s.last_attempt_ms ? " at " : "",
                    ar::utc_text(s.last_attempt_ms).c_str());
    }
    return cli::exit_ok;
  }
  ar::event_filter f;
  f.appointment = q.appointment;
  f.endpoint = q.endpoint;
  f.state = q.state;
  f.kind = q.kind;
  f.since = q.since;
  f.until = q.until;
  f.limit = q.limit;
  f.endpoint_kinds = std::move(kinds);
  auto list = db.events(f, endpoint_names(cfg));
  if (inv.json) {
    std::cout << ar::events_json(list);
    return cli::exit_ok;
  }
  std::printf("%-10s %-20s %-11s %-36s %-12s %-9s %8s  %s\n", "EVENT", "CAPTURED", "KIND", "APPOINTMENT",
              "ENDPOINT", "STATE", "ATTEMPTS", "LAST ERROR");
  for (const auto& e : list)
    std::printf("%-10lld %-20s %-11s %-36s %-12s %-9s %8d  %s\n", static_cast<long long>(e.id),
                ar::utc_text(e.captured_at_ms).c_str(), e.kind.empty() ? "-" : e.kind.c_str(),
                e.appointment.empty() ? "-" : e.appointment.c_str(), e.endpoint.c_str(), e.state.c_str(),
                e.attempts, e.dead_reason.empty() ? e.last_error.c_str() : e.dead_reason.c_str());
  if (list.size() == q.limit)
    std::printf("(the newest %zu; --limit N for more, --since/--until to narrow)\n", list.size());
  return cli::exit_ok;
}

// health: 0 or 1 only, whatever went wrong (a HEALTHCHECK reads any other code as a failure of the probe
// itself). The address: --admin, else the configuration's admin.listen, else APPOINTMENT_RELAY_ADMIN_LISTEN,
// else the default. Without --config only that variable is read: the probe needs no database URL or secret.
int health(const cli::invocation& inv, const std::optional<std::filesystem::path>& file) {
  std::string listen = ar::config{}.admin.listen;
  if (inv.admin) {
    listen = *inv.admin;
  } else if (file) {
    try {
      listen = ar::load_config(file, ar::relay_environment()).admin.listen;
    } catch (const std::exception& e) {
      std::printf("unhealthy: configuration error: %s\n", e.what());
      return cli::exit_failure;
    }
  } else if (const char* v = std::getenv("APPOINTMENT_RELAY_ADMIN_LISTEN"); v != nullptr) {
    listen = v;
  }
  // Under a HEALTHCHECK's usual 3 s timeout, so the probe prints its own reason.
  const auto r = ar::check_health(listen, std::chrono::seconds(2));
  std::printf("%s\n", r.message.c_str());
  return r.healthy ? cli::exit_ok : cli::exit_failure;
}

// Who paused: the login name (the one behind sudo, if any) at this host.
std::string operator_name() {
  std::string who;
  for (const char* var : {"SUDO_USER", "USER", "LOGNAME"})
    if (const char* v = std::getenv(var); v != nullptr && *v != '\0') {
      who = v;
      break;
    }
  if (who.empty()) who = "uid " + std::to_string(::geteuid());
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) == 0 && host[0] != '\0') who += std::string("@") + host;
  return who;
}

int pause_or_resume(const ar::config& cfg, const cli::invocation& inv) {
  const bool pause = inv.cmd == cli::command::pause;
  const auto names = endpoint_names(cfg);
  if (std::find(names.begin(), names.end(), inv.endpoint) == names.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    std::fprintf(stderr, "appointment-relay: no endpoint '%s' in the configuration (it has: %s)\n",
                 inv.endpoint.c_str(), known.c_str());
    return cli::exit_usage;
  }
  ar::store db(cfg.database.url);
  if (!db.set_paused(inv.endpoint, pause, operator_name(), inv.reason)) {
    std::printf("endpoint %s was %s already\n", inv.endpoint.c_str(), pause ? "paused" : "not paused");
    return cli::exit_ok;
  }
  std::printf(pause ? "endpoint %s paused: the running relay sends nothing more to it; its events wait\n"
                    : "endpoint %s resumed: its waiting events go out in order\n",
              inv.endpoint.c_str());
  return cli::exit_ok;
}

int run_command(const cli::invocation& inv) {
  std::optional<std::filesystem::path> file;
  if (inv.config_path) file = *inv.config_path;
  switch (inv.cmd) {
    case cli::command::help:
      std::cout << cli::help_text(cli::command::help);
      return cli::exit_ok;
    case cli::command::version:
      std::printf("appointment-relay %s\n", ar::version);
      return cli::exit_ok;
    case cli::command::health:
      return health(inv, file);
    default:
      break;
  }
  auto cfg = ar::load_config(file, ar::relay_environment());
  switch (inv.cmd) {
    case cli::command::check_config:
      if (auto problem = ar::admin_listen_problem(cfg); !problem.empty()) throw ar::config_error(problem);
      for (const auto& w : ar::config_warnings(cfg)) std::fprintf(stderr, "warning: %s\n", w.c_str());
      std::cout << "# configuration is valid; effective values (secrets masked):\n" << ar::render_config(cfg);
      return cli::exit_ok;
    case cli::command::migrate: {
      auto dir = ar::default_migrations_dir();
      auto applied = ar::migrate(cfg.database.url, dir);
      if (applied.empty()) {
        std::printf("schema appointment_relay is up to date (%s)\n", dir.c_str());
      } else {
        for (int v : applied) std::printf("applied migration %04d\n", v);
      }
      return cli::exit_ok;
    }
    case cli::command::pause:
    case cli::command::resume:
      return pause_or_resume(cfg, inv);
    case cli::command::status:
      return print_status(cfg, inv.json);
    case cli::command::replay:
      return replay(cfg, inv.replay);
    case cli::command::events:
      return events(cfg, inv);
    case cli::command::run: {
      if (auto problem = ar::admin_listen_problem(cfg); !problem.empty()) throw ar::config_error(problem);
      ar::setup_logging(cfg.log.format, cfg.log.level);
      return ar::run_relay(std::move(cfg), [file] { return ar::load_config(file, ar::relay_environment()); });
    }
    default:
      return cli::exit_usage;
  }
}

}  // namespace

// One malloc arena for the relay's two threads (io and database) unless the operator chose otherwise: rows
// are allocated on the database thread and freed on the io thread, and a second arena mostly holds freed
// memory. Measured: peak RSS of a 100,000-event drain 18.1 -> 17.2 MB, CPU per event unchanged.
static void use_one_malloc_arena() {
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr && std::getenv("GLIBC_TUNABLES") == nullptr)
    mallopt(M_ARENA_MAX, 1);
}

int main(int argc, char** argv) {
  use_one_malloc_arena();
  auto parsed = cli::parse_command_line(argc, argv);
  if (auto* err = std::get_if<cli::usage_error>(&parsed)) {
    std::fprintf(stderr, "appointment-relay: %s\n%s\n", err->message.c_str(), err->hint.c_str());
    return err->exit_code;
  }
  const auto& inv = std::get<cli::invocation>(parsed);
  if (inv.help) {
    std::cout << cli::help_text(inv.cmd);
    return cli::exit_ok;
  }
  try {
    return run_command(inv);
  } catch (const ar::config_error& e) {
    std::fprintf(stderr, "appointment-relay: configuration error: %s\n", e.what());
    return cli::exit_config;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "appointment-relay %s: %s\n", cli::to_string(inv.cmd).data(), e.what());
    return cli::exit_failure;
  }
}
