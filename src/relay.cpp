#include "appointment_relay/relay.hpp"

#include <unistd.h>
#include <csignal>
#include <cstdlib>

#include <spdlog/spdlog.h>

#include "appointment_relay/admin_server.hpp"
#include "appointment_relay/db_worker.hpp"
#include "appointment_relay/dispatcher.hpp"
#include "appointment_relay/logging.hpp"
#include "appointment_relay/metrics.hpp"
#include "appointment_relay/net.hpp"
#include "appointment_relay/systemd_notify.hpp"
#include "appointment_relay/version.hpp"

namespace appointment_relay {
namespace {

dispatcher_settings dispatch_settings(const config& cfg) {
  dispatcher_settings s;
  s.endpoints = cfg.endpoints;
  s.retry = cfg.retry;
  s.max_pending_per_endpoint = cfg.relay.max_pending_per_endpoint;
  s.batch_size = cfg.database.batch_size;
  return s;
}

std::vector<std::string> endpoint_names(const config& cfg) {
  std::vector<std::string> names;
  for (const auto& e : cfg.endpoints) names.push_back(e.name);
  return names;
}

// What the admin API needs to tell an event of a kind an endpoint does not want ("skipped").
std::map<std::string, std::vector<std::string>> endpoint_kinds(const config& cfg) {
  std::map<std::string, std::vector<std::string>> kinds;
  for (const auto& e : cfg.endpoints)
    for (auto k : e.kinds) kinds[e.name].emplace_back(to_string(k));
  return kinds;
}

std::map<std::string, std::chrono::milliseconds> backfill_of(const config& cfg) {
  std::map<std::string, std::chrono::milliseconds> b;
  for (const auto& e : cfg.endpoints) b.emplace(e.name, e.backfill);
  return b;
}

db_worker_settings worker_settings(const config& cfg) {
  db_worker_settings ws;
  ws.database_url = cfg.database.url;
  ws.endpoints = endpoint_names(cfg);
  ws.backfill = backfill_of(cfg);
  ws.poll_interval = cfg.database.poll_interval;
  ws.retention = cfg.database.retention;
  ws.dead_letter_retention = cfg.database.dead_letter_retention;
  ws.lease = cfg.database.leader_lease;
  ws.heartbeat = std::max(std::chrono::milliseconds(50), ws.lease / 5);
  return ws;
}

void warn_unsigned_endpoints(const config& cfg) {
  for (const auto& e : cfg.endpoints)
    if (e.secrets.empty())
      spdlog::warn("endpoint {} has no signing secret: its webhooks go out unsigned", e.name);
  for (const auto& w : config_warnings(cfg)) spdlog::warn("configuration: {}", w);
}

// The running daemon: the components on one io thread, and a handler for each thing that happens to it
// (leadership gained or lost, a signal). Built by start(), run by run().
class daemon {
 public:
  daemon(config cfg, std::function<config()> reload) : cfg_(std::move(cfg)), reload_(std::move(reload)) {}

  // Starts the database worker, the dispatcher and the admin server. False (logged) when one cannot start.
  bool start() {
    try {
      worker_ = start_db_worker(io_.get_executor(), worker_settings(cfg_), callbacks(), metrics_);
      dispatcher_ = make_dispatcher(io_.get_executor(), dispatch_settings(cfg_), *worker_, metrics_);
      if (!cfg_.admin.listen.empty()) {
        admin_api_settings api;
        // The API's reads wait at most as long as the API waits for them.
        api.data = store_admin_data(cfg_.database.url, std::chrono::milliseconds(10000));
        api.endpoints = endpoint_names(cfg_);
        api.endpoint_kinds = endpoint_kinds(cfg_);
        api.token = cfg_.admin.token;
        admin_ = make_admin_server(
            io_.get_executor(), cfg_.admin.listen, metrics_, [this] { return metrics_.database_up(); },
            std::move(api));
        admin_->start();
        spdlog::info("admin server on {} port {} (/healthz, /readyz, /metrics, /api/, status page at /{})",
                     cfg_.admin.listen, admin_->port(),
                     cfg_.admin.token.empty() ? "; no token: no payloads" : "; bearer token required");
      }
    } catch (const std::exception& e) {
      spdlog::critical("cannot start: {}", e.what());
      if (worker_) worker_->stop(std::chrono::seconds(1));
      return false;
    }
    start_watchdog();
    warn_unsigned_endpoints(cfg_);
    wait_for_signal();
    return true;
  }

  // Runs until stopped; the process exit code.
  int run() {
    int exit_code = 0;
    try {
      io_.run();
    } catch (const std::exception& e) {
      spdlog::critical("fatal: {}", e.what());
      exit_code = 1;
    }
    if (worker_) worker_->stop(std::chrono::seconds(5));
    return exit_code;
  }

 private:
  db_worker_callbacks callbacks() {
    db_worker_callbacks cb;
    cb.on_active = [this](std::string installation_id, std::uint64_t session) {
      on_active(std::move(installation_id), session);
    };
    cb.on_standby = [this] { on_standby(); };
    cb.on_inactive = [this] { on_inactive(); };
    cb.on_wake = [this] { dispatcher_->wake(); };
    cb.on_control = [this](std::vector<endpoint_control> controls, bool initial) {
      dispatcher_->control(controls, initial);
    };
    return cb;
  }

  void on_active(std::string installation_id, std::uint64_t session) {
    spdlog::info("database connected and listening; this instance is active (installation {})",
                 installation_id);
    dispatcher_->activate(std::move(installation_id), session);
    metrics_.set_leader(true);
    announce("active: delivering");
  }

