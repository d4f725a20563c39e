#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "appointment_relay/net.hpp"
#include "fault_support.hpp"
#include "support/relay_process.hpp"
#include "support/shell.hpp"

// The admin API and the status page of a running relay against real PostgreSQL and a real receiver: the JSON
// answers what the CLI prints, the token guards everything but the probes when the server listens off
// loopback, and the page, loaded by a real browser (headless Chromium), shows the endpoints and a failed
// event.

namespace appointment_relay::testing {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;

struct reply {
  int status = 0;  // 0: no answer
  std::string body;
  std::string www_authenticate;
  std::string content_type;
};

// GET http://127.0.0.1:port/target, with a bearer token when given.
reply get(std::uint16_t port, const std::string& target, const std::string& token = {}) {
  net::io_context io;
  beast::tcp_stream stream(io);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!token.empty()) req.set(http::field::authorization, "Bearer " + token);
  req.keep_alive(false);
  error_code failed;
  stream.expires_after(15s);
  stream.async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port), [&](error_code ec) {
    if (ec) return void(failed = ec);
    http::async_write(stream, req, [&](error_code ec2, std::size_t) {
      if (ec2) return void(failed = ec2);
      http::async_read(stream, buffer, res, [&](error_code ec3, std::size_t) { failed = ec3; });
    });
  });
  io.run();
  if (failed) return {};
  return {static_cast<int>(res.result_int()), res.body(), std::string(res[http::field::www_authenticate]),
          std::string(res[http::field::content_type])};
}

json parse(const std::string& text, const std::string& what) {
  try {
    return json::parse(text);
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": not JSON (" << e.what() << "): " << text;
    return nullptr;
  }
}

// The ages grow between two reads; each must be there in both or in neither, within a few seconds of the
// other. Removed from both so that the rest compares exactly.
void compare_status(json api, json cli) {
  ASSERT_TRUE(api.is_array()) << api.dump();
  ASSERT_EQ(api.size(), cli.size()) << api.dump() << "\n" << cli.dump();
  for (std::size_t i = 0; i < api.size(); ++i)
    for (const char* age : {"oldest_pending_age_seconds", "oldest_dead_letter_age_seconds"}) {
      ASSERT_EQ(api[i].contains(age), cli[i].contains(age)) << age;
      if (!api[i].contains(age)) continue;
      ASSERT_EQ(api[i][age].is_null(), cli[i][age].is_null())
          << age << ": " << api[i][age] << " " << cli[i][age];
      if (!api[i][age].is_null()) {
        EXPECT_NEAR(api[i][age].get<double>(), cli[i][age].get<double>(), 10.0) << age;
      }
      api[i].erase(age);
      cli[i].erase(age);
    }
  EXPECT_EQ(api, cli);
}

environment cli_env(const environment& relay) {
  environment env = relay;
  env.erase("APPOINTMENT_RELAY_LOG_LEVEL");
  return env;
}

json cli_json(const environment& env, std::vector<std::string> args) {
  auto r = run_relay_command(args, cli_env(env));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return parse(r.out, args.front() + " --json");
}

// A relay whose endpoint "default" refuses cancellations with a 400 (dead letters at once) and takes the
// rest, and whose endpoint "billing" wants only "created" (the others are skipped there).
class admin_api_fixture : public ::testing::Test {
 protected:
  void SetUp() override {
    AR_REQUIRE_DATABASE();
    db_ = std::make_unique<scratch_database>();
    server_ = std::make_unique<test_http_server>([](const recorded_request& r, int) {
      if (r.body.find("\"cancelled\":true") != std::string::npos)
        return response_plan::with_status(400).header("Content-Type", "text/plain");
      return response_plan::with_status(200);
    });
    env_ = relay_env(*db_, server_->url());
    env_["APPOINTMENT_RELAY_ENDPOINTS_BILLING_URL"] = server_->url("/billing");
    env_["APPOINTMENT_RELAY_ENDPOINTS_BILLING_SECRETS"] = fault_secret;
    env_["APPOINTMENT_RELAY_ENDPOINTS_BILLING_KINDS"] = "created";
  }

