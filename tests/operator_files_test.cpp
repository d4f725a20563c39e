// What the Debian package installs beside the binary, held to the code it documents: the man pages
// (man/*.scd) name every command, option and configuration key, and the bash completion offers every command
// and option. A new command, option or key that misses one of them fails here.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "appointment_relay/cli.hpp"
#include "appointment_relay/config.hpp"

#include "support/shell.hpp"

namespace appointment_relay {
namespace {

namespace fs = std::filesystem;
const fs::path source_dir = APPOINTMENT_RELAY_SOURCE_DIR;

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every command, from the enum through to_string ("?" past the last one).
std::vector<cli::command> all_commands() {
  std::vector<cli::command> out;
  for (int i = 0; cli::to_string(static_cast<cli::command>(i)) != "?"; ++i)
    out.push_back(static_cast<cli::command>(i));
  return out;
}

// The long options a command's help names ("--config", "--json", ...).
std::set<std::string> options_in_help(cli::command c) {
  std::set<std::string> out;
  const std::string text = cli::help_text(c);
  const std::regex option(R"((^|[\s\[(|,])(--[a-z][a-z-]*))");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), option); it != std::sregex_iterator(); ++it)
    out.insert((*it)[2]);
  return out;
}

TEST(operator_files, should_name_every_command_and_option_in_the_man_page) {
  const std::string page = read_text(source_dir / "man" / "appointment-relay.1.scd");
  ASSERT_FALSE(page.empty());
  for (auto c : all_commands()) {
    const std::string name(cli::to_string(c));
    // A definition in COMMANDS starts a line: "*status* [*--config* ...".
    EXPECT_NE(page.find("\n*" + name + "*"), std::string::npos) << "command " << name;
    for (const auto& option : options_in_help(c))
      EXPECT_NE(page.find("*" + option + "*"), std::string::npos) << name << " " << option;
  }
  // Every exit code the CLI names.
  for (int code : {cli::exit_ok, cli::exit_failure, cli::exit_usage, cli::exit_config})
    EXPECT_NE(page.find("\n*" + std::to_string(code) + "*\n"), std::string::npos) << "exit code " << code;
}

// Each key under its section's heading, marked "restart" exactly when SIGHUP does not apply it.
TEST(operator_files, should_document_every_configuration_key_in_its_section_of_the_file_format_page) {
  const std::string page = read_text(source_dir / "man" / "appointment-relay.toml.5.scd");
  ASSERT_FALSE(page.empty());
  for (const auto& key : config_keys()) {
    const std::string heading =
        key.section == "endpoints" ? "\n# [endpoints.NAME]\n" : "\n# [" + key.section + "]\n";
    const auto start = page.find(heading);
    ASSERT_NE(start, std::string::npos) << heading;
    const auto end = page.find("\n# ", start + heading.size());
    const std::string section = page.substr(start, end - start);
    // The definition line: it starts with the key in bold, or lists it after another ("*a* (...), *b* ...").
    std::istringstream lines(section);
    std::string definition;
    for (std::string line; std::getline(lines, line);)
      if (!line.empty() && line[0] == '*' && line.find("*" + key.name + "*") != std::string::npos) {
        definition = line;
        break;
      }
    ASSERT_FALSE(definition.empty()) << key.section << "." << key.name << " is not documented";
    EXPECT_EQ(definition.find("restart") != std::string::npos, !key.reloadable)
        << key.section << "." << key.name << ": " << definition;
  }
}

TEST(operator_files, should_point_the_units_at_the_man_pages) {
  EXPECT_TRUE(fs::exists(source_dir / "man" / "appointment-relay.1.scd"));
  EXPECT_TRUE(fs::exists(source_dir / "man" / "appointment-relay.toml.5.scd"));
  for (auto unit : {"appointment-relay.service", "appointment-relay@.service"})
    EXPECT_NE(read_text(source_dir / "config" / unit)
                  .find("\nDocumentation=man:appointment-relay(1) man:appointment-relay.toml(5)\n"),
              std::string::npos)
        << unit;
}

// stdout and stderr of command.
testing::shell_result run(const std::string& command) {
  return testing::run_shell(command + " 2>&1");
}

const fs::path completion = source_dir / "config" / "appointment-relay.bash-completion";

TEST(operator_files, should_offer_every_command_and_option_in_the_bash_completion) {
  const std::string text = read_text(completion);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(run("bash -n '" + completion.string() + "'").exit_code, 0) << "a syntax error";
  // The list the first word is completed from, as " run migrate ... help ".
  const auto list = text.find("local commands=\"");
  ASSERT_NE(list, std::string::npos);
  const auto list_end = text.find('"', list + 16);
  const std::string commands = " " + text.substr(list + 16, list_end - list - 16) + " ";
  for (auto c : all_commands()) {
    const std::string name(cli::to_string(c));
    EXPECT_NE(commands.find(" " + name + " "), std::string::npos) << "command " << name;
    for (const auto& option : options_in_help(c))
      EXPECT_NE(text.find(option), std::string::npos) << name << " " << option;
  }
}

// Completes as bash would, where bash-completion is installed (the package depends on nothing for it).
TEST(operator_files, should_complete_commands_and_the_options_of_the_command_given) {
  const std::string library = "/usr/share/bash-completion/bash_completion";
  // scripts/install-deps.sh installs bash-completion for this test.
  ASSERT_TRUE(fs::exists(library)) << library << " is not installed (apt-get install bash-completion)";
  auto complete = [&](const std::string& words) {
    const std::string script =
        "source " + library + " && source '" + completion.string() + "' && COMP_WORDS=(" + words +
        ") && COMP_CWORD=$((${#COMP_WORDS[@]} - 1)) && COMP_LINE=\"${COMP_WORDS[*]}\" && "
        "COMP_POINT=${#COMP_LINE} && _appointment_relay && echo \"${COMPREPLY[*]}\"";
    auto r = run("bash -c '" + std::regex_replace(script, std::regex("'"), "'\\''") + "'");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  };
  EXPECT_EQ(complete("appointment-relay st"), "status\n");
  EXPECT_EQ(complete("appointment-relay he"), "health help\n");
  EXPECT_EQ(complete("appointment-relay health --a"), "--admin\n");
  EXPECT_EQ(complete("appointment-relay -c r.toml status --j"), "--json\n");
  EXPECT_EQ(complete("appointment-relay replay --ev"), "--event-id\n");
  EXPECT_EQ(complete("appointment-relay replay --endpoint ''"), "\n") << "an endpoint name is free text";
}

}  // namespace
}  // namespace appointment_relay