  void on_standby() {
    spdlog::info("database connected; another instance is active: standing by");
    metrics_.set_leader(false);
    announce("standby: another instance is active");
  }

  void on_inactive() {
    spdlog::warn("not active (database connection lost or leadership not confirmed): sending nothing new");
    metrics_.set_leader(false);
    dispatcher_->deactivate();
    notify_status("database connection lost or leadership not confirmed: reconnecting");
  }

  void announce(std::string_view status) {
    if (!announced_ready_)
      notify_ready(status);
    else
      notify_status(status);
    announced_ready_ = true;
  }

  // SIGHUP: the new configuration is loaded and handed to the dispatcher whole; on any error nothing changes.
  void on_reload() {
    notify_reloading();
    try {
      config next = reload_();
      const auto restart = keys_needing_restart(cfg_, next);
      // The worker knows a new endpoint's backfill before the endpoint's first read.
      worker_->set_endpoints(endpoint_names(next), backfill_of(next));
      try {
        dispatcher_->reconfigure(dispatch_settings(next));  // throws before changing anything
      } catch (...) {
        worker_->set_endpoints(endpoint_names(cfg_), backfill_of(cfg_));
        throw;
      }
      set_log_level(next.log.level);
      if (admin_) admin_->set_endpoints(endpoint_names(next), endpoint_kinds(next));
      if (!restart.empty()) {
        std::string keys;
        for (const auto& k : restart) keys += (keys.empty() ? "" : ", ") + k;
        spdlog::warn("configuration reloaded, but these keys keep their running value until a restart: {}",
                     keys);
      }
      // What runs is what the components took: the restart-only keys keep their running value.
      keep_running_values(next);
      if (const auto missed = keys_needing_restart(cfg_, next); !missed.empty())
        spdlog::error("internal: keep_running_values misses {} (the key table has a new restart-only key)",
                      missed.front());
      cfg_ = std::move(next);
      warn_unsigned_endpoints(cfg_);
      spdlog::info("configuration reloaded:\n{}", render_config(cfg_));
    } catch (const std::exception& e) {
      spdlog::error("configuration reload failed, nothing changed, the previous configuration stays: {}",
                    e.what());
    }
    notify_ready("active: configuration reloaded");
  }

  void keep_running_values(config& next) const {
    next.database.url = cfg_.database.url;
    next.database.poll_interval = cfg_.database.poll_interval;
    next.database.retention = cfg_.database.retention;
    next.database.dead_letter_retention = cfg_.database.dead_letter_retention;
    next.database.leader_lease = cfg_.database.leader_lease;
    next.admin = cfg_.admin;
    next.log.format = cfg_.log.format;
    next.relay.watchdog_interval = cfg_.relay.watchdog_interval;
  }

  // SIGTERM/SIGINT: drain, then stop everything; a second one exits at once.
  void on_stop_signal(int sig) {
    if (stopping_) {
      spdlog::warn("second signal: exiting now; what was not finished stays pending");
      spdlog::default_logger()->flush();
      std::_Exit(1);
    }
    stopping_ = true;
    notify_stopping();
    spdlog::info("{} received: draining {} requests in flight (at most {} ms); a second signal exits at once",
                 sig == SIGINT ? "SIGINT" : "SIGTERM", dispatcher_->in_flight(),
                 cfg_.relay.shutdown_timeout.count());
    dispatcher_->drain(cfg_.relay.shutdown_timeout, [this] {
      worker_->stop(std::chrono::seconds(5));
      if (admin_) admin_->stop();
      watchdog_timer_.cancel();
      signals_.cancel();
      spdlog::info("stopped");
      io_.stop();
    });
  }

  void wait_for_signal() {
    signals_.async_wait([this](error_code ec, int sig) {
      if (ec) return;
      if (sig == SIGHUP)
        on_reload();
      else
        on_stop_signal(sig);
      wait_for_signal();
    });
  }

  // Pinged from the io thread, so a stuck loop is noticed by systemd.
  void start_watchdog() {
    watchdog_ = cfg_.relay.watchdog_interval.count() > 0
                    ? std::chrono::duration_cast<std::chrono::microseconds>(cfg_.relay.watchdog_interval) / 2
                    : watchdog_interval();
    if (watchdog_.count() > 0) ping_watchdog();
  }

  void ping_watchdog() {
    notify_watchdog();
    watchdog_timer_.expires_after(watchdog_);
    watchdog_timer_.async_wait([this](error_code ec) {
      if (!ec) ping_watchdog();
    });
  }

  config cfg_;
  std::function<config()> reload_;
  net::io_context io_{1};
  metrics metrics_;
  std::unique_ptr<db_worker> worker_;
  std::unique_ptr<dispatcher> dispatcher_;
  std::unique_ptr<admin_server> admin_;
  net::signal_set signals_{io_, SIGINT, SIGTERM, SIGHUP};
  steady_timer watchdog_timer_{io_};
  std::chrono::microseconds watchdog_{0};
  bool announced_ready_ = false;
  bool stopping_ = false;
};

}  // namespace

int run_relay(config cfg, std::function<config()> reload) {
  std::signal(SIGPIPE, SIG_IGN);  // a peer closing a socket is an error code, never a process death
  spdlog::info("appointment-relay {} starting (pid {}), effective configuration:\n{}", version, ::getpid(),
               render_config(cfg));
  if (cfg.endpoints.empty()) {
    spdlog::critical(
        "no endpoint is configured: set APPOINTMENT_RELAY_ENDPOINT_URL or an [endpoints.NAME] table");
    return 78;
  }
  daemon d(std::move(cfg), std::move(reload));
  if (!d.start()) return 1;
  return d.run();
}

}  // namespace appointment_relay
