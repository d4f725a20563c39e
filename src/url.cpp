// TEMPORARY minimal parse_url on the `config` branch only, so config tests link. The real implementation
// comes from the url engineer's branch; the lead keeps that one when merging.
#include "appointment_relay/url.hpp"

#include <charconv>

namespace appointment_relay {

std::string url::host_header() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  if (port != (tls ? 443 : 80)) h += ":" + std::to_string(port);
  return h;
}

std::string url::to_string() const {
  return (tls ? "https://" : "http://") + host_header() + target;
}

std::optional<url> parse_url(std::string_view text, std::string* error) {
  auto fail = [&](std::string why) -> std::optional<url> {
    if (error) *error = std::move(why);
    return std::nullopt;
  };
  url u;
  if (text.starts_with("https://")) {
    u.tls = true;
    text.remove_prefix(8);
  } else if (text.starts_with("http://")) {
    text.remove_prefix(7);
  } else {
    return fail("not an http(s) URL");
  }
  auto end = text.find_first_of("/?");
  std::string_view authority = text.substr(0, end);
  std::string_view rest = end == std::string_view::npos ? std::string_view{} : text.substr(end);
  if (authority.find('@') != std::string_view::npos) return fail("userinfo in a URL is refused");
  std::string_view port_text;
  if (authority.starts_with("[")) {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return fail("unterminated IPv6 address");
    u.host = std::string(authority.substr(1, close - 1));
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return fail("bad port");
      port_text = after.substr(1);
    }
  } else {
    auto colon = authority.find(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (u.host.empty()) return fail("no host");
  u.port = u.tls ? 443 : 80;
  if (!port_text.empty()) {
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), p);
    if (ec != std::errc{} || ptr != port_text.data() + port_text.size() || p == 0 || p > 65535)
      return fail("bad port");
    u.port = static_cast<std::uint16_t>(p);
  }
  u.target = rest.empty() ? "/" : std::string(rest);
  if (u.target[0] == '?') u.target.insert(0, "/");
  return u;
}

}  // namespace appointment_relay
