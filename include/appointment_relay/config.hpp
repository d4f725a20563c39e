#pragma once
// The relay's configuration: a TOML file (config/appointment-relay.toml documents every key), every key
// overridable by APPOINTMENT_RELAY_<SECTION>_<KEY>, and short environment names that work with no file.
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "appointment_relay/classifier.hpp"
#include "appointment_relay/http_client.hpp"
#include "appointment_relay/retry_policy.hpp"
#include "appointment_relay/url.hpp"

namespace appointment_relay {

// A configuration that cannot be used. what() names the key, the file and line where known, and what is
// wrong, e.g. "config/relay.toml:12: endpoints.crm.url: not an http(s) URL: 'ftp://x'". Exit code 78.
class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct endpoint_config {
  std::string name;  // [endpoints.<name>]; "default" for APPOINTMENT_RELAY_ENDPOINT_URL. [a-z0-9_-]+
  url target;
  std::vector<std::string> secrets;      // "whsec_..." in signing order; several during a key rotation
  std::vector<notification_kind> kinds;  // the kinds it wants; all six by default
  tls_settings tls;
  int max_in_flight = 16;
  std::chrono::milliseconds timeout{10000};
  // Static headers sent with every request (headers, header_files), in the order given; never a header the
  // relay sets itself.
  header_list headers;
  // Requests per second, 0 for no limit; a burst of up to rate_limit_burst (0: rate_limit) after a quiet
  // spell.
  int rate_limit = 0;
  int rate_limit_burst = 0;
  // Where an endpoint the installation has never seen starts: 0 at the newest event then (it gets what
  // happens from then on), otherwise this far back (at most database.retention).
  std::chrono::milliseconds backfill{0};
  // The breaker opens after breaker_failures failed attempts in a row (0: never) that span at least
  // breaker_after; while open, one probe at a time, 1 s after opening, then doubling up to breaker_probe_max.
  int breaker_failures = 10;
  std::chrono::milliseconds breaker_after{std::chrono::minutes(1)};
  std::chrono::milliseconds breaker_probe_max{std::chrono::minutes(5)};
  // Files secrets were read from (secret_file, header_files), for config_warnings.
  std::vector<std::string> secret_files;
};

// A header name an endpoint may not set (the relay sets it, or it is hop-by-hop), lower case.
bool reserved_header(std::string_view name);

struct config {
  struct database_section {
    std::string url;  // libpq URI or conninfo; required
    std::chrono::milliseconds poll_interval{5000};
    std::chrono::seconds retention{std::chrono::hours(24 * 7)};
    // Dead letters are not removed by retention but this long after their last attempt.
    std::chrono::seconds dead_letter_retention{std::chrono::hours(24 * 30)};
    std::size_t batch_size = 1000;  // rows per read
    // Fencing: an active instance that has not confirmed its leadership for this long stops sending, and a
    // new leader waits this long after taking the lock (db_worker_settings::lease).
    std::chrono::milliseconds leader_lease{5000};
  } database;
  std::vector<endpoint_config> endpoints;  // at least one for `run`
  retry_settings retry;
  struct admin_section {
    std::string listen = "127.0.0.1:9187";  // host:port; empty disables the admin server
    // The bearer token's file, and its content (trailing newlines trimmed). Required for a listen address
    // that is not loopback; when set, everything but /healthz and /readyz needs the token.
    std::string token_file;
    std::string token;
  } admin;
  struct log_section {
    std::string format = "text";  // text | json
    std::string level = "info";   // trace | debug | info | warn | error | critical | off
  } log;
  struct relay_section {
    std::size_t max_pending_per_endpoint = 2000;  // events held in memory per endpoint (backpressure)
    std::chrono::milliseconds shutdown_timeout{10000};
    std::chrono::seconds watchdog_interval{0};  // 0: from systemd's WATCHDOG_USEC
  } relay;
  // Files secrets came from through APPOINTMENT_RELAY_*_FILE variables, for config_warnings.
  std::vector<std::string> secret_files;
};

// What is allowed but unsafe, one sentence each, naming the endpoint or file: a secret file readable by
// group or others, plain http to a host that is not loopback, verify_peer = false. `run` logs them at start
// and on a reload, check-config and status print them.
std::vector<std::string> config_warnings(const config& cfg);

// Why the admin server may not start as configured (listening off loopback without admin.token_file), or
// empty. `run` and `check-config` refuse such a configuration (exit 78); the one-shot commands, which start
// no admin server, do not.
std::string admin_listen_problem(const config& cfg);

// Reads file (when given) then the environment (env: name -> value, normally the process environment).
// Secrets may come from NAME_FILE. Throws config_error.
config load_config(const std::optional<std::filesystem::path>& file,
                   const std::map<std::string, std::string>& env);

// The process environment as a map (only APPOINTMENT_RELAY_* names).
std::map<std::string, std::string> relay_environment();

// The effective configuration as TOML, secrets and database password masked.
std::string render_config(const config& cfg);

// A database URL or conninfo with its password replaced by "***", for logs.
std::string mask_database_url(const std::string& url);

// Keys whose value differs between the running and the reloaded configuration but that take effect only
// after a restart, as "section.key" (e.g. "database.url", "admin.listen"), in table order. Empty when a
// reload applies everything that changed.
std::vector<std::string> keys_needing_restart(const config& running, const config& next);

// One row of the key table that drives load_config, render_config and keys_needing_restart, for the
// documentation and the tests that hold it to the table (the sample file, --help).
struct config_key {
  std::string section;  // "database"; "endpoints" for the keys of every [endpoints.NAME] table
  std::string name;     // "url"
  // As render_config writes it; none for a required key and for secret_file (another way to give secrets).
  std::optional<std::string> default_value;
  bool secret = false;      // masked by render_config
  bool reloadable = false;  // SIGHUP applies a change; otherwise it waits for a restart
};

// Every key, in table order: the sections first, then the keys of an endpoint.
std::vector<config_key> config_keys();

}  // namespace appointment_relay
