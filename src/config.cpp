#include "appointment_relay/config.hpp"

#include <sys/stat.h>

#include "appointment_relay/admin_auth.hpp"
#include "appointment_relay/json_escape.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string_view>
#include <utility>
#include <variant>

#include <toml++/toml.h>

extern char** environ;

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::string_view env_prefix = "APPOINTMENT_RELAY_";

// The six kinds by name. Kept here (not parse_notification_kind) so that the configuration does not
// depend on the classifier's implementation.
constexpr std::array<std::pair<std::string_view, notification_kind>, notification_kind_count> kind_names{{
    {"created", notification_kind::created},
    {"rescheduled", notification_kind::rescheduled},
    {"cancelled", notification_kind::cancelled},
    {"no_show", notification_kind::no_show},
    {"reverted", notification_kind::reverted},
    {"checked_in", notification_kind::checked_in},
}};

std::vector<notification_kind> all_kinds() {
  std::vector<notification_kind> kinds;
  for (const auto& [name, kind] : kind_names) kinds.push_back(kind);
  return kinds;
}

std::string_view kind_name(notification_kind kind) {
  for (const auto& [name, k] : kind_names)
    if (k == kind) return name;
  return "?";
}

std::string upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Splits on commas and white space (also newlines: a secrets file holds one per line).
std::vector<std::string> split_list(std::string_view s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      if (!cur.empty()) out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

bool valid_endpoint_name(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

// "whsec_" followed by standard base64 (with padding) of at least one byte.
bool valid_secret(std::string_view s) {
  if (!s.starts_with("whsec_")) return false;
  s.remove_prefix(6);
  if (s.empty() || s.size() % 4 != 0) return false;
  std::size_t pad = 0;
  while (pad < 2 && !s.empty() && s.back() == '=') {
    s.remove_suffix(1);
    ++pad;
  }
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/';
  });
}

std::optional<std::string> read_text_file(const std::string& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = std::strerror(errno);
    return std::nullopt;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    *error = "read error";
    return std::nullopt;
  }
  return ss.str();
}

// "500ms", "5s", "10m", "24h", "7d", compounds such as "1h30m", or a bare integer (seconds).
std::optional<milliseconds> parse_duration(std::string_view text) {
  text = trim(text);
  if (text.empty()) return std::nullopt;
  constexpr std::int64_t limit = std::int64_t{100} * 365 * 24 * 3600 * 1000;  // a century is plenty
  std::int64_t total = 0;
  bool bare = std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  while (!text.empty()) {
    std::int64_t n = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc{} || ptr == text.data() || n < 0 || text[0] == '-' || text[0] == '+')
      return std::nullopt;
    text.remove_prefix(static_cast<std::size_t>(ptr - text.data()));
    std::int64_t unit = 0;
    if (bare) {
      unit = 1000;
    } else if (text.starts_with("ms")) {
      unit = 1, text.remove_prefix(2);
    } else if (text.starts_with("s")) {
      unit = 1000, text.remove_prefix(1);
    } else if (text.starts_with("m")) {
      unit = 60'000, text.remove_prefix(1);
    } else if (text.starts_with("h")) {
      unit = 3'600'000, text.remove_prefix(1);
    } else if (text.starts_with("d")) {
      unit = 86'400'000, text.remove_prefix(1);
    } else {
      return std::nullopt;
    }
    if (n > limit / unit || total + n * unit > limit) return std::nullopt;
    total += n * unit;
  }
  return milliseconds(total);
}

