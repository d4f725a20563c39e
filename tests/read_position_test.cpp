#include "appointment_relay/read_position.hpp"

#include <gtest/gtest.h>

namespace appointment_relay {
namespace {

read_observation page(std::vector<std::int64_t> ids, std::int64_t xmin, std::int64_t next_xid) {
  read_observation r;
  r.xmin = xmin;
  r.next_xid = next_xid;
  r.page_ids = std::move(ids);
  r.holes_probed = true;
  return r;
}

std::vector<std::pair<std::int64_t, std::int64_t>> ranges(const read_position& p) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  for (const auto& h : p.holes()) out.emplace_back(h.first, h.last);
  return out;
}

TEST(read_position, should_start_at_the_watermark_with_nothing_missing) {
  read_position p(41);
  EXPECT_EQ(p.floor(), 41);
  EXPECT_EQ(p.top(), 41);
  EXPECT_EQ(p.hole_count(), 0u);
  EXPECT_FALSE(p.watermark_to_write());
}

TEST(read_position, should_move_the_floor_with_a_contiguous_page) {
  read_position p(10);
  p.apply(page({11, 12, 13}, 100, 105));
  EXPECT_EQ(p.top(), 13);
  EXPECT_EQ(p.floor(), 13);
}

TEST(read_position, should_keep_skipped_ids_as_holes_until_the_xmin_passes_their_bound) {
  read_position p(10);
  p.apply(page({11, 14, 15, 17}, 100, 105));  // 12..13 and 16 missing, transactions up to 104 may hold them
  EXPECT_EQ(ranges(p), (std::vector<std::pair<std::int64_t, std::int64_t>>{{12, 13}, {16, 16}}));
  EXPECT_EQ(p.floor(), 11);
  p.apply(page({}, 104, 110));  // one that may hold them still runs
  EXPECT_EQ(p.floor(), 11);
  p.apply(page({}, 105, 110));  // all ended: they will never appear
  EXPECT_EQ(p.hole_count(), 0u);
  EXPECT_EQ(p.floor(), 17);
}

TEST(read_position, should_settle_a_gap_at_once_when_no_transaction_that_could_hold_it_runs) {
  read_position p(0);
  p.apply(page({1, 3}, 50, 50));
  EXPECT_EQ(p.floor(), 3);
}

TEST(read_position, should_not_settle_holes_that_the_read_did_not_probe) {
  read_position p(0);
  p.apply(page({1, 3}, 50, 60));
  auto r = page({}, 60, 70);
  r.holes_probed = false;  // the probe was cut by the limit
  p.apply(r);
  EXPECT_EQ(p.floor(), 1);
  r.holes_probed = true;
  p.apply(r);
  EXPECT_EQ(p.floor(), 3);
}

TEST(read_position, should_split_a_hole_range_when_a_late_row_appears_inside_it) {
  read_position p(0);
  p.apply(page({1, 10}, 50, 60));
  read_observation r = page({}, 55, 61);
  r.found_ids = {5};
  r.found_pending_ids = {5};
  p.apply(r);
  EXPECT_EQ(ranges(p), (std::vector<std::pair<std::int64_t, std::int64_t>>{{2, 4}, {6, 9}}));
  r.found_ids = {2, 3, 4};
  r.found_pending_ids = {};
  p.apply(r);
  EXPECT_EQ(ranges(p), (std::vector<std::pair<std::int64_t, std::int64_t>>{{6, 9}}));
  EXPECT_EQ(p.floor(), 5);
}

TEST(read_position, should_keep_one_hole_for_a_long_transaction_while_later_gaps_fill) {
  // A transaction holding id 2 (its xid 40) stays open: the xmin stays at 40 while thousands of ids pass.
  read_position p(0);
  p.apply(page({1, 3}, 40, 45));
  std::int64_t next = 3;
  for (int i = 0; i < 1000; ++i) {
    // Each page skips one id that commits by the next read.
    read_observation r = page({next + 1, next + 3}, 40, 50 + i);
    if (i > 0) r.found_ids = {next - 1};
    p.apply(r);
    next += 3;
    EXPECT_LE(p.hole_count(), 2u);
  }
  EXPECT_EQ(p.floor(), 1);
  read_observation done = page({}, 2000, 2001);
  done.found_ids = {2, next - 1};
  p.apply(done);
  EXPECT_EQ(p.floor(), next);
}

TEST(read_position, should_write_the_watermark_up_to_the_floor_and_the_rest_once_the_floor_passes_it) {
  read_position p(0);
  p.apply(page({1, 2, 4, 5}, 40, 45));  // 3 missing
  p.want(5);
  EXPECT_EQ(p.watermark_to_write(), 2);
  p.written(2);
  EXPECT_FALSE(p.watermark_to_write());
  p.apply(page({}, 45, 46));  // 3 never appears
  EXPECT_EQ(p.watermark_to_write(), 5);
  p.written(5);
  EXPECT_FALSE(p.watermark_to_write());
  p.want(4);  // never back
  EXPECT_FALSE(p.watermark_to_write());
}

TEST(read_position, should_not_let_a_late_row_handed_out_fall_under_an_earlier_report) {
  read_position p(0);
  p.apply(page({1, 2, 4, 5}, 40, 45));  // 3 missing
  p.want(5);                            // the caller had 1, 2, 4, 5 done
  p.written(*p.watermark_to_write());
  read_observation r = page({}, 45, 46);
  r.found_ids = {3};
  r.found_pending_ids = {3};  // 3 committed late: handed out now, not done
  p.apply(r);
  EXPECT_EQ(p.floor(), 5);
  EXPECT_FALSE(p.watermark_to_write());  // not past 3
  p.want(5);                             // 3 done
  EXPECT_EQ(p.watermark_to_write(), 5);
}

// The race of a report made before a late row reached the caller and written after the store handed it
// out: the report names the last read it took into account, and does not cover what a later read handed out.
TEST(read_position, should_keep_a_report_made_before_a_late_row_arrived_below_that_row) {
  read_position p(0);
  const auto first = p.apply(page({1, 2, 4, 5}, 40, 45));  // 3 missing
  read_observation r = page({}, 45, 46);
  r.found_ids = {3};
  r.found_pending_ids = {3};  // 3 committed late: handed out by the second read
  const auto second = p.apply(r);
  EXPECT_GT(second, first);
  p.want(5, first);  // made before the second read's rows arrived: all of 1, 2, 4, 5 done, 3 unknown to it
  EXPECT_EQ(p.watermark_to_write(), 2) << "never past the row still in flight";
  p.want(5, second);  // 3 done too
  EXPECT_EQ(p.watermark_to_write(), 5);
}

TEST(read_position, should_not_lower_wanted_for_a_late_row_done_already) {
  read_position p(0);
  p.apply(page({1, 3}, 40, 45));
  p.want(3);
  read_observation r = page({}, 45, 46);
  r.found_ids = {2};  // delivered already (a marker)
  p.apply(r);
  EXPECT_EQ(p.watermark_to_write(), 3);
}

}  // namespace
}  // namespace appointment_relay
