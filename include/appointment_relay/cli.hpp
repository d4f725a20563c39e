#pragma once
// The command line: `appointment-relay <command> [options]`. A pure function over the arguments: no I/O,
// no environment, no clock; main() prints the texts and exits with the codes below.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace appointment_relay::cli {

// Exit codes (78 is sysexits' EX_CONFIG: systemd's RestartPreventExitStatus can name it).
inline constexpr int exit_ok = 0;
inline constexpr int exit_failure = 1;  // a runtime failure (database unreachable, ...)
inline constexpr int exit_usage = 2;    // a bad command line
inline constexpr int exit_config = 78;  // an invalid configuration (config_error)

enum class command {
  run,
  migrate,
  check_config,
  status,
  replay,
  events,
  pause,
  resume,
  health,
  version,
  help
};

// "run", "migrate", "check-config", "status", "replay", "events", "pause", "resume", "health", "version",
// "help".
std::string_view to_string(command c) noexcept;

// replay: which dead-lettered (or delivered) events to queue again. Either all, or at least one of the
// others; the others combine with AND.
struct replay_filter {
  bool all = false;
  std::optional<std::string> endpoint;     // --endpoint NAME
  std::optional<std::int64_t> event_id;    // --event-id N (the outbox id, > 0)
  std::optional<std::int64_t> since;       // --since TIME, unix seconds (inclusive)
  std::optional<std::int64_t> until;       // --until TIME, unix seconds (exclusive)
  std::optional<std::string> appointment;  // --appointment EXTERNAL_ID
  bool delivered = false;                  // --delivered: delivered events instead of dead letters
  bool dry_run = false;                    // --dry-run: say what would be sent, change nothing
};

// events: which events to list (the filters combine with AND), or `events show EVENT_ID`.
struct events_query {
  std::optional<std::int64_t> show;        // events show EVENT_ID
  std::optional<std::string> appointment;  // --appointment EXTERNAL_ID
  std::optional<std::string> endpoint;     // --endpoint NAME
  std::optional<std::string> state;        // --state pending|delivered|retrying|dead|skipped
  std::optional<std::string> kind;         // --kind created|rescheduled|cancelled|no_show|reverted|checked_in
  std::optional<std::int64_t> since;       // --since TIME, unix seconds (inclusive)
  std::optional<std::int64_t> until;       // --until TIME, unix seconds (exclusive)
  std::size_t limit = 100;                 // --limit N (1 to 10000)
};

struct invocation {
  command cmd = command::help;
  std::optional<std::string> config_path;  // --config FILE / -c FILE
  // --help / -h: print help_text(cmd) and exit 0. Also set for `help [COMMAND]` (cmd is then the command
  // asked about, or command::help for the overview).
  bool help = false;
  replay_filter replay;              // command::replay
  events_query events;               // command::events
  bool json = false;                 // status, events --json
  std::optional<std::string> admin;  // health --admin HOST:PORT (instead of the configuration's admin.listen)
  std::string endpoint;              // pause / resume --endpoint NAME (required)
  std::string reason;                // pause --reason TEXT
};

struct usage_error {
  std::string message;  // "unknown option '--foo' for 'status'"
  std::string hint = "see appointment-relay --help";
  int exit_code = exit_usage;
};

// args: the arguments after the program name (argv + 1). Options may come before or after the command;
// "--opt=value" and "--opt value" are both accepted.
// TIME for --since/--until: RFC 3339 ("2024-05-01T12:00:00Z", "2024-05-01T14:00:00+02:00", fractions
// dropped, ' ' allowed for 'T') or a date "2024-05-01" (midnight UTC).
std::variant<invocation, usage_error> parse_command_line(const std::vector<std::string_view>& args);
std::variant<invocation, usage_error> parse_command_line(int argc, const char* const* argv);

// The help of one command, or the overview for command::help. Ends with a newline.
std::string help_text(command c);

// TIME as parse_command_line reads it; empty when unreadable.
std::optional<std::int64_t> parse_time(std::string_view text);

}  // namespace appointment_relay::cli
