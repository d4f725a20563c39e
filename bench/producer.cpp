// bench_producer: the benchmarks' load generator and measurer (scripts/bench.sh drives it).
//
// It commits Canvas changes the way Canvas would (single-row insert transactions into api_appointment and
// api_notestatechangeevent), takes each commit's time right after the COMMIT returns (system_clock, unix ns),
// and matches those times to the receiver's record (receive unix ns, webhook-id, body) by the payload's
// appointment_external_id and flag. Every appointment goes through one cycle of six changes:
//   create A (created), BKD on its note (not notified), CLD (cancelled), RVT (reverted),
//   reschedule A -> B (rescheduled), CVD (checked_in, for B).
// Five of the six are notifiable; each (external id, kind) occurs once, so the match is exact.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <pqxx/pqxx>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

const char* const usage = R"(bench_producer: load generator and measurer of scripts/bench.sh.

  bench_producer stream  --db URL --rate R --seconds S --out FILE   R changes/s on one connection
  bench_producer flood   --db URL --connections N --seconds S --out FILE
                                                                  as fast as possible on N connections
  bench_producer backlog --db URL --events N                        N notifiable events in big transactions
  bench_producer latency    --commits FILE --received FILE [--captured FILE] [--window SECONDS]
  bench_producer throughput --commits FILE --received FILE [--warmup-seconds W]
  bench_producer drain      --received FILE --since NS --expect N
  bench_producer jitter     --seconds S                     how late a 1 ms sleep wakes up (scheduling delay)

stream/flood write one line per notifiable commit to --out: commit unix ns, external id, kind (tab-separated)
and print key=value lines (changes, notifiable, seconds). The analyses print key=value lines.
)";

std::int64_t unix_ns_now() {
  using namespace std::chrono;
  return duration_cast<nanoseconds>(system_clock::now().time_since_epoch()).count();
}

struct options {
  std::string mode, db, out, commits, received, captured;
  double rate = 300, seconds = 5, warmup_seconds = 1;
  double window_seconds = 0;  // latency: also per window of this many seconds of commit time
  int connections = 2;
  long events = 0, expect = 0;
  std::int64_t since = 0;
};

struct commit_record {
  std::int64_t unix_ns;
  std::string external_id;
  const char* kind;
};

// One producer connection: its patients, a stock of fresh notes, and the appointment cycle.
class producer {
 public:
  explicit producer(const std::string& url) : conn_(url) {
    conn_.prepare("patients",
                  "INSERT INTO api_patient (key, first_name, last_name) "
                  "SELECT replace(gen_random_uuid()::text, '-', ''), 'Bench', 'Patient' "
                  "FROM generate_series(1, $1) RETURNING id");
    conn_.prepare(
        "notes", "INSERT INTO api_note (patient_id) SELECT $1::int FROM generate_series(1, $2) RETURNING id");
    conn_.prepare("create",
                  "INSERT INTO api_appointment (patient_id, note_id, start_time, duration_minutes, status) "
                  "VALUES ($1, $2, date_trunc('minute', now()) + interval '1 day', 30, 'confirmed') "
                  "RETURNING id, externally_exposable_id");
    conn_.prepare("reschedule",
                  "INSERT INTO api_appointment (patient_id, note_id, appointment_rescheduled_from_id, "
                  "start_time, duration_minutes, status) "
                  "VALUES ($1, $2, $3, date_trunc('minute', now()) + interval '2 days', 45, 'confirmed') "
                  "RETURNING id, externally_exposable_id");
    conn_.prepare("state", "INSERT INTO api_notestatechangeevent (note_id, state) VALUES ($1, $2)");
    pqxx::work tx(conn_);
    for (const auto& row : tx.exec_prepared("patients", 50)) patients_.push_back(row[0].as<int>());
    tx.commit();
  }

  // Makes sure `count` fresh notes are in stock (one untriggered transaction per patient batch).
  void stock_notes(std::size_t count) {
    if (notes_.size() - next_note_ >= count) return;
    pqxx::work tx(conn_);
    std::size_t per_patient = std::max<std::size_t>(1, count / patients_.size() + 1);
    for (int p : patients_)
      for (const auto& row : tx.exec_prepared("notes", p, per_patient))
        notes_.push_back({row[0].as<int>(), p});
    tx.commit();
  }

