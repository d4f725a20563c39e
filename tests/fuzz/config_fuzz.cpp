// libFuzzer target: arbitrary bytes as a TOML configuration file for load_config. A bad file must give a
// config_error (exit 78), never a crash, a hang or another exception; a good one must render.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "appointment_relay/config.hpp"

namespace {

const std::string& scratch_path() {
  static const std::string path =
      "/tmp/appointment-relay-config-fuzz-" + std::to_string(::getpid()) + ".toml";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  {
    std::ofstream out(scratch_path(), std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    auto cfg = appointment_relay::load_config(scratch_path(), {});
    auto text = appointment_relay::render_config(cfg);
    if (text.empty()) std::abort();
  } catch (const appointment_relay::config_error&) {
    // The expected outcome for most inputs. Anything else escapes and is reported as a crash.
  }
  return 0;
}
