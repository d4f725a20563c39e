#include "support/canvas_stream.hpp"

#include <ctime>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include <pqxx/pqxx>

#include "appointment_relay/signature.hpp"

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;

std::string utc_text(std::int64_t unix_seconds, const char* format) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, format, &tm);
  return buf;
}

std::string iso_utc(std::int64_t unix_seconds) {  // 2021-12-24T21:30:00+00:00
  return utc_text(unix_seconds, "%Y-%m-%dT%H:%M:%S+00:00");
}

std::string sql_time(std::int64_t unix_seconds) {  // '2021-12-24 21:30:00+00'
  return utc_text(unix_seconds, "'%Y-%m-%d %H:%M:%S+00'");
}

std::string with_application_name(const std::string& url) {
  return url + (url.find('?') == std::string::npos ? "?" : "&") +
         "application_name=" + canvas_stream::application_name;
}

struct life {
  std::string patient_key;
  std::string appointment_id;
  std::string external_id;
  std::string note_id;
  std::string state;           // "" before booking, then the note's state: BKD, CLD, RVT, NSW, CVD
  std::set<std::string> used;  // kinds already notified for external_id
  int steps = 0;
  bool done = false;
};

class player_state {
 public:
  player_state(std::string url, std::uint64_t seed, std::vector<expected_notification>& out)
      : url_(std::move(url)), rng_(seed), out_(out) {
    connect();
  }

  // After a pause (the test may have restarted the server): a fresh connection when the old one is gone.
  // Only between actions, so an action is never played twice.
  // (Always a new one: a query on a connection the server dropped leaks a PGresult in libpqxx 6.4.)
  void ensure_connected() { connect(); }

  // One action of the life (one SQL call, one transaction).
  void step(life& l) {
    ++l.steps;
    if (l.state.empty()) return book(l);
    auto roll = pick(100);
    if (l.state == "BKD" || l.state == "RVT") {
      if (l.steps > 9) return finish(l);
      if (roll < 12) return ignored_update(l);
      if (roll < 20) return ignored_rebook(l);
      if (roll < 34 && l.steps < 7) return reschedule(l);
      if (roll < 60 && !l.used.count("cancelled")) return state_event(l, "cancel", "CLD", "cancelled");
      if (roll < 75 && !l.used.count("no_show")) return state_event(l, "no_show", "NSW", "no_show");
      if (!l.used.count("checked_in")) return state_event(l, "check_in", "CVD", "checked_in");
      return finish(l);
    }
    if (l.state == "CLD") {
      if (roll < 75 && !l.used.count("reverted")) return state_event(l, "restore", "RVT", "reverted");
      return finish(l);
    }
    if (l.state == "NSW") {
      if (roll < 60 && !l.used.count("checked_in")) return state_event(l, "check_in", "CVD", "checked_in");
      return finish(l);
    }
    if (l.state == "CVD" && roll < 30) {  // the note is locked afterwards: not notified
      exec("SELECT canvas_test.note_state(" + l.note_id + ", 'LKD')");
      l.done = true;
      return;
    }
    finish(l);
  }

  std::string new_patient_key() {
    static const char* hex = "0123456789abcdef";
    std::string k;
    for (int i = 0; i < 32; ++i) k += hex[pick(16)];
    return k;
  }

 private:
  int pick(int n) { return static_cast<int>(rng_() % static_cast<std::uint64_t>(n)); }

  void connect() {
    tx_.reset();
    conn_ = std::make_unique<pqxx::connection>(url_);
    tx_ = std::make_unique<pqxx::nontransaction>(*conn_);
  }

  pqxx::result exec(const std::string& sql) { return tx_->exec(sql); }

