#include "appointment_relay/net.hpp"

#include <gtest/gtest.h>

namespace appointment_relay {
namespace {

// The central aliases compile and the separately compiled Asio links: a timer on an io_context fires.
TEST(net, should_run_a_timer_on_the_separately_compiled_asio) {
  net::io_context io;
  steady_timer t(io, std::chrono::milliseconds(1));
  bool fired = false;
  t.async_wait([&](error_code ec) { fired = !ec; });
  io.run();
  EXPECT_TRUE(fired);
}

}  // namespace
}  // namespace appointment_relay
