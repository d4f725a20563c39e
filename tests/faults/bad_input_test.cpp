#include "support/relay_process.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "fault_support.hpp"
#include "support/test_certs.hpp"

// Bad input to the daemon, each with a clear error and nothing else lost: rows that break the Canvas rules,
// bad configuration files, a database that does not answer, an endpoint that does not resolve, a TLS
// certificate for another host.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;

// Files written by the tests, in a directory removed at exit.
struct temp_dir {
  std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("ar-bad-input-" + std::to_string(::getpid()));
  temp_dir() { std::filesystem::create_directories(path); }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

std::string write_temp(const std::string& name, const std::string& text) {
  static temp_dir dir;
  auto path = dir.path / name;
  std::ofstream(path) << text;
  return path.string();
}

// A local TCP port nobody listens on (bound, then closed).
std::uint16_t closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

TEST(bad_input, should_dead_letter_rows_that_break_the_rules_ignore_the_others_and_lose_nothing) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  test_http_server server(always_status(200));
  auto relay = std::make_unique<relay_process>(relay_env(db, server.url()));
  ASSERT_TRUE(relay->wait_for_log("this instance is active", 30s)) << relay->log();
  stream_options o;
  o.lives = 60;
  canvas_stream stream(db.url(), o);
  stream.start();
  // An appointment with no start time, one with a negative duration: dead letters (rejected).
  auto patient = db.query_value("SELECT canvas_test.create_patient()");
  db.exec("INSERT INTO api_appointment (patient_id, start_time, duration_minutes) VALUES (" + patient +
          ", NULL, 30)");
  db.exec("INSERT INTO api_appointment (patient_id, start_time, duration_minutes) VALUES (" + patient +
          ", now(), -5)");
  // A cancel on a note that carries no appointment; a cancel of an appointment with no patient; an unknown
  // state code on a booked appointment's note: nothing to notify.
  db.exec("WITH n AS (INSERT INTO api_note (patient_id) VALUES (" + patient +
          ") RETURNING id) SELECT canvas_test.note_state((SELECT id FROM n), 'CLD')");
  db.exec(
      "WITH n AS (INSERT INTO api_note (patient_id) VALUES (NULL) RETURNING id), a AS (INSERT INTO "
      "api_appointment (note_id, start_time, duration_minutes) SELECT id, now(), 30 FROM n RETURNING "
      "note_id) "
      "SELECT canvas_test.note_state((SELECT note_id FROM a), 'CLD')");
  db.exec(
      "SELECT canvas_test.note_state(note_id, 'XYZ') FROM api_appointment WHERE note_id IS NOT NULL LIMIT 1");
  stream.join();

  auto expected = stream.expected();
  delivery_check_options check;
  check.signing_secret = fault_secret;
  ASSERT_TRUE(wait_for_deliveries(
      expected, [&] { return server.requests(); }, 60s));
  EXPECT_TRUE(relay->wait_for_log("start_time is missing", 10s));
  EXPECT_TRUE(relay->wait_for_log("duration_minutes is negative", 10s));
  std::this_thread::sleep_for(500ms);  // nothing else may come
  auto problems = check_deliveries(expected, server.requests(), check);
  EXPECT_TRUE(problems.empty()) << describe(problems);

  environment cli = {{"APPOINTMENT_RELAY_DATABASE_URL", db.url()},
                     {"APPOINTMENT_RELAY_ENDPOINT_URL", server.url()}};
  auto status = run_relay_command({"status", "--json"}, cli);
  ASSERT_EQ(status.exit_code, 0) << status.err;
  auto dead = nlohmann::json::parse(status.out)[0]["dead_letters"];
  int total = 0;
  for (const auto& [reason, n] : dead.items()) {
    EXPECT_TRUE(reason.starts_with("rejected: ")) << reason;
    total += n.get<int>();
  }
  EXPECT_EQ(total, 2) << dead.dump();
  EXPECT_TRUE(relay->running());
}

struct config_case {
  const char* name;
  const char* toml;
  const char* message;  // what the error must say (key and file:line)
};

