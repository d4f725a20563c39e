#include "appointment_relay/dispatcher.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <random>
#include <unordered_map>

#include <openssl/sha.h>
#include <spdlog/spdlog.h>

#include "appointment_relay/appointment_order.hpp"
#include "appointment_relay/attempt_table.hpp"
#include "appointment_relay/classifier.hpp"
#include "appointment_relay/metrics.hpp"
#include "appointment_relay/outcome_batch.hpp"
#include "appointment_relay/retry_policy.hpp"
#include "appointment_relay/signature.hpp"
#include "appointment_relay/version.hpp"

namespace appointment_relay {

std::string webhook_id(std::string_view installation_id, std::int64_t event_id, std::string_view endpoint) {
  std::string id = "msg_";
  id.append(installation_id).append("_").append(std::to_string(event_id)).append("_").append(endpoint);
  return id;
}

namespace {

using steady = std::chrono::steady_clock;

// The HTTP client answers every request within its own deadline; should an answer ever go missing past it
// by this much, the lane gives the attempt up (cancelling the request) rather than hold the appointment.
constexpr auto answer_grace = std::chrono::seconds(5);

// W3C trace context (traceparent): the trace id of an event, the same on every attempt to every endpoint
// and after a restart: the first 16 bytes of SHA-256 over the installation and the event id, in hex.
std::string trace_id(std::string_view installation_id, std::int64_t event_id) {
  const std::string text = std::string(installation_id) + ":" + std::to_string(event_id);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

// A random span id for one attempt: 8 bytes in hex, never all zero (invalid in the spec).
std::string span_id(std::mt19937_64& rng) {
  std::uint64_t v = 0;
  while (v == 0) v = rng();
  return fmt::format("{:016x}", v);
}

std::int64_t unix_ms_now() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::int64_t unix_us_now() {
  using namespace std::chrono;
  return duration_cast<microseconds>(system_clock::now().time_since_epoch()).count();
}

// One notification on its way to one endpoint. Owned by its lane's item map (by event id); callbacks carry
// the attempt's token, never the item.
struct item {
  std::int64_t captured_at_us = 0;
  notification_kind kind = notification_kind::created;
  std::string key;
  std::string payload;
  std::string webhook_id;
  std::string trace_id;  // W3C trace context: one trace per event (all its attempts and endpoints)
  std::string span_id;   // the current attempt's span
  int attempts = 0;
  std::optional<std::int64_t> first_attempt_ms;
  bool replayed = false;  // from the dead letters: its delivery row must be updated (store.hpp)
};

// Everything a lane takes from the configuration, made in full before anything changes: a reload that fails
// halfway (an unreadable CA file, a bad secret) leaves every lane as it was.
struct lane_setup {
  endpoint_config cfg;
  std::vector<signing_key> keys;
  std::array<bool, notification_kind_count> wants{};
  std::shared_ptr<http_client> client;  // a new client; empty: the lane keeps its own
  retry_settings retry;
  std::size_t max_pending = 2000;
  std::size_t batch = 1000;
  std::chrono::milliseconds flush_interval{5};
};

bool same_transport(const endpoint_config& a, const endpoint_config& b) {
  return a.target.to_string() == b.target.to_string() && a.max_in_flight == b.max_in_flight &&
         a.timeout == b.timeout && a.tls.ca_file == b.tls.ca_file &&
         a.tls.client_cert_file == b.tls.client_cert_file && a.tls.client_key_file == b.tls.client_key_file &&
         a.tls.verify_peer == b.tls.verify_peer;
}

// current: the running lane's configuration, or null for a new lane. Throws std::runtime_error (bad
// secret, unloadable TLS files); changes nothing.
lane_setup prepare_lane(const executor& ex, const endpoint_config& cfg, const dispatcher_settings& s,
                        const endpoint_config* current) {
  lane_setup setup;
  for (const auto& secret : cfg.secrets) {
    auto key = signing_key::parse(secret);
    if (!key) throw std::runtime_error("endpoint " + cfg.name + ": a signing secret is not whsec_<base64>");
    setup.keys.push_back(std::move(*key));
  }
  for (auto k : cfg.kinds) setup.wants[static_cast<std::size_t>(k)] = true;
  if (!current || !same_transport(*current, cfg)) {
    http_client_options o;
    o.max_connections = cfg.max_in_flight;
    o.request_timeout = cfg.timeout;
    o.user_agent = std::string("appointment-relay/") + version;
    o.tls = cfg.tls;
    try {
      setup.client = s.make_client ? s.make_client(ex, cfg.target, o) : make_http_client(ex, cfg.target, o);
    } catch (const std::exception& e) {
      throw std::runtime_error("endpoint " + cfg.name + ": " + e.what());
    }
  }
  setup.cfg = cfg;
  setup.retry = s.retry;
  setup.max_pending = std::max<std::size_t>(1, s.max_pending_per_endpoint);
  setup.batch = std::max<std::size_t>(1, s.batch_size);
  setup.flush_interval = s.record_flush_interval;
  return setup;
}

// A timer that runs a lane's pump; cancel() forgets when it was armed for.
struct pump_timer {
  explicit pump_timer(const executor& ex) : timer(ex) {}
  void cancel() {
    timer.cancel();
    armed = false;
  }
  steady_timer timer;
  bool armed = false;
  std::int64_t due_ms = 0;
};

// One endpoint: reads its pending events in pages, keeps them in appointment order, sends what may go, owns
// each attempt until it ends (answered, or given up and cancelled), and hands the outcomes over in batches.
// Everything runs on the io executor. Timers and HTTP callbacks hold the lane weakly: a retired lane goes
// away with its last owner, the dispatcher.
class lane : public std::enable_shared_from_this<lane> {
 public:
  lane(executor ex, lane_setup setup, event_source& source, metrics& m)
      : ex_(std::move(ex)),
        source_(source),
        metrics_(m),
        retry_timer_(ex_),
        guard_timer_(ex_),
        flush_timer_(ex_),
        age_timer_(ex_),
        rng_(std::random_device{}()) {
    apply(std::move(setup));
    show_state();
  }

  const std::string& name() const { return cfg_.name; }
  const endpoint_config& config() const { return cfg_; }
  std::size_t in_flight() const { return attempts_.size(); }
  std::uint64_t abandoned() const { return abandoned_; }

  // Takes a prepared configuration; does not throw. Attempts in flight on a replaced client are cancelled
  // there and go again on the new one (as a failed attempt: the request may have reached the receiver).
  void apply(lane_setup setup) {
    cfg_ = std::move(setup.cfg);
    keys_ = std::move(setup.keys);
    wants_ = setup.wants;
    retry_ = setup.retry;
    age_check_ms_ = 0;  // max_age may have changed
    max_pending_ = setup.max_pending;
    batch_ = setup.batch;
    flush_interval_ = setup.flush_interval;
    tokens_ = burst();  // a changed limit starts with a full bucket
    tokens_at_us_ = unix_us_now();
    if (!setup.client) return;
    auto old = std::exchange(client_, std::move(setup.client));
    if (!old) return;
    auto cut = attempts_.take_all();
    for (const auto& a : cut) old->cancel(a.request);
    old->close();
    for (const auto& a : cut) {
      http_response_info r;
      r.error = "endpoint reconfigured";
      end_attempt(a, std::move(r));
    }
  }

  void activate(const std::string& installation_id, std::uint64_t session) {
    reset();
    installation_ = installation_id;
    session_ = session;
    active_ = true;
    maybe_fetch();
  }

  void deactivate() {
    flush();
    reset();
    active_ = false;
  }

  void wake() {
    if (fetching_) {
      // A waiting read runs on news by itself; a running one may have missed the new rows: read again.
      if (!waiting_) wake_pending_ = true;
      return;
    }
    maybe_fetch();
  }

  // The database's word on this endpoint (null: no row, so neither paused nor open). Pauses always apply;
  // the health only when initial (right after activation): later, this lane's own is newer.
  void control(const endpoint_control* c, bool initial) {
    const auto now_ms = unix_ms_now();
    if (initial && c && c->health.health != health_) {
      health_ = c->health.health;
      health_since_ms_ = c->health.since_ms.value_or(now_ms);
      last_failure_ = c->health.reason;
      failures_ = health_ == endpoint_health::healthy ? 0 : std::max(failures_, 1);
      probe_delay_ms_ = std::max<std::int64_t>(c->health.probe_delay_ms, first_probe_delay());
      probe_at_ms_ = c->health.probe_at_ms.value_or(now_ms);
      if (health_ == endpoint_health::open)
        spdlog::warn(
            "endpoint={} breaker open (as the database has it, since {} s ago): sending only probes, "
            "the next in {} ms; last error: {}",
            cfg_.name, (now_ms - health_since_ms_) / 1000, std::max<std::int64_t>(0, probe_at_ms_ - now_ms),
            last_failure_);
      show_state();
    }
    const bool pause = c && c->paused;
    if (pause == paused_) return;
    paused_ = pause;
    if (pause)
      spdlog::warn(
          "endpoint={} paused by {} reason=\"{}\": nothing is sent to it until it is resumed; its "
          "events wait in order",
          cfg_.name, c->paused_by, c->pause_reason);
    else
      spdlog::info("endpoint={} resumed: its waiting events go out in order", cfg_.name);
    show_state();
    if (paused_) return;
    pump();
    maybe_fetch();  // what arrived while paused was left unread
  }

  // Stop sending and reading; attempts in flight run to their end.
  void drain() {
    draining_ = true;
    retry_timer_.cancel();
  }

  // Gives up on every attempt in flight: the requests are cancelled, their events stay pending in the
  // database (nothing is recorded for them).
  void cancel_in_flight() {
    for (const auto& a : attempts_.take_all()) client_->cancel(a.request);
  }

  void retire() {
    drain();
    cancel_in_flight();
    flush();
    active_ = false;
    client_->close();
  }

  // Hands every recorded outcome and the watermark to the source now.
  void flush() {
    flush_armed_ = false;
    if (health_dirty_) {
      health_dirty_ = false;
      endpoint_health_update h;
      h.endpoint = cfg_.name;
      h.health = health_;
      h.reason = health_ == endpoint_health::healthy ? std::string() : last_failure_;
      h.since_ms = health_since_ms_;
      if (health_ == endpoint_health::open) {
        h.probe_at_ms = probe_at_ms_;
        h.probe_delay_ms = probe_delay_ms_;
      }
      source_.save_health(std::move(h));
    }
    if (auto through = done_through()) outcomes_.done_through(*through, acked_read_);
    if (outcomes_.empty()) return;
    auto taken = outcomes_.take();
    std::map<std::string, watermark> done;
    if (taken.done_through)
      done.emplace(cfg_.name, watermark(*taken.done_through, taken.acked_read, session_));
    source_.record(std::move(taken.updates), std::move(done));
  }

 private:
  // Forgets what was read: the next activation reads afresh from the persisted position. Nothing of the
  // previous generation is sent after this: its requests in flight are cancelled.
  void reset() {
    cancel_in_flight();
    order_.clear();
    items_.clear();
    outcomes_.reset_watermark();
    retry_timer_.cancel();
    age_timer_.cancel();
    age_check_ms_ = 0;
    probe_id_.reset();
    read_top_ = -1;
    acked_read_ = 0;
    fetching_ = false;
    waiting_ = false;
    wake_pending_ = false;
    unread_ = false;
  }

  // Every event up to this id is done here (none of them held); empty before the first read.
  std::optional<std::int64_t> done_through() const {
    if (auto lowest = order_.lowest()) return *lowest - 1;
    if (read_top_ < 0) return std::nullopt;
    return read_top_;
  }

  // Reads when there may be rows to read (the caller knows of new ones, or the last page was full) and the
  // window has room for a page: a window that is merely not full waits until a page fits (or a quarter
  // of it, whichever is less), so a backlog is read in pages, not an event at a time.
  void maybe_fetch() {
    if (!active_ || draining_ || fetching_) return;
    auto limit = page_limit();
    if (limit && !sends_nothing_new())
      start_fetch(*limit, false);
    else
      hold();
  }

  // Reads nothing for now: once enough are done (backpressure), or on resume, when the breaker closes, or
  // when the window empties (sends_nothing_new). Meanwhile news need not wake this thread on its account.
  void hold() {
    unread_ = true;
    source_.hold(cfg_.name, session_);
  }

  // Everything is read: the next read waits in the source until news arrives (see event_source::fetch),
  // so a notification is read at once by the database thread, without a round trip through this thread.
  void park_fetch() {
    if (!active_ || draining_ || fetching_) return;
    auto limit = page_limit();
    if (limit && !sends_nothing_new())
      start_fetch(*limit, true);
    else
      hold();
  }

  // Paused, or with its breaker open, the lane sends nothing (or one probe at a time, from what it holds):
  // it reads only while it holds nothing, so that a probe has an event to go with. New events stay in the
  // outbox until it is resumed or the breaker closes. Read meanwhile, each notification would cost a read on
  // the database thread that every other endpoint's reads queue behind, up to max_pending_per_endpoint
  // events that could not go anyway (bench scenario 12: A's p99 x1.2-1.3 beside a paused B).
  bool sends_nothing_new() const {
    return (paused_ || health_ == endpoint_health::open) && order_.size() > 0;
  }

  // How many rows the next read may take; none while the window lacks room for a page (or a quarter of it).
  std::optional<std::size_t> page_limit() const {
    const std::size_t room = max_pending_ - std::min(max_pending_, order_.size());
    if (room < std::max<std::size_t>(1, std::min(batch_, max_pending_ / 4))) return std::nullopt;
    return std::min(batch_, room);
  }

  void start_fetch(std::size_t limit, bool wait) {
    fetching_ = true;
    waiting_ = wait;
    wake_pending_ = false;
    unread_ = false;
    source_.fetch(
        cfg_.name, session_, limit,
        [weak = weak_from_this(), session = session_, limit](std::vector<pending_event> events) {
          if (auto self = weak.lock()) self->on_fetched(session, limit, std::move(events));
        },
        wait);
  }

  void on_fetched(std::uint64_t session, std::size_t limit, std::vector<pending_event> events) {
    if (!active_ || session != session_ || !fetching_) return;  // from before a reset: read again
    fetching_ = false;
    waiting_ = false;
    for (auto& e : events) accept(std::move(e));
    pump();
    schedule_flush();
    if (events.size() == limit) unread_ = true;  // a full page: more may follow
    if (unread_ || wake_pending_)
      maybe_fetch();
    else
      park_fetch();
  }

  void accept(pending_event e) {
    if (e.id > read_top_) read_top_ = e.id;
    acked_read_ = std::max(acked_read_, e.read);
    if (order_.contains(e.id)) return;
    if (auto* error = std::get_if<std::string>(&e.change)) {
      dead_without_item(e, dead_cause::unreadable_row, "unreadable outbox row: " + *error);
      return;
    }
    auto result = classify(std::get<captured_change>(e.change));
    if (auto* why = std::get_if<ignored>(&result)) {
      spdlog::debug("event={} endpoint={} ignored: {}", e.id, cfg_.name, why->reason);
      return;
    }
    if (auto* bad = std::get_if<rejected>(&result)) {
      dead_without_item(e, dead_cause::rejected, "rejected: " + bad->reason);
      return;
    }
    auto& n = std::get<notification>(result);
    if (!wants_[static_cast<std::size_t>(n.kind)]) {
      spdlog::debug("event={} endpoint={} kind={} not subscribed", e.id, cfg_.name, to_string(n.kind));
      return;
    }
    item it;
    it.captured_at_us = e.captured_at_us;
    it.kind = n.kind;
    it.key = std::move(n.ordering_key);
    it.payload = std::move(n.payload);
    it.webhook_id = webhook_id(installation_, e.id, cfg_.name);
    it.trace_id = trace_id(installation_, e.id);
    it.attempts = e.attempts;
    it.first_attempt_ms = e.first_attempt_ms;
    it.replayed = e.replayed;
    metrics_.event_captured(cfg_.name, to_string(it.kind));
    order_.add(e.id, it.key, e.next_attempt_ms.value_or(0));
    if (it.first_attempt_ms) note_first_attempt(*it.first_attempt_ms);
    items_.emplace(e.id, std::move(it));
  }

  void dead_without_item(const pending_event& e, dead_cause cause, std::string reason) {
    item bare;  // what the row gave: its attempts so far; no payload, no appointment
    bare.attempts = e.attempts;
    bare.first_attempt_ms = e.first_attempt_ms;
    bare.replayed = e.replayed;
    dead_letter(e.id, bare, cause, std::move(reason));
  }

  // An event ends without an attempt now (unreadable, rejected, or past max_age while it waited): one error
  // line, the metric, and its outcome with the reason.
  void dead_letter(std::int64_t id, const item& it, dead_cause cause, std::string reason) {
    const auto now_ms = unix_ms_now();
    if (it.key.empty())
      spdlog::error("dead letter event={} endpoint={} reason=\"{}\"", id, cfg_.name, reason);
    else
      spdlog::error(
          "dead letter event={} kind={} appointment={} endpoint={} attempt={} trace_id={} span_id={} "
          "reason=\"{}\"",
          id, to_string(it.kind), it.key, cfg_.name, it.attempts, it.trace_id, it.span_id, reason);
    metrics_.dead_letter(cfg_.name, dead_letter_label(cause, 0));
    delivery_update u;
    u.event_id = id;
    u.endpoint = cfg_.name;
    u.state = delivery_state::dead;
    u.attempts = it.attempts;
    u.first_attempt_ms = it.first_attempt_ms.value_or(now_ms);
    u.last_attempt_ms = now_ms;
    u.replayed = it.replayed;
    u.last_error = reason;
    u.dead_reason = std::move(reason);
    outcomes_.add(std::move(u));
  }

  // Sends what may go now, up to max_in_flight and the rate limit; then waits for the earliest retry time,
  // if any. Nothing while paused or held by a Retry-After; only a probe while the breaker is open.
  void pump() {
    if (!active_ || draining_) return;
    const auto now_ms = unix_ms_now();
    if (paused_ || health_ == endpoint_health::open) expire_waiting(now_ms);
    if (paused_) return;
    if (now_ms < hold_until_ms_) {
      arm_timer(hold_until_ms_, now_ms);
      return;
    }
    if (health_ == endpoint_health::open) {
      probe(now_ms);
      return;
    }
    while (attempts_.size() < static_cast<std::size_t>(cfg_.max_in_flight)) {
      if (auto wait_ms = token_wait_ms(); wait_ms > 0) {
        arm_timer(now_ms + wait_ms, now_ms);
        break;
      }
      auto id = order_.take(now_ms);
      if (!id) break;
      if (cfg_.rate_limit > 0) tokens_ -= 1.0;
      send(*id, now_ms);
    }
    // Only a time still to come: an event due now that did not go waits for a slot or a token, and the end of
    // an attempt or the token's timer runs pump again. Armed for a past time, the timer would fire at once
    // and spin (seen: ~76,000 timer arms per second while a stalled receiver held every slot).
    if (auto due = order_.next_due(); due && *due > now_ms) arm_timer(*due, now_ms);
  }

  // The breaker is open: one attempt at a time, the head that has waited longest, at the probe time (the
  // attempts in flight when it opened end first).
  void probe(std::int64_t now_ms) {
    if (probe_id_ || !attempts_.empty()) return;
    if (now_ms < probe_at_ms_) {
      arm_timer(probe_at_ms_, now_ms);
      return;
    }
    auto id = order_.take(std::numeric_limits<std::int64_t>::max());
    if (!id) return;  // nothing to probe with: the next event is
    probe_id_ = *id;
    spdlog::info("probe event={} endpoint={} (breaker open)", *id, cfg_.name);
    send(*id, now_ms);
  }

  // Paused or with its breaker open, the lane attempts nothing (or only a probe), so an event that was
  // attempted before would reach retry.max_age only when it is tried again. It ends at its time instead: a
  // dead letter whose reason says why it waited. Events never attempted have no age yet (max_age counts from
  // the first attempt) and wait, as the backlog does. The timer comes back for the next one to expire.
  // The scan runs only once the earliest known time has come (age_check_ms_): pump runs after every read,
  // and a paused lane holds up to max_pending_per_endpoint events.
  void expire_waiting(std::int64_t now_ms) {
    constexpr std::int64_t ms_max = std::numeric_limits<std::int64_t>::max();
    if (now_ms < age_check_ms_) {
      if (age_check_ms_ != ms_max) arm(age_timer_, age_check_ms_, now_ms);
      return;
    }
    std::vector<std::int64_t> expired;
    std::int64_t next = ms_max;
    for (const auto& [id, it] : items_) {
      if (!it.first_attempt_ms || attempts_.running(id)) continue;
      const auto due = max_age_expiry_ms(retry_, *it.first_attempt_ms);
      if (now_ms >= due)
        expired.push_back(id);
      else
        next = std::min(next, due);
    }
    const std::string why = paused_ ? "the endpoint was paused" : "the endpoint's breaker was open";
    for (auto id : expired) {
      auto found = items_.find(id);
      const item& it = found->second;
      dead_letter(id, it, dead_cause::max_age,
                  fmt::format("max age reached while {} ({} attempts, the first {} s ago)", why, it.attempts,
                              (now_ms - *it.first_attempt_ms) / 1000));
      order_.complete(id);
      items_.erase(found);
    }
    if (!expired.empty()) {
      schedule_flush();
      if (unread_) maybe_fetch();  // an emptied window reads again (see sends_nothing_new)
    }
    age_check_ms_ = next;
    if (next != ms_max) arm(age_timer_, next, now_ms);
  }

  // An event held here has (or got) its first attempt: it reaches max_age just after first_ms + max_age.
  void note_first_attempt(std::int64_t first_ms) {
    age_check_ms_ = std::min(age_check_ms_, max_age_expiry_ms(retry_, first_ms));
  }

  int burst() const {
    return cfg_.rate_limit_burst > 0 ? cfg_.rate_limit_burst : std::max(1, cfg_.rate_limit / 10);
  }

  // Token bucket: 0 when a request may go now, else how long until one may (ms, at least 1).
  std::int64_t token_wait_ms() {
    if (cfg_.rate_limit <= 0) return 0;
    const auto now_us = unix_us_now();
    tokens_ = std::min<double>(burst(),
                               tokens_ + static_cast<double>(now_us - tokens_at_us_) * cfg_.rate_limit / 1e6);
    tokens_at_us_ = now_us;
    if (tokens_ >= 1.0) return 0;
    return std::max<std::int64_t>(1,
                                  static_cast<std::int64_t>((1.0 - tokens_) * 1000.0 / cfg_.rate_limit) + 1);
  }

  std::int64_t first_probe_delay() const {
    return std::min<std::int64_t>(1000, cfg_.breaker_probe_max.count());
  }

  // What the state gauge and status show: paused over the breaker's state.
  void show_state() { metrics_.set_endpoint_state(cfg_.name, paused_ ? "paused" : to_string(health_)); }

  void on_success(std::int64_t id, std::int64_t now_ms) {
    if (health_ == endpoint_health::healthy) return;
    if (health_ == endpoint_health::open)
      spdlog::info(
          "endpoint={} breaker closed: event={} delivered after {} s open; the backlog resumes in order",
          cfg_.name, id, (now_ms - health_since_ms_) / 1000);
    health_ = endpoint_health::healthy;
    failures_ = 0;
    health_since_ms_ = now_ms;
    health_dirty_ = true;
    show_state();
  }

  void on_failure(bool was_probe, const std::string& why, std::int64_t now_ms) {
    ++failures_;
    last_failure_ = why;
    if (health_ == endpoint_health::open) {
      if (!was_probe) return;
      probe_delay_ms_ = std::min<std::int64_t>(probe_delay_ms_ * 2, cfg_.breaker_probe_max.count());
      probe_at_ms_ = now_ms + probe_delay_ms_;
      health_dirty_ = true;
      return;
    }
    if (health_ == endpoint_health::healthy) {
      health_ = endpoint_health::failing;
      health_since_ms_ = now_ms;
      health_dirty_ = true;
      show_state();
    }
    if (cfg_.breaker_failures > 0 && failures_ >= cfg_.breaker_failures &&
        now_ms - health_since_ms_ >= cfg_.breaker_after.count()) {
      health_ = endpoint_health::open;
      probe_delay_ms_ = first_probe_delay();
      probe_at_ms_ = now_ms + probe_delay_ms_;
      health_dirty_ = true;
      spdlog::warn(
          "endpoint={} breaker open: {} failed attempts in a row over {} s, the last: {}; only a probe "
          "goes out now, the first in {} ms; events wait, none is dead-lettered for it",
          cfg_.name, failures_, (now_ms - health_since_ms_) / 1000, why, probe_delay_ms_);
      health_since_ms_ = now_ms;
      show_state();
    }
  }

  // One timer wakes the lane for whatever comes first: a retry time, a token, the end of a hold, a probe.
  void arm_timer(std::int64_t due, std::int64_t now_ms) { arm(retry_timer_, due, now_ms); }

  // Runs pump at due, or earlier if already armed for an earlier time (a later time does not move it).
  void arm(pump_timer& t, std::int64_t due, std::int64_t now_ms) {
    if (t.armed && t.due_ms <= due) return;
    t.armed = true;
    t.due_ms = due;
    t.timer.expires_after(std::chrono::milliseconds(std::max<std::int64_t>(0, due - now_ms)));
    t.timer.async_wait([weak = weak_from_this(), &t, due](error_code ec) {
      auto self = weak.lock();                     // t is the lane's own: touched only while the lane lives
      if (!self || ec || t.due_ms != due) return;  // cancelled, or re-armed for an earlier time
      t.armed = false;
      self->pump();
    });
  }

  void send(std::int64_t id, std::int64_t now_ms) {
    item& it = items_.at(id);
    ++it.attempts;
    if (!it.first_attempt_ms) {
      it.first_attempt_ms = now_ms;
      note_first_attempt(now_ms);
    }
    const auto timestamp = now_ms / 1000;
    header_list headers;
    headers.reserve(4 + cfg_.headers.size());
    headers.insert(headers.end(), cfg_.headers.begin(), cfg_.headers.end());
    it.span_id = span_id(rng_);
    headers.emplace_back("traceparent", "00-" + it.trace_id + "-" + it.span_id + "-01");
    headers.emplace_back("webhook-id", it.webhook_id);
    headers.emplace_back("webhook-timestamp", std::to_string(timestamp));
    if (!keys_.empty())
      headers.emplace_back("webhook-signature",
                           signature_header(keys_, it.webhook_id, timestamp, it.payload));
    spdlog::debug("POST event={} endpoint={} attempt={} body={}", id, cfg_.name, it.attempts, it.payload);
    metrics_.attempt(cfg_.name, to_string(it.kind));
    const auto token = attempts_.start(id, steady::now() + cfg_.timeout + answer_grace);
    const auto request =
        client_->post(it.payload, std::move(headers), [weak = weak_from_this(), token](http_response_info r) {
          if (auto self = weak.lock()) self->on_response(token, std::move(r));
        });
    attempts_.set_request(token, request);
    arm_guard();
  }

  void on_response(std::uint64_t token, http_response_info r) {
    auto a = attempts_.finish(token);
    if (!a) return;  // given up already (guard, reset, reconfiguration): that attempt has ended
    end_attempt(*a, std::move(r));
  }

  // One sweep timer per lane, while attempts are in flight, rather than a timer per attempt.
  void arm_guard() {
    if (guard_armed_ || attempts_.empty()) return;
    guard_armed_ = true;
    guard_timer_.expires_after(std::chrono::seconds(1));
    guard_timer_.async_wait([weak = weak_from_this()](error_code ec) {
      auto self = weak.lock();
      if (!self) return;
      self->guard_armed_ = false;
      if (!ec) self->give_up_overdue();
    });
  }

  // Attempts the HTTP client has not answered well past their deadline end as retryable failures, and their
  // requests are cancelled first, so that none of them can still reach the receiver after its retry.
  void give_up_overdue() {
    for (const auto& overdue : attempts_.overdue(steady::now())) {
      auto a = attempts_.finish(overdue.token);
      if (!a) continue;
      client_->cancel(a->request);
      ++abandoned_;
      spdlog::error(
          "event={} endpoint={}: no answer from the HTTP client past the request deadline; cancelled",
          a->event_id, cfg_.name);
      http_response_info r;
      r.error = "no answer within the request deadline";
      end_attempt(*a, std::move(r));
    }
    arm_guard();
  }

  void end_attempt(const attempt_table::attempt& a, http_response_info r) {
    auto found = items_.find(a.event_id);
    if (found == items_.end()) return;
    item& it = found->second;
    const auto now_ms = unix_ms_now();
    std::uniform_real_distribution<double> jitter(0.0, 1.0);
    const auto age = std::chrono::milliseconds(now_ms - it.first_attempt_ms.value_or(now_ms));
    auto d = decide(retry_, attempt_result{r.status, r.error, r.retry_after}, it.attempts, age, now_ms / 1000,
                    jitter(rng_));
    const bool was_probe = probe_id_ == a.event_id;
    if (was_probe) probe_id_.reset();
    // Endpoint health: a failed attempt counts, unless the event itself was refused (a 4xx that is not
    // retried), the receiver asked to slow down (429), or the attempt was cut by a reconfiguration.
    const bool failed =
        d.what == verdict::retry || (d.what == verdict::dead && d.cause != dead_cause::http_status);
    const bool counts = failed && r.status != 429 && r.error != "endpoint reconfigured";
    if (d.what == verdict::delivered) {
      on_success(a.event_id, now_ms);
    } else if (counts) {
      on_failure(was_probe, r.status > 0 ? "http " + std::to_string(r.status) : r.error, now_ms);
    }
    if (health_ == endpoint_health::open) {
      // While the breaker is open an event waits for it to close: the attempt limit does not end it (max_age
      // still does, and says so). A failed probe's event is tried again as the next probe.
      if (d.what == verdict::dead && d.cause == dead_cause::max_attempts) {
        d.what = verdict::retry;
        d.cause = dead_cause::none;
      }
      if (d.what == verdict::dead && d.cause == dead_cause::max_age)
        d.reason += " (the endpoint's breaker was open)";
      if (d.what == verdict::retry)
        d.delay = std::chrono::milliseconds(std::max<std::int64_t>(0, probe_at_ms_ - now_ms));
    }
    // 429, or any answer with Retry-After: the endpoint asked for a pause; nothing goes to it until then.
    if (d.what == verdict::retry && (r.status == 429 || r.retry_after) &&
        now_ms + d.delay.count() > hold_until_ms_) {
      hold_until_ms_ = now_ms + d.delay.count();
      spdlog::warn("endpoint={} asked to wait ({}): nothing is sent to it for {} ms", cfg_.name,
                   r.status > 0 ? "http " + std::to_string(r.status) + " Retry-After" : r.error,
                   d.delay.count());
    }
    // status=N when a response was read, else error="..." (a JSON log keeps status a number).
    const std::string outcome =
        r.status > 0 ? "status=" + std::to_string(r.status) : "status=0 error=\"" + r.error + "\"";
    const auto latency_ms = static_cast<double>(r.latency.count()) / 1000.0;
    const auto kind = to_string(it.kind);
    const std::string trace = "trace_id=" + it.trace_id + " span_id=" + it.span_id;

    delivery_update u;
    u.event_id = a.event_id;
    u.endpoint = cfg_.name;
    u.attempts = it.attempts;
    u.first_attempt_ms = it.first_attempt_ms.value_or(now_ms);
    u.last_attempt_ms = now_ms;
    u.replayed = it.replayed;
    switch (d.what) {
      case verdict::delivered:
        spdlog::info(
            "delivered event={} kind={} appointment={} endpoint={} attempt={} {} latency_ms={:.1f} {}",
            a.event_id, kind, it.key, cfg_.name, it.attempts, outcome, latency_ms, trace);
        metrics_.delivered(cfg_.name, kind, static_cast<double>(unix_us_now() - it.captured_at_us) / 1e6);
        u.state = delivery_state::delivered;
        break;
      case verdict::retry:
        spdlog::warn(
            "retry event={} kind={} appointment={} endpoint={} attempt={} {} latency_ms={:.1f} {} "
            "next_in_ms={}",
            a.event_id, kind, it.key, cfg_.name, it.attempts, outcome, latency_ms, trace, d.delay.count());
        metrics_.retry(cfg_.name, kind);
        u.state = delivery_state::retrying;
        u.next_attempt_ms = now_ms + d.delay.count();
        u.last_error = d.reason;
        break;
      case verdict::dead:
        spdlog::error(
            "dead letter event={} kind={} appointment={} endpoint={} attempt={} {} latency_ms={:.1f} {} "
            "reason=\"{}\"",
            a.event_id, kind, it.key, cfg_.name, it.attempts, outcome, latency_ms, trace, d.reason);
        metrics_.dead_letter(cfg_.name, dead_letter_label(d.cause, r.status));
        u.state = delivery_state::dead;
        u.last_error = r.status > 0 ? "http " + std::to_string(r.status) : r.error;
        u.dead_reason = d.reason;
        break;
    }
    if (d.what != verdict::delivered) {
      // Its history (events show): written with this outcome, nothing for a success.
      attempt_record failed;
      failed.attempt = it.attempts;
      failed.at_ms = now_ms;
      failed.status = r.status;
      failed.error = r.error;
      failed.latency_ms = latency_ms;
      failed.response_body = std::move(r.body_prefix);
      u.failed_attempt = std::move(failed);
    }
    outcomes_.add(std::move(u));
    if (d.what == verdict::retry) {
      note_first_attempt(*it.first_attempt_ms);  // the scans pass over events in flight
      order_.retry(a.event_id, now_ms + d.delay.count());
    } else {
      order_.complete(a.event_id);
      items_.erase(found);
    }
    pump();
    schedule_flush();
    // Only when rows were left unread: new ones announce themselves (a notification, or the poll tick).
    if (unread_) maybe_fetch();
  }

  void schedule_flush() {
    if (outcomes_.full()) {
      flush();
      return;
    }
    if (flush_armed_) return;
    flush_armed_ = true;
    flush_timer_.expires_after(flush_interval_);
    flush_timer_.async_wait([weak = weak_from_this()](error_code ec) {
      auto self = weak.lock();
      if (self && !ec && self->flush_armed_) self->flush();
    });
  }

  executor ex_;
  event_source& source_;
  metrics& metrics_;
  endpoint_config cfg_;
  std::vector<signing_key> keys_;
  std::array<bool, notification_kind_count> wants_{};
  retry_settings retry_;
  std::size_t max_pending_ = 2000;
  std::size_t batch_ = 1000;
  std::chrono::milliseconds flush_interval_{5};
  std::shared_ptr<http_client> client_;
  std::string installation_;
  std::uint64_t session_ = 0;

  appointment_order order_;                       // what may be sent next
  std::unordered_map<std::int64_t, item> items_;  // the events held, by id (the same ids as order_)
  attempt_table attempts_;                        // what is in flight
  outcome_batch outcomes_;                        // what is to be written
  pump_timer retry_timer_;
  steady_timer guard_timer_;
  bool guard_armed_ = false;
  steady_timer flush_timer_;
  bool flush_armed_ = false;
  pump_timer age_timer_;           // paused or open: the next waiting event to reach max_age
  std::int64_t age_check_ms_ = 0;  // no held event reaches max_age before (unix ms); 0: unknown, scan
  std::uint64_t abandoned_ = 0;
  std::int64_t read_top_ = -1;
  std::uint64_t acked_read_ =
      0;  // the last read whose events are all in order_ or done (watermark::acked_read)
  bool active_ = false;
  bool fetching_ = false;
  bool wake_pending_ = false;
  bool unread_ = false;   // rows may be waiting that no read has taken (a full page, backpressure, paused)
  bool waiting_ = false;  // the outstanding fetch waits in the source for news
  bool draining_ = false;
  std::mt19937_64 rng_;

  // Endpoint health and control.
  bool paused_ = false;  // by `pause`: nothing is sent
  endpoint_health health_ = endpoint_health::healthy;
  bool health_dirty_ = false;  // to be saved with the next outcomes
  int failures_ = 0;           // failed attempts in a row
  std::int64_t health_since_ms_ = 0;
  std::string last_failure_;
  std::int64_t probe_at_ms_ = 0;          // open: when the next probe may go
  std::int64_t probe_delay_ms_ = 0;       // open: the delay before it (doubles up to breaker_probe_max)
  std::optional<std::int64_t> probe_id_;  // open: the event of the probe in flight
  double tokens_ = 0;                     // rate_limit's bucket
  std::int64_t tokens_at_us_ = 0;
  std::int64_t hold_until_ms_ = 0;  // a 429 / Retry-After: nothing goes out before
};

class dispatcher_impl final : public dispatcher {
 public:
  dispatcher_impl(executor ex, dispatcher_settings settings, event_source& source, metrics& m)
      : ex_(std::move(ex)), source_(source), metrics_(m), drain_timer_(ex_) {
    std::vector<lane_setup> setups;
    for (const auto& e : settings.endpoints) setups.push_back(prepare_lane(ex_, e, settings, nullptr));
    for (auto& s : setups) lanes_.push_back(std::make_shared<lane>(ex_, std::move(s), source_, metrics_));
  }

  ~dispatcher_impl() override {
    for (auto& l : lanes_) l->retire();
  }

  void activate(std::string installation_id, std::uint64_t session) override {
    installation_ = std::move(installation_id);
    session_ = session;
    active_ = true;
    if (draining_) return;
    for (auto& l : lanes_) l->activate(installation_, session_);
  }

  void deactivate() override {
    active_ = false;
    for (auto& l : lanes_) l->deactivate();
  }

  void wake() override {
    for (auto& l : lanes_) l->wake();
  }

  void control(const std::vector<endpoint_control>& controls, bool initial) override {
    for (auto& l : lanes_) {
      auto c = std::find_if(controls.begin(), controls.end(),
                            [&](const auto& x) { return x.health.endpoint == l->name(); });
      l->control(c == controls.end() ? nullptr : &*c, initial);
    }
  }

  void reconfigure(const dispatcher_settings& settings) override {
    // Everything is made first (this may throw: then nothing has changed), then applied at once.
    std::vector<std::pair<std::shared_ptr<lane>, lane_setup>> plan;
    for (const auto& e : settings.endpoints) {
      auto found = std::find_if(lanes_.begin(), lanes_.end(), [&](auto& l) { return l->name() == e.name; });
      std::shared_ptr<lane> current = found != lanes_.end() ? *found : nullptr;
      plan.emplace_back(current, prepare_lane(ex_, e, settings, current ? &current->config() : nullptr));
    }
    std::vector<std::shared_ptr<lane>> next;
    for (auto& [current, setup] : plan) {
      if (current) {
        current->apply(std::move(setup));
        next.push_back(current);
      } else {
        auto l = std::make_shared<lane>(ex_, std::move(setup), source_, metrics_);
        spdlog::info("endpoint {} added to the configuration", l->name());
        if (active_ && !draining_) l->activate(installation_, session_);
        next.push_back(std::move(l));
      }
    }
    for (auto& l : lanes_) {
      if (std::find(next.begin(), next.end(), l) == next.end()) {
        spdlog::info("endpoint {} removed from the configuration: it gets nothing new", l->name());
        l->retire();
      }
    }
    lanes_ = std::move(next);
  }

  void drain(std::chrono::milliseconds deadline, std::function<void()> done) override {
    if (draining_) return;
    draining_ = true;
    drain_done_ = std::move(done);
    for (auto& l : lanes_) l->drain();
    drain_timer_.expires_after(deadline);
    drain_timer_.async_wait([this](error_code ec) {
      if (ec) return;
      spdlog::warn("shutdown deadline reached with {} requests in flight: cancelled, they stay pending",
                   in_flight());
      for (auto& l : lanes_) l->cancel_in_flight();
      finish_drain();
    });
    poll_drain();
  }

  std::size_t in_flight() const override {
    std::size_t n = 0;
    for (auto& l : lanes_) n += l->in_flight();
    return n;
  }

  std::uint64_t abandoned_attempts() const override {
    std::uint64_t n = 0;
    for (auto& l : lanes_) n += l->abandoned();
    return n;
  }

 private:
  void poll_drain() {
    if (!drain_done_) return;
    if (in_flight() == 0) {
      finish_drain();
      return;
    }
    // In-flight requests end within their timeout; checking every few milliseconds costs nothing.
    auto t = std::make_shared<steady_timer>(ex_, std::chrono::milliseconds(5));
    t->async_wait([this, t](error_code) { poll_drain(); });
  }

  void finish_drain() {
    if (!drain_done_) return;
    drain_timer_.cancel();
    for (auto& l : lanes_) l->flush();
    auto done = std::move(drain_done_);
    drain_done_ = nullptr;
    done();
  }

  executor ex_;
  event_source& source_;
  metrics& metrics_;
  std::vector<std::shared_ptr<lane>> lanes_;
  std::string installation_;
  std::uint64_t session_ = 0;
  bool active_ = false;
  bool draining_ = false;
  steady_timer drain_timer_;
  std::function<void()> drain_done_;
};

}  // namespace

std::unique_ptr<dispatcher> make_dispatcher(executor ex, dispatcher_settings settings, event_source& source,
                                            metrics& m) {
  return std::make_unique<dispatcher_impl>(std::move(ex), std::move(settings), source, m);
}

}  // namespace appointment_relay
