#pragma once
// Standard Webhooks signatures: v1,<base64 HMAC-SHA256(key, id "." timestamp "." body)>, where key is the
// base64-decoded secret after its "whsec_" prefix.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace appointment_relay {

// A decoded signing secret. Its text never reaches a log.
class signing_key {
 public:
  // "whsec_<base64>"; empty optional when the prefix or the base64 is wrong or the key is empty.
  static std::optional<signing_key> parse(std::string_view secret);
  const std::string& bytes() const noexcept { return bytes_; }

 private:
  std::string bytes_;
};

// "v1,<base64>" for one key.
std::string sign(const signing_key& key, std::string_view id, std::int64_t timestamp, std::string_view body);

// The webhook-signature header for several keys (rotation): one signature each, separated by spaces.
std::string signature_header(const std::vector<signing_key>& keys, std::string_view id,
                             std::int64_t timestamp, std::string_view body);

// True when one of the space-separated v1 signatures in header matches key (constant-time comparison).
bool verify_signature(const signing_key& key, std::string_view header, std::string_view id,
                      std::int64_t timestamp, std::string_view body);

std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace appointment_relay
