#include "appointment_relay/admin_auth.hpp"

#include <gtest/gtest.h>

#include <string>

namespace appointment_relay {
namespace {

TEST(admin_auth, should_treat_127_slash_8_and_ipv6_loopback_as_loopback_and_nothing_else) {
  const struct {
    const char* listen;
    bool loopback;
  } cases[] = {
      {"127.0.0.1:9187", true},
      {"127.0.0.2:0", true},
      {"127.255.255.254:1", true},
      {"localhost:9187", true},
      {"[::1]:9187", true},
      {"[::ffff:127.0.0.1]:9187", true},
      {"0.0.0.0:9187", false},
      {"[::]:9187", false},
      {"10.0.0.5:9187", false},
      {"128.0.0.1:9187", false},
      {"[::ffff:10.0.0.1]:9187", false},
      {"192.168.1.1:80", false},
      {"not-an-ip:9187", false},
      {"127.0.0.1", false},
      {"", false},
  };
  for (const auto& c : cases) EXPECT_EQ(is_loopback_listen(c.listen), c.loopback) << c.listen;
}

TEST(admin_auth, should_read_the_token_of_a_bearer_authorization_only) {
  EXPECT_EQ(bearer_token("Bearer abc123"), "abc123");
  EXPECT_EQ(bearer_token("bearer abc123"), "abc123");
  EXPECT_EQ(bearer_token("  BEARER   abc123  "), "abc123");
  EXPECT_EQ(bearer_token("Bearer"), "");
  EXPECT_EQ(bearer_token("Bearerabc123"), "");
  EXPECT_EQ(bearer_token("Basic YWRtaW46c2VjcmV0"), "");
  EXPECT_EQ(bearer_token(""), "");
}

TEST(admin_auth, should_match_only_the_exact_token) {
  const std::string token = "s3cret-token-0123456789";
  EXPECT_TRUE(token_matches(token, token));
  EXPECT_FALSE(token_matches(token + "x", token));
  EXPECT_FALSE(token_matches(token.substr(0, token.size() - 1), token));
  EXPECT_FALSE(token_matches("S3cret-token-0123456789", token));
  EXPECT_FALSE(token_matches("", token));
  // No token configured: nothing matches, not even an empty presentation.
  EXPECT_FALSE(token_matches("", ""));
  EXPECT_FALSE(token_matches("anything", ""));
}

TEST(admin_auth, should_require_the_configured_token_for_everything_but_the_probes) {
  const std::string token = "s3cret-token-0123456789";
  const std::string good = "Bearer " + token;
  for (const char* path :
       {"/", "/metrics", "/api/status", "/api/events", "/api/events/1", "/events/1", "/x"}) {
    EXPECT_EQ(access_for(path, "", token), admin_access::denied) << path;
    EXPECT_EQ(access_for(path, "Bearer wrong-token-0123456789", token), admin_access::denied) << path;
    EXPECT_EQ(access_for(path, "Basic " + token, token), admin_access::denied) << path;
    EXPECT_EQ(access_for(path, good, token), admin_access::token_holder) << path;
  }
  for (const char* path : {"/healthz", "/readyz"}) {
    EXPECT_EQ(access_for(path, "", token), admin_access::reader) << path;
    EXPECT_EQ(access_for(path, good, token), admin_access::token_holder) << path;
  }
}

TEST(admin_auth, should_let_everyone_read_without_payloads_when_no_token_is_configured) {
  for (const char* path : {"/", "/metrics", "/api/events/1", "/healthz"}) {
    EXPECT_EQ(access_for(path, "", ""), admin_access::reader) << path;
    // A presented token grants nothing more when none is configured.
    EXPECT_EQ(access_for(path, "Bearer anything-at-all-here", ""), admin_access::reader) << path;
  }
}

}  // namespace
}  // namespace appointment_relay
