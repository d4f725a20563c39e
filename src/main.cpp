// appointment-relay: the command line. Every command but `run` is a short one-shot against the database.
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <malloc.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "appointment_relay/cli.hpp"
#include "appointment_relay/config.hpp"
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

int print_status(const ar::config& cfg, bool json) {
  ar::store db(cfg.database.url);
  auto report = db.status(endpoint_names(cfg));
  if (json) {
    auto out = nlohmann::json::array();
    for (const auto& s : report) {
      out.push_back({{"endpoint", s.endpoint},
                     {"backlog", s.backlog},
                     {"oldest_pending_age_seconds", s.oldest_pending_age_seconds
                                                        ? nlohmann::json(*s.oldest_pending_age_seconds)
                                                        : nlohmann::json(nullptr)},
                     {"dead_letters", s.dead_by_reason}});
    }
    std::cout << out.dump(2) << "\n";
    return cli::exit_ok;
  }
  for (const auto& s : report) {
    std::int64_t dead = 0;
    for (const auto& [reason, n] : s.dead_by_reason) dead += n;
    std::printf("endpoint %s\n  backlog: %lld pending\n", s.endpoint.c_str(),
                static_cast<long long>(s.backlog));
    if (s.oldest_pending_age_seconds)
      std::printf("  oldest pending: %.1f s old\n", *s.oldest_pending_age_seconds);
    std::printf("  dead letters: %lld\n", static_cast<long long>(dead));
    for (const auto& [reason, n] : s.dead_by_reason)
      std::printf("    %6lld  %s\n", static_cast<long long>(n), reason.c_str());
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
  auto n = db.replay(filter);
  std::printf("%lld dead letters back to pending\n", static_cast<long long>(n));
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
    default:
      break;
  }
  auto cfg = ar::load_config(file, ar::relay_environment());
  switch (inv.cmd) {
    case cli::command::check_config:
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
    case cli::command::status:
      return print_status(cfg, inv.json);
    case cli::command::replay:
      return replay(cfg, inv.replay);
    case cli::command::run: {
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
