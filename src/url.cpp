#include "appointment_relay/url.hpp"

#include <algorithm>
#include <cctype>

#include "appointment_relay/net.hpp"

namespace appointment_relay {
namespace {

std::optional<url> fail(std::string* error, std::string message) {
  if (error) *error = std::move(message);
  return std::nullopt;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// RFC 3986 reg-name as DNS uses it: letters, digits, '-', '.', '_'.
bool valid_host_name(std::string_view host) {
  return !host.empty() && host.size() <= 253 && std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
  });
}

bool has_control_or_space(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7f;
  });
}

}  // namespace

std::string url::host_header() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  if (port != (tls ? 443 : 80)) h += ":" + std::to_string(port);
  return h;
}

std::string url::to_string() const {
  return std::string(tls ? "https://" : "http://") + host_header() + target;
}

std::string mask_url(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const auto scheme_end = text.find("://");
  const std::size_t start = scheme_end == std::string_view::npos ? 0 : scheme_end + 3;
  out.append(text.substr(0, start));
  const auto authority_end = std::min(text.find_first_of("/?#", start), text.size());
  const auto authority = text.substr(start, authority_end - start);
  if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
    const auto colon = authority.find(':');
    if (colon < at)
      out.append(authority.substr(0, colon + 1)).append("***");
    else
      out.append("***");
    out.append(authority.substr(at));
  } else {
    out.append(authority);
  }
  const auto fragment = std::min(text.find('#', authority_end), text.size());
  const auto query = std::min(text.find('?', authority_end), fragment);
  out.append(text.substr(authority_end, query - authority_end));  // the path
  if (query < fragment) {
    out += '?';
    const auto params = text.substr(query + 1, fragment - query - 1);
    for (std::size_t i = 0; i <= params.size();) {
      const auto amp = std::min(params.find('&', i), params.size());
      const auto param = params.substr(i, amp - i);
      const auto eq = param.find('=');
      if (eq == std::string_view::npos)
        out.append(param.empty() ? "" : "***");
      else
        out.append(param.substr(0, eq + 1)).append(eq + 1 < param.size() ? "***" : "");
      if (amp < params.size()) out += '&';
      i = amp + 1;
    }
  }
  if (fragment + 1 < text.size())
    out.append("#***");
  else if (fragment < text.size())
    out += '#';
  return out;
}

std::optional<url> parse_url(std::string_view text, std::string* error) {
  url out;
  const std::size_t scheme_end = text.find("://");
  if (scheme_end == std::string_view::npos)
    return fail(error, "not an absolute URL (expected http:// or https://)");
  const std::string_view scheme = text.substr(0, scheme_end);
  if (iequals(scheme, "https")) {
    out.tls = true;
  } else if (!iequals(scheme, "http")) {
    return fail(error, "unsupported scheme '" + std::string(scheme) + "' (expected http or https)");
  }
  std::string_view rest = text.substr(scheme_end + 3);
  if (has_control_or_space(rest)) return fail(error, "URL contains spaces or control characters");
  // The fragment never goes to the server.
  if (const std::size_t hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);

  const std::size_t authority_end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, authority_end);
  const std::string_view target = authority_end == std::string_view::npos ? "" : rest.substr(authority_end);
  if (authority.find('@') != std::string_view::npos)
    return fail(error, "user information in URLs is not allowed (put credentials in headers)");
  if (authority.empty()) return fail(error, "missing host");

  std::string_view port_text;
  bool has_port = false;
  if (authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return fail(error, "unterminated IPv6 address");
    const std::string host(authority.substr(1, close - 1));
    error_code ec;
    net::ip::make_address_v6(host, ec);
    if (ec) return fail(error, "invalid IPv6 address '" + host + "'");
    out.host = host;
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return fail(error, "unexpected characters after the IPv6 address");
      port_text = after.substr(1);
      has_port = true;
    }
  } else {
    const std::size_t colon = authority.find(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      has_port = true;
    }
    if (!valid_host_name(out.host)) return fail(error, "invalid host '" + out.host + "'");
    std::transform(out.host.begin(), out.host.end(), out.host.begin(),
                   [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); });
  }

  if (has_port) {
    if (port_text.empty() || port_text.size() > 5 ||
        !std::all_of(port_text.begin(), port_text.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return fail(error, "invalid port '" + std::string(port_text) + "'");
    const int port = std::stoi(std::string(port_text));
    if (port < 1 || port > 65535) return fail(error, "port out of range: " + std::string(port_text));
    out.port = static_cast<std::uint16_t>(port);
  } else {
    out.port = out.tls ? 443 : 80;
  }

  out.target = target.empty() ? "/" : std::string(target);
  if (out.target.front() == '?') out.target.insert(0, "/");
  return out;
}

}  // namespace appointment_relay