  // Commits the next change of the cycle in its own transaction; records it when it is notifiable.
  void next(std::vector<commit_record>& out) {
    pqxx::nontransaction tx(conn_);
    switch (step_) {
      case 0: {
        stock_notes(1);
        current_ = notes_[next_note_++];
        auto r = tx.exec_prepared("create", current_.patient, current_.id);
        auto t = unix_ns_now();
        appointment_id_ = r[0][0].as<long>();
        external_id_ = r[0][1].as<std::string>();
        out.push_back({t, external_id_, "created"});
        break;
      }
      case 1:
        tx.exec_prepared("state", current_.id, "BKD");
        break;
      case 2:
        tx.exec_prepared("state", current_.id, "CLD");
        out.push_back({unix_ns_now(), external_id_, "cancelled"});
        break;
      case 3:
        tx.exec_prepared("state", current_.id, "RVT");
        out.push_back({unix_ns_now(), external_id_, "reverted"});
        break;
      case 4: {
        auto r = tx.exec_prepared("reschedule", current_.patient, current_.id, appointment_id_);
        auto t = unix_ns_now();
        appointment_id_ = r[0][0].as<long>();
        external_id_ = r[0][1].as<std::string>();
        out.push_back({t, external_id_, "rescheduled"});
        break;
      }
      case 5:
        tx.exec_prepared("state", current_.id, "CVD");
        out.push_back({unix_ns_now(), external_id_, "checked_in"});
        break;
    }
    step_ = (step_ + 1) % 6;
    ++changes_;
  }

  long changes() const { return changes_; }

 private:
  struct note {
    int id;
    int patient;
  };
  pqxx::connection conn_;
  std::vector<int> patients_;
  std::vector<note> notes_;
  std::size_t next_note_ = 0;
  note current_{0, 0};
  long appointment_id_ = 0;
  std::string external_id_;  // of the appointment current on the note
  int step_ = 0;
  long changes_ = 0;
};

void write_commits(const std::string& path, const std::vector<commit_record>& records) {
  std::ofstream out(path);
  for (const auto& r : records) out << r.unix_ns << '\t' << r.external_id << '\t' << r.kind << '\n';
  if (!out) throw std::runtime_error("cannot write " + path);
}

int run_stream(const options& o) {
  producer p(o.db);
  auto total = static_cast<long>(std::llround(o.rate * o.seconds));
  p.stock_notes(static_cast<std::size_t>(total / 6 + 2));
  std::vector<commit_record> records;
  records.reserve(static_cast<std::size_t>(total));
  auto start = std::chrono::steady_clock::now();
  auto period = std::chrono::duration<double>(1.0 / o.rate);
  for (long k = 0; k < total; ++k) {
    std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::nanoseconds>(period * k));
    p.next(records);
  }
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_commits(o.out, records);
  std::printf("changes=%ld\nnotifiable=%zu\nseconds=%.3f\n", p.changes(), records.size(), elapsed);
  return 0;
}

int run_flood(const options& o) {
  std::vector<std::unique_ptr<producer>> producers;
  for (int i = 0; i < o.connections; ++i) {
    producers.push_back(std::make_unique<producer>(o.db));
    producers.back()->stock_notes(2000);
  }
  std::vector<std::vector<commit_record>> records(static_cast<std::size_t>(o.connections));
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(o.connections));
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < o.connections; ++i) {
    threads.emplace_back([&, i] {
      auto u = static_cast<std::size_t>(i);
      try {
        records[u].reserve(200000);
        while (!stop.load(std::memory_order_relaxed)) {
          producers[u]->stock_notes(1);  // every few thousand changes: one batch of notes, not notified
          producers[u]->next(records[u]);
        }
      } catch (...) {
        errors[u] = std::current_exception();
        stop = true;
      }
    });
  }
  std::this_thread::sleep_until(
      start + std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(o.seconds)));
  stop = true;
  for (auto& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  std::vector<commit_record> all;
  long changes = 0;
  for (std::size_t i = 0; i < records.size(); ++i) {
    all.insert(all.end(), records[i].begin(), records[i].end());
    changes += producers[i]->changes();
  }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.unix_ns < b.unix_ns; });
  write_commits(o.out, all);
  std::printf("changes=%ld\nnotifiable=%zu\nseconds=%.3f\n", changes, all.size(), elapsed);
  return 0;
}

