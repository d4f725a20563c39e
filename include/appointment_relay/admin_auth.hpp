#pragma once
// Who may read what on the admin server. Pure.
//
// The rule: /healthz and /readyz are open to anyone who can connect (probes carry no credentials). When a
// token is configured (admin.token_file), everything else needs "Authorization: Bearer TOKEN", wherever the
// server listens, and a token holder also sees payload bodies. Without a token the server must listen on a
// loopback address (config check and admin_server::start refuse anything else); everyone who can connect
// there reads the API and the status page, without payloads.
#include <string>
#include <string_view>

namespace appointment_relay {

// True for a listen address ("host:port", "[v6]:port", "localhost:port") on 127.0.0.0/8, ::1, an
// IPv4-mapped 127.x address, or "localhost"; false otherwise, also for a malformed one.
bool is_loopback_listen(const std::string& listen);

// The token of an Authorization header value: "Bearer TOKEN" (scheme case-insensitive, blanks around the
// token ignored); empty when the header is absent or uses another scheme.
std::string_view bearer_token(std::string_view authorization);

// Compares in a time that depends on neither the content nor the length of presented (both are hashed
// first). False when token is empty: an unconfigured token matches nothing.
bool token_matches(std::string_view presented, std::string_view token);

enum class admin_access {
  denied,        // a token is configured and none (or a wrong one) was presented: 401
  reader,        // no token configured (loopback only): everything but payloads
  token_holder,  // the configured token was presented: everything, payloads too
};

// The access of a request to path with the given Authorization header value (empty when absent), token the
// configured one (empty: none). /healthz and /readyz are always at least reader.
admin_access access_for(std::string_view path, std::string_view authorization, std::string_view token);

}  // namespace appointment_relay
