// Notifications only while the relay waits for them (migration 0008; appointment_relay.listening: 0 off, 2 on
// but not settled, 1 on and settled). Under a fast stream the relay turns
// the capture triggers' notifications off and reads on its own timer; when the stream stops it turns them on
// again. A Canvas transaction that captured a change while they were off, and is still open when they come
// back on, notifies nobody when it commits: the relay must find its row all the same, at once, not at the
// catch-up poll (set to a minute here), and even while an unrelated transaction stays open.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include <pqxx/pqxx>

#include "fault_support.hpp"
#include "support/relay_process.hpp"

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

constexpr const char* book_sql =
    "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now() + interval '1 day', 30)";

TEST(wake_mode, should_deliver_a_change_that_skipped_its_notification_as_soon_as_its_transaction_commits) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(200));
  auto env = relay_env(db, server.url());
  env["APPOINTMENT_RELAY_DATABASE_POLL_INTERVAL"] = "60s";
  env["APPOINTMENT_RELAY_LOG_LEVEL"] = "debug";  // the switches, in the log shown on failure
  relay_process relay(env);
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();

  pqxx::connection probe(db.url());
  auto listening = [&] {
    pqxx::nontransaction tx(probe);
    return tx.exec("SELECT last_value FROM appointment_relay.listening")[0][0].as<int>();
  };
  ASSERT_TRUE(wait_until([&] { return listening() == 1; }, 5s)) << "not listening, settled, at rest";

  // A fast stream: 20 bookings per transaction every 5 ms (fast enough for the switch on a loaded machine
  // too), until the held transaction has captured its row.
  std::atomic<bool> stop{false};
  std::atomic<int> booked{0};
  std::thread load([&] {
    pqxx::connection c(db.url());
    std::string twenty;
    for (int i = 0; i < 20; ++i) twenty += std::string(book_sql) + ";";
    for (int round = 0; round < 300 && !stop; ++round) {  // at most 6,000 bookings
      pqxx::nontransaction(c).exec(twenty);
      booked += 20;
      std::this_thread::sleep_for(5ms);
    }
  });
  const bool polled = wait_until([&] { return listening() == 0; }, 10s);

  // A Canvas transaction captures a change while the notifications are off, and stays open.
  pqxx::connection held_conn(db.url());
  pqxx::work held(held_conn);
  std::int64_t held_id = 0;
  int before = -1, after = -1;
  if (polled) {
    before = listening();
    auto appointment = held.exec(book_sql)[0][0].as<std::int64_t>();
    held_id = held.exec("SELECT id FROM appointment_relay.outbox WHERE appointment_id = " +
                        std::to_string(appointment))[0][0]
                  .as<std::int64_t>();
    after = listening();
  }
  // And an unrelated transaction that only holds a transaction id, open to the end: it keeps the relay from
  // ever settling here, as one left open for minutes anywhere in the cluster would.
  pqxx::connection other_conn(db.url());
  pqxx::work other(other_conn);
  other.exec("SELECT txid_current()");
  stop = true;
  load.join();
  ASSERT_TRUE(polled) << "the relay never turned the notifications off during " << booked << " bookings";
  // Off before and after the trigger ran (the stream was still going): the trigger did not notify.
  ASSERT_EQ(before, 0);
  ASSERT_EQ(after, 0);

  // The stream has stopped: every booking arrives, and the notifications come back on while the held
  // transaction is still open.
  ASSERT_TRUE(server.wait_for_requests(static_cast<std::size_t>(booked.load()), 30s))
      << server.request_count() << " of " << booked;
  // On again (2), but not settled (1): the held transaction may have skipped its notification.
  ASSERT_TRUE(wait_until([&] { return listening() == 2; }, 5s))
      << "notifications not back on: " << listening();
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(listening(), 2) << "settled while a transaction that skipped its notification is open";
  EXPECT_EQ(server.request_count(), static_cast<std::size_t>(booked.load())) << "more than the stream";

  pqxx::connection listener(db.url());
  pqxx::nontransaction(listener).exec("LISTEN appointment_relay");
  const auto committed = steady::now();
  held.commit();
  ASSERT_TRUE(server.wait_for_requests(static_cast<std::size_t>(booked.load()) + 1, 10s))
      << "the held transaction's change was not delivered" << relay.log();
  const auto took = server.requests().back().received - committed;
  EXPECT_LT(took, 1s) << "found by the catch-up poll, not when its transaction ended";
  // It really went without a notification (else this test proves nothing about the settling).
  EXPECT_EQ(listener.get_notifs(), 0) << "the held transaction notified";
  EXPECT_GT(held_id, 0);
  EXPECT_EQ(relay.count_in_log("dead letter"), 0u);
}

}  // namespace
}  // namespace appointment_relay::testing
