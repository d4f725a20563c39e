#include "appointment_relay/admin_auth.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <array>
#include <cctype>
#include <stdexcept>

#include "appointment_relay/listen_address.hpp"

namespace appointment_relay {

bool is_loopback_listen(const std::string& listen) {
  tcp::endpoint endpoint;
  try {
    endpoint = parse_listen_address(listen);
  } catch (const std::invalid_argument&) {
    return false;
  }
  const auto address = endpoint.address();
  if (address.is_v4()) return address.to_v4().is_loopback();  // 127.0.0.0/8
  const auto v6 = address.to_v6();
  if (v6.is_loopback()) return true;
  return v6.is_v4_mapped() && net::ip::make_address_v4(net::ip::v4_mapped, v6).is_loopback();
}

std::string_view bearer_token(std::string_view authorization) {
  constexpr std::string_view scheme = "bearer";
  auto blank = [](char c) { return c == ' ' || c == '\t'; };
  while (!authorization.empty() && blank(authorization.front())) authorization.remove_prefix(1);
  if (authorization.size() <= scheme.size() || !blank(authorization[scheme.size()])) return {};
  for (std::size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != scheme[i]) return {};
  authorization.remove_prefix(scheme.size());
  while (!authorization.empty() && blank(authorization.front())) authorization.remove_prefix(1);
  while (!authorization.empty() && blank(authorization.back())) authorization.remove_suffix(1);
  return authorization;
}

bool token_matches(std::string_view presented, std::string_view token) {
  if (token.empty()) return false;
  // Digests of equal length, compared without an early exit: neither the position of the first differing
  // byte nor the token's length shows in the time taken.
  std::array<unsigned char, SHA256_DIGEST_LENGTH> a{}, b{};
  SHA256(reinterpret_cast<const unsigned char*>(presented.data()), presented.size(), a.data());
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), b.data());
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

admin_access access_for(std::string_view path, std::string_view authorization, std::string_view token) {
  if (token.empty()) return admin_access::reader;
  if (token_matches(bearer_token(authorization), token)) return admin_access::token_holder;
  if (path == "/healthz" || path == "/readyz") return admin_access::reader;
  return admin_access::denied;
}

}  // namespace appointment_relay
