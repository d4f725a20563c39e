#include "fault_support.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "appointment_relay/store.hpp"
#include "support/database_roles.hpp"

// The database as a clinic deploys it: the roles and grants of the README (sql/privileges.sql, run as written
// but for the names), `migrate` as the owner role, the daemon, `status` and `replay` as the daemon's role,
// Canvas's writes as Canvas's application role, which has no right on the relay's schema.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr const char* insufficient_privilege = "insufficient privilege";

const fs::path sql_dir = fs::path(APPOINTMENT_RELAY_SOURCE_DIR) / "sql";

// Runs sql on a fresh connection as url's role: "ok", "insufficient privilege" (SQLSTATE 42501) or another
// error's message. (libpqxx 6.4 picks the exception class by SQLSTATE but leaves sqlstate() empty.)
std::string outcome_of(const std::string& url, const std::string& sql) {
  try {
    pqxx::connection c(url);
    pqxx::nontransaction tx(c);
    tx.exec(sql);
    return "ok";
  } catch (const pqxx::insufficient_privilege&) {
    return insufficient_privilege;
  } catch (const std::exception& e) {
    return e.what();
  }
}

const char* forged_outbox_row =
    "INSERT INTO appointment_relay.outbox (source_table, operation, row_id, appointment_id, "
    "appointment_external_id, start_time, duration_minutes, entered_in_error, patient_id, patient_key, "
    "ordering_key) VALUES ('api_appointment', 'INSERT', 999999, 999999, "
    "'00000000-0000-4000-8000-000000000000', now(), 30, false, 1, 'ffffffffffffffffffffffffffffffff', "
    "'00000000-0000-4000-8000-000000000000')";

// The SQL lines of a file or block (comments and blank lines dropped, surrounding blanks trimmed).
std::vector<std::string> statement_lines(const std::string& sql) {
  std::vector<std::string> lines;
  std::istringstream in(sql);
  std::string line;
  while (std::getline(in, line)) {
    auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line.compare(first, 2, "--") == 0) continue;
    lines.push_back(line.substr(first, line.find_last_not_of(" \t") + 1 - first));
  }
  return lines;
}

// The ```sql blocks of the README's "Database privileges" section, in order.
std::vector<std::string> readme_privilege_blocks() {
  auto readme = read_text_file(fs::path(APPOINTMENT_RELAY_SOURCE_DIR) / "README.md");
  auto section = readme.find("\n### Database privileges\n");
  if (section == std::string::npos) return {};
  auto end = readme.find("\n## ", section + 1);
  std::vector<std::string> blocks;
  std::istringstream in(readme.substr(section, end == std::string::npos ? std::string::npos : end - section));
  std::string line, block;
  bool inside = false;
  while (std::getline(in, line)) {
    auto first = line.find_first_not_of(' ');
    std::string trimmed = first == std::string::npos ? "" : line.substr(first);
    if (!inside && trimmed == "```sql") {
      inside = true;
      block.clear();
    } else if (inside && trimmed == "```") {
      inside = false;
      blocks.push_back(block);
    } else if (inside) {
      block += line + "\n";
    }
  }
  return blocks;
}

TEST(least_privilege_readme, should_show_exactly_the_statements_of_the_files_the_tests_run) {
  auto blocks = readme_privilege_blocks();
  ASSERT_EQ(blocks.size(), 2u) << "a new installation's and an upgrade's";
  EXPECT_EQ(statement_lines(blocks[0]), statement_lines(read_text_file(sql_dir / "privileges.sql")));
  EXPECT_EQ(statement_lines(blocks[1]), statement_lines(read_text_file(sql_dir / "privileges_upgrade.sql")));
}

class least_privilege : public ::testing::Test {
 protected:
  void SetUp() override {
    AR_REQUIRE_DATABASE();
    roles_ = std::make_unique<test_roles>("ar_lp_");
    db_ = std::make_unique<scratch_database>(false);
  }
  void TearDown() override {
    db_.reset();  // first: the roles own the schema in it
    roles_.reset();
  }

  // A fresh installation done as the README says: sql/privileges.sql as the DBA, then `migrate` as the owner.
  void install_as_the_readme_says() {
    db_->exec(with_names(read_text_file(sql_dir / "privileges.sql"), roles_->names(*db_)));
    create_canvas_application_role(*db_, roles_->app);
    auto r = run_relay_command({"migrate"}, {{"APPOINTMENT_RELAY_DATABASE_URL", owner_url()}});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  }

  std::string owner_url() const { return as_role(db_->url(), roles_->owner); }
  std::string daemon_url() const { return as_role(db_->url(), roles_->daemon); }
  std::string app_url() const { return as_role(db_->url(), roles_->app); }

  environment daemon_env(const std::string& endpoint_url) const {
    auto env = relay_env(*db_, endpoint_url);
    env["APPOINTMENT_RELAY_DATABASE_URL"] = daemon_url();
    return env;
  }

  static std::unique_ptr<relay_process> start_active(const environment& env) {
    auto relay = std::make_unique<relay_process>(env);
    EXPECT_TRUE(relay->wait_for_log("this instance is active", 30s)) << relay->log();
    return relay;
  }

