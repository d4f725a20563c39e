#pragma once
// Where one endpoint has read the outbox up to, and which watermark it may write: pure arithmetic over what
// each read saw, no database (the store runs the reads and feeds the results in).
//
// Outbox ids are allocated at insert, not at commit, so a lower id can become visible after a higher one was
// read. The position keeps
//   floor: every id <= floor is settled (read, or it will never exist);
//   top:   the highest id read;
//   holes: the ids in (floor, top] not read yet, as ranges, each with a transaction id bound `next_xid`
//          taken by the read that found it missing.
// A read asks for the page of ids > top and for the rows inside the holes, in one snapshot. The ids a page
// skips become holes. A hole is settled (a rolled-back insert or a sequence gap) when a read's snapshot
// xmin >= its bound and the read did not find it:
//   - the transaction T that allocated hole id h got its transaction id before it allocated h (the capture
//     triggers call txid_current() first: sql/migrations/0001_outbox.sql);
//   - h was found missing below an id r that the read saw committed; the outbox identity allocates in
//     order (CACHE 1), so r was allocated after h, and committed before that read's snapshot: T had its
//     transaction id before the snapshot, so below the next unassigned transaction id read after it, the
//     bound;
//   - a later snapshot with xmin >= bound has every transaction below the bound finished, T included; had
//     T committed, that snapshot would see h.
// The bound is not the snapshot's xmax: PostgreSQL's xmax is latestCompletedXid + 1, and a transaction that
// got its id after the last completed one (T above, if r's transaction had an older id) is at or above it
// while still running, invisible in the snapshot's xip list and not holding its xmin back.
// A long transaction that holds an outbox id keeps its one hole (and the floor below it) until it ends; the
// other holes made while it is open are filled as their transactions commit, and only the ids of
// transactions that roll back meanwhile stay as holes. So a read probes the page plus a few holes, not every
// row since the floor.
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace appointment_relay {

// What one read (one statement, one snapshot) saw.
struct read_observation {
  std::int64_t xmin = 0;      // the snapshot's xmin: every transaction with a lower id had ended
  std::int64_t next_xid = 0;  // the next unassigned transaction id, read after the snapshot was taken
  // Ids > top the read returned, ascending and contiguous from top in the snapshot (a page: ids between
  // them were not visible). Rows done already (delivered, dead) count: they are read, not missing.
  std::vector<std::int64_t> page_ids;
  // Ids inside the holes the read returned (now visible), and pending ones among them (handed out to the
  // caller, not done yet).
  std::vector<std::int64_t> found_ids;
  std::vector<std::int64_t> found_pending_ids;
  // Every hole was probed and every visible row in them returned (the probe was not cut by a limit). Only
  // then are holes the read did not find settled.
  bool holes_probed = false;
};

// A range of hole ids [first, last] and its transaction id bound.
struct hole_range {
  std::int64_t first = 0;
  std::int64_t last = 0;
  std::int64_t next_xid = 0;
};

class read_position {
 public:
  // start: the persisted watermark (every id up to it is done).
  explicit read_position(std::int64_t start = 0);

  std::int64_t floor() const;  // lowest unsettled hole - 1, or top
  std::int64_t top() const { return top_; }
  std::vector<hole_range> holes() const;  // ascending
  std::size_t hole_count() const { return holes_.size(); }

  // Returns the read's number (1, 2, ...: pending_event::read of what it handed out).
  std::uint64_t apply(const read_observation& read);

  // The watermark. want(): the caller reports every event up to id done (of those it was handed, in the reads
  // up to acked_read). The watermark written is min(wanted, floor): never past a hole. A late row (found in
  // a hole) handed out below what was wanted lowers wanted below it: the report that covered it was made
  // without it; and a report that has not taken the read of such a row into account (acked_read below it:
  // the report was made before the row reached the caller) stays below that row.
  void want(std::int64_t done_through, std::uint64_t acked_read = ~std::uint64_t{0});
  std::int64_t wanted() const { return wanted_; }
  // The value to write now: min(wanted, floor) when it passes what was written, else nothing.
  std::optional<std::int64_t> watermark_to_write() const;
  void written(std::int64_t done_through);
  std::int64_t last_written() const { return written_; }

 private:
  struct hole {
    std::int64_t last;
    std::int64_t next_xid;
  };
  std::int64_t top_;
  std::map<std::int64_t, hole> holes_;  // first -> (last, bound); disjoint, inside (start, top]
  std::int64_t wanted_;
  std::int64_t written_;
  std::uint64_t reads_ = 0;
  std::map<std::uint64_t, std::int64_t>
      late_;  // read number -> lowest late row it handed out, unacknowledged

  void fill(std::int64_t id);
};

}  // namespace appointment_relay
