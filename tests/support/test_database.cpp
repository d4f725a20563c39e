#include "support/test_database.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <pqxx/pqxx>

#include "appointment_relay/store.hpp"

namespace appointment_relay::testing {
namespace {

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// postgresql://user@host:port/dbname?params -> the same with another dbname.
std::string with_database(const std::string& url, const std::string& db) {
  auto scheme = url.find("://");
  auto slash = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  auto query = url.find('?');
  std::string base = slash == std::string::npos ? url.substr(0, query) : url.substr(0, slash);
  std::string rest = query == std::string::npos ? "" : url.substr(query);
  return base + "/" + db + rest;
}

}  // namespace

std::optional<std::string> test_database_url() {
  const char* v = std::getenv("APPOINTMENT_RELAY_TEST_DATABASE_URL");
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

bool database_required() {
  const char* v = std::getenv("APPOINTMENT_RELAY_TEST_REQUIRE_DB");
  return v != nullptr && std::string(v) == "1";
}

scratch_database::scratch_database(bool migrated) {
  static std::atomic<int> counter{0};
  auto base = test_database_url();
  if (!base) throw std::runtime_error("APPOINTMENT_RELAY_TEST_DATABASE_URL is not set");
  admin_url_ = *base;
  name_ = "ar_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
  url_ = with_database(*base, name_);
  {
    pqxx::connection c(admin_url_);
    pqxx::nontransaction tx(c);
    tx.exec("DROP DATABASE IF EXISTS " + name_);
    tx.exec("CREATE DATABASE " + name_);
  }
  std::filesystem::path canvas = std::filesystem::path(APPOINTMENT_RELAY_SOURCE_DIR) / "sql" / "canvas";
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(canvas))
    if (e.path().extension() == ".sql") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) exec(read_file(f));
  if (migrated) migrate(url_, std::filesystem::path(APPOINTMENT_RELAY_SOURCE_DIR) / "sql" / "migrations");
}

scratch_database::~scratch_database() {
  try {
    pqxx::connection c(admin_url_);
    pqxx::nontransaction tx(c);
    tx.exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = " + tx.quote(name_) +
            " AND pid <> pg_backend_pid()");
    tx.exec("DROP DATABASE IF EXISTS " + name_);
  } catch (const std::exception&) {
    // Best effort: a database left behind lives only as long as the throwaway cluster.
  }
}

void scratch_database::exec(const std::string& sql) const {
  pqxx::connection c(url_);
  pqxx::nontransaction tx(c);
  tx.exec(sql);
}

std::string scratch_database::query_value(const std::string& sql) const {
  pqxx::connection c(url_);
  pqxx::nontransaction tx(c);
  auto r = tx.exec(sql);
  if (r.empty() || r[0][0].is_null()) return "";
  return r[0][0].c_str();
}

}  // namespace appointment_relay::testing