  static void expect_delivered(const std::vector<expected_notification>& expected,
                               const std::function<std::vector<recorded_request>()>& received,
                               delivery_check_options options = {}) {
    options.signing_secret = fault_secret;
    bool all = wait_for_deliveries(expected, received, 120s);
    auto got = received();
    EXPECT_TRUE(all) << count_delivered(expected, got) << " of " << expected.size() << " delivered";
    auto problems = check_deliveries(expected, got, options);
    EXPECT_TRUE(problems.empty()) << describe(problems);
  }

  std::unique_ptr<test_roles> roles_;
  std::unique_ptr<scratch_database> db_;
};

TEST_F(least_privilege,
       should_deliver_canvas_writes_made_as_the_application_role_and_replay_as_the_daemon_role) {
  ASSERT_NO_FATAL_FAILURE(install_as_the_readme_says());
  // Accepted requests, and no-shows refused (dead letters) until the test lets them through.
  std::atomic<bool> refuse{true};
  std::mutex mutex;
  std::set<int> accepted;
  test_http_server server([&](const recorded_request& r, int index) {
    if (refuse && r.body.find("\"no_show\":true") != std::string::npos)
      return response_plan::with_status(400);
    std::lock_guard lock(mutex);
    accepted.insert(index);
    return response_plan::with_status(200);
  });
  auto accepted_requests = [&] {
    auto all = server.requests();
    std::lock_guard lock(mutex);
    std::vector<recorded_request> out;
    for (auto i : accepted)
      if (static_cast<std::size_t>(i) < all.size()) out.push_back(all[static_cast<std::size_t>(i)]);
    return out;
  };
  auto relay = start_active(daemon_env(server.url("/canvas")));

  stream_options o;
  o.lives = stream_lives(150);
  o.seed = 16;
  canvas_stream stream(app_url(), o);
  ASSERT_NO_THROW(stream.play()) << "Canvas's own writes, as its application role";
  auto expected = stream.expected();
  std::vector<expected_notification> first, no_shows;
  for (const auto& e : expected) (e.kind == "no_show" ? no_shows : first).push_back(e);
  ASSERT_FALSE(no_shows.empty()) << stream_summary(expected);
  delivery_check_options unordered;
  unordered.require_order = false;  // a replayed dead letter comes after its appointment's later events
  expect_delivered(first, accepted_requests, unordered);

  environment cli = {{"APPOINTMENT_RELAY_DATABASE_URL", daemon_url()},
                     {"APPOINTMENT_RELAY_ENDPOINT_URL", server.url("/canvas")}};
  nlohmann::json status;
  for (int i = 0; i < 100; ++i) {
    auto r = run_relay_command({"status", "--json"}, cli);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    status = nlohmann::json::parse(r.out);
    if (status[0]["dead_letters"].value("http 400", 0) == static_cast<int>(no_shows.size())) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(status[0]["dead_letters"].value("http 400", 0), static_cast<int>(no_shows.size()))
      << status.dump();

  refuse = false;
  auto replay = run_relay_command({"replay", "--all"}, cli);
  EXPECT_EQ(replay.exit_code, 0) << replay.err;
  EXPECT_EQ(replay.out, std::to_string(no_shows.size()) + " dead letters back to pending\n");
  expect_delivered(expected, accepted_requests, unordered);

  // pause and resume, as the daemon's role too.
  auto paused = run_relay_command({"pause", "--endpoint", "default", "--reason", "least privilege"}, cli);
  EXPECT_EQ(paused.exit_code, 0) << paused.err;
  auto resumed = run_relay_command({"resume", "--endpoint", "default"}, cli);
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
}

TEST_F(least_privilege, should_refuse_outbox_rows_forged_with_canvas_application_credentials) {
  ASSERT_NO_FATAL_FAILURE(install_as_the_readme_says());
  EXPECT_EQ(outcome_of(app_url(), forged_outbox_row), insufficient_privilege);
  EXPECT_EQ(outcome_of(app_url(), "UPDATE appointment_relay.outbox SET patient_key = 'x'"),
            insufficient_privilege);
  EXPECT_EQ(outcome_of(app_url(), "SELECT count(*) FROM appointment_relay.outbox"), insufficient_privilege);
  // Nor through the trigger functions, which run with the owner's rights.
  EXPECT_EQ(outcome_of(app_url(), "SELECT appointment_relay.capture_appointment()"), insufficient_privilege);
  // The daemon reads the outbox but does not write it, and reads nothing of Canvas's.
  EXPECT_EQ(outcome_of(daemon_url(), forged_outbox_row), insufficient_privilege);
  EXPECT_EQ(outcome_of(daemon_url(), "SELECT count(*) FROM public.api_patient"), insufficient_privilege);
  // Nor a partition, nor the kept dead letters (which replay sends), nor the default partition: the rights
  // checked are the outbox's only when it is named, so each partition is its owner's alone.
  const auto partition = db_->query_value(
      "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
      " WHERE i.inhparent = 'appointment_relay.outbox'::regclass ORDER BY c.relname DESC LIMIT 1");
  for (const std::string& table :
       {"appointment_relay." + partition, std::string("appointment_relay.outbox_default"),
        std::string("appointment_relay.outbox_kept")}) {
    std::string forged = forged_outbox_row;
    forged.replace(forged.find("appointment_relay.outbox"), std::string("appointment_relay.outbox").size(),
                   table);
    EXPECT_EQ(outcome_of(daemon_url(), forged), insufficient_privilege) << table;
    EXPECT_EQ(outcome_of(app_url(), forged), insufficient_privilege) << table;
  }
  // The partition maintenance (migration 0004) is the daemon's, not Canvas's.
  const char* maintenance[] = {"SELECT appointment_relay.add_partitions(100000, 3)",
                               "SELECT appointment_relay.drop_partition(ARRAY['x'], interval '7 days')"};
  for (const char* call : maintenance) {
    EXPECT_EQ(outcome_of(app_url(), call), insufficient_privilege) << call;
    EXPECT_EQ(outcome_of(daemon_url(), call), "ok") << call;
  }
  EXPECT_EQ(db_->query_value("SELECT count(*) FROM appointment_relay.outbox"), "0");
}

// An installation set up by the README before migration 0003: Canvas's role held USAGE and INSERT on the
// outbox (and SELECT, which bookings needed). `migrate` takes the outbox's INSERT from it; the README's
// upgrade statements (sql/privileges_upgrade.sql) take the rest.
TEST_F(least_privilege,
       should_stop_canvas_credentials_forging_outbox_rows_once_an_old_installation_upgrades) {
  const auto& r = *roles_;
  db_->exec("CREATE ROLE " + r.owner + " LOGIN; GRANT CREATE ON DATABASE " + db_->name() + " TO " + r.owner +
            "; GRANT TRIGGER ON public.api_appointment, public.api_notestatechangeevent TO " + r.owner +
            "; GRANT SELECT ON public.api_patient, public.api_appointment TO " + r.owner + ";");
  create_canvas_application_role(*db_, r.app);
  {
    // Only the migrations of that time.
    auto old_dir = fs::temp_directory_path() / ("ar_lp_migrations_" + std::to_string(::getpid()));
    fs::remove_all(old_dir);
    fs::create_directories(old_dir);
    for (const auto& e : fs::directory_iterator(sql_dir / "migrations"))
      if (e.path().filename().string() < "0003") fs::copy_file(e.path(), old_dir / e.path().filename());
    ASSERT_EQ(migrate(owner_url(), old_dir), (std::vector<int>{1, 2}));
    fs::remove_all(old_dir);
  }
  db_->exec("CREATE ROLE " + r.daemon + " LOGIN; GRANT USAGE ON SCHEMA appointment_relay TO " + r.daemon +
            "; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA appointment_relay TO " +
            r.daemon + "; GRANT USAGE ON SCHEMA appointment_relay TO " + r.app +
            "; GRANT INSERT, SELECT ON appointment_relay.outbox TO " + r.app + ";");
  const std::string book =
      "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now() + interval '1 day', 30)";
  ASSERT_EQ(outcome_of(app_url(), book), "ok");
  ASSERT_EQ(outcome_of(app_url(), forged_outbox_row), "ok") << "the hole this test is about";

  auto m = run_relay_command({"migrate"}, {{"APPOINTMENT_RELAY_DATABASE_URL", owner_url()}});
  ASSERT_EQ(m.exit_code, 0) << m.out << m.err;
  EXPECT_EQ(outcome_of(app_url(), forged_outbox_row), insufficient_privilege);
  EXPECT_EQ(outcome_of(daemon_url(), forged_outbox_row), insufficient_privilege);
  EXPECT_EQ(outcome_of(app_url(), book), "ok");

  db_->exec(with_names(read_text_file(sql_dir / "privileges_upgrade.sql"), r.names(*db_)));
  EXPECT_EQ(db_->query_value("SELECT has_schema_privilege('" + r.app + "', 'appointment_relay', 'USAGE')"),
            "f");
  EXPECT_EQ(db_->query_value("SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a WHERE c.relnamespace = "
                             "'appointment_relay'::regnamespace AND a.grantee = '" +
                             r.app + "'::regrole"),
            "0");
  EXPECT_EQ(outcome_of(app_url(), book), "ok") << "Canvas still books";

  // And the daemon, with its old grants, delivers what Canvas's role writes after the upgrade (the rows of
  // before, the forged one among them, are out of the way).
  db_->exec("DELETE FROM appointment_relay.outbox");
  test_http_server server(always_status(200));
  auto relay = start_active(daemon_env(server.url("/canvas")));
  stream_options o;
  o.lives = 20;
  o.seed = 3;
  canvas_stream stream(app_url(), o);
  ASSERT_NO_THROW(stream.play());
  auto expected = stream.expected();
  expect_delivered(expected, [&] { return server.requests(); });
}

}  // namespace
}  // namespace appointment_relay::testing