std::string format_duration(milliseconds d) {
  auto ms = d.count();
  if (ms == 0) return "0s";
  if (ms % 86'400'000 == 0 && ms > 86'400'000) return std::to_string(ms / 86'400'000) + "d";
  if (ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

std::string_view type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

// One value to apply, from the file (node) or from an environment variable (text).
struct source {
  std::string where;  // "path/relay.toml:7" or "APPOINTMENT_RELAY_DATABASE_URL"
  std::string key;    // "database.url"
  const toml::node* node = nullptr;
  std::string text;

  [[noreturn]] void fail(std::string_view what) const {
    throw config_error(where + ": " + key + ": " + std::string(what));
  }

  std::string str() const {
    if (!node) return text;
    if (auto s = node->value<std::string>(); s && node->is_string()) return *s;
    fail("expected a string, got " + std::string(type_name(*node)));
  }

  std::int64_t integer(std::int64_t lo, std::int64_t hi) const {
    std::int64_t v = 0;
    if (node) {
      if (!node->is_integer()) fail("expected an integer, got " + std::string(type_name(*node)));
      v = *node->value<std::int64_t>();
    } else {
      auto t = trim(text);
      auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
      if (t.empty() || ec != std::errc{} || ptr != t.data() + t.size())
        fail("expected an integer, got '" + text + "'");
    }
    if (v < lo || v > hi)
      fail("must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " +
           std::to_string(v));
    return v;
  }

  bool boolean() const {
    if (node) {
      if (!node->is_boolean()) fail("expected true or false, got " + std::string(type_name(*node)));
      return *node->value<bool>();
    }
    auto t = lower(trim(text));
    if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
    if (t == "false" || t == "0" || t == "no" || t == "off") return false;
    fail("expected true or false, got '" + text + "'");
  }

  milliseconds duration(milliseconds min, bool whole_seconds) const {
    std::string shown;
    std::optional<milliseconds> d;
    if (node && node->is_integer()) {
      auto v = *node->value<std::int64_t>();
      shown = std::to_string(v);
      if (v >= 0 && v <= std::int64_t{100} * 365 * 24 * 3600) d = seconds(v);
    } else if (node && !node->is_string()) {
      fail("expected a duration such as \"5s\", got " + std::string(type_name(*node)));
    } else {
      shown = str();
      d = parse_duration(shown);
    }
    if (!d) fail("bad duration '" + shown + "' (use e.g. \"500ms\", \"5s\", \"10m\", \"24h\", \"7d\")");
    if (whole_seconds && d->count() % 1000 != 0) fail("must be whole seconds, got '" + shown + "'");
    if (*d < min) fail("must be at least " + format_duration(min) + ", got '" + shown + "'");
    return *d;
  }

  // Static headers: a table (Name = "value") or an array of "Name: value" strings in the file; lines of
  // "Name: value" in the environment. Names are HTTP tokens, values have no control characters, and no name
  // the relay sets itself (or a hop-by-hop one) is accepted.
  header_list headers() const {
    std::vector<std::pair<std::string, std::string>> raw;
    auto split = [&](std::string_view line) {
      auto colon = line.find(':');
      if (colon == std::string_view::npos) fail("expected \"Name: value\", got '" + std::string(line) + "'");
      raw.emplace_back(std::string(trim(line.substr(0, colon))), std::string(trim(line.substr(colon + 1))));
    };
    if (!node) {
      std::size_t start = 0;
      while (start <= text.size()) {
        auto end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        if (auto line = trim(std::string_view(text).substr(start, end - start)); !line.empty()) split(line);
        start = end + 1;
      }
    } else if (auto* t = node->as_table()) {
      for (auto&& [k, v] : *t) {
        if (!v.is_string()) fail("header " + std::string(k.str()) + ": expected a string value");
        raw.emplace_back(std::string(k.str()), *v.value<std::string>());
      }
    } else if (node->is_array()) {
      for (const auto& line : list()) split(line);
    } else {
      fail("expected a table of header names and values, got " + std::string(type_name(*node)));
    }
    for (const auto& [name, value] : raw) check_header(name, value);
    return raw;
  }

  void check_header(const std::string& name, const std::string& value) const {
    static constexpr std::string_view tchar = "!#$%&'*+-.^_`|~";
    bool token = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || tchar.find(c) != std::string_view::npos;
    });
    if (!token) fail("'" + name + "' is not a valid header name");
    if (reserved_header(lower(name)))
      fail("header " + name + " is set by the relay itself and cannot be given");
    // Never the value in the message: it may be a credential.
    if (std::any_of(value.begin(), value.end(), [](char c) {
          auto u = static_cast<unsigned char>(c);
          return (u < 0x20 && c != '\t') || u == 0x7f;
        }))
      fail("header " + name + ": the value has a control character (CR, LF, ...; value not shown)");
  }

  std::vector<std::string> list() const {
    if (!node) return split_list(text);
    auto* arr = node->as_array();
    if (!arr) fail("expected an array of strings, got " + std::string(type_name(*node)));
    std::vector<std::string> out;
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const auto& el = *arr->get(i);
      if (!el.is_string())
        fail("element " + std::to_string(i + 1) + ": expected a string, got " + std::string(type_name(el)));
      out.push_back(*el.value<std::string>());
    }
    return out;
  }
};

void check_listen(const source& src, const std::string& listen) {
  if (listen.empty()) return;  // admin server disabled
  auto colon = listen.rfind(':');
  bool ok = colon != std::string::npos && colon > 0;
  if (ok) {
    std::string_view host(listen.data(), colon);
    if (host.front() == '[')
      ok = host.size() > 2 && host.back() == ']';
    else
      ok = host.find(':') == std::string_view::npos;
    std::string_view port(listen.data() + colon + 1, listen.size() - colon - 1);
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    ok = ok && !port.empty() && ec == std::errc{} && ptr == port.data() + port.size() && p <= 65535;
  }
  if (!ok)
    src.fail("expected host:port (e.g. 127.0.0.1:9187, [::1]:9187) or \"\" to disable, got '" + listen + "'");
}

constexpr std::int64_t max_count = 100'000'000;

// A TOML basic string: its escapes are JSON's.
std::string quote(std::string_view s) {
  std::string out = "\"";
  append_json_escaped(s, out);
  out += '"';
  return out;
}

// The key table: one row per key drives reading it from the file and from the environment, rendering it
// (render_config), its default (config_keys) and what a reload does with it (keys_needing_restart).

// A key's value in the form its type has, so that rendering and comparing need not know the key.
using key_value = std::variant<std::string, std::int64_t, milliseconds, bool, std::vector<std::string>>;

enum class secrecy {
  plain,
  database_password,  // the password inside a libpq URI or conninfo is masked
  signing_secrets,    // every secret of the list is masked
  header_values,      // "Name: value" lines whose values are masked
  endpoint_url,       // user information, query values and fragment masked (mask_url)
};

// What SIGHUP does with a changed value: what src/relay.cpp (run_relay) hands to the running components.
enum class on_reload {
  applies,  // the dispatcher, the log level or the signal handler takes the new value
  restart,  // read once at start (a connection, a socket, a timer, the log sink)
};

enum class presence { has_default, required };

using enum secrecy;
using enum on_reload;
using enum presence;

// One key. Owner is config for the sections, endpoint_config for the keys of every [endpoints.NAME]
// table. The key's type is the alternative of key_value that get returns and parse reads; its default is get
// of a default owner, i.e. the member initializers of config.hpp.
template <class Owner>
struct key_row {
  std::string_view section;  // "database"; "endpoints" for an endpoint's keys
  std::string_view name;
  on_reload reload;
  secrecy secret;
  presence need;
  void (*parse)(Owner&, const source&);  // reads, validates (source::fail) and stores
  key_value (*get)(const Owner&);        // nullptr: another way to give a key (secret_file), not rendered
};

