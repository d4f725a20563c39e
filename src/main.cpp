#include <cstdio>

#include "appointment_relay/version.hpp"

int main() {
  std::printf("appointment-relay %s\n", appointment_relay::version);
  return 0;
}
