#pragma once
// The address a server of the relay listens on (the admin server, the demo receiver).
#include <string>

#include "appointment_relay/net.hpp"

namespace appointment_relay {

// "host:port" with an IPv4 literal, "[IPv6]:port" or "localhost:port"; port 0 picks a free port.
// Throws std::invalid_argument naming the address and what is wrong.
tcp::endpoint parse_listen_address(const std::string& listen);

}  // namespace appointment_relay
