// A long transaction in Canvas's database while changes stream in (issue #16): one that inserted an
// appointment (so it holds an outbox id below everything committed after it) and an idle-in-transaction
// session that holds a transaction id (so the snapshots' xmin stays behind), both open for 60 s. The store,
// reading page by page as the daemon does, must read every committed row exactly once, the held one after
// its commit, and pay per read the page plus a few holes, not every row since the held one.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <pqxx/pqxx>

#include "appointment_relay/store.hpp"
#include "faults/fault_support.hpp"

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;
using testing::canvas_stream;
using testing::scratch_database;
using testing::stream_options;

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

TEST(long_transaction, should_read_every_row_once_at_a_flat_cost_while_a_transaction_stays_open) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  constexpr auto hold = 60s;
  constexpr std::size_t page = 200;
  // The held id, and the ids of transactions committing between two reads (two stream connections, a few
  // rows each), may be missing at a read: a handful of holes, however long the transaction stays open.
  constexpr std::size_t max_holes = 8;

  store s(db.url());
  s.use_asynchronous_commit();
  s.use_daemon_session();
  ASSERT_TRUE(s.read_pending("default", page).empty());

  // The long transactions: one holds an outbox id, the other only a transaction id (and the xmin).
  pqxx::connection held_conn(db.url()), idle_conn(db.url());
  auto held_tx = std::make_unique<pqxx::work>(held_conn);
  auto appointment = held_tx
                         ->exec(
                             "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now() + "
                             "interval '1 day', 30)")[0][0]
                         .as<std::int64_t>();
  const auto held_id =
      held_tx
          ->exec(
              "SELECT id FROM appointment_relay.outbox WHERE source_table = 'api_appointment'"
              " AND row_id = " +
              std::to_string(appointment))[0][0]
          .as<std::int64_t>();
  auto idle_tx = std::make_unique<pqxx::work>(idle_conn);
  idle_tx->exec("SELECT txid_current()");
  const auto held_since = std::chrono::steady_clock::now();

  // Streams of Canvas changes, one after another, for most of the hold.
  std::atomic<bool> streaming{true};
  std::exception_ptr stream_error;
  std::size_t streams = 0;
  std::thread player([&] {
    try {
      // A few thousand changes, spread over the hold (a pause between streams; not timing-sensitive).
      for (std::uint64_t seed = 1; seed <= 5 && std::chrono::steady_clock::now() - held_since < hold - 15s;
           ++seed) {
        if (seed > 1) std::this_thread::sleep_for(5s);
        stream_options o;
        o.lives = testing::stream_lives(300);
        o.seed = seed;
        canvas_stream stream(db.url(), o);
        stream.play();
        ++streams;
      }
    } catch (...) {
      stream_error = std::current_exception();
    }
    streaming = false;
  });

  std::map<std::int64_t, int> read;  // id -> times read
  std::size_t reads = 0, most_rows = 0, most_holes = 0;
  std::int64_t top = 0;
  bool held_read_early = false;
  auto read_once = [&] {
    auto events = s.read_pending("default", page);
    const auto stats = s.last_read_stats();
    ++reads;
    most_rows = std::max(most_rows, stats.rows);
    most_holes = std::max(most_holes, stats.holes_probed);
    EXPECT_LE(stats.statements, 2u);  // the main read, sometimes with the side read of replayed rows
    EXPECT_LE(stats.holes_probed, max_holes) << "read " << reads;
    EXPECT_LE(stats.rows, page + stats.holes_probed) << "read " << reads;
    std::vector<delivery_update> done;
    for (const auto& e : events) {
      ++read[e.id];
      top = std::max(top, e.id);
      if (e.id == held_id && held_tx) held_read_early = true;
      done.push_back({e.id, "default", delivery_state::delivered, 1, unix_ms(), unix_ms(), {}, "", ""});
    }
    // As the dispatcher does: everything handed out is done, so the watermark wanted is the highest read.
    s.record(done, {{"default", top}});
    s.heartbeat();
    return events.size();
  };

  while (std::chrono::steady_clock::now() - held_since < hold) {
    if (read_once() < page) std::this_thread::sleep_for(20ms);  // the daemon waits for a notification
  }
  player.join();
  if (stream_error) std::rethrow_exception(stream_error);
  ASSERT_GE(streams, 1u);
  EXPECT_FALSE(held_read_early);
  // The watermark stayed below the held id all along.
  EXPECT_LT(std::stoll(db.query_value(
                "SELECT coalesce(max(done_through), 0) FROM appointment_relay.endpoint_cursor")),
            held_id);

  held_tx->commit();
  held_tx.reset();
  idle_tx->commit();
  idle_tx.reset();
  for (int i = 0; i < 5; ++i) read_once();

  std::set<std::int64_t> committed;
  pqxx::connection check(db.url());
  pqxx::nontransaction tx(check);
  for (const auto& row : tx.exec("SELECT id FROM appointment_relay.outbox"))
    committed.insert(row[0].as<std::int64_t>());
  ASSERT_GT(committed.size(), 1000u);
  std::size_t missing = 0, twice = 0;
  for (auto id : committed)
    if (!read.count(id)) ++missing;
  for (const auto& [id, n] : read) {
    if (n != 1) ++twice;
    EXPECT_TRUE(committed.count(id)) << id;
  }
  EXPECT_EQ(missing, 0u);
  EXPECT_EQ(twice, 0u);
  EXPECT_EQ(read.count(held_id), 1u);
  // With the held row read and nothing open, the watermark reaches the last row.
  EXPECT_EQ(std::stoll(tx.exec("SELECT done_through FROM appointment_relay.endpoint_cursor")[0][0].c_str()),
            *committed.rbegin());
  std::cout << "[          ] " << committed.size() << " rows, " << streams << " streams, " << reads
            << " reads; per read at most " << most_rows << " rows and " << most_holes << " holes\n";
}

}  // namespace
}  // namespace appointment_relay