TEST(bad_input, should_reject_a_bad_config_file_with_exit_78_naming_the_key_and_line_without_its_secrets) {
  const std::string secret = "whsec_c3VwZXJzZWNyZXQtdmFsdWUtMTIzNDU2";
  const std::string db = "[database]\nurl = \"postgresql://relay@127.0.0.1/canvas\"\n";
  const config_case cases[] = {
      {"wrong_type.toml", "batch_size = \"many\"\n",
       "wrong_type.toml:3: database.batch_size: expected an integer"},
      {"unknown_key.toml", "batchsize = 5\n", "unknown_key.toml:3: unknown key 'database.batchsize'"},
      {"bad_url.toml", "[endpoints.crm]\nurl = \"ftp://example.com/x\"\nsecrets = [\"SECRET\"]\n",
       "bad_url.toml:4: endpoints.crm.url: unsupported scheme 'ftp'"},
      {"missing_secret_file.toml",
       "[endpoints.crm]\nurl = \"https://example.com/x\"\nsecret_file = \"/nonexistent/s\"\n",
       "missing_secret_file.toml:5: endpoints.crm.secret_file: cannot read '/nonexistent/s'"},
      {"bad_secret.toml", "[endpoints.crm]\nurl = \"https://example.com/x\"\nsecrets = [\"SECRETx\"]\n",
       "bad_secret.toml:5: endpoints.crm.secrets"},
  };
  for (const auto& c : cases) {
    std::string toml = db + c.toml;
    for (auto at = toml.find("SECRET"); at != std::string::npos; at = toml.find("SECRET", at + 1))
      toml.replace(at, 6, secret);
    auto path = write_temp(c.name, toml);
    auto r = run_relay_command({"check-config", "--config", path}, {});
    EXPECT_EQ(r.exit_code, 78) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.name << ": " << r.err;
    EXPECT_EQ((r.out + r.err).find("c3VwZXJzZWNyZXQ"), std::string::npos) << c.name << " printed a secret";
    // `run` refuses the same file the same way, before it starts anything.
    auto run = run_relay_command({"run", "--config", path}, {});
    EXPECT_EQ(run.exit_code, 78) << c.name << ": " << run.err;
  }
}

TEST(bad_input, should_retry_a_database_that_does_not_answer_and_say_so_while_readyz_answers_503) {
  test_http_server server(always_status(200));
  auto port = closed_port();
  relay_process relay(
      {{"APPOINTMENT_RELAY_DATABASE_URL",
        "postgresql://postgres@127.0.0.1:" + std::to_string(port) + "/canvas?connect_timeout=2"},
       {"APPOINTMENT_RELAY_ENDPOINT_URL", server.url()},
       {"APPOINTMENT_RELAY_ADMIN_LISTEN", "127.0.0.1:0"}});
  auto admin = relay.admin_port();
  ASSERT_NE(admin, 0) << relay.log();
  ASSERT_TRUE(relay.wait_for_log("reconnecting", 15s)) << relay.log();
  EXPECT_TRUE(relay.wait_for_log("Connection refused", 0ms)) << "the log says why";
  auto ready = http_get(admin, "/readyz");
  EXPECT_EQ(ready.status, 503) << ready.body;
  EXPECT_EQ(http_get(admin, "/healthz").status, 200);
  EXPECT_TRUE(relay.wait_for_log("reconnecting", 15s, relay.log_size())) << "it keeps trying";
  EXPECT_TRUE(relay.running());
  EXPECT_TRUE(relay.send_signal(SIGTERM));
  EXPECT_EQ(relay.wait_exit(15s), 0);
  EXPECT_EQ(server.request_count(), 0u);
}

TEST(bad_input, should_retry_an_endpoint_whose_host_does_not_resolve_and_say_so) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  relay_process relay(relay_env(db, "http://nonexistent.invalid/hook"));
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();
  db.exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  ASSERT_TRUE(relay.wait_for_log("retry event=", 20s)) << relay.log();
  EXPECT_TRUE(relay.wait_for_log("resolve: ", 0ms)) << relay.log();
  EXPECT_EQ(relay.count_in_log("dead letter"), 0u) << "a resolve failure is retried, not dropped";
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivered_events"), "0");
}

TEST(bad_input, should_not_deliver_to_an_endpoint_whose_certificate_names_another_host) {
  AR_REQUIRE_DATABASE();
  scratch_database db;
  const auto& certs = test_certs();
  test_server_options o;
  o.tls = true;
  o.cert_file = certs.wrong_host_cert_file;
  o.key_file = certs.wrong_host_key_file;
  test_http_server server(always_status(200), o);
  auto config = write_temp("tls.toml", "[endpoints.tls]\nurl = \"" + server.url() + "\"\nsecrets = [\"" +
                                           std::string(fault_secret) + "\"]\nca_file = \"" + certs.ca_file +
                                           "\"\ntimeout = \"2s\"\n");
  relay_process relay({{"APPOINTMENT_RELAY_DATABASE_URL", db.url()},
                       {"APPOINTMENT_RELAY_ADMIN_LISTEN", ""},
                       {"APPOINTMENT_RELAY_RETRY_BASE_DELAY", "50ms"},
                       {"APPOINTMENT_RELAY_RETRY_MAX_DELAY", "500ms"}},
                      {"run", "--config", config});
  ASSERT_TRUE(relay.wait_for_log("this instance is active", 30s)) << relay.log();
  db.exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
  ASSERT_TRUE(relay.wait_for_log("retry event=", 20s)) << relay.log();
  EXPECT_TRUE(relay.wait_for_log("tls handshake", 0ms)) << relay.log();
  EXPECT_EQ(server.request_count(), 0u) << "no request over an unverified connection";
  EXPECT_GT(server.tls_handshake_failures() + server.accepted_connections(), 0);
  EXPECT_EQ(db.query_value("SELECT count(*) FROM appointment_relay.delivered_events"), "0");
}

}  // namespace
}  // namespace appointment_relay::testing