const std::array<key_row<config>, 17> section_keys{{
    {"database", "url", restart, database_password, required,
     [](config& c, const source& s) {
       c.database.url = std::string(trim(s.str()));
       if (c.database.url.empty()) s.fail("must not be empty");
     },
     [](const config& c) -> key_value { return c.database.url; }},
    {"database", "poll_interval", restart, plain, has_default,
     [](config& c, const source& s) { c.database.poll_interval = s.duration(1ms, false); },
     [](const config& c) -> key_value { return c.database.poll_interval; }},
    {"database", "retention", restart, plain, has_default,
     [](config& c, const source& s) {
       c.database.retention = std::chrono::duration_cast<seconds>(s.duration(1s, true));
     },
     [](const config& c) -> key_value { return c.database.retention; }},
    {"database", "dead_letter_retention", restart, plain, has_default,
     [](config& c, const source& s) {
       c.database.dead_letter_retention = std::chrono::duration_cast<seconds>(s.duration(1s, true));
     },
     [](const config& c) -> key_value { return c.database.dead_letter_retention; }},
    {"database", "batch_size", applies, plain, has_default,
     [](config& c, const source& s) {
       c.database.batch_size = static_cast<std::size_t>(s.integer(1, 1'000'000));
     },
     [](const config& c) -> key_value { return static_cast<std::int64_t>(c.database.batch_size); }},
    {"database", "leader_lease", restart, plain, has_default,
     [](config& c, const source& s) {
       c.database.leader_lease = s.duration(100ms, false);
       if (c.database.leader_lease > std::chrono::seconds(10))
         s.fail("must be at most 10s (the session timeouts are longer)");
     },
     [](const config& c) -> key_value { return c.database.leader_lease; }},
    {"retry", "base_delay", applies, plain, has_default,
     [](config& c, const source& s) { c.retry.base_delay = s.duration(1ms, false); },
     [](const config& c) -> key_value { return c.retry.base_delay; }},
    {"retry", "max_delay", applies, plain, has_default,
     [](config& c, const source& s) { c.retry.max_delay = s.duration(1ms, false); },
     [](const config& c) -> key_value { return c.retry.max_delay; }},
    {"retry", "max_age", applies, plain, has_default,
     [](config& c, const source& s) {
       c.retry.max_age = std::chrono::duration_cast<seconds>(s.duration(1s, true));
     },
     [](const config& c) -> key_value { return c.retry.max_age; }},
    {"retry", "max_attempts", applies, plain, has_default,
     [](config& c, const source& s) { c.retry.max_attempts = static_cast<int>(s.integer(0, 1'000'000)); },
     [](const config& c) -> key_value { return std::int64_t{c.retry.max_attempts}; }},
    {"admin", "listen", restart, plain, has_default,
     [](config& c, const source& s) {
       c.admin.listen = std::string(trim(s.str()));
       check_listen(s, c.admin.listen);
     },
     [](const config& c) -> key_value { return c.admin.listen; }},
    // The path is shown, never the token; finish() requires it for a listen address that is not loopback.
    {"admin", "token_file", restart, plain, has_default,
     [](config& c, const source& s) {
       c.admin.token_file = std::string(trim(s.str()));
       c.admin.token.clear();
       if (c.admin.token_file.empty()) return;
       std::string err;
       auto content = read_text_file(c.admin.token_file, &err);
       if (!content) s.fail("cannot read '" + c.admin.token_file + "': " + err);
       while (!content->empty() && (content->back() == '\n' || content->back() == '\r')) content->pop_back();
       // A bearer token is sent in a header: no blanks or control characters; short ones can be guessed.
       if (content->size() < 16 || std::any_of(content->begin(), content->end(), [](char ch) {
             auto u = static_cast<unsigned char>(ch);
             return u <= 0x20 || u == 0x7f;
           }))
         s.fail("the token in '" + c.admin.token_file +
                "' must be at least 16 characters without blanks or control characters (value not shown)");
       c.admin.token = std::move(*content);
     },
     [](const config& c) -> key_value { return c.admin.token_file; }},
    {"log", "format", restart, plain, has_default,
     [](config& c, const source& s) {
       auto v = s.str();
       if (v != "text" && v != "json") s.fail("expected \"text\" or \"json\", got '" + v + "'");
       c.log.format = v;
     },
     [](const config& c) -> key_value { return c.log.format; }},
    {"log", "level", applies, plain, has_default,
     [](config& c, const source& s) {
       auto v = s.str();
       static constexpr std::array<std::string_view, 7> levels{"trace", "debug",    "info", "warn",
                                                               "error", "critical", "off"};
       if (std::find(levels.begin(), levels.end(), v) == levels.end())
         s.fail("expected one of trace, debug, info, warn, error, critical, off, got '" + v + "'");
       c.log.level = v;
     },
     [](const config& c) -> key_value { return c.log.level; }},
    {"relay", "max_pending_per_endpoint", applies, plain, has_default,
     [](config& c, const source& s) {
       c.relay.max_pending_per_endpoint = static_cast<std::size_t>(s.integer(1, max_count));
     },
     [](const config& c) -> key_value {
       return static_cast<std::int64_t>(c.relay.max_pending_per_endpoint);
     }},
    // Read when SIGTERM or SIGINT arrives, so the reloaded value is the one used.
    {"relay", "shutdown_timeout", applies, plain, has_default,
     [](config& c, const source& s) { c.relay.shutdown_timeout = s.duration(0ms, false); },
     [](const config& c) -> key_value { return c.relay.shutdown_timeout; }},
    {"relay", "watchdog_interval", restart, plain, has_default,
     [](config& c, const source& s) {
       c.relay.watchdog_interval = std::chrono::duration_cast<seconds>(s.duration(0ms, true));
     },
     [](const config& c) -> key_value { return c.relay.watchdog_interval; }},
}};