// Half created appointments, half cancellations of them, in transactions of at most 10,000 rows.
int run_backlog(const options& o) {
  pqxx::connection conn(o.db);
  long appointments = (o.events + 1) / 2, cancels = o.events - appointments;
  auto start = std::chrono::steady_clock::now();
  long first_note = 0;
  {
    pqxx::work tx(conn);
    auto patient =
        tx.exec1(
              "INSERT INTO api_patient (key, first_name, last_name) "
              "VALUES (replace(gen_random_uuid()::text, '-', ''), 'Bench', 'Backlog') RETURNING id")[0]
            .as<long>();
    first_note = tx.exec1("WITH n AS (INSERT INTO api_note (patient_id) SELECT " + std::to_string(patient) +
                          " FROM generate_series(1, " + std::to_string(appointments) +
                          ") RETURNING id) SELECT min(id) FROM n")[0]
                     .as<long>();
    tx.commit();
  }
  const long chunk = 10000;
  for (long done = 0; done < appointments; done += chunk) {
    long lo = first_note + done, hi = first_note + std::min(appointments, done + chunk) - 1;
    pqxx::work tx(conn);
    tx.exec0(
        "INSERT INTO api_appointment (patient_id, note_id, start_time, duration_minutes, status) "
        "SELECT patient_id, id, date_trunc('minute', now()) + interval '1 day' + id * interval '1 minute', "
        "30, "
        "'confirmed' FROM api_note WHERE id BETWEEN " +
        std::to_string(lo) + " AND " + std::to_string(hi) + " ORDER BY id");
    tx.commit();
  }
  for (long done = 0; done < cancels; done += chunk) {
    long lo = first_note + done, hi = first_note + std::min(cancels, done + chunk) - 1;
    pqxx::work tx(conn);
    tx.exec0(
        "INSERT INTO api_notestatechangeevent (note_id, state) SELECT id, 'CLD' FROM api_note WHERE id "
        "BETWEEN " +
        std::to_string(lo) + " AND " + std::to_string(hi) + " ORDER BY id");
    tx.commit();
  }
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("notifiable=%ld\nseconds=%.3f\n", o.events, elapsed);
  return 0;
}

struct receipt {
  std::int64_t unix_ns;
  std::string key;        // external id + '/' + kind
  std::int64_t event_id;  // from the webhook-id msg_<installation>_<event id>_<endpoint>; -1 if not one
};

std::int64_t event_id_of(const std::string& webhook_id) {
  auto a = webhook_id.find('_'), b = a == std::string::npos ? a : webhook_id.find('_', a + 1);
  if (b == std::string::npos) return -1;
  auto c = webhook_id.find('_', b + 1);
  try {
    return std::stoll(webhook_id.substr(b + 1, c == std::string::npos ? std::string::npos : c - b - 1));
  } catch (const std::exception&) {
    return -1;
  }
}

std::vector<receipt> read_received(const std::string& path) {
  static const char* const kinds[] = {"created", "rescheduled", "cancelled",
                                      "no_show", "reverted",    "checked_in"};
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<receipt> out;
  std::string line;
  while (std::getline(in, line)) {
    auto t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
    if (t1 == std::string::npos || t2 == std::string::npos) continue;
    receipt r{std::stoll(line.substr(0, t1)), {}, event_id_of(line.substr(t1 + 1, t2 - t1 - 1))};
    auto body = nlohmann::json::parse(line.substr(t2 + 1), nullptr, false);
    if (body.is_object() && body.contains("appointment_external_id")) {
      r.key = body["appointment_external_id"].get<std::string>() + '/';
      for (const char* k : kinds)
        if (body.value(k, false)) r.key += k;
    }
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.unix_ns < b.unix_ns; });
  return out;
}

std::vector<commit_record> read_commits(const std::string& path, std::vector<std::string>& kinds) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<commit_record> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::int64_t t;
    std::string id, kind;
    if (!(fields >> t >> id >> kind)) continue;
    kinds.push_back(kind);
    out.push_back({t, id + '/' + kind, nullptr});
  }
  return out;
}

// Matches commits to first receipts; returns latencies in microseconds, counts the unmatched.
struct match_result {
  std::vector<double> latencies_us;
  std::vector<std::pair<std::int64_t, double>> by_commit;  // commit time (unix ns), latency (us)
  long missing = 0, duplicates = 0, unknown = 0;
};

