#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace appointment_relay {

// An endpoint URL: http or https, a host (name, IPv4 or [IPv6]), an optional port, a target.
struct url {
  bool tls = false;
  std::string host;                 // without brackets for IPv6
  std::uint16_t port = 0;           // the scheme's default when not given
  std::string target;               // path and query, "/" when empty
  std::string host_header() const;  // host[:port] as the Host header wants it (brackets for IPv6)
  std::string to_string() const;    // the normalised URL, for logs
};

// Empty optional and an explanation in *error for anything else (userinfo is refused: secrets in URLs leak).
std::optional<url> parse_url(std::string_view text, std::string* error = nullptr);

// text, shaped like a URL (parsed or not: an error may quote what it refused), with what may be a credential
// replaced by "***": the value of each query parameter (the names kept, so that one sees which are set), a
// parameter without '=', the fragment, and the user information ("user:***@" when it has a password, else
// "***@": a token may stand alone there). For check-config, logs and errors: a receiver's URL often carries
// its token (https://hooks.example.com/in?token=...). Pure.
std::string mask_url(std::string_view text);

}  // namespace appointment_relay
