#pragma once
// The service manager's notification protocol (sd_notify), for a Type=notify unit. Every function is a
// no-op returning false when NOTIFY_SOCKET is unset (run by hand, in a container, in tests); true means
// the datagram was sent. Callable from any thread; none throws. Newlines in status texts become spaces
// (the protocol is one assignment per line).
#include <chrono>
#include <string_view>

namespace appointment_relay {

// READY=1 (and STATUS=<status> when not empty): start-up finished, or a reload finished.
bool notify_ready(std::string_view status = {});
// RELOADING=1 with MONOTONIC_USEC=<CLOCK_MONOTONIC now, in microseconds>, as systemd >= 253 expects;
// follow it with notify_ready() when the reload is done.
bool notify_reloading();
// STOPPING=1: shutdown began.
bool notify_stopping();
// WATCHDOG=1: keep-alive ping; send it every watchdog_interval().
bool notify_watchdog();
// STATUS=<text>: a one-line status shown by `systemctl status`.
bool notify_status(std::string_view text);

// Half of the watchdog timeout the service manager set (WATCHDOG_USEC, for this process), i.e. how often
// to call notify_watchdog(); zero when the watchdog is not enabled.
std::chrono::microseconds watchdog_interval();

}  // namespace appointment_relay