void set_secrets(endpoint_config& ep, const source& s, std::vector<std::string> secrets) {
  for (std::size_t i = 0; i < secrets.size(); ++i)
    if (!valid_secret(secrets[i]))
      // Never the value: even a malformed secret is probably most of a real one.
      s.fail("secret " + std::to_string(i + 1) + " is not \"whsec_\" followed by base64 (value not shown)");
  if (secrets.empty()) s.fail("no secret given");
  ep.secrets = std::move(secrets);
}

std::vector<notification_kind> parse_kinds(const source& s) {
  std::vector<notification_kind> kinds;
  for (const auto& name : s.list()) {
    auto it = std::find_if(kind_names.begin(), kind_names.end(), [&](auto& p) { return p.first == name; });
    if (it == kind_names.end())
      s.fail("unknown kind '" + name +
             "' (expected created, rescheduled, cancelled, no_show, reverted, checked_in)");
    if (std::find(kinds.begin(), kinds.end(), it->second) != kinds.end())
      s.fail("kind '" + name + "' listed twice");
    kinds.push_back(it->second);
  }
  if (kinds.empty()) s.fail("must list at least one kind");
  return kinds;
}

// headers and header_files add to one list; a name given twice is a mistake, not an override.
void add_headers(endpoint_config& ep, const source& s, header_list more) {
  for (auto& h : more) {
    auto same = [&](const auto& have) { return lower(have.first) == lower(h.first); };
    if (std::any_of(ep.headers.begin(), ep.headers.end(), same)) s.fail("header " + h.first + " given twice");
    ep.headers.push_back(std::move(h));
  }
}

// Every endpoint key applies on a reload: dispatcher::reconfigure adds, changes in place and retires lanes.
const std::array<key_row<endpoint_config>, 18> endpoint_keys{{
    {"endpoints", "url", applies, endpoint_url, required,
     [](endpoint_config& ep, const source& s) {
       auto text = std::string(trim(s.str()));
       std::string err;
       auto u = parse_url(text, &err);
       if (!u) s.fail(err + ": '" + mask_url(text) + "'");
       ep.target = *u;
     },
     [](const endpoint_config& ep) -> key_value { return ep.target.to_string(); }},
    {"endpoints", "secrets", applies, signing_secrets, has_default,
     [](endpoint_config& ep, const source& s) { set_secrets(ep, s, s.list()); },
     [](const endpoint_config& ep) -> key_value { return ep.secrets; }},
    {"endpoints", "secret_file", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) {
       auto path = std::string(trim(s.str()));
       std::string err;
       auto content = read_text_file(path, &err);
       if (!content) s.fail("cannot read '" + path + "': " + err);
       set_secrets(ep, s, split_list(*content));
       ep.secret_files.push_back(path);
     },
     nullptr},
    {"endpoints", "kinds", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.kinds = parse_kinds(s); },
     [](const endpoint_config& ep) -> key_value {
       std::vector<std::string> names;
       for (auto kind : ep.kinds) names.emplace_back(kind_name(kind));
       return names;
     }},
    {"endpoints", "max_in_flight", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.max_in_flight = static_cast<int>(s.integer(1, 1024)); },
     [](const endpoint_config& ep) -> key_value { return std::int64_t{ep.max_in_flight}; }},
    {"endpoints", "timeout", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.timeout = s.duration(1ms, false); },
     [](const endpoint_config& ep) -> key_value { return ep.timeout; }},
    {"endpoints", "ca_file", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.tls.ca_file = s.str(); },
     [](const endpoint_config& ep) -> key_value { return ep.tls.ca_file; }},
    {"endpoints", "client_cert_file", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.tls.client_cert_file = s.str(); },
     [](const endpoint_config& ep) -> key_value { return ep.tls.client_cert_file; }},
    {"endpoints", "client_key_file", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.tls.client_key_file = s.str(); },
     [](const endpoint_config& ep) -> key_value { return ep.tls.client_key_file; }},
    {"endpoints", "verify_peer", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.tls.verify_peer = s.boolean(); },
     [](const endpoint_config& ep) -> key_value { return ep.tls.verify_peer; }},
    {"endpoints", "headers", applies, header_values, has_default,
     [](endpoint_config& ep, const source& s) { add_headers(ep, s, s.headers()); },
     [](const endpoint_config& ep) -> key_value {
       std::vector<std::string> lines;
       for (const auto& [name, value] : ep.headers) lines.push_back(name + ": " + value);
       return lines;
     }},
    // Name -> file: the file's content (trailing newlines trimmed) is the value, for credentials.
    {"endpoints", "header_files", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) {
       header_list read;
       for (auto [name, path] : s.headers()) {
         std::string err;
         auto content = read_text_file(path, &err);
         if (!content) s.fail("header " + name + ": cannot read '" + path + "': " + err);
         while (!content->empty() && (content->back() == '\n' || content->back() == '\r'))
           content->pop_back();
         s.check_header(name, *content);
         read.emplace_back(std::move(name), std::move(*content));
         ep.secret_files.push_back(path);
       }
       add_headers(ep, s, std::move(read));
     },
     nullptr},
    {"endpoints", "rate_limit", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.rate_limit = static_cast<int>(s.integer(0, 100'000)); },
     [](const endpoint_config& ep) -> key_value { return std::int64_t{ep.rate_limit}; }},
    {"endpoints", "rate_limit_burst", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) {
       ep.rate_limit_burst = static_cast<int>(s.integer(0, 100'000));
     },
     [](const endpoint_config& ep) -> key_value { return std::int64_t{ep.rate_limit_burst}; }},
    {"endpoints", "backfill", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.backfill = s.duration(0ms, true); },
     [](const endpoint_config& ep) -> key_value { return ep.backfill; }},
    {"endpoints", "breaker_failures", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) {
       ep.breaker_failures = static_cast<int>(s.integer(0, 1'000'000));
     },
     [](const endpoint_config& ep) -> key_value { return std::int64_t{ep.breaker_failures}; }},
    {"endpoints", "breaker_after", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.breaker_after = s.duration(0ms, false); },
     [](const endpoint_config& ep) -> key_value { return ep.breaker_after; }},
    {"endpoints", "breaker_probe_max", applies, plain, has_default,
     [](endpoint_config& ep, const source& s) { ep.breaker_probe_max = s.duration(10ms, false); },
     [](const endpoint_config& ep) -> key_value { return ep.breaker_probe_max; }},
}};