match_result match(const std::vector<commit_record>& commits, const std::vector<receipt>& receipts) {
  std::unordered_map<std::string, std::int64_t> first;
  match_result m;
  for (const auto& r : receipts) {
    if (!first.emplace(r.key, r.unix_ns).second) ++m.duplicates;
  }
  std::unordered_map<std::string, bool> committed;
  for (const auto& c : commits) {
    committed[c.external_id] = true;
    auto it = first.find(c.external_id);
    if (it == first.end()) {
      ++m.missing;
      continue;
    }
    m.latencies_us.push_back(static_cast<double>(it->second - c.unix_ns) / 1000.0);
    m.by_commit.emplace_back(c.unix_ns, m.latencies_us.back());
  }
  for (const auto& [key, t] : first)
    if (!committed.count(key)) ++m.unknown;
  std::sort(m.latencies_us.begin(), m.latencies_us.end());
  return m;
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return NAN;
  auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

int run_latency(const options& o) {
  std::vector<std::string> kinds;
  auto commits = read_commits(o.commits, kinds);
  auto receipts = read_received(o.received);
  auto m = match(commits, receipts);
  double sum = 0;
  for (double l : m.latencies_us) sum += l;
  std::printf("committed=%zu\nreceived=%zu\nmatched=%zu\nmissing=%ld\nduplicates=%ld\nunknown=%ld\n",
              commits.size(), receipts.size(), m.latencies_us.size(), m.missing, m.duplicates, m.unknown);
  std::printf("p50_us=%.1f\np90_us=%.1f\np99_us=%.1f\nmax_us=%.1f\nmin_us=%.1f\nmean_us=%.1f\n",
              percentile(m.latencies_us, 50), percentile(m.latencies_us, 90), percentile(m.latencies_us, 99),
              m.latencies_us.empty() ? NAN : m.latencies_us.back(),
              m.latencies_us.empty() ? NAN : m.latencies_us.front(),
              m.latencies_us.empty() ? NAN : sum / static_cast<double>(m.latencies_us.size()));
  if (o.window_seconds > 0 && !m.by_commit.empty()) {
    // Per window of commit time: does latency stay flat (e.g. while a transaction is held open)?
    std::sort(m.by_commit.begin(), m.by_commit.end());
    const auto start = m.by_commit.front().first;
    const auto width = static_cast<std::int64_t>(o.window_seconds * 1e9);
    std::vector<double> in_window;
    std::int64_t window = 0;
    auto report = [&] {
      std::sort(in_window.begin(), in_window.end());
      std::printf("window_%ld=from_s:%.0f n:%zu p50_us:%.1f p99_us:%.1f\n", static_cast<long>(window),
                  static_cast<double>(window) * o.window_seconds, in_window.size(), percentile(in_window, 50),
                  percentile(in_window, 99));
    };
    for (const auto& [t, l] : m.by_commit) {
      const auto w = (t - start) / width;
      if (w != window && !in_window.empty()) {
        report();
        in_window.clear();
      }
      window = w;
      in_window.push_back(l);
    }
    report();
  }
  if (!o.captured.empty()) {
    // From the capturing trigger's clock_timestamp() (before COMMIT) to receipt: an upper bound that does not
    // depend on when the producer got the CPU back after its COMMIT.
    std::ifstream in(o.captured);
    std::unordered_map<std::int64_t, std::int64_t> captured_us;
    std::int64_t id, us;
    while (in >> id >> us) captured_us[id] = us;
    std::vector<double> from_capture;
    for (const auto& r : receipts) {
      auto it = captured_us.find(r.event_id);
      if (it != captured_us.end()) from_capture.push_back(static_cast<double>(r.unix_ns / 1000 - it->second));
    }
    std::sort(from_capture.begin(), from_capture.end());
    std::printf("capture_n=%zu\ncapture_p50_us=%.1f\ncapture_p99_us=%.1f\ncapture_max_us=%.1f\n",
                from_capture.size(), percentile(from_capture, 50), percentile(from_capture, 99),
                from_capture.empty() ? NAN : from_capture.back());
  }
  return m.missing == 0 ? 0 : 3;
}

// Over the window from warm-up to the last commit: delivered/s over committed notifiable/s.
int run_throughput(const options& o) {
  std::vector<std::string> kinds;
  auto commits = read_commits(o.commits, kinds);
  auto receipts = read_received(o.received);
  auto m = match(commits, receipts);
  if (commits.empty()) throw std::runtime_error("no commits");
  std::int64_t begin = commits.front().unix_ns + static_cast<std::int64_t>(o.warmup_seconds * 1e9);
  std::int64_t end = commits.back().unix_ns;
  if (end <= begin) throw std::runtime_error("window too short for the warm-up");
  auto in_window = [&](std::int64_t t) { return t >= begin && t <= end; };
  long committed = 0, delivered = 0;
  for (const auto& c : commits) committed += in_window(c.unix_ns);
  for (const auto& r : receipts) delivered += in_window(r.unix_ns);
  double window = static_cast<double>(end - begin) / 1e9;
  std::int64_t last_receipt = receipts.empty() ? 0 : receipts.back().unix_ns;
  std::printf("window_s=%.3f\ncommitted_per_s=%.1f\ndelivered_per_s=%.1f\nratio=%.4f\n", window,
              static_cast<double>(committed) / window, static_cast<double>(delivered) / window,
              committed ? static_cast<double>(delivered) / static_cast<double>(committed) : NAN);
  std::printf("committed=%zu\nmissing=%ld\nduplicates=%ld\ncatch_up_ms=%.1f\np50_us=%.1f\np99_us=%.1f\n",
              commits.size(), m.missing, m.duplicates, static_cast<double>(last_receipt - end) / 1e6,
              percentile(m.latencies_us, 50), percentile(m.latencies_us, 99));
  return m.missing == 0 ? 0 : 3;
}

int run_drain(const options& o) {
  auto receipts = read_received(o.received);
  std::unordered_map<std::string, bool> distinct;
  for (const auto& r : receipts) distinct[r.key] = true;
  if (receipts.empty()) throw std::runtime_error("nothing received");
  double from_start = static_cast<double>(receipts.back().unix_ns - o.since) / 1e9;
  double from_first = static_cast<double>(receipts.back().unix_ns - receipts.front().unix_ns) / 1e9;
  std::printf(
      "received=%zu\ndistinct=%zu\nseconds=%.3f\nper_s=%.0f\nfirst_receipt_ms=%.1f\nper_s_from_first=%.0f\n",
      receipts.size(), distinct.size(), from_start, static_cast<double>(receipts.size()) / from_start,
      static_cast<double>(receipts.front().unix_ns - o.since) / 1e6,
      static_cast<double>(receipts.size()) / from_first);
  return static_cast<long>(distinct.size()) >= o.expect ? 0 : 3;
}

// How late a thread that sleeps 1 ms wakes up: the machine's scheduling delay, which bounds every latency.
int run_jitter(const options& o) {
  std::vector<double> late_us;
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.seconds);
  while (std::chrono::steady_clock::now() < end) {
    auto due = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
    std::this_thread::sleep_until(due);
    late_us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - due).count());
  }
  std::sort(late_us.begin(), late_us.end());
  std::printf("wakeups=%zu\nlate_p50_us=%.1f\nlate_p99_us=%.1f\nlate_max_us=%.1f\n", late_us.size(),
              percentile(late_us, 50), percentile(late_us, 99), late_us.empty() ? NAN : late_us.back());
  return 0;
}

