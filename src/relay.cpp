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

  net::io_context io(1);
  metrics m;
  std::unique_ptr<dispatcher> disp;
  bool announced_ready = false;
  auto announce = [&](std::string_view status) {
    if (!announced_ready)
      notify_ready(status);
    else
      notify_status(status);
    announced_ready = true;
  };

  db_worker_settings ws;
  ws.database_url = cfg.database.url;
  ws.endpoints = endpoint_names(cfg);
  ws.poll_interval = cfg.database.poll_interval;
  ws.retention = cfg.database.retention;
  db_worker_callbacks callbacks;
  callbacks.on_active = [&](std::string installation_id) {
    spdlog::info("database connected and listening; this instance is active (installation {})",
                 installation_id);
    disp->activate(std::move(installation_id));
    announce("active: delivering");
  };
  callbacks.on_standby = [&]() {
    spdlog::info("database connected; another instance is active: standing by");
    announce("standby: another instance is active");
  };
  callbacks.on_inactive = [&]() {
    spdlog::warn("database connection lost: sending nothing new until it is back");
    disp->deactivate();
    notify_status("database connection lost: reconnecting");
  };
  callbacks.on_wake = [&]() { disp->wake(); };

  std::unique_ptr<db_worker> worker;
  std::unique_ptr<admin_server> admin;
  try {
    worker = start_db_worker(io.get_executor(), ws, callbacks, m);
    disp = make_dispatcher(io.get_executor(), dispatch_settings(cfg), *worker, m);
    if (!cfg.admin.listen.empty()) {
      admin = make_admin_server(io.get_executor(), cfg.admin.listen, m, [&m] { return m.database_up(); });
      admin->start();
      spdlog::info("admin server on {} port {} (/healthz, /readyz, /metrics)", cfg.admin.listen,
                   admin->port());
    }
  } catch (const std::exception& e) {
    spdlog::critical("cannot start: {}", e.what());
    if (worker) worker->stop(std::chrono::seconds(1));
    return 1;
  }

  // Watchdog: pinged from the io thread, so a stuck loop is noticed by systemd.
  auto watchdog = cfg.relay.watchdog_interval.count() > 0
                      ? std::chrono::duration_cast<std::chrono::microseconds>(cfg.relay.watchdog_interval) / 2
                      : watchdog_interval();
  steady_timer watchdog_timer(io);
  std::function<void()> ping = [&] {
    notify_watchdog();
    watchdog_timer.expires_after(watchdog);
    watchdog_timer.async_wait([&](error_code ec) {
      if (!ec) ping();
    });
  };
  if (watchdog.count() > 0) ping();

  for (const auto& e : cfg.endpoints)
    if (e.secrets.empty())
      spdlog::warn("endpoint {} has no signing secret: its webhooks go out unsigned", e.name);

  int exit_code = 0;
  bool stopping = false;
  net::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);
  std::function<void()> wait_signal = [&] {
    signals.async_wait([&](error_code ec, int sig) {
      if (ec) return;
      if (sig == SIGHUP) {
        notify_reloading();
        try {
          config next = reload();
          set_log_level(next.log.level);
          disp->reconfigure(dispatch_settings(next));
          worker->set_endpoints(endpoint_names(next));
          cfg = std::move(next);
          spdlog::info("configuration reloaded:\n{}", render_config(cfg));
        } catch (const std::exception& e) {
          spdlog::error("configuration reload failed, keeping the previous one: {}", e.what());
        }
        notify_ready("active: configuration reloaded");
      } else if (!stopping) {
        stopping = true;
        notify_stopping();
        spdlog::info(
            "{} received: draining {} requests in flight (at most {} ms); a second signal exits at once",
            sig == SIGINT ? "SIGINT" : "SIGTERM", disp->in_flight(), cfg.relay.shutdown_timeout.count());
        disp->drain(cfg.relay.shutdown_timeout, [&] {
          worker->stop(std::chrono::seconds(5));
          if (admin) admin->stop();
          watchdog_timer.cancel();
          signals.cancel();
          spdlog::info("stopped");
          io.stop();
        });
      } else {
        spdlog::warn("second signal: exiting now; what was not finished stays pending");
        spdlog::default_logger()->flush();
        std::_Exit(1);
      }
      wait_signal();
    });
  };
  wait_signal();

  try {
    io.run();
  } catch (const std::exception& e) {
    spdlog::critical("fatal: {}", e.what());
    exit_code = 1;
  }
  if (worker) worker->stop(std::chrono::seconds(5));
  return exit_code;
}

}  // namespace appointment_relay