// Names that need no file: the url and the secrets of endpoint "default". They win over the long names.
constexpr std::array<std::pair<std::string_view, std::string_view>, 2> short_endpoint_names{{
    {"ENDPOINT_URL", "url"},
    {"SIGNING_SECRET", "secrets"},
}};

const key_row<endpoint_config>& endpoint_key(std::string_view name) {
  return *std::find_if(endpoint_keys.begin(), endpoint_keys.end(), [&](auto& k) { return k.name == name; });
}

// An endpoint before any of its keys is read: endpoint_config's defaults, and every kind.
endpoint_config new_endpoint(std::string name) {
  endpoint_config ep;
  ep.name = std::move(name);
  ep.kinds = all_kinds();
  return ep;
}

// "DATABASE_URL": the variable's name after the prefix.
std::string env_name(const key_row<config>& k) {
  return upper(k.section) + "_" + upper(k.name);
}

std::string key_path(const key_row<config>& k) {
  return std::string(k.section) + "." + std::string(k.name);
}

key_value masked(secrecy secret, key_value v) {
  switch (secret) {
    case plain:
      break;
    case database_password:
      return mask_database_url(std::get<std::string>(v));
    case signing_secrets:
      for (auto& s : std::get<std::vector<std::string>>(v)) s = "whsec_***";
      break;
    case endpoint_url:
      return mask_url(std::get<std::string>(v));
    case header_values:
      for (auto& s : std::get<std::vector<std::string>>(v)) s = s.substr(0, s.find(':')) + ": ***";
      break;
  }
  return v;
}

std::string toml_value(const key_value& v) {
  if (auto* s = std::get_if<std::string>(&v)) return quote(*s);
  if (auto* n = std::get_if<std::int64_t>(&v)) return std::to_string(*n);
  if (auto* d = std::get_if<milliseconds>(&v)) return quote(format_duration(*d));
  if (auto* b = std::get_if<bool>(&v)) return *b ? "true" : "false";
  std::string out;
  for (const auto& s : std::get<std::vector<std::string>>(v)) out += (out.empty() ? "" : ", ") + quote(s);
  return "[" + out + "]";
}

// The restart-only keys whose value differs between running and next, as "section.key", or
// "endpoints.NAME.key" for the keys of endpoint NAME.
template <class Owner, std::size_t N>
void append_restart_only_changes(const std::array<key_row<Owner>, N>& rows, const Owner& running,
                                 const Owner& next, const std::string& endpoint,
                                 std::vector<std::string>& out) {
  for (const auto& k : rows)
    if (k.reload == restart && k.get && k.get(running) != k.get(next))
      out.push_back(std::string(k.section) + "." + (endpoint.empty() ? "" : endpoint + ".") +
                    std::string(k.name));
}

template <class Owner, std::size_t N>
void describe_keys(const std::array<key_row<Owner>, N>& rows, const Owner& defaults,
                   std::vector<config_key>& out) {
  for (const auto& k : rows) {
    config_key d;
    d.section = k.section;
    d.name = k.name;
    if (k.need == has_default && k.get) d.default_value = toml_value(masked(k.secret, k.get(defaults)));
    d.secret = k.secret != plain;
    d.reloadable = k.reload == applies;
    out.push_back(std::move(d));
  }
}

// An endpoint while the file and the environment assemble it.
struct endpoint_draft {
  endpoint_config cfg;
  std::string origin;                                  // where it was first defined, for "missing" errors
  std::vector<const key_row<endpoint_config>*> given;  // the keys read
};

struct builder {
  config cfg;
  std::vector<const key_row<config>*> given;  // the keys read
  std::vector<endpoint_draft> endpoints;

  void apply(const key_row<config>& k, const source& s) {
    k.parse(cfg, s);
    given.push_back(&k);
  }

  void apply(endpoint_draft& ep, const key_row<endpoint_config>& k, const source& s) {
    k.parse(ep.cfg, s);
    ep.given.push_back(&k);
  }

  endpoint_draft& endpoint(const std::string& name, const std::string& origin) {
    for (auto& ep : endpoints)
      if (ep.cfg.name == name) return ep;
    endpoints.push_back(endpoint_draft{new_endpoint(name), origin, {}});
    return endpoints.back();
  }
};

template <class Owner>
bool given(const std::vector<const key_row<Owner>*>& keys, const key_row<Owner>& k) {
  return std::find(keys.begin(), keys.end(), &k) != keys.end();
}

std::string at(const std::string& file, const toml::node& n) {
  return file + ":" + std::to_string(n.source().begin.line);
}

