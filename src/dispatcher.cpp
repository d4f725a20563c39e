#include "appointment_relay/dispatcher.hpp"

#include <algorithm>
#include <array>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "appointment_relay/classifier.hpp"
#include "appointment_relay/http_client.hpp"
#include "appointment_relay/metrics.hpp"
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

std::int64_t unix_ms_now() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::int64_t unix_us_now() {
  using namespace std::chrono;
  return duration_cast<microseconds>(system_clock::now().time_since_epoch()).count();
}

// A short, bounded label for the dead-letter metric (the full reason goes to the log and the database).
std::string dead_letter_label(int status, const std::string& reason) {
  if (reason.starts_with("max age")) return "max_age";
  if (reason.starts_with("max attempts")) return "max_attempts";
  if (reason.starts_with("rejected")) return "rejected";
  if (reason.starts_with("unreadable")) return "unreadable_row";
  if (status > 0) return "http_" + std::to_string(status);
  return "other";
}

// One notification on its way to one endpoint.
struct item {
  std::int64_t id = 0;
  std::int64_t captured_at_us = 0;
  notification_kind kind = notification_kind::created;
  std::string key;
  std::string payload;
  std::string webhook_id;
  int attempts = 0;
  std::optional<std::int64_t> first_attempt_ms;
  std::int64_t next_attempt_ms = 0;
  std::unique_ptr<steady_timer> timer;  // armed while the item waits for its next attempt
  std::uint64_t attempt_token = 0;      // which attempt an answer belongs to
  std::size_t flight_slot = 0;          // its place in the lane's in-flight list while in flight
  std::shared_ptr<item> next;           // the next event of the same appointment (its queue is a list)
  bool in_flight = false;
};

using item_ptr = std::shared_ptr<item>;

// One endpoint: its window of events read but not done, its per-appointment queues, its HTTP client.
// Everything runs on the io executor. Callbacks carry the generation they were issued in: after a reset
// (leadership regained, connection lost) stale callbacks only record what is certain (delivered, dead).
class lane : public std::enable_shared_from_this<lane> {
 public:
  lane(executor ex, endpoint_config cfg, const dispatcher_settings& s, event_source& source, metrics& m)
      : ex_(std::move(ex)),
        source_(source),
        metrics_(m),
        guard_timer_(ex_),
        flush_timer_(ex_),
        rng_(std::random_device{}()) {
    configure(std::move(cfg), s);
  }

  const std::string& name() const { return cfg_.name; }

  void configure(endpoint_config cfg, const dispatcher_settings& s) {
    bool new_client =
        !client_ || cfg.target.to_string() != cfg_.target.to_string() ||
        cfg.max_in_flight != cfg_.max_in_flight || cfg.timeout != cfg_.timeout ||
        cfg.tls.ca_file != cfg_.tls.ca_file || cfg.tls.client_cert_file != cfg_.tls.client_cert_file ||
        cfg.tls.client_key_file != cfg_.tls.client_key_file || cfg.tls.verify_peer != cfg_.tls.verify_peer;
    std::vector<signing_key> keys;
    for (const auto& secret : cfg.secrets) {
      auto key = signing_key::parse(secret);
      if (!key) throw std::runtime_error("endpoint " + cfg.name + ": a signing secret is not whsec_<base64>");
      keys.push_back(std::move(*key));
    }
    std::array<bool, notification_kind_count> wants{};
    for (auto k : cfg.kinds) wants[static_cast<std::size_t>(k)] = true;
    if (new_client) {
      http_client_options o;
      o.max_connections = cfg.max_in_flight;
      o.request_timeout = cfg.timeout;
      o.user_agent = std::string("appointment-relay/") + version;
      o.tls = cfg.tls;
      // Throws on bad TLS files: nothing changed yet.
      auto client = s.make_client ? s.make_client(ex_, cfg.target, o) : make_http_client(ex_, cfg.target, o);
      if (client_) client_->close();
      client_ = std::move(client);
    }
    cfg_ = std::move(cfg);
    keys_ = std::move(keys);
    wants_ = wants;
    retry_ = s.retry;
    max_pending_ = std::max<std::size_t>(1, s.max_pending_per_endpoint);
    batch_ = std::max<std::size_t>(1, s.batch_size);
    flush_interval_ = s.record_flush_interval;
  }

  void activate(const std::string& installation_id) {
    reset();
    installation_ = installation_id;
    active_ = true;
    maybe_fetch();
  }

