#include "appointment_relay/appointment_order.hpp"

namespace appointment_relay {

bool appointment_order::add(std::int64_t id, std::string_view key, std::int64_t not_before_ms) {
  auto [it, inserted] = events_.try_emplace(id);
  if (!inserted) return false;
  entry& e = it->second;
  e.key.assign(key);
  e.not_before_ms = not_before_ms;
  auto [q, fresh] = queues_.try_emplace(e.key);
  if (fresh) {
    q->second.head = q->second.tail = id;
    make_head(id, e);
  } else {
    events_.at(q->second.tail).next = id;  // waits for the earlier ones of its appointment
    q->second.tail = id;
  }
  return true;
}

void appointment_order::make_head(std::int64_t id, entry& e) {
  if (e.not_before_ms <= 0) {
    e.at = stage::ready;
    ready_.push_back(id);
  } else {
    e.at = stage::waiting;
    waiting_.emplace(e.not_before_ms, id);
  }
}

std::optional<std::int64_t> appointment_order::take(std::int64_t now_ms) {
  while (!waiting_.empty() && waiting_.begin()->first <= now_ms) {
    const auto id = waiting_.begin()->second;
    waiting_.erase(waiting_.begin());
    events_.at(id).at = stage::ready;
    ready_.push_back(id);
  }
  if (ready_.empty()) return std::nullopt;
  const auto id = ready_.front();
  ready_.pop_front();
  events_.at(id).at = stage::in_flight;
  ++in_flight_;
  return id;
}

void appointment_order::retry(std::int64_t id, std::int64_t not_before_ms) {
  auto it = events_.find(id);
  if (it == events_.end() || it->second.at != stage::in_flight) return;
  --in_flight_;
  it->second.not_before_ms = not_before_ms;
  it->second.at = stage::waiting;
  waiting_.emplace(not_before_ms, id);
}

void appointment_order::complete(std::int64_t id) {
  auto it = events_.find(id);
  if (it == events_.end()) return;
  entry& e = it->second;
  switch (e.at) {
    case stage::in_flight:
      --in_flight_;
      break;
    case stage::ready:
      std::erase(ready_, id);
      break;
    case stage::waiting:
      for (auto w = waiting_.lower_bound(e.not_before_ms); w != waiting_.end() && w->first == e.not_before_ms;
           ++w) {
        if (w->second == id) {
          waiting_.erase(w);
          break;
        }
      }
      break;
    case stage::queued:
      break;
  }
  auto q = queues_.find(e.key);
  if (q != queues_.end()) {
    if (q->second.head == id) {
      q->second.head = e.next;
      if (q->second.head == 0) {
        queues_.erase(q);
      } else {
        make_head(q->second.head, events_.at(q->second.head));
      }
    } else {
      // Not the head (only a caller that drops a queued event does this): unlink it.
      for (auto prev = q->second.head; prev != 0;) {
        auto& p = events_.at(prev);
        if (p.next == id) {
          p.next = e.next;
          if (q->second.tail == id) q->second.tail = prev;
          break;
        }
        prev = p.next;
      }
    }
  }
  events_.erase(it);
}

std::optional<std::int64_t> appointment_order::next_due() const {
  if (waiting_.empty()) return std::nullopt;
  return waiting_.begin()->first;
}

std::optional<std::int64_t> appointment_order::lowest() const {
  if (events_.empty()) return std::nullopt;
  return events_.begin()->first;
}

void appointment_order::clear() {
  events_.clear();
  queues_.clear();
  ready_.clear();
  waiting_.clear();
  in_flight_ = 0;
}

}  // namespace appointment_relay