[[noreturn]] void unknown_key(const std::string& file, const std::string& path, const toml::node& n) {
  // For an unknown table, name its first key: "databse.url" says more than "databse".
  if (auto* t = n.as_table(); t && !t->empty()) {
    for (auto&& [k, v] : *t) unknown_key(file, path + "." + std::string(k.str()), v);
  }
  throw config_error(at(file, n) + ": unknown key '" + path + "'");
}

void apply_file(builder& b, const std::filesystem::path& path) {
  const std::string file = path.string();
  std::string err;
  auto content = read_text_file(file, &err);
  if (!content) throw config_error(file + ": cannot read the configuration file: " + err);
  toml::table root;
  try {
    root = toml::parse(*content, file);
  } catch (const toml::parse_error& e) {
    throw config_error(file + ":" + std::to_string(e.source().begin.line) + ":" +
                       std::to_string(e.source().begin.column) +
                       ": TOML syntax error: " + std::string(e.description()));
  }
  for (auto& [section_name, section_node] : root) {
    const std::string section(section_name.str());
    if (section == "endpoints") {
      auto* eps = section_node.as_table();
      if (!eps)
        throw config_error(at(file, section_node) + ": endpoints: expected a table ([endpoints.<name>])");
      for (auto& [name_key, ep_node] : *eps) {
        const std::string name(name_key.str());
        const std::string key = "endpoints." + name;
        auto* ep_table = ep_node.as_table();
        if (!ep_table)
          throw config_error(at(file, ep_node) + ": " + key + ": expected a table ([" + key + "])");
        if (!valid_endpoint_name(name))
          throw config_error(at(file, ep_node) + ": " + key +
                             ": endpoint names are made of a-z, 0-9, '_' and '-'");
        auto& ep = b.endpoint(name, at(file, ep_node));
        if (ep_table->contains("secrets") && ep_table->contains("secret_file"))
          throw config_error(at(file, ep_node) + ": " + key +
                             ": give either secrets or secret_file, not both");
        for (auto& [k, v] : *ep_table) {
          const std::string kname(k.str());
          auto it = std::find_if(endpoint_keys.begin(), endpoint_keys.end(),
                                 [&](auto& ek) { return ek.name == kname; });
          if (it == endpoint_keys.end()) unknown_key(file, key + "." + kname, v);
          b.apply(ep, *it, source{at(file, v), key + "." + kname, &v, {}});
        }
      }
      continue;
    }
    bool known_section = std::any_of(section_keys.begin(), section_keys.end(),
                                     [&](auto& sk) { return sk.section == section; });
    if (!known_section) unknown_key(file, section, section_node);
    auto* table = section_node.as_table();
    if (!table)
      throw config_error(at(file, section_node) + ": " + section + ": expected a table ([" + section + "])");
    for (auto& [k, v] : *table) {
      const std::string kname(k.str());
      auto it = std::find_if(section_keys.begin(), section_keys.end(),
                             [&](auto& sk) { return sk.section == section && sk.name == kname; });
      if (it == section_keys.end()) unknown_key(file, section + "." + kname, v);
      b.apply(*it, source{at(file, v), section + "." + kname, &v, {}});
    }
  }
}

// Secret keys may come as NAME_FILE (the file's content, trailing newlines trimmed): a section's, an
// endpoint's (ENDPOINTS_<NAME>_<KEY>) or a short name's.
bool is_secret_bearing(std::string_view name) {
  for (const auto& k : section_keys)
    if (k.secret != plain && env_name(k) == name) return true;
  for (const auto& [short_name, key] : short_endpoint_names)
    if (short_name == name) return endpoint_key(key).secret != plain;
  if (!name.starts_with("ENDPOINTS_")) return false;
  return std::any_of(endpoint_keys.begin(), endpoint_keys.end(),
                     [&](auto& k) { return k.secret != plain && name.ends_with("_" + upper(k.name)); });
}

