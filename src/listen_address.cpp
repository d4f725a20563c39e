#include "appointment_relay/listen_address.hpp"

#include <charconv>
#include <stdexcept>

namespace appointment_relay {

tcp::endpoint parse_listen_address(const std::string& listen) {
  auto fail = [&](const std::string& why) {
    return std::invalid_argument("invalid listen address '" + listen + "': " + why);
  };
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos) throw fail("expected host:port");
  std::string host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string::npos) {
    throw fail("an IPv6 address must be in brackets, e.g. [::1]:9187");
  }
  unsigned port = 0;
  const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc{} || end != port_text.data() + port_text.size() || port > 65535)
    throw fail("port must be a number from 0 to 65535");
  if (host.empty()) throw fail("missing host");
  net::ip::address address;
  if (host == "localhost") {
    address = net::ip::address_v4::loopback();
  } else {
    error_code aec;
    address = net::ip::make_address(host, aec);
    if (aec) throw fail("'" + host + "' is not an IP address");
  }
  return {address, static_cast<std::uint16_t>(port)};
}

}  // namespace appointment_relay
