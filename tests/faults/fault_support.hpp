#pragma once
// Shared by the fault tests: the relay's environment for a test, the stream size, a receiver fixture.
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <pqxx/pqxx>

#include "support/canvas_stream.hpp"
#include "support/relay_process.hpp"
#include "support/test_database.hpp"
#include "support/test_http_server.hpp"

namespace appointment_relay::testing {

inline constexpr const char* fault_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// How many appointment lives a stream plays: a few thousand notifications normally, fewer under the
// sanitizers (slower by a few times); APPOINTMENT_RELAY_TEST_SCALE (a factor, e.g. 0.5) scales it.
inline int stream_lives(int normal = 700) {
  double scale = 1.0;
#if defined(__SANITIZE_ADDRESS__)
  scale = 0.4;
#endif
  if (const char* s = std::getenv("APPOINTMENT_RELAY_TEST_SCALE")) scale = std::atof(s);
  int n = static_cast<int>(normal * scale);
  return n < 20 ? 20 : n;
}

// The daemon's environment against db and one endpoint ("default"), fast retries, admin on a free port.
inline environment relay_env(const scratch_database& db, const std::string& endpoint_url) {
  return {
      {"APPOINTMENT_RELAY_DATABASE_URL", db.url()},       {"APPOINTMENT_RELAY_ENDPOINT_URL", endpoint_url},
      {"APPOINTMENT_RELAY_SIGNING_SECRET", fault_secret}, {"APPOINTMENT_RELAY_ADMIN_LISTEN", "127.0.0.1:0"},
      {"APPOINTMENT_RELAY_RETRY_BASE_DELAY", "50ms"},     {"APPOINTMENT_RELAY_RETRY_MAX_DELAY", "500ms"},
      {"APPOINTMENT_RELAY_DATABASE_POLL_INTERVAL", "1s"}, {"APPOINTMENT_RELAY_DATABASE_LEADER_LEASE", "1s"},
      {"APPOINTMENT_RELAY_RELAY_SHUTDOWN_TIMEOUT", "5s"}, {"APPOINTMENT_RELAY_LOG_LEVEL", "info"},
  };
}

// Terminates the database's backends but the stream's own and ours (the relay's connections). Returns how
// many.
inline int terminate_relay_backends(const scratch_database& db) {
  pqxx::connection c(db.url());
  pqxx::nontransaction tx(c);
  auto r = tx.exec(
      "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = " + tx.quote(db.name()) +
      " AND pid <> pg_backend_pid() AND application_name <> " + tx.quote(canvas_stream::application_name));
  return r[0][0].as<int>();
}

// Checks done every step until it holds (true) or timeout has passed (false).
inline bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout,
                       std::chrono::milliseconds step = std::chrono::milliseconds(5)) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(step);
  }
  return true;
}

inline std::string stream_summary(const std::vector<expected_notification>& expected) {
  std::map<std::string, int> kinds;
  for (const auto& e : expected) ++kinds[e.kind];
  std::string s = std::to_string(expected.size()) + " notifications:";
  for (const auto& [k, n] : kinds) s += " " + k + "=" + std::to_string(n);
  return s;
}

}  // namespace appointment_relay::testing