void apply_environment(builder& b, const std::map<std::string, std::string>& env) {
  struct entry {
    std::string where;  // the variable's full name (and the file's path for NAME_FILE)
    std::string name;   // without the prefix and without _FILE
    std::string value;
  };
  std::vector<entry> entries;
  for (const auto& [var, value] : env) {
    if (!std::string_view(var).starts_with(env_prefix)) continue;
    std::string name = var.substr(env_prefix.size());
    if (name.starts_with("TEST_") || name == "SQL_DIR") continue;  // used by the tests and tools
    if (name.ends_with("_FILE")) {
      std::string base = name.substr(0, name.size() - 5);
      if (is_secret_bearing(base)) {
        if (env.count(std::string(env_prefix) + base))
          throw config_error(var + ": set either " + std::string(env_prefix) + base + " or " + var +
                             ", not both");
        std::string err;
        auto content = read_text_file(value, &err);
        if (!content) throw config_error(var + ": cannot read '" + value + "': " + err);
        while (!content->empty() && (content->back() == '\n' || content->back() == '\r')) content->pop_back();
        entries.push_back({var + " ('" + value + "')", base, *content});
        b.cfg.secret_files.push_back(value);
        continue;
      }
    }
    entries.push_back({var, name, value});
  }

  // Sections first, then named endpoints, then the short endpoint names (they win over the long ones).
  std::vector<const entry*> endpoint_entries, short_entries;
  for (const auto& e : entries) {
    if (std::any_of(short_endpoint_names.begin(), short_endpoint_names.end(),
                    [&](auto& s) { return s.first == e.name; })) {
      short_entries.push_back(&e);
      continue;
    }
    if (e.name.starts_with("ENDPOINTS_")) {
      endpoint_entries.push_back(&e);
      continue;
    }
    auto it = std::find_if(section_keys.begin(), section_keys.end(),
                           [&](auto& sk) { return env_name(sk) == e.name; });
    if (it == section_keys.end())
      throw config_error(e.where +
                         ": unknown environment variable (see config/appointment-relay.toml for the keys)");
    b.apply(*it, source{e.where, key_path(*it), nullptr, e.value});
  }

  for (const auto* e : endpoint_entries) {
    std::string_view rest = std::string_view(e->name).substr(10);  // after ENDPOINTS_
    // The longest key that ends the name; the endpoint's name is what precedes it.
    const key_row<endpoint_config>* key = nullptr;
    std::size_t key_len = 0;
    for (const auto& ek : endpoint_keys) {
      std::string suffix = "_" + upper(ek.name);
      if (rest.size() > suffix.size() && rest.ends_with(suffix) && suffix.size() > key_len) {
        key = &ek;
        key_len = suffix.size();
      }
    }
    if (!key) {
      std::string keys;
      for (const auto& ek : endpoint_keys) keys += (keys.empty() ? "" : ", ") + upper(ek.name);
      throw config_error(e->where +
                         ": unknown environment variable (expected APPOINTMENT_RELAY_ENDPOINTS_<NAME>_<KEY>, "
                         "KEY one of " +
                         keys + ")");
    }
    std::string_view upper_name = rest.substr(0, rest.size() - key_len);
    // An endpoint of the file whose name, upper-cased with '-' as '_', is upper_name; else a new one.
    std::string name;
    for (const auto& ep : b.endpoints) {
      if (upper(ep.cfg.name) != upper(upper_name)) continue;
      if (!name.empty() && name != ep.cfg.name)
        throw config_error(e->where + ": ambiguous: matches endpoints '" + name + "' and '" + ep.cfg.name +
                           "'");
      name = ep.cfg.name;
    }
    if (name.empty()) {
      name = lower(upper_name);
      if (!valid_endpoint_name(name))
        throw config_error(e->where + ": endpoint names are made of a-z, 0-9, '_' and '-'");
    }
    auto& ep = b.endpoint(name, e->where);
    b.apply(ep, *key,
            source{e->where, "endpoints." + name + "." + std::string(key->name), nullptr, e->value});
  }

  for (const auto* e : short_entries) {
    auto& ep = b.endpoint("default", e->where);
    auto short_name = std::find_if(short_endpoint_names.begin(), short_endpoint_names.end(),
                                   [&](auto& s) { return s.first == e->name; });
    const auto& key = endpoint_key(short_name->second);
    b.apply(ep, key, source{e->where, "endpoints.default." + std::string(key.name), nullptr, e->value});
  }
}

config finish(builder& b) {
  for (const auto& k : section_keys)
    if (k.need == required && !given(b.given, k))
      throw config_error(key_path(k) + ": missing: set " + std::string(k.name) + " in [" +
                         std::string(k.section) + "] or " + std::string(env_prefix) + env_name(k));
  if (b.cfg.retry.max_delay < b.cfg.retry.base_delay)
    throw config_error("retry.max_delay (" + format_duration(b.cfg.retry.max_delay) +
                       ") is below retry.base_delay (" + format_duration(b.cfg.retry.base_delay) + ")");
  for (auto& ep : b.endpoints) {
    const std::string key = "endpoints." + ep.cfg.name;
    for (const auto& k : endpoint_keys)
      if (k.need == required && !given(ep.given, k))
        throw config_error(ep.origin + ": " + key + "." + std::string(k.name) + ": missing");
    if (ep.cfg.backfill > b.cfg.database.retention)
      throw config_error(ep.origin + ": " + key + ".backfill (" + format_duration(ep.cfg.backfill) +
                         ") is longer than database.retention (" + format_duration(b.cfg.database.retention) +
                         "): nothing older is kept");
    // No secret is allowed (the endpoint gets unsigned webhooks); `run` warns about it at start.
    if (ep.cfg.tls.client_cert_file.empty() != ep.cfg.tls.client_key_file.empty())
      throw config_error(ep.origin + ": " + key + ": client_cert_file and client_key_file go together");
    b.cfg.endpoints.push_back(std::move(ep.cfg));
  }
  return std::move(b.cfg);
}

std::string mask_uri(const std::string& url) {
  std::string out = url;
  auto start = out.find("://") + 3;
  auto query = out.find('?', start);
  auto at_sign = out.rfind('@', query == std::string::npos ? std::string::npos : query);
  if (at_sign != std::string::npos && at_sign >= start) {
    auto colon = out.find(':', start);
    if (colon != std::string::npos && colon < at_sign) {
      out.replace(colon + 1, at_sign - colon - 1, "***");
      query = out.find('?', start);
    }
  }
  if (query == std::string::npos) return out;
  // password=... among the query parameters.
  std::size_t pos = query + 1;
  while (pos <= out.size()) {
    auto amp = out.find('&', pos);
    auto end = amp == std::string::npos ? out.size() : amp;
    const auto param = std::string_view(out).substr(pos, end - pos);
    for (std::string_view key : {"password=", "sslpassword="})
      if (param.starts_with(key)) {
        out.replace(pos + key.size(), end - pos - key.size(), "***");
        end = pos + key.size() + 3;
        break;
      }
    if (amp == std::string::npos) break;
    pos = end + 1;
  }
  return out;
}