  void expect(const life& l, const std::string& kind, const std::string& times) {
    out_.push_back({l.external_id, kind,
                    R"({"canvas_patient_key":")" + l.patient_key + R"(","appointment_external_id":")" +
                        l.external_id + "\"," + times + "\"" + kind + "\":true}"});
  }

  static std::string times(std::int64_t start, int minutes) {
    return R"("start_time":")" + iso_utc(start) + R"(","end_time":")" + iso_utc(start + minutes * 60) + "\",";
  }

  std::pair<std::int64_t, int> new_slot() {
    std::int64_t start = 1700000000 + static_cast<std::int64_t>(pick(400 * 24 * 60)) * 60;
    return {start, 5 + pick(116)};
  }

  static constexpr const char* just_made =
      "SELECT id, externally_exposable_id, note_id FROM api_appointment WHERE id = "
      "current_setting('canvas_stream.id')::integer";

  void book(life& l) {
    auto [start, minutes] = new_slot();
    // One call, one transaction; a second statement reads the new row (a statement does not see the rows
    // that functions it calls insert).
    auto r = exec(
        "SELECT set_config('canvas_stream.id', canvas_test.book_appointment(canvas_test.create_patient('" +
        l.patient_key + "'), " + sql_time(start) + ", " + std::to_string(minutes) + ")::text, false); " +
        just_made);
    l.appointment_id = r[0][0].c_str();
    l.external_id = r[0][1].c_str();
    l.note_id = r[0][2].c_str();
    l.state = "BKD";
    l.used = {"created"};
    expect(l, "created", times(start, minutes));
    auto extra = pick(100);
    if (extra < 4) {
      // Entered in error, then cancelled: not an appointment of a patient any more, nothing is notified.
      exec("SELECT canvas_test.enter_in_error(" + l.appointment_id + ")");
      exec("SELECT canvas_test.cancel(" + l.appointment_id + ")");
      l.done = true;
    } else if (extra < 10) {
      exec("SELECT canvas_test.schedule_block(" + sql_time(start) + ", 30)");  // no patient: nothing
    } else if (extra < 14) {
      // A cancelled state event on a note that carries no appointment: nothing.
      exec(
          "WITH n AS (INSERT INTO api_note (patient_id) VALUES (NULL) RETURNING id) "
          "SELECT canvas_test.note_state((SELECT id FROM n), 'CLD')");
    }
  }

  void reschedule(life& l) {
    auto [start, minutes] = new_slot();
    auto r = exec("SELECT set_config('canvas_stream.id', canvas_test.reschedule(" + l.appointment_id + ", " +
                  sql_time(start) + ", " + std::to_string(minutes) + ")::text, false); " + just_made);
    l.appointment_id = r[0][0].c_str();
    l.external_id = r[0][1].c_str();
    l.state = "BKD";
    l.used = {"rescheduled"};
    expect(l, "rescheduled", times(start, minutes));
  }

  void state_event(life& l, const std::string& helper, const std::string& state, const std::string& kind) {
    exec("SELECT canvas_test." + helper + "(" + l.appointment_id + ")");
    l.state = state;
    l.used.insert(kind);
    expect(l, kind, "");
  }

  void ignored_update(life& l) {
    exec("UPDATE api_appointment SET comment = 'moved to room " + std::to_string(pick(9)) +
         "', modified = now() WHERE id = " + l.appointment_id);
  }

  void ignored_rebook(life& l) {  // the note goes SCH -> BKD again, as on a reschedule: not notified
    exec("SELECT canvas_test.note_state(" + l.note_id + ", 'SCH'), canvas_test.note_state(" + l.note_id +
         ", 'BKD')");
    l.state = "BKD";
  }

  void finish(life& l) { l.done = true; }

  std::string url_;
  std::unique_ptr<pqxx::connection> conn_;
  std::unique_ptr<pqxx::nontransaction> tx_;
  std::mt19937_64 rng_;
  std::vector<expected_notification>& out_;
};

}  // namespace

canvas_stream::canvas_stream(std::string database_url, stream_options options)
    : url_(std::move(database_url)),
      options_(options),
      per_thread_(static_cast<std::size_t>(options.connections)) {}

