#pragma once
// The daemon (`appointment-relay run`): wires the listener stage (db_worker), the dispatch stage, the admin
// server, signals and the systemd notifications on one io thread, until SIGTERM or SIGINT.
#include <functional>

#include "appointment_relay/config.hpp"

namespace appointment_relay {

// reload is called on SIGHUP: it returns the new configuration or throws config_error (the old one stays).
// Returns the process exit code: 0 after a clean drain, 1 on a runtime failure.
int run_relay(config cfg, std::function<config()> reload);

}  // namespace appointment_relay