  void start(environment extra = {}) {
    auto env = env_;
    for (auto& [k, v] : extra) env[k] = v;
    relay_ = std::make_unique<relay_process>(env);
    ASSERT_TRUE(relay_->wait_for_log("this instance is active", 30s)) << relay_->log();
    port_ = relay_->admin_port();
    ASSERT_NE(port_, 0) << relay_->log();
  }

  // Books two appointments and cancels the second: three notifications, the cancellation dead at
  // "default". Waits until the relay has recorded it; returns the cancellation's appointment external id.
  std::string play_and_fail_one() {
    db_->exec("SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)");
    const auto id = db_->query_value(
        "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now() + interval '1 day', 45)");
    db_->exec("SELECT canvas_test.cancel(" + id + ")");
    const auto external =
        db_->query_value("SELECT externally_exposable_id FROM api_appointment WHERE id = " + id);
    json s;
    for (int i = 0; i < 200; ++i) {
      s = cli_json(env_, {"status", "--json"});
      bool dead = false, settled = s.is_array() && s.size() == 2;
      for (const auto& e : s.is_array() ? s : json::array()) {
        dead = dead || (e["endpoint"] == "default" && !e["dead_letters"].empty());
        settled = settled && e["backlog"] == 0;
      }
      if (dead && settled) return external;
      std::this_thread::sleep_for(100ms);
    }
    ADD_FAILURE() << "no dead letter recorded, or a backlog left: " << s.dump();
    return external;
  }

  std::unique_ptr<scratch_database> db_;
  std::unique_ptr<test_http_server> server_;
  environment env_;
  std::unique_ptr<relay_process> relay_;
  std::uint16_t port_ = 0;
};

using admin_api = admin_api_fixture;

TEST_F(admin_api, should_answer_the_same_json_as_the_status_and_events_commands) {
  start();
  const auto appointment = play_and_fail_one();

  auto status = get(port_, "/api/status");
  ASSERT_EQ(status.status, 200) << status.body;
  EXPECT_EQ(status.content_type, "application/json");
  compare_status(parse(status.body, "/api/status"), cli_json(env_, {"status", "--json"}));
  compare_status(parse(get(port_, "/api/endpoints").body, "/api/endpoints"),
                 cli_json(env_, {"status", "--json"}));
  auto billing = parse(get(port_, "/api/endpoints/billing").body, "/api/endpoints/billing");
  EXPECT_EQ(billing["endpoint"], "billing");

  // Each filter, alone and together, answers what `events --json` prints for the same filter.
  const std::vector<std::pair<std::string, std::vector<std::string>>> filters{
      {"", {}},
      {"state=dead", {"--state", "dead"}},
      {"state=delivered&endpoint=default", {"--state", "delivered", "--endpoint", "default"}},
      {"state=skipped", {"--state", "skipped"}},
      {"kind=cancelled", {"--kind", "cancelled"}},
      {"appointment=" + appointment, {"--appointment", appointment}},
      {"endpoint=billing&kind=created&limit=1",
       {"--endpoint", "billing", "--kind", "created", "--limit", "1"}},
      {"since=2000-01-01T00:00:00Z&until=2100-01-01",
       {"--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01"}},
      {"until=2000-01-01", {"--until", "2000-01-01"}},
  };
  for (const auto& [query, args] : filters) {
    auto api = get(port_, "/api/events?" + query);
    ASSERT_EQ(api.status, 200) << query << ": " << api.body;
    std::vector<std::string> cli_args{"events", "--json"};
    cli_args.insert(cli_args.end(), args.begin(), args.end());
    EXPECT_EQ(parse(api.body, query), cli_json(env_, cli_args)) << query;
  }
  // The filters select: the dead letter is the cancellation, and nothing before 2000.
  auto dead = parse(get(port_, "/api/events?state=dead").body, "dead")["events"];
  ASSERT_EQ(dead.size(), 1u) << dead.dump();
  EXPECT_EQ(dead[0]["kind"], "cancelled");
  EXPECT_EQ(dead[0]["appointment"], appointment);
  EXPECT_EQ(dead[0]["endpoint"], "default");
  EXPECT_TRUE(parse(get(port_, "/api/events?until=2000-01-01").body, "old")["events"].empty());
  EXPECT_EQ(get(port_, "/api/events?state=lost").status, 400);

  // One event: as `events show --json` prints it, but without the payload (no token on loopback).
  const auto id = dead[0]["id"].get<std::int64_t>();
  auto one = get(port_, "/api/events/" + std::to_string(id));
  ASSERT_EQ(one.status, 200) << one.body;
  auto api_event = parse(one.body, "event");
  auto cli_event = cli_json(env_, {"events", "show", std::to_string(id), "--json"});
  ASSERT_TRUE(cli_event["endpoints"].is_array());
  for (auto& e : cli_event["endpoints"]) {
    EXPECT_FALSE(e.value("payload", std::string()).empty() && e["endpoint"] == "default") << e.dump();
    e.erase("payload");
  }
  EXPECT_EQ(api_event, cli_event);
  EXPECT_EQ(one.body.find("canvas_patient_key"), std::string::npos)
      << "a payload without a token: " << one.body;
  EXPECT_EQ(get(port_, "/api/events/999999").status, 404);
}

