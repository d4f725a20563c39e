#include "support/database_roles.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

#include <pqxx/pqxx>

namespace appointment_relay::testing {

std::string read_text_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in) throw std::runtime_error("cannot read " + p.string());
  return ss.str();
}

std::string with_names(const std::string& sql, const std::map<std::string, std::string>& names) {
  static const std::regex word(R"(\b(relay_owner|relay|canvas_app|canvas)\b)");
  std::istringstream in(sql);
  std::string out, line;
  while (std::getline(in, line)) {
    auto first = line.find_first_not_of(" \t");
    if (first != std::string::npos && line.compare(first, 2, "--") == 0) continue;
    std::string replaced;
    std::size_t last = 0;
    for (auto it = std::sregex_iterator(line.begin(), line.end(), word); it != std::sregex_iterator(); ++it) {
      auto found = names.find((*it)[1].str());
      if (found == names.end()) throw std::runtime_error("no test name for " + (*it)[1].str());
      replaced += line.substr(last, static_cast<std::size_t>(it->position()) - last) + found->second;
      last = static_cast<std::size_t>(it->position() + it->length());
    }
    out += replaced + line.substr(last) + "\n";
  }
  return out;
}

std::string as_role(const std::string& url, const std::string& role) {
  auto scheme = url.find("://");
  auto start = scheme == std::string::npos ? 0 : scheme + 3;
  auto at = url.find('@', start);
  auto slash = url.find('/', start);
  if (at != std::string::npos && (slash == std::string::npos || at < slash)) start = at + 1;
  return url.substr(0, scheme == std::string::npos ? 0 : scheme + 3) + role + "@" + url.substr(start);
}

test_roles::test_roles(const std::string& prefix) {
  static std::atomic<int> counter{0};
  auto base = prefix + std::to_string(::getpid()) + "_" + std::to_string(counter++);
  owner = base + "_owner";
  daemon = base + "_daemon";
  app = base + "_app";
  drop();  // a crashed run with the same pid may have left them
}

test_roles::~test_roles() {
  drop();
}

std::map<std::string, std::string> test_roles::names(const scratch_database& db) const {
  return {{"relay_owner", owner}, {"relay", daemon}, {"canvas_app", app}, {"canvas", db.name()}};
}

void test_roles::drop() {
  try {
    pqxx::connection c(*test_database_url());
    pqxx::nontransaction tx(c);
    tx.exec("DROP ROLE IF EXISTS " + owner + ", " + daemon + ", " + app);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "roles left behind: " << e.what();
  }
}

void create_canvas_application_role(const scratch_database& db, const std::string& app) {
  db.exec("CREATE ROLE " + app + " LOGIN;" + "GRANT USAGE ON SCHEMA public, canvas_test TO " + app + ";" +
          "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO " + app + ";" +
          "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO " + app + ";");
}

}  // namespace appointment_relay::testing
