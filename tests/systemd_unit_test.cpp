// The systemd units shipped in config/ (appointment-relay.service and the template
// appointment-relay@.service): their required settings, and `systemd-analyze verify` where available.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "support/shell.hpp"

namespace appointment_relay {
namespace {

namespace fs = std::filesystem;

const fs::path unit_path = fs::path(APPOINTMENT_RELAY_SOURCE_DIR) / "config" / "appointment-relay.service";
const fs::path template_path =
    fs::path(APPOINTMENT_RELAY_SOURCE_DIR) / "config" / "appointment-relay@.service";

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "[Section] Key" -> values in order (a key may repeat). Comments and blank lines skipped.
std::multimap<std::string, std::string> parse_unit(const std::string& text) {
  std::multimap<std::string, std::string> keys;
  std::istringstream in(text);
  std::string section;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = line;
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    keys.emplace(section + " " + line.substr(0, eq), line.substr(eq + 1));
  }
  return keys;
}

// stdout and stderr of command.
testing::shell_result run(const std::string& command) {
  return testing::run_shell(command + " 2>&1");
}

TEST(systemd_unit, should_set_the_required_service_and_sandbox_settings) {
  const std::string text = read_text(unit_path);
  ASSERT_FALSE(text.empty()) << "cannot read " << unit_path;
  const auto keys = parse_unit(text);

  const struct {
    const char* key;
    const char* value;
  } required[] = {
      {"[Unit] Documentation", "man:appointment-relay(1) man:appointment-relay.toml(5)"},
      {"[Service] Type", "notify"},
      // The Debian package's path; installed by hand, the unit's header says how to change it.
      {"[Service] ExecStart",
       "/usr/bin/appointment-relay run --config /etc/appointment-relay/appointment-relay.toml"},
      {"[Service] ExecReload", "/bin/kill -HUP $MAINPID"},
      {"[Service] Restart", "on-failure"},
      {"[Service] RestartSec", "2"},
      {"[Service] WatchdogSec", "30"},
      {"[Service] TimeoutStopSec", "30"},
      // Secrets: a DynamicUser cannot read root-only files; systemd copies them for it.
      {"[Service] LoadCredential", "secret:/etc/appointment-relay/credentials"},
      {"[Service] EnvironmentFile", "-/etc/appointment-relay/environment"},
      {"[Service] ConfigurationDirectory", "appointment-relay"},
      {"[Service] DynamicUser", "yes"},
      {"[Service] NoNewPrivileges", "yes"},
      {"[Service] ProtectSystem", "strict"},
      {"[Service] ProtectHome", "yes"},
      {"[Service] PrivateTmp", "yes"},
      {"[Service] PrivateDevices", "yes"},
      {"[Service] ProtectKernelTunables", "yes"},
      {"[Service] ProtectKernelModules", "yes"},
      {"[Service] ProtectKernelLogs", "yes"},
      {"[Service] ProtectControlGroups", "yes"},
      {"[Service] ProtectClock", "yes"},
      {"[Service] ProtectHostname", "yes"},
      {"[Service] RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
      {"[Service] RestrictNamespaces", "yes"},
      {"[Service] RestrictRealtime", "yes"},
      {"[Service] RestrictSUIDSGID", "yes"},
      {"[Service] LockPersonality", "yes"},
      {"[Service] MemoryDenyWriteExecute", "yes"},
      {"[Service] SystemCallArchitectures", "native"},
      {"[Service] SystemCallFilter", "@system-service"},
      {"[Service] CapabilityBoundingSet", ""},
      {"[Service] AmbientCapabilities", ""},
      {"[Service] UMask", "0077"},
      {"[Install] WantedBy", "multi-user.target"},
  };
  for (const auto& r : required) {
    const auto [begin, end] = keys.equal_range(r.key);
    ASSERT_NE(begin, end) << "missing " << r.key;
    EXPECT_EQ(std::next(begin), end) << r.key << " set more than once";
    EXPECT_EQ(begin->second, r.value) << r.key;
  }
}

// The template is the unit with the instance's file names: every other setting the same, so a hardening or
// a fix made to one cannot be missed in the other.
TEST(systemd_unit, should_make_the_template_the_unit_with_the_instance_s_files) {
  const std::string text = read_text(template_path);
  ASSERT_FALSE(text.empty()) << "cannot read " << template_path;
  auto templ = parse_unit(text);
  auto unit = parse_unit(read_text(unit_path));
  const std::map<std::string, std::string> per_instance{
      {"[Unit] Description", "appointment-relay for %i: appointment changes from PostgreSQL to webhooks"},
      {"[Service] ExecStart", "/usr/bin/appointment-relay run --config /etc/appointment-relay/%i.toml"},
      {"[Service] LoadCredential", "secret:/etc/appointment-relay/%i.credentials"},
      {"[Service] EnvironmentFile", "-/etc/appointment-relay/%i.environment"},
  };
  for (const auto& [key, value] : per_instance) {
    ASSERT_EQ(templ.count(key), 1u) << key;
    EXPECT_EQ(templ.find(key)->second, value) << key;
    ASSERT_EQ(unit.count(key), 1u) << key;
    templ.erase(key);
    unit.erase(key);
  }
  EXPECT_EQ(templ, unit) << "the template and the unit differ in more than the instance's files";
}

TEST(systemd_unit, should_pass_systemd_analyze_verify_without_unknown_keys) {
  if (run("command -v systemd-analyze").exit_code != 0) {
    // Without systemd-analyze the settings test above is the check; still prove the unit parses into
    // the sections systemd expects, so this test asserts something here too.
    for (const auto& path : {unit_path, template_path}) {
      const auto keys = parse_unit(read_text(path));
      EXPECT_TRUE(keys.count("[Unit] Description")) << path;
      EXPECT_TRUE(keys.count("[Service] ExecStart")) << path;
      EXPECT_TRUE(keys.count("[Install] WantedBy")) << path;
      for (const auto& [key, value] : keys)
        EXPECT_TRUE(key.rfind("[Unit] ", 0) == 0 || key.rfind("[Service] ", 0) == 0 ||
                    key.rfind("[Install] ", 0) == 0)
            << path << ": key outside the known sections: " << key;
    }
    return;
  }

  // verify insists the ExecStart binary exists: point it at the built daemon in temporary copies. The man
  // pages of Documentation= are not installed here (--man=no); the package test checks them.
  std::string binary = APPOINTMENT_RELAY_BINARY;
  if (access(binary.c_str(), X_OK) != 0) binary = "/bin/true";
  char dir_template[] = "/tmp/ar-unit-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const fs::path dir = dir_template;
  for (const auto& source : {unit_path, template_path}) {
    std::string text = read_text(source);
    const std::string installed = "ExecStart=/usr/bin/appointment-relay ";
    const auto at = text.find(installed);
    ASSERT_NE(at, std::string::npos) << source;
    text.replace(at, installed.size(), "ExecStart=" + binary + " ");
    std::ofstream(dir / source.filename()) << text;
  }
  // A template is verified as one of its instances.
  for (const std::string name : {"appointment-relay.service", "appointment-relay@clinic-a.service"}) {
    const testing::shell_result r =
        run("cd '" + dir.string() + "' && systemd-analyze verify --man=no " + name);
    EXPECT_EQ(r.exit_code, 0) << name << ": " << r.output;
    std::istringstream out(r.output);
    for (std::string line; std::getline(out, line);) {
      // systemd says "Unknown key 'X' in section [S], ignoring." (or "Unknown section") for a typo.
      EXPECT_EQ(line.find("Unknown"), std::string::npos) << line;
      EXPECT_EQ(line.find("ignoring"), std::string::npos) << line;
      EXPECT_EQ(line.find("appointment-relay"), std::string::npos) << line;
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace appointment_relay