options parse(int argc, char** argv) {
  options o;
  if (argc < 2) {
    std::fputs(usage, stderr);
    std::exit(2);
  }
  o.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", a.c_str());
      std::exit(2);
    }
    std::string v = argv[++i];
    if (a == "--db")
      o.db = v;
    else if (a == "--out")
      o.out = v;
    else if (a == "--commits")
      o.commits = v;
    else if (a == "--received")
      o.received = v;
    else if (a == "--captured")
      o.captured = v;
    else if (a == "--window")
      o.window_seconds = std::stod(v);
    else if (a == "--rate")
      o.rate = std::stod(v);
    else if (a == "--seconds")
      o.seconds = std::stod(v);
    else if (a == "--warmup-seconds")
      o.warmup_seconds = std::stod(v);
    else if (a == "--connections")
      o.connections = std::stoi(v);
    else if (a == "--events")
      o.events = std::stol(v);
    else if (a == "--expect")
      o.expect = std::stol(v);
    else if (a == "--since")
      o.since = std::stoll(v);
    else {
      std::fprintf(stderr, "unknown option %s\n%s", a.c_str(), usage);
      std::exit(2);
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    auto o = parse(argc, argv);
    if (o.mode == "stream") return run_stream(o);
    if (o.mode == "flood") return run_flood(o);
    if (o.mode == "backlog") return run_backlog(o);
    if (o.mode == "latency") return run_latency(o);
    if (o.mode == "throughput") return run_throughput(o);
    if (o.mode == "drain") return run_drain(o);
    if (o.mode == "jitter") return run_jitter(o);
    std::fputs(usage, stderr);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_producer: %s\n", e.what());
    return 1;
  }
}
