// TEMPORARY (db branch only): a trivial metrics implementation so the database worker's tests link. The
// lead replaces this file with the real one at merge.
#include "appointment_relay/metrics.hpp"

#include <atomic>

namespace appointment_relay {

struct metrics::impl {
  std::atomic<bool> database_up{false};
  std::atomic<std::int64_t> database_reconnects{0};
};

metrics::metrics() : impl_(std::make_unique<impl>()) {}
metrics::~metrics() = default;

void metrics::event_captured(std::string_view, std::string_view) {}
void metrics::attempt(std::string_view, std::string_view) {}
void metrics::retry(std::string_view, std::string_view) {}
void metrics::delivered(std::string_view, std::string_view, double) {}
void metrics::dead_letter(std::string_view, std::string_view) {}
void metrics::set_backlog(std::string_view, std::int64_t, double) {}
void metrics::database_reconnect() {
  ++impl_->database_reconnects;
}
void metrics::set_database_up(bool up) {
  impl_->database_up = up;
}
bool metrics::database_up() const {
  return impl_->database_up;
}

std::string metrics::render() const {
  return "appointment_relay_database_up " + std::to_string(impl_->database_up ? 1 : 0) +
         "\nappointment_relay_database_reconnects_total " +
         std::to_string(impl_->database_reconnects.load()) + "\n";
}

}  // namespace appointment_relay
