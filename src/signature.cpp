#include "appointment_relay/signature.hpp"

#include <array>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

namespace appointment_relay {
namespace {

constexpr std::string_view alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr std::string_view secret_prefix = "whsec_";
constexpr std::string_view version_prefix = "v1,";

constexpr std::array<signed char, 256> make_decode_table() {
  std::array<signed char, 256> table{};
  for (auto& v : table) v = -1;
  for (std::size_t i = 0; i < alphabet.size(); ++i)
    table[static_cast<unsigned char>(alphabet[i])] = static_cast<signed char>(i);
  return table;
}
constexpr std::array<signed char, 256> decode_table = make_decode_table();

// The raw HMAC-SHA256 of id "." timestamp "." body.
std::array<unsigned char, 32> mac(const signing_key& key, std::string_view id, std::int64_t timestamp,
                                  std::string_view body) {
  std::string message;
  const std::string ts = std::to_string(timestamp);
  message.reserve(id.size() + ts.size() + body.size() + 2);
  message.append(id).append(".").append(ts).append(".").append(body);
  std::array<unsigned char, 32> out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.bytes().data(), static_cast<int>(key.bytes().size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), out.data(), &len);
  return out;
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  const auto at = [&](std::size_t k) { return static_cast<unsigned>(static_cast<unsigned char>(bytes[k])); };
  for (; i + 3 <= bytes.size(); i += 3) {
    const unsigned v = at(i) << 16 | at(i + 1) << 8 | at(i + 2);
    out += alphabet[v >> 18 & 63];
    out += alphabet[v >> 12 & 63];
    out += alphabet[v >> 6 & 63];
    out += alphabet[v & 63];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest == 1) {
    const unsigned v = at(i) << 16;
    out += alphabet[v >> 18 & 63];
    out += alphabet[v >> 12 & 63];
    out += "==";
  } else if (rest == 2) {
    const unsigned v = at(i) << 16 | at(i + 1) << 8;
    out += alphabet[v >> 18 & 63];
    out += alphabet[v >> 12 & 63];
    out += alphabet[v >> 6 & 63];
    out += '=';
  }
  return out;
}

// Standard alphabet; padding optional but, when present, only at the end and consistent with the length.
std::optional<std::string> base64_decode(std::string_view text) {
  std::size_t pad = 0;
  while (!text.empty() && text.back() == '=' && pad < 2) {
    text.remove_suffix(1);
    ++pad;
  }
  if (text.size() % 4 == 1) return std::nullopt;
  if (pad > 0 && (text.size() + pad) % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() * 3 / 4);
  unsigned acc = 0;
  int bits = 0;
  for (char c : text) {
    const signed char v = decode_table[static_cast<unsigned char>(c)];
    if (v < 0) return std::nullopt;
    acc = (acc << 6 | static_cast<unsigned>(v)) & 0xFFFFFF;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>(acc >> bits & 0xFF);
    }
  }
  // Left-over bits of a last partial group are ignored, as the common decoders (and the reference library)
  // do.
  return out;
}

std::optional<signing_key> signing_key::parse(std::string_view secret) {
  if (secret.substr(0, secret_prefix.size()) != secret_prefix) return std::nullopt;
  std::optional<std::string> bytes = base64_decode(secret.substr(secret_prefix.size()));
  if (!bytes || bytes->empty()) return std::nullopt;
  signing_key key;
  key.bytes_ = std::move(*bytes);
  return key;
}

std::string sign(const signing_key& key, std::string_view id, std::int64_t timestamp, std::string_view body) {
  const auto raw = mac(key, id, timestamp, body);
  std::string out(version_prefix);
  out += base64_encode(std::string_view(reinterpret_cast<const char*>(raw.data()), raw.size()));
  return out;
}

std::string signature_header(const std::vector<signing_key>& keys, std::string_view id,
                             std::int64_t timestamp, std::string_view body) {
  std::string out;
  for (const signing_key& key : keys) {
    if (!out.empty()) out += ' ';
    out += sign(key, id, timestamp, body);
  }
  return out;
}

bool verify_signature(const signing_key& key, std::string_view header, std::string_view id,
                      std::int64_t timestamp, std::string_view body) {
  const std::string expected = sign(key, id, timestamp, body);
  bool found = false;
  while (!header.empty()) {
    const std::size_t space = header.find(' ');
    const std::string_view token = header.substr(0, space);
    header = space == std::string_view::npos ? std::string_view() : header.substr(space + 1);
    if (token.size() == expected.size() && CRYPTO_memcmp(token.data(), expected.data(), expected.size()) == 0)
      found = true;  // no early exit: the time taken does not depend on which signature matched
  }
  return found;
}

}  // namespace appointment_relay
