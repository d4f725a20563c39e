#pragma once
// JSON string escaping, shared by the payloads, the JSON log lines and the TOML rendering of the config
// (TOML basic strings use the same escapes); and UTF-8 repair for text kept from elsewhere. Pure.
#include <cstddef>
#include <string>
#include <string_view>

namespace appointment_relay {

// Appends s to out as the inside of a JSON string: quote, backslash and control characters escaped
// (\n, \t, ... or \u00XX), valid UTF-8 kept, every byte of invalid UTF-8 replaced by \ufffd.
void append_json_escaped(std::string_view s, std::string& out);

// s as valid UTF-8 of at most max_bytes: every byte of invalid UTF-8 (and NUL, which PostgreSQL's text
// refuses) replaced by U+FFFD; cut before the first character that would not fit whole.
std::string valid_utf8(std::string_view s, std::size_t max_bytes);

}  // namespace appointment_relay
