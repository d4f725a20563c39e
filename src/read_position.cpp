#include "appointment_relay/read_position.hpp"

#include <algorithm>
#include <iterator>

namespace appointment_relay {

read_position::read_position(std::int64_t start) : top_(start), wanted_(start), written_(start) {}

std::int64_t read_position::floor() const {
  return holes_.empty() ? top_ : holes_.begin()->first - 1;
}

std::vector<hole_range> read_position::holes() const {
  std::vector<hole_range> out;
  out.reserve(holes_.size());
  for (const auto& [first, h] : holes_) out.push_back({first, h.last, h.next_xid});
  return out;
}

void read_position::fill(std::int64_t id) {
  auto it = holes_.upper_bound(id);
  if (it == holes_.begin()) return;
  --it;
  const auto first = it->first;
  const auto h = it->second;
  if (id > h.last) return;
  holes_.erase(it);
  if (first < id) holes_.emplace(first, hole{id - 1, h.next_xid});
  if (id < h.last) holes_.emplace(id + 1, hole{h.last, h.next_xid});
}

std::uint64_t read_position::apply(const read_observation& read) {
  const auto number = ++reads_;
  for (auto id : read.found_ids) fill(id);
  for (auto id : read.page_ids) {
    if (id <= top_) continue;  // not a page id: nothing to learn
    if (id > top_ + 1) holes_.emplace(top_ + 1, hole{id - 1, read.next_xid});
    top_ = id;
  }
  if (read.holes_probed) {
    // Also the holes this read made: their ids were not visible in the same snapshot.
    for (auto it = holes_.begin(); it != holes_.end();)
      it = it->second.next_xid <= read.xmin ? holes_.erase(it) : std::next(it);
  }
  for (auto id : read.found_pending_ids)
    if (id <= wanted_) wanted_ = std::max(written_, id - 1);
  if (!read.found_pending_ids.empty())
    late_[number] = *std::min_element(read.found_pending_ids.begin(), read.found_pending_ids.end());
  return number;
}

void read_position::want(std::int64_t done_through, std::uint64_t acked_read) {
  late_.erase(late_.begin(), late_.upper_bound(acked_read));
  for (const auto& [read, lowest] : late_) done_through = std::min(done_through, lowest - 1);
  wanted_ = std::max(wanted_, done_through);
}

std::optional<std::int64_t> read_position::watermark_to_write() const {
  const auto v = std::min(wanted_, floor());
  if (v > written_) return v;
  return std::nullopt;
}

void read_position::written(std::int64_t done_through) {
  written_ = std::max(written_, done_through);
}

}  // namespace appointment_relay