std::string mask_conninfo(const std::string& s) {
  std::string out;
  std::size_t i = 0;
  const std::size_t n = s.size();
  auto space = [&](std::size_t k) { return k < n && std::isspace(static_cast<unsigned char>(s[k])); };
  while (i < n) {
    std::size_t k = i;
    while (space(k)) ++k;
    out.append(s, i, k - i);
    i = k;
    if (i >= n) break;
    while (k < n && s[k] != '=' && !space(k)) ++k;
    std::string key = s.substr(i, k - i);
    while (space(k)) ++k;
    if (k >= n || s[k] != '=')
      return s.find("password") == std::string::npos ? s : "*** (unreadable conninfo)";
    ++k;
    while (space(k)) ++k;
    out.append(s, i, k - i);
    std::size_t v = k;
    if (v < n && s[v] == '\'') {
      ++v;
      while (v < n && s[v] != '\'') v += s[v] == '\\' ? 2 : 1;
      if (v >= n) return s.find("password") == std::string::npos ? s : "*** (unreadable conninfo)";
      ++v;
    } else {
      while (v < n && !space(v)) v += s[v] == '\\' ? 2 : 1;
      v = std::min(v, n);
    }
    if (key == "password" || key == "sslpassword")
      out += "***";
    else
      out.append(s, k, v - k);
    i = v;
  }
  return out;
}

}  // namespace

namespace {
// localhost, 127.0.0.0/8, ::1: traffic that never leaves the machine.
bool is_loopback_host(std::string_view host) {
  return host == "localhost" || host.starts_with("127.") || host == "::1" || host.ends_with(".localhost");
}
}  // namespace

std::string admin_listen_problem(const config& cfg) {
  if (cfg.admin.listen.empty() || !cfg.admin.token.empty() || is_loopback_listen(cfg.admin.listen)) return "";
  return "admin.listen: " + cfg.admin.listen +
         " is not a loopback address: set admin.token_file too (a bearer token then guards everything but "
         "/healthz and /readyz)";
}

std::vector<std::string> config_warnings(const config& cfg) {
  std::vector<std::string> out;
  std::vector<std::pair<std::string, std::string>> files;  // path, what it holds
  for (const auto& f : cfg.secret_files) files.emplace_back(f, "a secret");
  if (!cfg.admin.token_file.empty()) files.emplace_back(cfg.admin.token_file, "admin.token_file");
  for (const auto& ep : cfg.endpoints) {
    for (const auto& f : ep.secret_files) files.emplace_back(f, "a secret of endpoint " + ep.name);
    if (!ep.tls.client_key_file.empty())
      files.emplace_back(ep.tls.client_key_file, "the TLS client key of endpoint " + ep.name);
    if (!ep.target.tls && !is_loopback_host(ep.target.host))
      out.push_back("endpoint " + ep.name + " sends to " + ep.target.host +
                    " over plain http: payloads, signatures and headers travel unencrypted (use https)");
    if (!ep.tls.verify_peer)
      out.push_back("endpoint " + ep.name +
                    " has verify_peer = false: any server can pose as it (for testing only)");
  }
  for (const auto& [path, what] : files) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || (st.st_mode & (S_IRWXG | S_IRWXO)) == 0) continue;
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    out.push_back("file " + path + " (" + what + ") is open to group or others (mode " + mode +
                  "): chmod 600 it");
  }
  return out;
}

bool reserved_header(std::string_view name) {
  static constexpr std::array<std::string_view, 17> reserved{"host",
                                                             "content-type",
                                                             "content-length",
                                                             "transfer-encoding",
                                                             "connection",
                                                             "keep-alive",
                                                             "proxy-connection",
                                                             "te",
                                                             "trailer",
                                                             "upgrade",
                                                             "expect",
                                                             "user-agent",
                                                             "webhook-id",
                                                             "webhook-timestamp",
                                                             "webhook-signature",
                                                             "traceparent",
                                                             "tracestate"};
  return std::find(reserved.begin(), reserved.end(), name) != reserved.end();
}

config load_config(const std::optional<std::filesystem::path>& file,
                   const std::map<std::string, std::string>& env) {
  builder b;
  if (file) apply_file(b, *file);
  apply_environment(b, env);
  return finish(b);
}

std::map<std::string, std::string> relay_environment() {
  std::map<std::string, std::string> out;
  for (char** e = environ; e && *e; ++e) {
    std::string_view entry(*e);
    if (!entry.starts_with(env_prefix)) continue;
    auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    out.emplace(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
  }
  return out;
}

std::string mask_database_url(const std::string& url) {
  if (url.starts_with("postgresql://") || url.starts_with("postgres://")) return mask_uri(url);
  return mask_conninfo(url);
}

std::string render_config(const config& cfg) {
  std::ostringstream o;
  o << "# Effective configuration (secrets and the database password masked)\n";
  std::string_view section;
  for (const auto& k : section_keys) {
    if (k.section != section) o << "\n[" << k.section << "]\n";
    section = k.section;
    o << k.name << " = " << toml_value(masked(k.secret, k.get(cfg))) << "\n";
  }
  for (const auto& ep : cfg.endpoints) {
    o << "\n[endpoints." << ep.name << "]\n";
    for (const auto& k : endpoint_keys)
      if (k.get) o << k.name << " = " << toml_value(masked(k.secret, k.get(ep))) << "\n";
  }
  return o.str();
}

std::vector<std::string> keys_needing_restart(const config& running, const config& next) {
  std::vector<std::string> out;
  append_restart_only_changes(section_keys, running, next, "", out);
  // Endpoints added or removed are applied; only one present in both can have a restart-only change.
  for (const auto& ep : next.endpoints) {
    auto old = std::find_if(running.endpoints.begin(), running.endpoints.end(),
                            [&](const endpoint_config& e) { return e.name == ep.name; });
    if (old != running.endpoints.end()) append_restart_only_changes(endpoint_keys, *old, ep, ep.name, out);
  }
  return out;
}

std::vector<config_key> config_keys() {
  std::vector<config_key> out;
  describe_keys(section_keys, config{}, out);
  describe_keys(endpoint_keys, new_endpoint("default"), out);
  return out;
}

}  // namespace appointment_relay
