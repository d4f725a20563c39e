#pragma once
// JSON string escaping, shared by the payloads, the JSON log lines and the TOML rendering of the config
// (TOML basic strings use the same escapes). Pure.
#include <string>
#include <string_view>

namespace appointment_relay {

// Appends s to out as the inside of a JSON string: quote, backslash and control characters escaped
// (\n, \t, ... or \u00XX), valid UTF-8 kept, every byte of invalid UTF-8 replaced by \ufffd.
void append_json_escaped(std::string_view s, std::string& out);

}  // namespace appointment_relay
