#include "appointment_relay/appointment_order.hpp"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace appointment_relay {
namespace {

// Takes everything due at now_ms.
std::vector<std::int64_t> take_all(appointment_order& o, std::int64_t now_ms) {
  std::vector<std::int64_t> out;
  while (auto id = o.take(now_ms)) out.push_back(*id);
  return out;
}

TEST(appointment_order, should_make_only_the_first_event_of_each_appointment_ready) {
  appointment_order o;
  EXPECT_TRUE(o.add(1, "a", 0));
  EXPECT_TRUE(o.add(2, "b", 0));
  EXPECT_TRUE(o.add(3, "a", 0));
  EXPECT_TRUE(o.add(4, "a", 0));
  EXPECT_EQ(take_all(o, 1000), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(o.in_flight(), 2u);
  EXPECT_EQ(o.size(), 4u);
}

TEST(appointment_order, should_release_the_next_event_of_an_appointment_only_when_the_head_is_done) {
  appointment_order o;
  o.add(1, "a", 0);
  o.add(3, "a", 0);
  o.add(5, "a", 0);
  EXPECT_EQ(take_all(o, 0), std::vector<std::int64_t>{1});
  EXPECT_EQ(take_all(o, 0), std::vector<std::int64_t>{}) << "3 waits while 1 is in flight";
  o.complete(1);
  EXPECT_EQ(take_all(o, 0), std::vector<std::int64_t>{3});
  o.complete(3);
  EXPECT_EQ(take_all(o, 0), std::vector<std::int64_t>{5});
  o.complete(5);
  EXPECT_EQ(o.size(), 0u);
  EXPECT_EQ(o.in_flight(), 0u);
  EXPECT_FALSE(o.lowest());
}

TEST(appointment_order, should_keep_a_failed_head_first_until_its_retry_time) {
  appointment_order o;
  o.add(1, "a", 0);
  o.add(2, "a", 0);
  o.add(3, "b", 0);
  EXPECT_EQ(take_all(o, 100), (std::vector<std::int64_t>{1, 3}));
  o.retry(1, 500);
  EXPECT_EQ(o.in_flight(), 1u);
  EXPECT_EQ(o.next_due(), 500);
  EXPECT_EQ(take_all(o, 499), std::vector<std::int64_t>{}) << "neither 1 (not yet due) nor 2 (behind 1)";
  EXPECT_EQ(take_all(o, 500), std::vector<std::int64_t>{1});
  EXPECT_FALSE(o.next_due());
  o.complete(1);
  EXPECT_EQ(take_all(o, 500), std::vector<std::int64_t>{2});
}

TEST(appointment_order, should_honour_a_not_before_time_read_from_the_database) {
  appointment_order o;
  o.add(7, "a", 2000);
  o.add(8, "a", 0);
  o.add(9, "b", 0);
  EXPECT_EQ(take_all(o, 1000), std::vector<std::int64_t>{9});
  EXPECT_EQ(o.next_due(), 2000);
  EXPECT_EQ(take_all(o, 2000), std::vector<std::int64_t>{7});
}

TEST(appointment_order, should_take_heads_that_became_due_in_the_order_of_their_times) {
  appointment_order o;
  o.add(1, "a", 0);
  o.add(2, "b", 0);
  o.add(3, "c", 0);
  take_all(o, 0);
  o.retry(1, 300);
  o.retry(2, 100);
  o.retry(3, 200);
  EXPECT_EQ(take_all(o, 1000), (std::vector<std::int64_t>{2, 3, 1}));
}

TEST(appointment_order, should_refuse_an_event_it_already_holds) {
  appointment_order o;
  EXPECT_TRUE(o.add(4, "a", 0));
  EXPECT_FALSE(o.add(4, "a", 0));
  EXPECT_EQ(o.size(), 1u);
  EXPECT_TRUE(o.contains(4));
  EXPECT_FALSE(o.contains(5));
}

TEST(appointment_order, should_report_the_lowest_event_held_for_the_watermark) {
  appointment_order o;
  o.add(10, "a", 0);
  o.add(11, "b", 0);
  o.add(12, "a", 0);
  EXPECT_EQ(o.lowest(), 10);
  take_all(o, 0);
  o.complete(11);
  EXPECT_EQ(o.lowest(), 10) << "11 done, 10 still in flight";
  o.complete(10);
  EXPECT_EQ(o.lowest(), 12);
}

TEST(appointment_order, should_drop_a_ready_or_waiting_event_that_is_completed_without_being_sent) {
  appointment_order o;
  o.add(1, "a", 0);
  o.add(2, "b", 900);
  o.add(3, "b", 0);
  o.complete(1);  // ready, never taken
  o.complete(2);  // waiting for its time
  EXPECT_EQ(take_all(o, 0), std::vector<std::int64_t>{3});
  EXPECT_FALSE(o.next_due());
  EXPECT_EQ(o.size(), 1u);
}

TEST(appointment_order, should_forget_everything_on_clear) {
  appointment_order o;
  o.add(1, "a", 0);
  o.add(2, "a", 0);
  take_all(o, 0);
  o.clear();
  EXPECT_EQ(o.size(), 0u);
  EXPECT_EQ(o.in_flight(), 0u);
  EXPECT_TRUE(o.add(1, "a", 0)) << "a new generation reads the same events again";
  EXPECT_EQ(take_all(o, 0), std::vector<std::int64_t>{1});
}

// Whatever the order of answers, at most one event of an appointment is in flight, and each appointment's
// events go out in the order they were added.
TEST(appointment_order, should_never_have_two_events_of_one_appointment_in_flight) {
  appointment_order o;
  const char* keys[] = {"a", "b", "c"};
  for (std::int64_t id = 1; id <= 60; ++id) o.add(id, keys[id % 3], 0);
  std::map<std::string, std::int64_t> last_sent;
  std::vector<std::int64_t> flying;
  std::map<std::int64_t, int> failures;
  std::int64_t now = 0;
  for (int round = 0; round < 500 && o.size() > 0; ++round) {
    while (auto id = o.take(now)) flying.push_back(*id);
    std::map<std::string, int> per_key;
    for (auto id : flying) ASSERT_EQ(++per_key[keys[id % 3]], 1) << "round " << round;
    // Answer the oldest in flight: the first attempt of every third event fails and goes again later.
    if (flying.empty()) {
      now = *o.next_due();
      continue;
    }
    const auto id = flying.front();
    flying.erase(flying.begin());
    if (id % 3 == 0 && ++failures[id] == 1) {
      o.retry(id, now + 5);
    } else {
      auto& last = last_sent[keys[id % 3]];
      ASSERT_GT(id, last) << "appointment order";
      last = id;
      o.complete(id);
    }
    ++now;
  }
  EXPECT_EQ(o.size(), 0u);
}

}  // namespace
}  // namespace appointment_relay