  void deactivate() {
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

  // Stop sending and reading; in-flight requests finish. Returns true when nothing is in flight.
  void drain() {
    draining_ = true;
    for (auto& [id, it] : window_)
      if (it->timer) it->timer->cancel();
  }

  void retire() {
    drain();
    active_ = false;
    client_->close();
  }

  std::size_t in_flight() const { return in_flight_; }

  // Hands every recorded outcome and the watermark to the source now.
  void flush() {
    flush_armed_ = false;
    std::map<std::string, std::int64_t> done;
    auto through = done_through();
    if (through && *through > reported_done_) {
      done.emplace(cfg_.name, *through);
      reported_done_ = *through;
    }
    if (!updates_.empty() || !done.empty()) source_.record(std::move(updates_), std::move(done));
    updates_.clear();
  }

 private:
  void reset() {
    ++generation_;
    for (auto& [id, it] : window_) {
      if (it->timer) it->timer->cancel();
      it->next.reset();  // an item still in flight must not keep its successors alive
    }
    window_.clear();
    queues_.clear();
    ready_.clear();
    read_top_ = -1;
    reported_done_ = -1;
    fetching_ = false;
    waiting_ = false;
    wake_pending_ = false;
    unread_ = false;
  }

  // Every event up to this id is done here (none left in the window); empty before the first read.
  std::optional<std::int64_t> done_through() const {
    if (!window_.empty()) return window_.begin()->first - 1;
    if (read_top_ < 0) return std::nullopt;
    return read_top_;
  }

  // Reads when there may be rows to read (the caller knows of new ones, or the last page was full) and the
  // window has room for a page: a window that is merely not full waits until a page fits (or a quarter
  // of it, whichever is less), so a backlog is read in pages, not an event at a time.
  void maybe_fetch() {
    if (!active_ || draining_ || fetching_) return;
    if (auto limit = page_limit())
      start_fetch(*limit, false);
    else
      unread_ = true;  // backpressure: read once enough are done
  }

  // Everything is read: the next read waits in the source until news arrives (see event_source::fetch),
  // so a notification is read at once by the database thread, without a round trip through this thread.
  void park_fetch() {
    if (!active_ || draining_ || fetching_) return;
    if (auto limit = page_limit()) start_fetch(*limit, true);  // else wake() decides later
  }

  // How many rows the next read may take; none while the window lacks room for a page (or a quarter of it).
  std::optional<std::size_t> page_limit() const {
    const std::size_t room = max_pending_ - std::min(max_pending_, window_.size());
    if (room < std::max<std::size_t>(1, std::min(batch_, max_pending_ / 4))) return std::nullopt;
    return std::min(batch_, room);
  }

  void start_fetch(std::size_t limit, bool wait) {
    fetching_ = true;
    waiting_ = wait;
    wake_pending_ = false;
    unread_ = false;
    source_.fetch(
        cfg_.name, limit,
        [self = shared_from_this(), gen = generation_, limit](std::vector<pending_event> events) {
          self->on_fetched(gen, limit, std::move(events));
        },
        wait);
  }

  void on_fetched(std::uint64_t gen, std::size_t limit, std::vector<pending_event> events) {
    if (gen != generation_) return;  // a reset happened meanwhile: it reads again from the database
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
    if (window_.contains(e.id)) return;
    if (auto* error = std::get_if<std::string>(&e.change)) {
      dead_without_item(e, "unreadable outbox row: " + *error);
      return;
    }
    auto result = classify(std::get<captured_change>(e.change));
    if (auto* why = std::get_if<ignored>(&result)) {
      spdlog::debug("event={} endpoint={} ignored: {}", e.id, cfg_.name, why->reason);
      return;
    }
    if (auto* bad = std::get_if<rejected>(&result)) {
      dead_without_item(e, "rejected: " + bad->reason);
      return;
    }
    auto& n = std::get<notification>(result);
    if (!wants_[static_cast<std::size_t>(n.kind)]) {
      spdlog::debug("event={} endpoint={} kind={} not subscribed", e.id, cfg_.name, to_string(n.kind));
      return;
    }
    auto it = std::make_shared<item>();
    it->id = e.id;
    it->captured_at_us = e.captured_at_us;
    it->kind = n.kind;
    it->key = std::move(n.ordering_key);
    it->payload = std::move(n.payload);
    it->webhook_id = webhook_id(installation_, e.id, cfg_.name);
    it->attempts = e.attempts;
    it->first_attempt_ms = e.first_attempt_ms;
    it->next_attempt_ms = e.next_attempt_ms.value_or(0);
    metrics_.event_captured(cfg_.name, to_string(it->kind));
    window_.emplace(it->id, it);
    auto& queue = queues_[it->key];
    if (!queue.head) {
      queue.head = queue.tail = it;
      make_due(it);
    } else {
      queue.tail->next = it;  // it waits for the earlier ones of its appointment
      queue.tail = it;
    }
  }

  void dead_without_item(const pending_event& e, std::string reason) {
    spdlog::error("dead letter event={} endpoint={} reason=\"{}\"", e.id, cfg_.name, reason);
    metrics_.dead_letter(cfg_.name, dead_letter_label(0, reason));
    auto now = unix_ms_now();
    delivery_update u;
    u.event_id = e.id;
    u.endpoint = cfg_.name;
    u.state = delivery_state::dead;
    u.attempts = e.attempts;
    u.first_attempt_ms = e.first_attempt_ms.value_or(now);
    u.last_attempt_ms = now;
    u.last_error = reason;
    u.dead_reason = std::move(reason);
    updates_.push_back(std::move(u));
  }

  void make_due(const item_ptr& it) {
    auto wait = it->next_attempt_ms - unix_ms_now();
    if (wait <= 0) {
      ready_.push_back(it);
      return;
    }
    if (!it->timer) it->timer = std::make_unique<steady_timer>(ex_);
    it->timer->expires_after(std::chrono::milliseconds(wait));
    it->timer->async_wait([self = shared_from_this(), gen = generation_, it](error_code ec) {
      if (ec || gen != self->generation_ || self->draining_) return;  // cancelled: reset or drain
      self->ready_.push_back(it);
      self->pump();
    });
  }

  void pump() {
    while (active_ && !draining_ && !ready_.empty() &&
           in_flight_ < static_cast<std::size_t>(cfg_.max_in_flight)) {
      auto it = std::move(ready_.front());
      ready_.pop_front();
      send(it);
    }
  }

  void send(const item_ptr& it) {
    auto now_ms = unix_ms_now();
    ++it->attempts;
    if (!it->first_attempt_ms) it->first_attempt_ms = now_ms;
    auto timestamp = now_ms / 1000;
    header_list headers;
    headers.reserve(3);
    headers.emplace_back("webhook-id", it->webhook_id);
    headers.emplace_back("webhook-timestamp", std::to_string(timestamp));
    if (!keys_.empty())
      headers.emplace_back("webhook-signature",
                           signature_header(keys_, it->webhook_id, timestamp, it->payload));
    spdlog::debug("POST event={} endpoint={} attempt={} body={}", it->id, cfg_.name, it->attempts,
                  it->payload);
    metrics_.attempt(cfg_.name, to_string(it->kind));
    ++in_flight_;
    it->in_flight = true;
    auto token = ++it->attempt_token;
    // The client answers every request within its own deadline. Should an answer ever go missing, the
    // attempt still ends, as a retryable failure, rather than holding the event (and its appointment)
    // forever. One sweep timer per lane checks the attempts in flight, rather than a timer per attempt.
    it->flight_slot = flights_.size();
    flights_.push_back(
        {it, generation_, token, std::chrono::steady_clock::now() + cfg_.timeout + std::chrono::seconds(5)});
    arm_guard();
    client_->post(it->payload, std::move(headers),
                  [self = shared_from_this(), gen = generation_, it, token](http_response_info r) {
                    self->on_response(gen, it, token, std::move(r));
                  });
  }

  // Removes an ended attempt from flights_ (the last one takes its place).
  void forget_flight(item& it) {
    const auto slot = it.flight_slot;
    if (slot >= flights_.size() || flights_[slot].it.get() != &it) return;
    if (slot + 1 != flights_.size()) {
      flights_[slot] = std::move(flights_.back());
      flights_[slot].it->flight_slot = slot;
    }
    flights_.pop_back();
  }

  void arm_guard() {
    if (guard_armed_ || flights_.empty()) return;
    guard_armed_ = true;
    guard_timer_.expires_after(std::chrono::seconds(1));
    guard_timer_.async_wait([self = shared_from_this()](error_code ec) {
      self->guard_armed_ = false;
      if (ec) return;
      self->sweep_flights();
    });
  }

  // Ends, as retryable failures, the attempts the HTTP client has not answered past their deadline.
  void sweep_flights() {
    const auto now = std::chrono::steady_clock::now();
    std::vector<flight> lost;
    for (const auto& f : flights_)
      if (f.deadline <= now) lost.push_back(f);
    for (auto& f : lost) {
      spdlog::error("event={} endpoint={}: no answer from the HTTP client past the request deadline",
                    f.it->id, cfg_.name);
      http_response_info r;
      r.error = "no answer within the request deadline";
      on_response(f.gen, f.it, f.token, std::move(r));
    }
    arm_guard();
  }

  void on_response(std::uint64_t gen, const item_ptr& it, std::uint64_t token, http_response_info r) {
    if (!it->in_flight || it->attempt_token != token) return;  // already ended by the guard
    it->in_flight = false;
    forget_flight(*it);
    --in_flight_;
    auto now_ms = unix_ms_now();
    attempt_result result{r.status, r.error, r.retry_after};
    std::uniform_real_distribution<double> jitter(0.0, 1.0);
    auto age = std::chrono::milliseconds(now_ms - it->first_attempt_ms.value_or(now_ms));
    auto d = decide(retry_, result, it->attempts, age, now_ms / 1000, jitter(rng_));
    bool stale = gen != generation_;
    std::string outcome = r.status > 0 ? std::to_string(r.status) : r.error;
    auto latency_ms = static_cast<double>(r.latency.count()) / 1000.0;
    auto kind = to_string(it->kind);

    delivery_update u;
    u.event_id = it->id;
    u.endpoint = cfg_.name;
    u.attempts = it->attempts;
    u.first_attempt_ms = it->first_attempt_ms.value_or(now_ms);
    u.last_attempt_ms = now_ms;
    switch (d.what) {
      case verdict::delivered:
        spdlog::info(
            "delivered event={} kind={} appointment={} endpoint={} attempt={} status={} latency_ms={:.1f}",
            it->id, kind, it->key, cfg_.name, it->attempts, outcome, latency_ms);
        metrics_.delivered(cfg_.name, kind, static_cast<double>(unix_us_now() - it->captured_at_us) / 1e6);
        u.state = delivery_state::delivered;
        break;
      case verdict::retry:
        spdlog::warn(
            "retry event={} kind={} appointment={} endpoint={} attempt={} status={} latency_ms={:.1f} "
            "next_in_ms={}",
            it->id, kind, it->key, cfg_.name, it->attempts, outcome, latency_ms, d.delay.count());
        metrics_.retry(cfg_.name, kind);
        u.state = delivery_state::retrying;
        u.next_attempt_ms = now_ms + d.delay.count();
        u.last_error = d.reason;
        break;
      case verdict::dead:
        spdlog::error(
            "dead letter event={} kind={} appointment={} endpoint={} attempt={} status={} latency_ms={:.1f} "
            "reason=\"{}\"",
            it->id, kind, it->key, cfg_.name, it->attempts, outcome, latency_ms, d.reason);
        metrics_.dead_letter(cfg_.name, dead_letter_label(r.status, d.reason));
        u.state = delivery_state::dead;
        u.last_error = r.status > 0 ? "http " + std::to_string(r.status) : r.error;
        u.dead_reason = d.reason;
        break;
    }
    if (stale) {
      // After a reset the event is read again from the database; a retry state written now could overwrite
      // what the new reading has done since, so only the certain outcomes are kept.
      if (u.state != delivery_state::retrying) updates_.push_back(std::move(u));
      schedule_flush();
      return;
    }
    updates_.push_back(std::move(u));
    if (d.what == verdict::retry) {
      it->next_attempt_ms = now_ms + d.delay.count();
      if (!draining_) make_due(it);
    } else {
      complete(it);
    }
    pump();
    schedule_flush();
    // Only when rows were left unread: new ones announce themselves (a notification, or the poll tick).
    if (unread_) maybe_fetch();
  }

  // The item is done (delivered or dead): the next one of its appointment may go.
  void complete(const item_ptr& it) {
    window_.erase(it->id);
    auto q = queues_.find(it->key);
    if (q == queues_.end()) return;
    auto& queue = q->second;
    if (queue.head == it) queue.head = std::exchange(it->next, nullptr);
    if (!queue.head) {
      queues_.erase(q);
      return;
    }
    make_due(queue.head);
  }

  void schedule_flush() {
    if (updates_.size() >= 512) {
      flush();
      return;
    }
    if (flush_armed_) return;
    flush_armed_ = true;
    flush_timer_.expires_after(flush_interval_);
    flush_timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec && self->flush_armed_) self->flush();
    });
  }

  executor ex_;
  event_source& source_;
  metrics& metrics_;
  endpoint_config cfg_;
  std::vector<signing_key> keys_;
  std::array<bool, notification_kind_count> wants_{};
  retry_settings retry_;
  std::size_t max_pending_ = 10000;
  std::size_t batch_ = 1000;
  std::chrono::milliseconds flush_interval_{5};
  std::shared_ptr<http_client> client_;
  std::string installation_;

  struct flight {
    item_ptr it;
    std::uint64_t gen = 0;
    std::uint64_t token = 0;
    std::chrono::steady_clock::time_point deadline;
  };
  std::vector<flight> flights_;  // attempts in flight, unordered (see forget_flight)
  steady_timer guard_timer_;
  bool guard_armed_ = false;
  std::map<std::int64_t, item_ptr> window_;  // by event id: read, not yet done
  // An appointment's events in id order, linked through item::next: no allocation beyond the map's node.
  struct appointment_queue {
    item_ptr head;  // the one due
    item_ptr tail;
  };
  std::unordered_map<std::string, appointment_queue> queues_;  // by appointment
  std::deque<item_ptr> ready_;
  std::vector<delivery_update> updates_;
  steady_timer flush_timer_;
  bool flush_armed_ = false;
  std::int64_t read_top_ = -1;
  std::int64_t reported_done_ = -1;
  std::size_t in_flight_ = 0;
  std::uint64_t generation_ = 0;
  bool active_ = false;
  bool fetching_ = false;
  bool wake_pending_ = false;
  bool unread_ = false;   // rows may be waiting that no read has taken (a full page, or backpressure)
  bool waiting_ = false;  // the outstanding fetch waits in the source for news
  bool draining_ = false;
  std::mt19937_64 rng_;
};

