// appointment-relay-receiver: the demo receiver of the quickstart and the benchmarks' fast receiver.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "appointment_relay/net.hpp"
#include "appointment_relay/receiver.hpp"
#include "appointment_relay/version.hpp"

namespace ar = appointment_relay;

namespace {

const char* const usage =
    R"(appointment-relay-receiver: takes appointment-relay's webhooks, checks their signatures, prints them.

usage: appointment-relay-receiver [--listen HOST:PORT] [--secret whsec_...]... [--quiet] [--record FILE]
                                  [--exit-after N]

  --listen HOST:PORT  where to listen (default 127.0.0.1:8080; port 0 picks a free one, printed at start)
  --secret whsec_...  check each webhook-signature against this secret (repeat for several); a webhook
                      with a bad signature or a stale timestamp gets 401
  --quiet             print nothing per webhook
  --record FILE       at exit, write one line per webhook: receive time (unix ns), webhook-id, body (tab-separated)
  --exit-after N      exit once N webhooks arrived
  --help              this text

It stops on SIGINT or SIGTERM. Exit codes: 0 ok, 1 runtime failure, 2 usage.
)";

}  // namespace

int main(int argc, char** argv) {
  ar::receiver_options options;
  bool quiet = false;
  std::string record;
  long exit_after = 0;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "%s needs a value\n", args[i].c_str());
        std::exit(2);
      }
      return args[++i];
    };
    if (args[i] == "--help" || args[i] == "-h") {
      std::fputs(usage, stdout);
      return 0;
    } else if (args[i] == "--listen") {
      options.listen = value();
    } else if (args[i] == "--secret") {
      auto key = ar::signing_key::parse(value());
      if (!key) {
        std::fprintf(stderr, "--secret: not a whsec_<base64> secret\n");
        return 2;
      }
      options.keys.push_back(std::move(*key));
    } else if (args[i] == "--quiet") {
      quiet = true;
    } else if (args[i] == "--record") {
      record = value();
    } else if (args[i] == "--exit-after") {
      exit_after = std::stol(value());
    } else {
      std::fprintf(stderr, "unknown option %s (see --help)\n", args[i].c_str());
      return 2;
    }
  }

  ar::net::io_context io(1);
  std::vector<ar::received_webhook> received;
  long count = 0;
  std::unique_ptr<ar::receiver> server;
  try {
    server = ar::make_receiver(io.get_executor(), options, [&](ar::received_webhook w) {
      ++count;
      if (!quiet) {
        const char* sig = !w.signature_valid   ? "unsigned"
                          : *w.signature_valid ? "signature ok"
                                               : "SIGNATURE INVALID";
        std::printf("received %s (%s) %s\n", w.webhook_id.c_str(), sig, w.body.c_str());
        std::fflush(stdout);
      }
      if (!record.empty()) received.push_back(std::move(w));
      if (exit_after > 0 && count >= exit_after) io.stop();
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "appointment-relay-receiver: %s\n", e.what());
    return 1;
  }
  std::printf("appointment-relay-receiver %s listening on %s port %u\n", ar::version, options.listen.c_str(),
              static_cast<unsigned>(server->port()));
  std::fflush(stdout);
  ar::net::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](ar::error_code, int) { io.stop(); });
  io.run();
  if (!record.empty()) {
    std::ofstream out(record);
    for (const auto& w : received)
      out << w.received_unix_ns << '\t' << w.webhook_id << '\t' << w.body << '\n';
  }
  return 0;
}
