#pragma once
// The database as a clinic deploys it, for tests: login roles unique to the test process standing for the
// README's relay_owner, relay and Canvas's application role, and the README's SQL files with those names.
#include <filesystem>
#include <map>
#include <string>

#include "support/test_database.hpp"

namespace appointment_relay::testing {

std::string read_text_file(const std::filesystem::path& p);

// The file's SQL with the README's names replaced as its header says: whole words (relay_owner, relay,
// canvas_app, canvas), case-sensitive, in every line that is not a comment (comment lines are dropped).
// Throws on a name the map lacks.
std::string with_names(const std::string& sql, const std::map<std::string, std::string>& names);

// The same URL, connecting as another role (the test cluster trusts 127.0.0.1).
std::string as_role(const std::string& url, const std::string& role);

// Three login roles with names unique to this process (prefix + pid + a counter), dropped at destruction.
// Roles are cluster-wide and may own objects only in databases already dropped by then (declare this before
// the scratch_database).
class test_roles {
 public:
  explicit test_roles(const std::string& prefix);
  ~test_roles();
  test_roles(const test_roles&) = delete;
  test_roles& operator=(const test_roles&) = delete;

  // The README's names -> these roles, and canvas -> the database's name.
  std::map<std::string, std::string> names(const scratch_database& db) const;

  std::string owner, daemon, app;

 private:
  void drop();
};

// What a real Canvas has: its application role reads and writes its own tables (the test helpers' schema
// canvas_test included). Not part of the relay's README.
void create_canvas_application_role(const scratch_database& db, const std::string& app);

}  // namespace appointment_relay::testing
