#include "appointment_relay/health.hpp"

#include <optional>
#include <stdexcept>

#include "appointment_relay/listen_address.hpp"
#include "appointment_relay/net.hpp"

namespace appointment_relay {
namespace {

// /healthz answers "ok\n"; anything much longer is not the relay's admin server.
constexpr std::uint64_t body_limit = 4096;

std::string seconds_text(std::chrono::milliseconds d) {
  auto ms = d.count();
  return ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms";
}

}  // namespace

health_result check_health(const std::string& listen, std::chrono::milliseconds timeout) {
  if (listen.empty()) return {false, "unhealthy: the admin server is disabled (admin.listen = \"\")"};
  tcp::endpoint target;
  try {
    target = parse_listen_address(listen);
  } catch (const std::invalid_argument& e) {
    return {false, std::string("unhealthy: ") + e.what()};
  }
  // A server listening on every address is reached on this host's loopback address.
  if (target.address().is_unspecified())
    target.address(target.address().is_v4() ? net::ip::address(net::ip::address_v4::loopback())
                                            : net::ip::address(net::ip::address_v6::loopback()));
  if (target.port() == 0) return {false, "unhealthy: no port in admin address '" + listen + "'"};
  const std::string where =
      (target.address().is_v6() ? "[" + target.address().to_string() + "]" : target.address().to_string()) +
      ":" + std::to_string(target.port());

  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  beast::flat_buffer buffer;
  http::request<http::empty_body> request{http::verb::get, "/healthz", 11};
  request.set(http::field::host, where);
  request.set(http::field::connection, "close");
  http::response_parser<http::string_body> parser;
  parser.body_limit(body_limit);
  std::optional<health_result> result;
  auto fail = [&](const std::string& step, const error_code& ec) {
    // The deadline surfaces as beast::error::timeout on whichever step was running.
    if (ec == beast::error::timeout)
      result = {false, "unhealthy: no answer from " + where + " within " + seconds_text(timeout)};
    else
      result = {false, "unhealthy: " + step + " " + where + ": " + ec.message()};
  };

  stream.expires_after(timeout);
  stream.async_connect(target, [&](const error_code& ec) {
    if (ec) return fail("cannot connect to", ec);
    http::async_write(stream, request, [&](const error_code& ec, std::size_t) {
      if (ec) return fail("cannot send to", ec);
      http::async_read(stream, buffer, parser, [&](const error_code& ec, std::size_t) {
        if (ec) return fail("no valid answer from", ec);
        const auto& response = parser.get();
        const auto status = response.result_int();
        if (status == 200) {
          result = {true, "healthy: " + where + "/healthz answered 200"};
        } else {
          std::string body = response.body().substr(0, 200);
          while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) body.pop_back();
          for (auto& c : body)
            if (c == '\n' || c == '\r') c = ' ';
          result = {false, "unhealthy: " + where + "/healthz answered " + std::to_string(status) +
                               (body.empty() ? "" : ": " + body)};
        }
      });
    });
  });
  ioc.run();
  error_code ignored;  // the peer may have closed first: nothing to report on a probe's way out
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  return result.value_or(health_result{false, "unhealthy: no answer from " + where});
}

}  // namespace appointment_relay
