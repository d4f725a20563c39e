#include "appointment_relay/outcome_batch.hpp"

#include <gtest/gtest.h>

namespace appointment_relay {
namespace {

delivery_update update(std::int64_t id, delivery_state state) {
  delivery_update u;
  u.event_id = id;
  u.endpoint = "crm";
  u.state = state;
  return u;
}

TEST(outcome_batch, should_hand_over_updates_in_order_and_the_watermark_only_when_it_grew) {
  outcome_batch b;
  EXPECT_TRUE(b.empty());
  b.add(update(1, delivery_state::retrying));
  b.add(update(1, delivery_state::delivered));
  b.done_through(1);
  auto t = b.take();
  ASSERT_EQ(t.updates.size(), 2u);
  EXPECT_EQ(t.updates[1].state, delivery_state::delivered);
  EXPECT_EQ(t.done_through, 1);
  EXPECT_TRUE(b.empty());
  b.done_through(1);
  EXPECT_TRUE(b.empty()) << "the same watermark again is nothing new";
  b.done_through(0);
  EXPECT_TRUE(b.empty()) << "a watermark never goes back";
  b.done_through(5);
  EXPECT_FALSE(b.empty());
  EXPECT_EQ(b.take().done_through, 5);
}

// The store may hold a watermark back below a late-committed row; the outcome that settles that row must
// carry the watermark again although it did not grow.
TEST(outcome_batch, should_repeat_the_watermark_with_new_outcomes) {
  outcome_batch b;
  b.done_through(9);
  b.take();
  b.add(update(4, delivery_state::delivered));
  EXPECT_EQ(b.take().done_through, 9);
}

TEST(outcome_batch, should_say_when_it_is_full) {
  outcome_batch b;
  for (std::size_t i = 0; i + 1 < outcome_batch::full_size; ++i) b.add(update(1, delivery_state::delivered));
  EXPECT_FALSE(b.full());
  b.add(update(2, delivery_state::delivered));
  EXPECT_TRUE(b.full());
}

TEST(outcome_batch, should_report_a_lower_watermark_after_a_reset) {
  outcome_batch b;
  b.done_through(100);
  b.take();
  b.reset_watermark();
  b.done_through(40);  // a new generation starts again from the persisted position
  EXPECT_EQ(b.take().done_through, 40);
}

}  // namespace
}  // namespace appointment_relay