TEST_F(admin_api, should_require_the_token_off_loopback_but_not_for_the_probes) {
  // Refused at config check without a token.
  auto open = env_;
  open["APPOINTMENT_RELAY_ADMIN_LISTEN"] = "0.0.0.0:0";
  auto refused = run_relay_command({"check-config"}, open);
  EXPECT_EQ(refused.exit_code, 78) << refused.out << refused.err;
  EXPECT_NE(refused.err.find("admin.token_file"), std::string::npos) << refused.err;

  const auto dir = std::filesystem::temp_directory_path() / ("ar-admin-api-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string token = "t0ken-for-the-admin-api-test";
  std::ofstream(dir / "token") << token << "\n";
  start({{"APPOINTMENT_RELAY_ADMIN_LISTEN", "0.0.0.0:0"},
         {"APPOINTMENT_RELAY_ADMIN_TOKEN_FILE", (dir / "token").string()}});
  play_and_fail_one();

  EXPECT_EQ(get(port_, "/healthz").status, 200);
  EXPECT_EQ(get(port_, "/readyz").status, 200);
  for (const char* target :
       {"/", "/metrics", "/api/status", "/api/endpoints", "/api/events", "/api/events/1", "/events/1"}) {
    auto r = get(port_, target);
    EXPECT_EQ(r.status, 401) << target;
    EXPECT_EQ(r.www_authenticate.rfind("Bearer", 0), 0u) << target << ": " << r.www_authenticate;
    EXPECT_EQ(r.body.find("default"), std::string::npos) << target << ": " << r.body;
    EXPECT_EQ(get(port_, target, token + "x").status, 401) << target;
  }
  auto status = get(port_, "/api/status", token);
  ASSERT_EQ(status.status, 200) << status.body;
  compare_status(parse(status.body, "/api/status"), cli_json(env_, {"status", "--json"}));
  EXPECT_EQ(get(port_, "/metrics", token).status, 200);

  // A token holder gets the payload, as `events show` prints it.
  auto dead = parse(get(port_, "/api/events?state=dead", token).body, "dead")["events"];
  ASSERT_EQ(dead.size(), 1u);
  const auto id = std::to_string(dead[0]["id"].get<std::int64_t>());
  auto api_event = parse(get(port_, "/api/events/" + id, token).body, "event");
  EXPECT_EQ(api_event, cli_json(env_, {"events", "show", id, "--json"}));
  EXPECT_NE(api_event["endpoints"][0]["payload"].get<std::string>().find("\"cancelled\":true"),
            std::string::npos)
      << api_event.dump();
  std::filesystem::remove_all(dir);
}

// --- the page in a real browser ---

std::optional<std::string> chromium_binary() {
  for (const char* path : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (::access(path, X_OK) == 0) return path;
  return std::nullopt;
}

// Runs the browser headless on url (its own profile in a temporary directory); what it prints on stdout.
std::string run_chromium(const std::string& binary, const std::string& profile, const std::string& args,
                         const std::string& url, const std::string& log) {
  // The arguments are ours (a path, a URL on 127.0.0.1): no quoting is needed beyond the single quotes.
  const std::string cmd = "timeout 90 '" + binary +
                          "' --headless --no-sandbox --disable-gpu --no-first-run " +
                          "--disable-extensions --disable-dev-shm-usage --user-data-dir='" + profile + "' " +
                          args + " '" + url + "' 2>>'" + log + "'";
  return run_shell(cmd).output;
}

std::string file_tail(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  auto text = s.str();
  return text.size() > 3000 ? text.substr(text.size() - 3000) : text;
}

TEST_F(admin_api, should_show_the_endpoints_and_a_failed_event_on_the_page_in_a_browser) {
  const auto browser = chromium_binary();
  // scripts/install-deps.sh installs it: a machine without it has not run the test command's installs.
  if (!browser) {
    FAIL() << "chromium is not installed (scripts/install-deps.sh, or apt-get install chromium)";
  }
  start();
  const auto appointment = play_and_fail_one();
  auto dead = parse(get(port_, "/api/events?state=dead").body, "dead")["events"];
  ASSERT_EQ(dead.size(), 1u);
  const auto id = std::to_string(dead[0]["id"].get<std::int64_t>());

  // The screenshot stays with the test's output: under ctest, build/tests/artifacts/.
  const auto artifacts = std::filesystem::absolute(std::getenv("APPOINTMENT_RELAY_TEST_ARTIFACTS")
                                                       ? std::getenv("APPOINTMENT_RELAY_TEST_ARTIFACTS")
                                                       : "artifacts");
  std::filesystem::create_directories(artifacts);
  const auto screenshot = (artifacts / "admin_status_page.png").string();
  const auto event_screenshot = (artifacts / "admin_event_page.png").string();
  std::filesystem::remove(screenshot);
  std::filesystem::remove(event_screenshot);
  const auto profile = std::filesystem::temp_directory_path() / ("ar-chromium-" + std::to_string(::getpid()));
  const auto log = (artifacts / "chromium.log").string();
  std::filesystem::remove(log);
  const std::string base = "http://127.0.0.1:" + std::to_string(port_);

  run_chromium(*browser, profile.string(), "--window-size=1280,900 --screenshot='" + screenshot + "'",
               base + "/", log);
  ASSERT_TRUE(std::filesystem::exists(screenshot)) << "no screenshot; chromium said:\n" << file_tail(log);
  EXPECT_GT(std::filesystem::file_size(screenshot), 10'000u);
  std::printf("[ artifact ] status page screenshot: %s\n", screenshot.c_str());

  const auto dom = run_chromium(*browser, profile.string(), "--dump-dom", base + "/", log);
  ASSERT_NE(dom.find("<table id=\"endpoints\">"), std::string::npos) << dom << file_tail(log);
  EXPECT_NE(dom.find("<td>default</td>"), std::string::npos) << dom;
  EXPECT_NE(dom.find("<td>billing</td>"), std::string::npos) << dom;
  EXPECT_NE(dom.find("<a href=\"/events/" + id + "\">" + id + "</a>"), std::string::npos) << dom;
  EXPECT_NE(dom.find(appointment), std::string::npos) << dom;
  EXPECT_NE(dom.find("http 400"), std::string::npos) << dom;
  EXPECT_NE(dom.find("class=\"state dead\""), std::string::npos) << dom;
  EXPECT_EQ(dom.find("canvas_patient_key"), std::string::npos) << "a payload on the page: " << dom;

  // The event's own page, the link's target: its failed attempt with the receiver's status.
  run_chromium(*browser, profile.string(), "--window-size=1280,900 --screenshot='" + event_screenshot + "'",
               base + "/events/" + id, log);
  std::printf("[ artifact ] event page screenshot: %s\n", event_screenshot.c_str());
  const auto event_dom = run_chromium(*browser, profile.string(), "--dump-dom", base + "/events/" + id, log);
  EXPECT_NE(event_dom.find("<h1>Event " + id + "</h1>"), std::string::npos) << event_dom << file_tail(log);
  EXPECT_NE(event_dom.find("<tr class=\"attempt\">"), std::string::npos) << event_dom;
  EXPECT_NE(event_dom.find(">400<"), std::string::npos) << event_dom;
  EXPECT_EQ(event_dom.find("canvas_patient_key"), std::string::npos) << event_dom;
  std::error_code ec;
  std::filesystem::remove_all(profile, ec);
}

}  // namespace
}  // namespace appointment_relay::testing
