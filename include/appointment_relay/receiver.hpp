#pragma once
// The demo receiver: a small HTTP/1.1 server that takes the relay's webhooks, checks each signature and
// prints what it got (the quickstart), or only records receive times (the benchmarks). Keep-alive, one
// thread, answers 200 to every POST.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "appointment_relay/net.hpp"
#include "appointment_relay/signature.hpp"

namespace appointment_relay {

struct received_webhook {
  std::int64_t received_unix_ns = 0;
  std::string webhook_id;
  std::string timestamp;
  std::string body;
  // true / false when secrets are configured; empty when not.
  std::optional<bool> signature_valid;
};

struct receiver_options {
  std::string listen = "127.0.0.1:8080";
  std::vector<signing_key> keys;  // check signatures against these
  std::size_t body_limit = 64 * 1024;
  std::chrono::seconds tolerance{300};  // Standard Webhooks: refuse timestamps further off than this
};

class receiver {
 public:
  virtual ~receiver() = default;
  virtual std::uint16_t port() const = 0;
  virtual void stop() = 0;  // idempotent
};

// Binds at once (throws std::runtime_error with the reason); on_webhook runs on ex for each POST.
std::unique_ptr<receiver> make_receiver(executor ex, const receiver_options& options,
                                        std::function<void(received_webhook)> on_webhook);

}  // namespace appointment_relay