canvas_stream::~canvas_stream() {
  resume();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void canvas_stream::start() {
  for (int i = 0; i < options_.connections; ++i) threads_.emplace_back([this, i] { player(i); });
}

void canvas_stream::join() {
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  std::lock_guard lock(mutex_);
  if (error_) std::rethrow_exception(error_);
}

void canvas_stream::pause() {
  std::unique_lock lock(mutex_);
  paused_ = true;
  cv_.wait(lock, [&] { return parked_ + finished_.load() >= options_.connections; });
}

void canvas_stream::resume() {
  std::lock_guard lock(mutex_);
  paused_ = false;
  cv_.notify_all();
}

bool canvas_stream::wait_for_actions(std::size_t n, std::chrono::milliseconds timeout) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (actions_.load() < n) {
    if (finished_.load() >= options_.connections || std::chrono::steady_clock::now() >= deadline)
      return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::vector<expected_notification> canvas_stream::expected() const {
  std::vector<expected_notification> all;
  for (const auto& v : per_thread_) all.insert(all.end(), v.begin(), v.end());
  return all;
}

void canvas_stream::player(int index) {
  try {
    player_state p(with_application_name(url_), options_.seed * 1000003u + static_cast<std::uint64_t>(index),
                   per_thread_[static_cast<std::size_t>(index)]);
    int to_start =
        options_.lives / options_.connections + (index < options_.lives % options_.connections ? 1 : 0);
    std::vector<life> active;
    std::mt19937 rng(static_cast<unsigned>(options_.seed) + static_cast<unsigned>(index));
    for (;;) {
      while (static_cast<int>(active.size()) < options_.interleaved && to_start > 0) {
        life l;
        l.patient_key = p.new_patient_key();
        active.push_back(std::move(l));
        --to_start;
      }
      if (active.empty()) break;
      {
        std::unique_lock lock(mutex_);
        if (paused_) {
          ++parked_;
          cv_.notify_all();
          cv_.wait(lock, [&] { return !paused_; });
          --parked_;
          lock.unlock();
          p.ensure_connected();
        }
      }
      auto which = rng() % active.size();
      p.step(active[which]);
      actions_.fetch_add(1);
      if (active[which].done) active.erase(active.begin() + static_cast<std::ptrdiff_t>(which));
    }
  } catch (...) {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = std::current_exception();
  }
  std::lock_guard lock(mutex_);
  finished_.fetch_add(1);
  cv_.notify_all();
}

std::vector<std::string> check_deliveries(const std::vector<expected_notification>& expected,
                                          const std::vector<recorded_request>& received,
                                          const delivery_check_options& options) {
  std::vector<std::string> problems;
  std::unordered_map<std::string, std::size_t> by_body;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (!by_body.emplace(expected[i].body, i).second)
      problems.push_back("test stream bug: two expected notifications carry one payload: " +
                         expected[i].body);
  }
  std::optional<signing_key> key;
  if (!options.signing_secret.empty()) key = signing_key::parse(options.signing_secret);

  std::vector<std::optional<std::size_t>> first_arrival(expected.size());
  std::vector<std::set<std::string>> ids(expected.size());
  std::vector<std::size_t> copies(expected.size(), 0);
  std::unordered_map<std::string, std::size_t> body_of_id;
  for (std::size_t r = 0; r < received.size(); ++r) {
    const auto& req = received[r];
    auto id = req.header("webhook-id").value_or("");
    auto it = by_body.find(req.body);
    if (it == by_body.end()) {
      problems.push_back("unexpected payload (webhook-id " + id + "): " + req.body);
      continue;
    }
    auto i = it->second;
    if (!first_arrival[i]) first_arrival[i] = r;
    ++copies[i];
    ids[i].insert(id);
    auto [at, fresh] = body_of_id.emplace(id, i);
    if (!fresh && at->second != i) problems.push_back("webhook-id " + id + " carried two payloads");
    if (key) {
      auto ts = std::strtoll(req.header("webhook-timestamp").value_or("0").c_str(), nullptr, 10);
      if (!verify_signature(*key, req.header("webhook-signature").value_or(""), id, ts, req.body))
        problems.push_back("bad signature on webhook-id " + id);
    }
  }
  std::map<std::string, std::vector<std::size_t>> by_key;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (!first_arrival[i]) problems.push_back("never delivered: " + expected[i].body);
    if (ids[i].size() > 1) problems.push_back("duplicate with another webhook-id: " + expected[i].body);
    if (!options.allow_duplicates && copies[i] > 1)
      problems.push_back("delivered " + std::to_string(copies[i]) + " times: " + expected[i].body);
    by_key[expected[i].ordering_key].push_back(i);
  }
  if (options.require_order) {
    for (const auto& [k, list] : by_key) {
      for (std::size_t j = 1; j < list.size(); ++j) {
        auto a = first_arrival[list[j - 1]], b = first_arrival[list[j]];
        if (a && b && *a > *b)
          problems.push_back("out of order for appointment " + k + ": " + expected[list[j]].kind +
                             " arrived before " + expected[list[j - 1]].kind);
      }
    }
  }
  return problems;
}

std::size_t count_delivered(const std::vector<expected_notification>& expected,
                            const std::vector<recorded_request>& received) {
  std::set<std::string> bodies;
  for (const auto& r : received) bodies.insert(r.body);
  std::size_t n = 0;
  for (const auto& e : expected) n += bodies.count(e.body);
  return n;
}

bool wait_for_deliveries(const std::vector<expected_notification>& expected,
                         const std::function<std::vector<recorded_request>()>& received,
                         std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (count_delivered(expected, received()) == expected.size()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(100ms);
  }
}

std::string describe(const std::vector<std::string>& problems, std::size_t max) {
  std::ostringstream out;
  out << problems.size() << " problem(s)";
  for (std::size_t i = 0; i < problems.size() && i < max; ++i) out << "\n  " << problems[i];
  return out.str();
}

}  // namespace appointment_relay::testing
