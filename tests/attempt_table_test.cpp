#include "appointment_relay/attempt_table.hpp"

#include <gtest/gtest.h>

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;
using time_point = attempt_table::time_point;

TEST(attempt_table, should_end_an_attempt_once_and_ignore_a_second_answer) {
  attempt_table t;
  const time_point t0{};
  const auto token = t.start(42, t0 + 10s);
  t.set_request(token, 7);
  auto first = t.finish(token);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->event_id, 42);
  EXPECT_EQ(first->request, 7u);
  EXPECT_FALSE(t.finish(token)) << "a late answer to an ended attempt is stale";
  EXPECT_TRUE(t.empty());
}

TEST(attempt_table, should_give_each_attempt_of_one_event_its_own_token) {
  attempt_table t;
  const auto a = t.start(1, time_point{});
  ASSERT_TRUE(t.finish(a));
  const auto b = t.start(1, time_point{});
  EXPECT_NE(a, b);
  EXPECT_FALSE(t.finish(a)) << "the first attempt's answer must not end the second";
  EXPECT_TRUE(t.finish(b));
}

TEST(attempt_table, should_list_only_the_attempts_past_their_deadline) {
  attempt_table t;
  const time_point t0{};
  t.start(1, t0 + 1s);
  const auto late = t.start(2, t0 + 5s);
  t.start(3, t0 + 2s);
  auto overdue = t.overdue(t0 + 2s);
  ASSERT_EQ(overdue.size(), 2u);
  EXPECT_NE(overdue[0].event_id, 2);
  EXPECT_NE(overdue[1].event_id, 2);
  EXPECT_EQ(t.size(), 3u) << "listing does not end them";
  EXPECT_TRUE(t.finish(late));
}

TEST(attempt_table, should_hand_over_every_attempt_to_cancel) {
  attempt_table t;
  const auto a = t.start(1, time_point{});
  t.set_request(a, 11);
  const auto b = t.start(2, time_point{});
  t.set_request(b, 12);
  auto all = t.take_all();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].request + all[1].request, 23u);
  EXPECT_TRUE(t.empty());
  EXPECT_FALSE(t.finish(a)) << "the cancelled attempt's answer is stale";
}

}  // namespace
}  // namespace appointment_relay
