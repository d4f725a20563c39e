#pragma once
// `appointment-relay health`: asks a running relay's admin server whether it is alive (GET /healthz), for a
// container's HEALTHCHECK or a monitoring script that has no curl. The admin server answers on the relay's io
// thread, so an answer also says that the thread is not stuck.
#include <chrono>
#include <string>

namespace appointment_relay {

struct health_result {
  bool healthy = false;
  std::string message;  // one line, no newline: "healthy: ..." or "unhealthy: ..."
};

// listen: the admin server's address as admin.listen gives it ("127.0.0.1:9187", "[::1]:9187",
// "localhost:9187"); a wildcard address (0.0.0.0, [::]) is asked on the loopback address of its family, and
// "" (the admin server disabled) is unhealthy. Healthy only for a 200 answer within timeout (connect, send
// and read together). Blocks the calling thread; throws nothing.
health_result check_health(const std::string& listen, std::chrono::milliseconds timeout);

}  // namespace appointment_relay