class dispatcher_impl final : public dispatcher {
 public:
  dispatcher_impl(executor ex, dispatcher_settings settings, event_source& source, metrics& m)
      : ex_(std::move(ex)), source_(source), metrics_(m), drain_timer_(ex_) {
    for (auto& e : settings.endpoints)
      lanes_.push_back(std::make_shared<lane>(ex_, e, settings, source_, metrics_));
    settings_ = std::move(settings);
  }

  ~dispatcher_impl() override {
    for (auto& l : lanes_) l->retire();
  }

  void activate(std::string installation_id) override {
    installation_ = std::move(installation_id);
    active_ = true;
    if (draining_) return;
    for (auto& l : lanes_) l->activate(installation_);
  }

  void deactivate() override {
    active_ = false;
    for (auto& l : lanes_) {
      l->flush();
      l->deactivate();
    }
  }

  void wake() override {
    for (auto& l : lanes_) l->wake();
  }

  void reconfigure(const dispatcher_settings& settings) override {
    std::vector<std::shared_ptr<lane>> next;
    for (const auto& e : settings.endpoints) {
      auto found = std::find_if(lanes_.begin(), lanes_.end(), [&](auto& l) { return l->name() == e.name; });
      if (found != lanes_.end()) {
        (*found)->configure(e, settings);
        next.push_back(*found);
      } else {
        auto l = std::make_shared<lane>(ex_, e, settings, source_, metrics_);
        if (active_ && !draining_) l->activate(installation_);
        next.push_back(std::move(l));
      }
    }
    for (auto& l : lanes_) {
      if (std::find(next.begin(), next.end(), l) == next.end()) {
        spdlog::info("endpoint {} removed from the configuration: it gets nothing new", l->name());
        l->flush();
        l->retire();
      }
    }
    lanes_ = std::move(next);
    settings_ = settings;
  }

  void drain(std::chrono::milliseconds deadline, std::function<void()> done) override {
    if (draining_) return;
    draining_ = true;
    drain_done_ = std::move(done);
    for (auto& l : lanes_) l->drain();
    drain_timer_.expires_after(deadline);
    drain_timer_.async_wait([this](error_code ec) {
      if (ec) return;
      spdlog::warn("shutdown deadline reached with {} requests in flight: they stay pending", in_flight());
      finish_drain();
    });
    poll_drain();
  }

  std::size_t in_flight() const override {
    std::size_t n = 0;
    for (auto& l : lanes_) n += l->in_flight();
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
  dispatcher_settings settings_;
  std::vector<std::shared_ptr<lane>> lanes_;
  std::string installation_;
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
