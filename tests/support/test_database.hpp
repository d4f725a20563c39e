#pragma once
// Scratch databases on the test server for integration tests. The server comes from
// APPOINTMENT_RELAY_TEST_DATABASE_URL (scripts/test.sh sets it). When it is unset a test skips, unless
// APPOINTMENT_RELAY_TEST_REQUIRE_DB=1 (also set by scripts/test.sh): then a missing database fails.
#include <optional>
#include <string>

#include <gtest/gtest.h>

namespace appointment_relay::testing {

// The server's URL, or empty when not configured.
std::optional<std::string> test_database_url();

// A new, empty database with a unique name, with the Canvas test schema (sql/canvas/*.sql) loaded and,
// when migrated is true, the relay's migrations applied. Dropped (connections terminated) on destruction.
class scratch_database {
 public:
  explicit scratch_database(bool migrated = true);
  ~scratch_database();
  scratch_database(const scratch_database&) = delete;
  scratch_database& operator=(const scratch_database&) = delete;

  const std::string& url() const { return url_; }
  const std::string& name() const { return name_; }
  // Runs SQL (several statements allowed) on a fresh connection; throws on error.
  void exec(const std::string& sql) const;
  // The first column of the first row of a query, as text ("" for NULL).
  std::string query_value(const std::string& sql) const;

 private:
  std::string name_;
  std::string url_;
  std::string admin_url_;
};

}  // namespace appointment_relay::testing

// In a TEST body or SetUp: skip (or fail under scripts/test.sh) when no test database is configured.
#define AR_REQUIRE_DATABASE()                                                                               \
  do {                                                                                                      \
    if (!::appointment_relay::testing::test_database_url()) {                                               \
      if (::appointment_relay::testing::database_required())                                                \
        FAIL() << "APPOINTMENT_RELAY_TEST_DATABASE_URL is not set but APPOINTMENT_RELAY_TEST_REQUIRE_DB=1"; \
      GTEST_SKIP() << "APPOINTMENT_RELAY_TEST_DATABASE_URL is not set";                                     \
    }                                                                                                       \
  } while (false)

namespace appointment_relay::testing {
bool database_required();
}
