#include "appointment_relay/attempt_table.hpp"

namespace appointment_relay {

std::uint64_t attempt_table::start(std::int64_t event_id, time_point deadline) {
  const auto token = ++last_token_;
  running_.emplace(token, attempt{token, event_id, 0, deadline});
  return token;
}

void attempt_table::set_request(std::uint64_t token, std::uint64_t request) {
  if (auto it = running_.find(token); it != running_.end()) it->second.request = request;
}

std::optional<attempt_table::attempt> attempt_table::finish(std::uint64_t token) {
  auto it = running_.find(token);
  if (it == running_.end()) return std::nullopt;
  attempt a = it->second;
  running_.erase(it);
  return a;
}

std::vector<attempt_table::attempt> attempt_table::overdue(time_point now) const {
  std::vector<attempt> out;
  for (const auto& [token, a] : running_)
    if (a.deadline <= now) out.push_back(a);
  return out;
}

bool attempt_table::running(std::int64_t event_id) const {
  for (const auto& [token, a] : running_)
    if (a.event_id == event_id) return true;
  return false;
}

std::vector<attempt_table::attempt> attempt_table::take_all() {
  std::vector<attempt> out;
  out.reserve(running_.size());
  for (auto& [token, a] : running_) out.push_back(a);
  running_.clear();
  return out;
}

}  // namespace appointment_relay
