#include "appointment_relay/config.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <toml++/toml.h>

namespace appointment_relay {
namespace {

using namespace std::chrono_literals;
using env_map = std::map<std::string, std::string>;

constexpr const char* secret_a = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
constexpr const char* secret_b = "whsec_c2Vjb25kIHNlY3JldCBmb3Igcm90YXRpb24=";

// A fresh directory per test, removed afterwards.
class temp_dir {
 public:
  temp_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ar-config-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path write(const std::string& name, const std::string& content) const {
    auto p = path_ / name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

const std::string minimal_endpoint =
    std::string("[endpoints.crm]\nurl = \"https://crm.example.com/hooks\"\n") + "secrets = [\"" + secret_a +
    "\"]\n";

std::string error_of(const std::optional<std::filesystem::path>& file, const env_map& env) {
  try {
    load_config(file, env);
  } catch (const config_error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(config, should_read_every_key_from_the_file) {
  temp_dir dir;
  auto file = dir.write("relay.toml", std::string(R"(
[database]
url = "postgresql://relay@db.internal/canvas"
poll_interval = "500ms"
retention = "3d"
batch_size = 250
[retry]
base_delay = "2s"
max_delay = "10m"
max_age = "12h"
max_attempts = 20
[admin]
listen = "[::1]:9999"
[log]
format = "json"
level = "debug"
[relay]
max_pending_per_endpoint = 500
shutdown_timeout = "30s"
watchdog_interval = 15
[endpoints.crm-eu]
url = "https://crm.example.com:8443/hooks/canvas?x=1"
secrets = [")") + secret_a + "\", \"" + secret_b +
                                          R"("]
kinds = ["created", "no_show"]
max_in_flight = 4
timeout = "1m"
ca_file = "/etc/ca.pem"
client_cert_file = "/etc/c.pem"
client_key_file = "/etc/k.pem"
verify_peer = false
)");
  auto cfg = load_config(file, {});
  EXPECT_EQ(cfg.database.url, "postgresql://relay@db.internal/canvas");
  EXPECT_EQ(cfg.database.poll_interval, 500ms);
  EXPECT_EQ(cfg.database.retention, std::chrono::hours(72));
  EXPECT_EQ(cfg.database.batch_size, 250u);
  EXPECT_EQ(cfg.retry.base_delay, 2s);
  EXPECT_EQ(cfg.retry.max_delay, 10min);
  EXPECT_EQ(cfg.retry.max_age, 12h);
  EXPECT_EQ(cfg.retry.max_attempts, 20);
  EXPECT_EQ(cfg.admin.listen, "[::1]:9999");
  EXPECT_EQ(cfg.log.format, "json");
  EXPECT_EQ(cfg.log.level, "debug");
  EXPECT_EQ(cfg.relay.max_pending_per_endpoint, 500u);
  EXPECT_EQ(cfg.relay.shutdown_timeout, 30s);
  EXPECT_EQ(cfg.relay.watchdog_interval, 15s);
  ASSERT_EQ(cfg.endpoints.size(), 1u);
  const auto& ep = cfg.endpoints[0];
  EXPECT_EQ(ep.name, "crm-eu");
  EXPECT_TRUE(ep.target.tls);
  EXPECT_EQ(ep.target.host, "crm.example.com");
  EXPECT_EQ(ep.target.port, 8443);
  EXPECT_EQ(ep.target.target, "/hooks/canvas?x=1");
  EXPECT_EQ(ep.secrets, (std::vector<std::string>{secret_a, secret_b}));
  EXPECT_EQ(ep.kinds,
            (std::vector<notification_kind>{notification_kind::created, notification_kind::no_show}));
  EXPECT_EQ(ep.max_in_flight, 4);
  EXPECT_EQ(ep.timeout, 1min);
  EXPECT_EQ(ep.tls.ca_file, "/etc/ca.pem");
  EXPECT_EQ(ep.tls.client_cert_file, "/etc/c.pem");
  EXPECT_EQ(ep.tls.client_key_file, "/etc/k.pem");
  EXPECT_FALSE(ep.tls.verify_peer);
}

TEST(config, should_apply_the_defaults_for_absent_keys) {
  temp_dir dir;
  auto file = dir.write("relay.toml", "[database]\nurl = \"host=db dbname=canvas\"\n" + minimal_endpoint);
  auto cfg = load_config(file, {});
  const config defaults;
  EXPECT_EQ(cfg.database.poll_interval, 5s);
  EXPECT_EQ(cfg.database.retention, std::chrono::hours(24 * 7));
  EXPECT_EQ(cfg.database.batch_size, 1000u);
  EXPECT_EQ(cfg.retry.base_delay, 1s);
  EXPECT_EQ(cfg.retry.max_delay, 5min);
  EXPECT_EQ(cfg.retry.max_age, 24h);
  EXPECT_EQ(cfg.retry.max_attempts, 0);
  EXPECT_EQ(cfg.admin.listen, "127.0.0.1:9187");
  EXPECT_EQ(cfg.log.format, "text");
  EXPECT_EQ(cfg.log.level, "info");
  EXPECT_EQ(cfg.relay.max_pending_per_endpoint, 2000u);
  EXPECT_EQ(cfg.relay.shutdown_timeout, 10s);
  EXPECT_EQ(cfg.relay.watchdog_interval, 0s);
  ASSERT_EQ(cfg.endpoints.size(), 1u);
  EXPECT_EQ(cfg.endpoints[0].kinds.size(), 6u);
  EXPECT_EQ(cfg.endpoints[0].max_in_flight, 16);
  EXPECT_EQ(cfg.endpoints[0].timeout, 10s);
  EXPECT_TRUE(cfg.endpoints[0].tls.verify_peer);
  EXPECT_TRUE(cfg.endpoints[0].tls.ca_file.empty());
}

TEST(config, should_accept_the_sample_config_shipped_for_operators) {
  auto cfg =
      load_config(std::filesystem::path(APPOINTMENT_RELAY_SOURCE_DIR) / "config/appointment-relay.toml", {});
  EXPECT_EQ(cfg.database.url, "postgresql://relay@localhost/canvas");
  ASSERT_EQ(cfg.endpoints.size(), 1u);
  EXPECT_EQ(cfg.endpoints[0].name, "crm");
  // The sample documents the defaults: loading it must give exactly them.
  const config defaults;
  EXPECT_EQ(cfg.database.poll_interval, defaults.database.poll_interval);
  EXPECT_EQ(cfg.retry.max_age, defaults.retry.max_age);
  EXPECT_EQ(cfg.admin.listen, defaults.admin.listen);
  EXPECT_EQ(cfg.endpoints[0].kinds.size(), 6u);
}

TEST(config, should_read_durations_in_every_documented_form) {
  struct row {
    std::string text;
    std::chrono::milliseconds expected;
  };
  for (const auto& r : std::vector<row>{{"\"500ms\"", 500ms},
                                        {"\"5s\"", 5s},
                                        {"\"10m\"", 10min},
                                        {"\"24h\"", 24h},
                                        {"\"7d\"", std::chrono::hours(168)},
                                        {"\"1h30m\"", 90min},
                                        {"30", 30s}}) {
    temp_dir dir;
    auto file = dir.write("relay.toml", "[database]\nurl = \"x=y\"\npoll_interval = " + r.text + "\n");
    EXPECT_EQ(load_config(file, {}).database.poll_interval, r.expected) << r.text;
  }
}

struct error_case {
  std::string name;
  std::string toml;                   // after a valid [database] table
  std::vector<std::string> expected;  // substrings of the message
};

TEST(config, should_reject_a_bad_file_naming_the_file_line_and_key) {
  const std::string db = "[database]\nurl = \"postgresql://relay@db/canvas\"\n";  // lines 1-2
  const std::vector<error_case> cases{
      {"unknown section", "[databse]\nurl = \"x\"\n", {"relay.toml:4: unknown key 'databse.url'"}},
      {"unknown key", "[retry]\nbase_dealy = \"1s\"\n", {"relay.toml:4: unknown key 'retry.base_dealy'"}},
      {"unknown endpoint key",
       minimal_endpoint + "colour = \"red\"\n",
       {"relay.toml:6: unknown key 'endpoints.crm.colour'"}},
      {"wrong type",
       "[relay]\nmax_pending_per_endpoint = \"10\"\n",
       {"relay.toml:4: relay.max_pending_per_endpoint: expected an integer, got a string"}},
      {"wrong type bool",
       minimal_endpoint + "verify_peer = \"no\"\n",
       {"relay.toml:6: endpoints.crm.verify_peer: expected true or false"}},
      {"bad url", "[endpoints.crm]\nurl = \"ftp://x/\"\n", {"relay.toml:4: endpoints.crm.url:", "ftp://x/"}},
      {"userinfo url", "[endpoints.crm]\nurl = \"https://u:p@x/\"\n", {"relay.toml:4: endpoints.crm.url:"}},
      {"bad duration",
       "[retry]\nmax_age = \"5 parsecs\"\n",
       {"relay.toml:4: retry.max_age: bad duration '5 parsecs'"}},
      {"negative duration",
       "[retry]\nbase_delay = \"-5s\"\n",
       {"relay.toml:4: retry.base_delay: bad duration"}},
      {"duration unit missing", "[retry]\nbase_delay = \"5s3\"\n", {"retry.base_delay: bad duration '5s3'"}},
      {"duration empty", "[retry]\nbase_delay = \"\"\n", {"retry.base_delay: bad duration"}},
      {"duration float", "[retry]\nbase_delay = 1.5\n", {"retry.base_delay: expected a duration", "a float"}},
      {"fractional seconds",
       "[relay]\nwatchdog_interval = \"1500ms\"\n",
       {"relay.toml:4: relay.watchdog_interval: must be whole seconds"}},
      {"zero poll interval",
       "[retry]\nbase_delay = \"0s\"\n",
       {"relay.toml:4: retry.base_delay: must be at least 1ms"}},
      {"unknown kind",
       minimal_endpoint + "kinds = [\"created\", \"deleted\"]\n",
       {"relay.toml:6: endpoints.crm.kinds: unknown kind 'deleted'"}},
      {"empty kinds",
       minimal_endpoint + "kinds = []\n",
       {"endpoints.crm.kinds: must list at least one kind"}},
      {"kind twice", minimal_endpoint + "kinds = [\"created\", \"created\"]\n", {"listed twice"}},
      {"endpoint name",
       "[endpoints.CRM]\nurl = \"https://x/\"\n",
       {"relay.toml:3: endpoints.CRM: endpoint names are made of a-z, 0-9"}},
      {"endpoint name with space",
       "[endpoints.\"c r m\"]\nurl = \"https://x/\"\n",
       {"endpoints.c r m: endpoint names"}},
      {"bad level",
       "[log]\nlevel = \"verbose\"\n",
       {"relay.toml:4: log.level: expected one of", "'verbose'"}},
      {"bad format",
       "[log]\nformat = \"xml\"\n",
       {"relay.toml:4: log.format: expected \"text\" or \"json\""}},
      {"max_in_flight zero",
       minimal_endpoint + "max_in_flight = 0\n",
       {"relay.toml:6: endpoints.crm.max_in_flight: must be between 1 and 1024, got 0"}},
      {"max_in_flight too big",
       minimal_endpoint + "max_in_flight = 1025\n",
       {"must be between 1 and 1024, got 1025"}},
      {"syntax error", "[retry\nbase_delay = \"1s\"\n", {"relay.toml:3:", "TOML syntax error"}},
      {"endpoint without url",
       "[endpoints.crm]\nsecrets = [\"" + std::string(secret_a) + "\"]\n",
       {"relay.toml:3: endpoints.crm.url: missing"}},
      {"secrets and secret_file",
       minimal_endpoint + "secret_file = \"/run/x\"\n",
       {"either secrets or secret_file"}},
      {"unreadable secret_file",
       "[endpoints.crm]\nurl = \"https://x/\"\nsecret_file = \"/nonexistent/crm\"\n",
       {"relay.toml:5: endpoints.crm.secret_file: cannot read '/nonexistent/crm'"}},
      {"max_delay below base_delay",
       "[retry]\nbase_delay = \"10s\"\nmax_delay = \"5s\"\n",
       {"retry.max_delay (5s) is below retry.base_delay (10s)"}},
      {"bad listen", "[admin]\nlisten = \"localhost\"\n", {"relay.toml:4: admin.listen: expected host:port"}},
      {"endpoint not a table", "[endpoints]\ncrm = 5\n", {"relay.toml:4: endpoints.crm: expected a table"}},
      {"cert without key",
       minimal_endpoint + "client_cert_file = \"/c.pem\"\n",
       {"client_cert_file and client_key_file go together"}},
  };
  for (const auto& c : cases) {
    temp_dir dir;
    auto file = dir.write("relay.toml", db + c.toml);
    auto message = error_of(file, {});
    for (const auto& e : c.expected)
      EXPECT_NE(message.find(e), std::string::npos) << c.name << ": " << message;
  }
}

TEST(config, should_reject_a_malformed_secret_without_showing_it) {
  for (std::string bad : {"xxxxxxMfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not*base64!!", "whsec_abc",
                          "whsec_", "whsec_ab=c", "whsec_a==="}) {
    temp_dir dir;
    auto file = dir.write("relay.toml",
                          "[database]\nurl = \"x=y\"\n[endpoints.crm]\nurl = \"https://x/\"\nsecrets = [\"" +
                              std::string(secret_a) + "\", \"" + bad + "\"]\n");
    auto message = error_of(file, {});
    EXPECT_NE(
        message.find("relay.toml:5: endpoints.crm.secrets: secret 2 is not \"whsec_\" followed by base64"),
        std::string::npos)
        << message;
    if (bad != "whsec_") {
      EXPECT_EQ(message.find(bad.substr(6)), std::string::npos) << message;
    }
  }
}

TEST(config, should_say_which_file_is_missing) {
  temp_dir dir;
  auto message = error_of(dir.path() / "absent.toml", {});
  EXPECT_NE(message.find("absent.toml: cannot read the configuration file: No such file or directory"),
            std::string::npos)
      << message;
}

TEST(config, should_require_a_database_url) {
  temp_dir dir;
  auto message = error_of(dir.write("relay.toml", minimal_endpoint), {});
  EXPECT_NE(message.find("database.url: missing"), std::string::npos) << message;
  EXPECT_NE(message.find("APPOINTMENT_RELAY_DATABASE_URL"), std::string::npos) << message;
}

TEST(config, should_let_the_environment_override_the_file) {
  temp_dir dir;
  auto file = dir.write("relay.toml",
                        "[database]\nurl = \"postgresql://file@db/canvas\"\npoll_interval = \"9s\"\n"
                        "[log]\nlevel = \"warn\"\n[endpoints.crm-eu]\nurl = \"https://file.example/\"\n"
                        "secrets = [\"" +
                            std::string(secret_a) + "\"]\nmax_in_flight = 8\n");
  env_map env{{"APPOINTMENT_RELAY_DATABASE_URL", "postgresql://env@db/canvas"},
              {"APPOINTMENT_RELAY_DATABASE_POLL_INTERVAL", "250ms"},
              {"APPOINTMENT_RELAY_RETRY_MAX_AGE", "2h"},
              {"APPOINTMENT_RELAY_RETRY_MAX_ATTEMPTS", "7"},
              {"APPOINTMENT_RELAY_LOG_LEVEL", "error"},
              {"APPOINTMENT_RELAY_LOG_FORMAT", "json"},
              {"APPOINTMENT_RELAY_ADMIN_LISTEN", ""},
              {"APPOINTMENT_RELAY_RELAY_WATCHDOG_INTERVAL", "20s"},
              {"APPOINTMENT_RELAY_ENDPOINTS_CRM_EU_MAX_IN_FLIGHT", "2"},
              {"APPOINTMENT_RELAY_ENDPOINTS_CRM_EU_KINDS", "cancelled, no_show"},
              {"APPOINTMENT_RELAY_ENDPOINTS_CRM_EU_VERIFY_PEER", "false"},
              {"APPOINTMENT_RELAY_ENDPOINTS_CRM_EU_SECRETS", std::string(secret_b) + "," + secret_a},
              {"APPOINTMENT_RELAY_ENDPOINTS_CRM_EU_CLIENT_CERT_FILE", "/c.pem"},
              {"APPOINTMENT_RELAY_ENDPOINTS_CRM_EU_CLIENT_KEY_FILE", "/k.pem"},
              {"APPOINTMENT_RELAY_TEST_DATABASE_URL", "ignored"},
              {"APPOINTMENT_RELAY_SQL_DIR", "/ignored"}};
  auto cfg = load_config(file, env);
  EXPECT_EQ(cfg.database.url, "postgresql://env@db/canvas");
  EXPECT_EQ(cfg.database.poll_interval, 250ms);
  EXPECT_EQ(cfg.retry.max_age, 2h);
  EXPECT_EQ(cfg.retry.max_attempts, 7);
  EXPECT_EQ(cfg.log.level, "error");
  EXPECT_EQ(cfg.log.format, "json");
  EXPECT_EQ(cfg.admin.listen, "");
  EXPECT_EQ(cfg.relay.watchdog_interval, 20s);
  ASSERT_EQ(cfg.endpoints.size(), 1u);
  const auto& ep = cfg.endpoints[0];
  EXPECT_EQ(ep.name, "crm-eu");
  EXPECT_EQ(ep.target.host, "file.example");
  EXPECT_EQ(ep.max_in_flight, 2);
  EXPECT_EQ(ep.kinds,
            (std::vector<notification_kind>{notification_kind::cancelled, notification_kind::no_show}));
  EXPECT_FALSE(ep.tls.verify_peer);
  EXPECT_EQ(ep.secrets, (std::vector<std::string>{secret_b, secret_a}));
  EXPECT_EQ(ep.tls.client_cert_file, "/c.pem");
  EXPECT_EQ(ep.tls.client_key_file, "/k.pem");
}

TEST(config, should_work_from_short_environment_names_alone) {
  temp_dir dir;
  auto token = dir.write("admin-token", "0123456789abcdef-admin\n");
  env_map env{{"APPOINTMENT_RELAY_DATABASE_URL", "host=db dbname=canvas"},
              {"APPOINTMENT_RELAY_ADMIN_TOKEN_FILE", token.string()},
              {"APPOINTMENT_RELAY_ENDPOINT_URL", "http://127.0.0.1:8080/hook"},
              {"APPOINTMENT_RELAY_SIGNING_SECRET", std::string(secret_a) + " " + secret_b},
              {"APPOINTMENT_RELAY_ADMIN_LISTEN", "0.0.0.0:9000"},
              {"APPOINTMENT_RELAY_LOG_FORMAT", "json"},
              {"APPOINTMENT_RELAY_LOG_LEVEL", "trace"}};
  auto cfg = load_config(std::nullopt, env);
  EXPECT_EQ(cfg.database.url, "host=db dbname=canvas");
  EXPECT_EQ(cfg.admin.listen, "0.0.0.0:9000");
  EXPECT_EQ(cfg.admin.token, "0123456789abcdef-admin");
  EXPECT_EQ(cfg.log.format, "json");
  EXPECT_EQ(cfg.log.level, "trace");
  ASSERT_EQ(cfg.endpoints.size(), 1u);
  EXPECT_EQ(cfg.endpoints[0].name, "default");
  EXPECT_FALSE(cfg.endpoints[0].target.tls);
  EXPECT_EQ(cfg.endpoints[0].target.port, 8080);
  EXPECT_EQ(cfg.endpoints[0].secrets, (std::vector<std::string>{secret_a, secret_b}));
  EXPECT_EQ(cfg.endpoints[0].kinds.size(), 6u);
}

TEST(config, should_let_the_short_endpoint_url_override_the_default_endpoint_of_the_file) {
  temp_dir dir;
  auto file = dir.write("relay.toml",
                        "[database]\nurl = \"x=y\"\n[endpoints.default]\nurl = \"https://file/\"\n"
                        "kinds = [\"created\"]\nsecrets = [\"" +
                            std::string(secret_a) + "\"]\n");
  auto cfg = load_config(file, {{"APPOINTMENT_RELAY_ENDPOINT_URL", "https://env.example/h"}});
  ASSERT_EQ(cfg.endpoints.size(), 1u);
  EXPECT_EQ(cfg.endpoints[0].target.host, "env.example");
  EXPECT_EQ(cfg.endpoints[0].secrets, std::vector<std::string>{secret_a});
  EXPECT_EQ(cfg.endpoints[0].kinds, std::vector<notification_kind>{notification_kind::created});
}

TEST(config, should_allow_an_endpoint_without_a_secret_for_unsigned_webhooks) {
  auto cfg = load_config(std::nullopt, {{"APPOINTMENT_RELAY_DATABASE_URL", "x=y"},
                                        {"APPOINTMENT_RELAY_ENDPOINT_URL", "http://127.0.0.1:8080/hook"}});
  ASSERT_EQ(cfg.endpoints.size(), 1u);
  EXPECT_TRUE(cfg.endpoints[0].secrets.empty());
}

TEST(config, should_make_an_endpoint_from_the_environment) {
  auto cfg = load_config(std::nullopt, {{"APPOINTMENT_RELAY_DATABASE_URL", "x=y"},
                                        {"APPOINTMENT_RELAY_ENDPOINTS_BILLING_URL", "https://billing/"},
                                        {"APPOINTMENT_RELAY_ENDPOINTS_BILLING_SECRETS", secret_a},
                                        {"APPOINTMENT_RELAY_ENDPOINTS_BILLING_TIMEOUT", "3s"}});
  ASSERT_EQ(cfg.endpoints.size(), 1u);
  EXPECT_EQ(cfg.endpoints[0].name, "billing");
  EXPECT_EQ(cfg.endpoints[0].timeout, 3s);
}

TEST(config, should_read_secrets_from_file_variables) {
  temp_dir dir;
  auto db_file = dir.write("db", "postgresql://relay:s3cret@db/canvas\n");
  auto sig_file = dir.write("sig", std::string(secret_a) + "\n");
  auto crm_file = dir.write("crm", std::string(secret_a) + "\n" + secret_b + "\n");
  auto toml_secret = dir.write("toml-secret", std::string(secret_b) + "\n");
  auto file = dir.write("relay.toml",
                        "[endpoints.crm]\nurl = \"https://crm/\"\n[endpoints.erp]\nurl = \"https://erp/\"\n"
                        "secret_file = \"" +
                            toml_secret.string() + "\"\n");
  auto cfg = load_config(file, {{"APPOINTMENT_RELAY_DATABASE_URL_FILE", db_file.string()},
                                {"APPOINTMENT_RELAY_ENDPOINT_URL", "https://default/"},
                                {"APPOINTMENT_RELAY_SIGNING_SECRET_FILE", sig_file.string()},
                                {"APPOINTMENT_RELAY_ENDPOINTS_CRM_SECRETS_FILE", crm_file.string()}});
  EXPECT_EQ(cfg.database.url, "postgresql://relay:s3cret@db/canvas");
  ASSERT_EQ(cfg.endpoints.size(), 3u);
  EXPECT_EQ(cfg.endpoints[0].name, "crm");
  EXPECT_EQ(cfg.endpoints[0].secrets, (std::vector<std::string>{secret_a, secret_b}));
  EXPECT_EQ(cfg.endpoints[1].name, "erp");
  EXPECT_EQ(cfg.endpoints[1].secrets, std::vector<std::string>{secret_b});
  EXPECT_EQ(cfg.endpoints[2].name, "default");
  EXPECT_EQ(cfg.endpoints[2].secrets, std::vector<std::string>{secret_a});
}

TEST(config, should_reject_bad_environment_variables_naming_them) {
  temp_dir dir;
  const env_map base{{"APPOINTMENT_RELAY_DATABASE_URL", "x=y"}};
  struct row {
    env_map extra;
    std::vector<std::string> expected;
  };
  const std::vector<row> rows{
      {{{"APPOINTMENT_RELAY_DATABASE_POLL_INTERVAL", "soon"}},
       {"APPOINTMENT_RELAY_DATABASE_POLL_INTERVAL: database.poll_interval: bad duration 'soon'"}},
      {{{"APPOINTMENT_RELAY_RETRY_MAX_ATTEMPTS", "many"}},
       {"APPOINTMENT_RELAY_RETRY_MAX_ATTEMPTS: retry.max_attempts: expected an integer, got 'many'"}},
      {{{"APPOINTMENT_RELAY_LOG_LEVEL", "loud"}},
       {"APPOINTMENT_RELAY_LOG_LEVEL: log.level: expected one of"}},
      {{{"APPOINTMENT_RELAY_DATABSE_URL", "x"}},
       {"APPOINTMENT_RELAY_DATABSE_URL: unknown environment variable"}},
      {{{"APPOINTMENT_RELAY_CONFIG", "/x"}}, {"APPOINTMENT_RELAY_CONFIG: unknown environment variable"}},
      {{{"APPOINTMENT_RELAY_ENDPOINTS_CRM_COLOUR", "red"}},
       {"APPOINTMENT_RELAY_ENDPOINTS_CRM_COLOUR: unknown environment variable"}},
      {{{"APPOINTMENT_RELAY_ENDPOINT_URL", "gopher://x/"}, {"APPOINTMENT_RELAY_SIGNING_SECRET", secret_a}},
       {"APPOINTMENT_RELAY_ENDPOINT_URL: endpoints.default.url:", "gopher://x/"}},
      {{{"APPOINTMENT_RELAY_ENDPOINT_URL", "https://x/"}, {"APPOINTMENT_RELAY_SIGNING_SECRET", "whsec_???"}},
       {"APPOINTMENT_RELAY_SIGNING_SECRET: endpoints.default.secrets: secret 1 is not"}},
      {{{"APPOINTMENT_RELAY_ENDPOINTS_CRM_MAX_IN_FLIGHT", "2000"}},
       {"APPOINTMENT_RELAY_ENDPOINTS_CRM_MAX_IN_FLIGHT: endpoints.crm.max_in_flight: must be between 1 and "
        "1024"}},
      {{{"APPOINTMENT_RELAY_ENDPOINTS_CRM_KINDS", "created,moved"}},
       {"APPOINTMENT_RELAY_ENDPOINTS_CRM_KINDS: endpoints.crm.kinds: unknown kind 'moved'"}},
      {{{"APPOINTMENT_RELAY_ENDPOINTS_CRM_VERIFY_PEER", "maybe"}},
       {"APPOINTMENT_RELAY_ENDPOINTS_CRM_VERIFY_PEER: endpoints.crm.verify_peer: expected true or false"}},
      {{{"APPOINTMENT_RELAY_SIGNING_SECRET_FILE", "/nonexistent/sig"}},
       {"APPOINTMENT_RELAY_SIGNING_SECRET_FILE: cannot read '/nonexistent/sig'"}},
      {{{"APPOINTMENT_RELAY_ENDPOINTS_CRM_SECRETS_FILE", "/nonexistent/crm"}},
       {"APPOINTMENT_RELAY_ENDPOINTS_CRM_SECRETS_FILE: cannot read '/nonexistent/crm'"}},
      {{{"APPOINTMENT_RELAY_DATABASE_URL_FILE", "/nonexistent/db"}},
       {"APPOINTMENT_RELAY_DATABASE_URL_FILE", "not both"}},
  };
  for (const auto& r : rows) {
    env_map env = base;
    env.insert(r.extra.begin(), r.extra.end());
    auto message = error_of(std::nullopt, env);
    for (const auto& e : r.expected) EXPECT_NE(message.find(e), std::string::npos) << message;
  }
  // Without the plain variable the _FILE one is read, and its failure names the variable and the path.
  auto message = error_of(std::nullopt, {{"APPOINTMENT_RELAY_DATABASE_URL_FILE", "/nonexistent/db"}});
  EXPECT_NE(message.find("APPOINTMENT_RELAY_DATABASE_URL_FILE: cannot read '/nonexistent/db'"),
            std::string::npos)
      << message;
}

TEST(config, should_render_the_effective_config_as_toml_without_any_secret) {
  temp_dir dir;
  auto file = dir.write("relay.toml",
                        "[database]\nurl = \"postgresql://relay:pa55word@db/canvas\"\n"
                        "[endpoints.crm]\nurl = \"https://crm.example.com/h\"\nkinds = [\"no_show\"]\n"
                        "secrets = [\"" +
                            std::string(secret_a) + "\", \"" + secret_b + "\"]\n");
  auto cfg = load_config(file, {{"APPOINTMENT_RELAY_ENDPOINTS_CRM_TIMEOUT", "1500ms"}});
  auto text = render_config(cfg);
  for (std::string secret : {secret_a, secret_b}) {
    EXPECT_EQ(text.find(secret.substr(6, 8)), std::string::npos) << text;
  }
  EXPECT_EQ(text.find("pa55word"), std::string::npos) << text;

  toml::table parsed;
  ASSERT_NO_THROW(parsed = toml::parse(text)) << text;
  EXPECT_EQ(parsed["database"]["url"].value_or(std::string()), "postgresql://relay:***@db/canvas");
  EXPECT_EQ(parsed["database"]["retention"].value_or(std::string()), "7d");
  EXPECT_EQ(parsed["retry"]["max_delay"].value_or(std::string()), "5m");
  EXPECT_EQ(parsed["endpoints"]["crm"]["timeout"].value_or(std::string()), "1500ms");
  EXPECT_EQ(parsed["endpoints"]["crm"]["kinds"][0].value_or(std::string()), "no_show");
  auto* secrets = parsed["endpoints"]["crm"]["secrets"].as_array();
  ASSERT_NE(secrets, nullptr);
  ASSERT_EQ(secrets->size(), 2u);
  EXPECT_EQ((*secrets)[0].value_or(std::string()), "whsec_***");
  EXPECT_EQ(parsed["endpoints"]["crm"]["verify_peer"].value_or(false), true);
  EXPECT_EQ(parsed["relay"]["max_pending_per_endpoint"].value_or(0), 2000);
}

TEST(config, should_read_back_the_config_it_renders) {
  // Without secrets nothing is masked, so the rendered text must load as the same configuration: the
  // renderer and the parser read one table.
  temp_dir dir;
  auto file =
      dir.write("relay.toml",
                "[database]\nurl = \"host=db dbname=canvas\"\nretention = \"3d\"\nbatch_size = 7\n"
                "[retry]\nmax_delay = \"90s\"\nmax_attempts = 3\n[admin]\nlisten = \"\"\n"
                "[relay]\nshutdown_timeout = \"1500ms\"\n"
                "[endpoints.crm]\nurl = \"https://crm.example.com:8443/h?x=\\\"1\\\"\"\n"
                "kinds = [\"checked_in\", \"created\"]\nca_file = \"/etc/c a.pem\"\nverify_peer = false\n"
                "[endpoints.erp]\nurl = \"http://127.0.0.1:9/e\"\n");
  auto text = render_config(load_config(file, {}));
  // An endpoint without a secret renders as "secrets = []", which a file may not say (a secrets key holds
  // at least one): the line goes before reading back.
  std::string readable = text;
  for (std::size_t at; (at = readable.find("secrets = []\n")) != std::string::npos;) readable.erase(at, 13);
  auto again = render_config(load_config(dir.write("rendered.toml", readable), {}));
  EXPECT_EQ(again, text);
  EXPECT_NE(text.find("batch_size = 7\n"), std::string::npos) << text;
  EXPECT_NE(text.find("[endpoints.erp]\n"), std::string::npos) << text;
}

TEST(config, should_read_static_headers_from_a_table_an_array_files_and_the_environment_and_never_show_them) {
  temp_dir dir;
  auto token = dir.write("token", "Bearer t0ps3cret\n");
  auto file = dir.write("relay.toml", "[database]\nurl = \"host=db\"\n" + minimal_endpoint +
                                          "headers = { X-Tenant = \"clinic 7\", X-Env = \"prod\" }\n"
                                          "header_files = { Authorization = \"" +
                                          token.string() +
                                          "\" }\n"
                                          "[endpoints.erp]\nurl = \"http://127.0.0.1:9/e\"\n"
                                          "headers = [\"X-Api-Key: k3y: with colon\"]\n");
  auto cfg =
      load_config(file, {{"APPOINTMENT_RELAY_ENDPOINTS_OPS_URL", "http://127.0.0.1:9/o"},
                         {"APPOINTMENT_RELAY_ENDPOINTS_OPS_HEADERS", "X-One: 1\nX-Two:  two words \n"}});
  ASSERT_EQ(cfg.endpoints.size(), 3u);
  // A TOML table has no order: compare sorted.
  header_list crm{{"Authorization", "Bearer t0ps3cret"}, {"X-Env", "prod"}, {"X-Tenant", "clinic 7"}};
  auto got = cfg.endpoints[0].headers;
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, crm);
  EXPECT_EQ(cfg.endpoints[1].headers, (header_list{{"X-Api-Key", "k3y: with colon"}}));
  EXPECT_EQ(cfg.endpoints[2].headers, (header_list{{"X-One", "1"}, {"X-Two", "two words"}}));
  auto text = render_config(cfg);
  for (const char* value : {"clinic 7", "t0ps3cret", "k3y", "two words"})
    EXPECT_EQ(text.find(value), std::string::npos) << value << " shown:\n" << text;
  EXPECT_NE(text.find("\"X-Tenant: ***\""), std::string::npos) << text;
}

TEST(config, should_read_the_admin_token_and_require_one_off_loopback) {
  temp_dir dir;
  auto token = dir.write("token", "0123456789abcdef-admin\r\n\n");
  const env_map base{{"APPOINTMENT_RELAY_DATABASE_URL", "host=db"}};
  auto with = [&](env_map more) {
    more.insert(base.begin(), base.end());
    return more;
  };
  auto cfg = load_config(std::nullopt, with({{"APPOINTMENT_RELAY_ADMIN_TOKEN_FILE", token.string()}}));
  EXPECT_EQ(cfg.admin.token, "0123456789abcdef-admin");
  EXPECT_EQ(cfg.admin.token_file, token.string());
  // The path is shown, never the token.
  const auto rendered = render_config(cfg);
  EXPECT_NE(rendered.find("token_file = \"" + token.string() + "\""), std::string::npos) << rendered;
  EXPECT_EQ(rendered.find("0123456789abcdef-admin"), std::string::npos) << rendered;

  // The configuration loads either way (migrate, status need no admin server); run and check-config refuse
  // what admin_listen_problem names.
  for (const char* listen : {"127.0.0.1:9187", "127.0.0.2:1", "localhost:9187", "[::1]:9187", ""})
    EXPECT_EQ(
        admin_listen_problem(load_config(std::nullopt, with({{"APPOINTMENT_RELAY_ADMIN_LISTEN", listen}}))),
        "")
        << listen;
  for (const char* listen : {"0.0.0.0:9187", "[::]:9187", "10.1.2.3:9187"}) {
    const auto err =
        admin_listen_problem(load_config(std::nullopt, with({{"APPOINTMENT_RELAY_ADMIN_LISTEN", listen}})));
    EXPECT_NE(err.find("admin.listen"), std::string::npos) << err;
    EXPECT_NE(err.find("token_file"), std::string::npos) << err;
    EXPECT_EQ(admin_listen_problem(
                  load_config(std::nullopt, with({{"APPOINTMENT_RELAY_ADMIN_LISTEN", listen},
                                                  {"APPOINTMENT_RELAY_ADMIN_TOKEN_FILE", token.string()}}))),
              "")
        << listen;
  }
  const auto missing =
      error_of(std::nullopt, with({{"APPOINTMENT_RELAY_ADMIN_TOKEN_FILE", "/nonexistent/x"}}));
  EXPECT_NE(missing.find("admin.token_file: cannot read '/nonexistent/x'"), std::string::npos) << missing;
  for (const char* bad : {"short\n", "has a blank in it, long enough\n", ""}) {
    auto f = dir.write("bad", bad);
    const auto err = error_of(std::nullopt, with({{"APPOINTMENT_RELAY_ADMIN_TOKEN_FILE", f.string()}}));
    EXPECT_NE(err.find("at least 16 characters"), std::string::npos) << err;
    EXPECT_EQ(err.find(bad[0] == '\0' ? "\x01" : bad), std::string::npos) << "the value is shown: " << err;
  }
}

TEST(config, should_refuse_headers_the_relay_sets_bad_names_control_characters_and_twice_given_names) {
  temp_dir dir;
  auto with = [&](const std::string& extra) {
    return error_of(dir.write("relay.toml", "[database]\nurl = \"host=db\"\n" + minimal_endpoint + extra),
                    {});
  };
  EXPECT_NE(
      with("headers = { Webhook-Signature = \"x\" }\n").find("header Webhook-Signature is set by the relay"),
      std::string::npos);
  EXPECT_NE(with("headers = { Content-Type = \"text/plain\" }\n").find("set by the relay"),
            std::string::npos);
  EXPECT_NE(with("headers = { \"Bad Name\" = \"x\" }\n").find("'Bad Name' is not a valid header name"),
            std::string::npos);
  auto crlf = with("headers = { X-A = \"ok\\r\\nX-Injected: yes\" }\n");
  EXPECT_NE(crlf.find("control character"), std::string::npos) << crlf;
  EXPECT_EQ(crlf.find("Injected"), std::string::npos) << "the value was shown: " << crlf;
  auto twice = dir.write("t", "v\n");
  EXPECT_NE(with("headers = { X-A = \"1\" }\nheader_files = { x-a = \"" + twice.string() + "\" }\n")
                .find("given twice"),
            std::string::npos);
  EXPECT_NE(with("headers = [\"no colon\"]\n").find("expected \"Name: value\""), std::string::npos);
  EXPECT_NE(with("header_files = { X-A = \"/nonexistent/h\" }\n").find("cannot read '/nonexistent/h'"),
            std::string::npos);
}

TEST(config, should_read_rate_limit_backfill_and_breaker_settings_and_refuse_a_backfill_past_retention) {
  temp_dir dir;
  auto cfg = load_config(dir.write("relay.toml", "[database]\nurl = \"host=db\"\n" + minimal_endpoint), {});
  EXPECT_EQ(cfg.endpoints[0].rate_limit, 0);
  EXPECT_EQ(cfg.endpoints[0].backfill, std::chrono::milliseconds(0));
  EXPECT_EQ(cfg.endpoints[0].breaker_failures, 10);
  EXPECT_EQ(cfg.endpoints[0].breaker_after, std::chrono::minutes(1));
  EXPECT_EQ(cfg.endpoints[0].breaker_probe_max, std::chrono::minutes(5));
  cfg = load_config(dir.write("relay.toml", "[database]\nurl = \"host=db\"\n" + minimal_endpoint +
                                                "rate_limit = 50\nrate_limit_burst = 5\nbackfill = \"24h\"\n"
                                                "breaker_failures = 0\nbreaker_after = \"30s\"\n"
                                                "breaker_probe_max = \"1m\"\n"),
                    {});
  EXPECT_EQ(cfg.endpoints[0].rate_limit, 50);
  EXPECT_EQ(cfg.endpoints[0].rate_limit_burst, 5);
  EXPECT_EQ(cfg.endpoints[0].backfill, std::chrono::hours(24));
  EXPECT_EQ(cfg.endpoints[0].breaker_failures, 0);
  EXPECT_EQ(cfg.endpoints[0].breaker_after, std::chrono::seconds(30));
  EXPECT_EQ(cfg.endpoints[0].breaker_probe_max, std::chrono::minutes(1));
  auto e = error_of(dir.write("relay.toml", "[database]\nurl = \"host=db\"\nretention = \"2d\"\n" +
                                                minimal_endpoint + "backfill = \"3d\"\n"),
                    {});
  EXPECT_NE(e.find("endpoints.crm.backfill (3d) is longer than database.retention (2d)"), std::string::npos)
      << e;
}

TEST(config, should_warn_about_open_secret_files_plain_http_off_loopback_and_unverified_tls) {
  temp_dir dir;
  auto secret = dir.write("crm.secret", std::string(secret_a) + "\n");
  std::filesystem::permissions(secret,
                               std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                                   std::filesystem::perms::group_read | std::filesystem::perms::others_read);
  auto file = dir.write("relay.toml",
                        "[database]\nurl = \"host=db\"\n"
                        "[endpoints.crm]\nurl = \"http://crm.example.com/h\"\nsecret_file = \"" +
                            secret.string() +
                            "\"\n"
                            "[endpoints.local]\nurl = \"http://127.0.0.1:8080/h\"\n"
                            "[endpoints.lab]\nurl = \"https://lab.example.com/h\"\nverify_peer = false\n");
  auto warnings = config_warnings(load_config(file, {}));
  auto has = [&](const std::string& text) {
    return std::any_of(warnings.begin(), warnings.end(),
                       [&](auto& w) { return w.find(text) != std::string::npos; });
  };
  EXPECT_TRUE(
      has("file " + secret.string() + " (a secret of endpoint crm) is open to group or others (mode 0644)"));
  EXPECT_TRUE(has("endpoint crm sends to crm.example.com over plain http"));
  EXPECT_FALSE(has("endpoint local"));
  EXPECT_TRUE(has("endpoint lab has verify_peer = false"));
  EXPECT_EQ(warnings.size(), 3u);
  for (const auto& w : warnings)
    EXPECT_EQ(w.find(std::string(secret_a).substr(6, 8)), std::string::npos) << w;
  std::filesystem::permissions(secret,
                               std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  EXPECT_EQ(config_warnings(load_config(file, {})).size(), 2u);
}

// A running configuration from the environment, with an endpoint and a database password.
config running_config() {
  env_map env{{"APPOINTMENT_RELAY_DATABASE_URL", "postgresql://relay:pw@db/canvas"},
              {"APPOINTMENT_RELAY_ENDPOINTS_CRM_URL", "https://crm.example.com/hooks"},
              {"APPOINTMENT_RELAY_ENDPOINTS_CRM_SECRETS", secret_a}};
  return load_config(std::nullopt, env);
}

TEST(config, should_need_no_restart_for_what_a_reload_applies) {
  const config running = running_config();
  struct row {
    std::string what;
    void (*change)(config&);
  };
  const std::vector<row> rows{
      {"nothing", [](config&) {}},
      {"log.level", [](config& c) { c.log.level = "debug"; }},
      {"database.batch_size", [](config& c) { c.database.batch_size = 10; }},
      {"retry.base_delay", [](config& c) { c.retry.base_delay = 3s; }},
      {"retry.max_delay", [](config& c) { c.retry.max_delay = 1h; }},
      {"retry.max_age", [](config& c) { c.retry.max_age = 1h; }},
      {"retry.max_attempts", [](config& c) { c.retry.max_attempts = 5; }},
      {"relay.max_pending_per_endpoint", [](config& c) { c.relay.max_pending_per_endpoint = 3; }},
      {"relay.shutdown_timeout", [](config& c) { c.relay.shutdown_timeout = 1s; }},
      {"endpoint url", [](config& c) { c.endpoints[0].target.host = "other.example.com"; }},
      {"endpoint secrets", [](config& c) { c.endpoints[0].secrets = {secret_b}; }},
      {"endpoint kinds", [](config& c) { c.endpoints[0].kinds = {notification_kind::created}; }},
      {"endpoint tls", [](config& c) { c.endpoints[0].tls.verify_peer = false; }},
      {"endpoint max_in_flight", [](config& c) { c.endpoints[0].max_in_flight = 1; }},
      {"endpoint timeout", [](config& c) { c.endpoints[0].timeout = 1s; }},
      {"endpoint added",
       [](config& c) { c.endpoints.push_back(c.endpoints[0]), c.endpoints[1].name = "erp"; }},
      {"endpoint removed", [](config& c) { c.endpoints.clear(); }},
  };
  for (const auto& r : rows) {
    config next = running;
    r.change(next);
    EXPECT_EQ(keys_needing_restart(running, next), std::vector<std::string>{}) << r.what;
  }
}

TEST(config, should_name_each_key_that_needs_a_restart) {
  const config running = running_config();
  struct row {
    std::string key;
    void (*change)(config&);
  };
  const std::vector<row> rows{
      {"database.url", [](config& c) { c.database.url = "postgresql://relay:pw@db2/canvas"; }},
      // Only the password differs: masked, the two would look alike.
      {"database.url", [](config& c) { c.database.url = "postgresql://relay:other@db/canvas"; }},
      {"database.poll_interval", [](config& c) { c.database.poll_interval = 1s; }},
      {"database.retention", [](config& c) { c.database.retention = 1h; }},
      {"admin.listen", [](config& c) { c.admin.listen = ""; }},
      {"log.format", [](config& c) { c.log.format = "json"; }},
      {"relay.watchdog_interval", [](config& c) { c.relay.watchdog_interval = 30s; }},
  };
  for (const auto& r : rows) {
    config next = running;
    r.change(next);
    EXPECT_EQ(keys_needing_restart(running, next), std::vector<std::string>{r.key}) << r.key;
  }
}

TEST(config, should_name_several_keys_needing_a_restart_in_table_order_among_applied_changes) {
  const config running = running_config();
  config next = running;
  next.relay.watchdog_interval = 20s;
  next.log.level = "warn";
  next.admin.listen = "127.0.0.1:1";
  next.endpoints.clear();
  next.database.url = "host=elsewhere";
  EXPECT_EQ(keys_needing_restart(running, next),
            (std::vector<std::string>{"database.url", "admin.listen", "relay.watchdog_interval"}));
}

// The sample file's keys (commented out or not) per "section.key", "endpoints.*.key" for an endpoint's,
// with the comment lines that precede each since the previous key or table header.
std::map<std::string, std::string> sample_key_comments() {
  std::ifstream in(std::filesystem::path(APPOINTMENT_RELAY_SOURCE_DIR) / "config/appointment-relay.toml");
  std::map<std::string, std::string> keys;
  std::string line, section, comments;
  while (std::getline(in, line)) {
    if (line.starts_with("[")) {
      section = line.substr(1, line.find(']') - 1);
      if (section.starts_with("endpoints.")) section = "endpoints.*";
      comments.clear();
      continue;
    }
    std::string body = line.starts_with("# ") ? line.substr(2) : line;
    auto eq = body.find(" = ");
    bool is_key = eq != std::string::npos && eq > 0 &&
                  body.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") == eq && !section.empty();
    if (is_key) {
      keys[section + "." + body.substr(0, eq)] = comments + "\n" + body;
      comments.clear();
    } else {
      comments += line + "\n";
    }
  }
  return keys;
}

std::string sample_name(const config_key& k) {
  return k.section == "endpoints" ? "endpoints.*." + k.name : k.section + "." + k.name;
}

TEST(config, should_mark_exactly_the_keys_needing_a_restart_in_the_sample_config) {
  auto sample = sample_key_comments();
  for (const auto& k : config_keys()) {
    auto it = sample.find(sample_name(k));
    ASSERT_NE(it, sample.end()) << sample_name(k) << " is not in the sample config";
    bool marked = it->second.find("(restart to change)") != std::string::npos;
    EXPECT_EQ(marked, !k.reloadable) << sample_name(k) << ":\n" << it->second;
  }
}

TEST(config, should_document_every_key_with_its_default_in_the_sample_config) {
  auto sample = sample_key_comments();
  std::size_t documented = 0;
  for (const auto& k : config_keys()) {
    ASSERT_EQ(sample.count(sample_name(k)), 1u) << sample_name(k);
    if (!k.default_value || k.secret)
      continue;  // no default to show: a required key or a secret (the sample gives an example value instead)
    EXPECT_NE(sample[sample_name(k)].find(k.name + " = " + *k.default_value), std::string::npos)
        << sample_name(k) << " = " << *k.default_value << ":\n"
        << sample[sample_name(k)];
    ++documented;
  }
  // but database.url, endpoint url, secrets, secret_file, headers and header_files (values not shown)
  EXPECT_EQ(documented, config_keys().size() - 6);
  EXPECT_EQ(sample.size(), config_keys().size());  // and nothing the table does not know
}

TEST(config, should_mask_the_database_password_in_uris_and_conninfo) {
  struct row {
    std::string in, out;
  };
  for (const auto& r : std::vector<row>{
           {"postgresql://user:pass@host/db", "postgresql://user:***@host/db"},
           {"postgres://user:p%40ss@host:5432/db?sslmode=require",
            "postgres://user:***@host:5432/db?sslmode=require"},
           {"postgresql://user:p@ss@host/db", "postgresql://user:***@host/db"},
           {"postgresql://user@host/db", "postgresql://user@host/db"},
           {"postgresql://host/db?user=u&password=xyz&sslmode=disable",
            "postgresql://host/db?user=u&password=***&sslmode=disable"},
           {"host=db password=xyz dbname=canvas", "host=db password=*** dbname=canvas"},
           {"host=db password='x y\\' z' dbname=canvas", "host=db password=*** dbname=canvas"},
           {"host=db password = xyz", "host=db password = ***"},
           {"host=db dbname=canvas", "host=db dbname=canvas"},
       }) {
    EXPECT_EQ(mask_database_url(r.in), r.out) << r.in;
  }
}

TEST(config, should_collect_only_relay_variables_from_the_process_environment) {
  ::setenv("APPOINTMENT_RELAY_TEST_CONFIG_PROBE", "a=b", 1);
  ::setenv("AR_CONFIG_TEST_UNRELATED", "x", 1);
  auto env = relay_environment();
  ::unsetenv("APPOINTMENT_RELAY_TEST_CONFIG_PROBE");
  ::unsetenv("AR_CONFIG_TEST_UNRELATED");
  EXPECT_EQ(env["APPOINTMENT_RELAY_TEST_CONFIG_PROBE"], "a=b");
  EXPECT_EQ(env.count("AR_CONFIG_TEST_UNRELATED"), 0u);
  for (const auto& [k, v] : env) EXPECT_EQ(k.rfind("APPOINTMENT_RELAY_", 0), 0u) << k;
}

}  // namespace
}  // namespace appointment_relay
