// libFuzzer target: arbitrary bytes as one outbox row's text fields for decode_outbox_row, then classify.
// Input: the first two bytes are a NULL mask (bit i set: field i is SQL NULL), the rest is the 11 fields in
// outbox_row_text's order separated by '\0'. Never a crash; a notification's payload is valid JSON that names
// its appointment, and its ordering key is that appointment.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "appointment_relay/classifier.hpp"
#include "appointment_relay/outbox_row.hpp"

namespace ar = appointment_relay;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const unsigned mask = data[0] | (static_cast<unsigned>(data[1]) << 8);
  std::string_view rest(reinterpret_cast<const char*>(data + 2), size - 2);
  std::vector<std::optional<std::string_view>> f(11);
  for (std::size_t i = 0; i < f.size(); ++i) {
    auto cut = rest.find('\0');
    std::string_view field = rest.substr(0, cut);
    rest = cut == std::string_view::npos ? std::string_view() : rest.substr(cut + 1);
    if ((mask & (1u << i)) == 0) f[i] = field;
  }
  ar::outbox_row_text row{f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10]};
  auto decoded = ar::decode_outbox_row(row);
  if (auto* why = std::get_if<std::string>(&decoded)) {
    if (why->empty()) std::abort();  // a rejection names its reason
    return 0;
  }
  const auto& change = std::get<ar::captured_change>(decoded);
  auto result = ar::classify(change);
  if (auto* n = std::get_if<ar::notification>(&result)) {
    auto json = nlohmann::json::parse(n->payload, nullptr, false);
    if (json.is_discarded() || !json.is_object()) std::abort();
    if (!change.appointment_external_id ||
        json.value("appointment_external_id", "") != *change.appointment_external_id)
      std::abort();
    if (n->ordering_key != *change.appointment_external_id) std::abort();
    if (!json.value(std::string(ar::to_string(n->kind)), false)) std::abort();
  } else if (auto* r = std::get_if<ar::rejected>(&result)) {
    if (r->reason.empty()) std::abort();
  }
  return 0;
}
