#include "appointment_relay/url.hpp"

#include <gtest/gtest.h>

namespace appointment_relay {
namespace {

TEST(url, should_parse_valid_urls) {
  struct row {
    std::string text;
    bool tls;
    std::string host;
    std::uint16_t port;
    std::string target;
    std::string host_header;
    std::string normalised;
  };
  const std::vector<row> rows = {
      {"http://example.com", false, "example.com", 80, "/", "example.com", "http://example.com/"},
      {"https://example.com", true, "example.com", 443, "/", "example.com", "https://example.com/"},
      {"HTTPS://Example.COM/Hooks", true, "example.com", 443, "/Hooks", "example.com",
       "https://example.com/Hooks"},
      {"HtTp://127.0.0.1:8080/a/b?x=1&y=2", false, "127.0.0.1", 8080, "/a/b?x=1&y=2", "127.0.0.1:8080",
       "http://127.0.0.1:8080/a/b?x=1&y=2"},
      {"http://h:1/", false, "h", 1, "/", "h:1", "http://h:1/"},
      {"https://h:65535/x", true, "h", 65535, "/x", "h:65535", "https://h:65535/x"},
      {"https://h:443/x", true, "h", 443, "/x", "h", "https://h/x"},
      {"http://[::1]:9000/hook", false, "::1", 9000, "/hook", "[::1]:9000", "http://[::1]:9000/hook"},
      {"https://[2001:db8::1]/", true, "2001:db8::1", 443, "/", "[2001:db8::1]", "https://[2001:db8::1]/"},
      {"http://host/path#fragment", false, "host", 80, "/path", "host", "http://host/path"},
      {"http://host?q=1#f", false, "host", 80, "/?q=1", "host", "http://host/?q=1"},
      {"http://my-host_1.example/", false, "my-host_1.example", 80, "/", "my-host_1.example",
       "http://my-host_1.example/"},
  };
  for (const row& r : rows) {
    std::string error;
    const auto u = parse_url(r.text, &error);
    ASSERT_TRUE(u) << r.text << ": " << error;
    EXPECT_EQ(u->tls, r.tls) << r.text;
    EXPECT_EQ(u->host, r.host) << r.text;
    EXPECT_EQ(u->port, r.port) << r.text;
    EXPECT_EQ(u->target, r.target) << r.text;
    EXPECT_EQ(u->host_header(), r.host_header) << r.text;
    EXPECT_EQ(u->to_string(), r.normalised) << r.text;
  }
}

TEST(url, should_refuse_anything_else_with_a_clear_message) {
  struct row {
    std::string text;
    std::string error_contains;
  };
  const std::vector<row> rows = {
      {"", "absolute"},
      {"example.com/hook", "absolute"},
      {"ftp://example.com/", "scheme"},
      {"ws://example.com/", "scheme"},
      {"https://user:secret@example.com/", "user information"},
      {"https://token@example.com/", "user information"},
      {"http:///path", "missing host"},
      {"http://", "missing host"},
      {"http://host:0/", "port out of range"},
      {"http://host:65536/", "port out of range"},
      {"http://host:99999999/", "invalid port"},
      {"http://host:/", "invalid port"},
      {"http://host:8a/", "invalid port"},
      {"http://host:-1/", "invalid port"},
      {"http://[::1/", "unterminated"},
      {"http://[not-v6]/", "invalid IPv6"},
      {"http://[::1]x/", "after the IPv6"},
      {"http://ho st/", "spaces"},
      {"http://host/a b", "spaces"},
      {"http://ho%st/", "invalid host"},
  };
  for (const row& r : rows) {
    std::string error;
    EXPECT_FALSE(parse_url(r.text, &error)) << r.text;
    EXPECT_NE(error.find(r.error_contains), std::string::npos) << r.text << " -> " << error;
  }
  EXPECT_FALSE(parse_url("nonsense"));  // error is optional
}

TEST(url, should_mask_query_values_user_information_and_fragment_but_keep_the_rest) {
  struct row {
    std::string in;
    std::string out;
  };
  for (const auto& r : std::vector<row>{
           {"https://hooks.example.com/in?token=s3cret", "https://hooks.example.com/in?token=***"},
           {"https://h/a/b?x=1&sig=abc&empty=&flag", "https://h/a/b?x=***&sig=***&empty=&***"},
           {"http://h:8080/hook", "http://h:8080/hook"},
           {"https://h/?", "https://h/?"},
           {"https://h/p?a=1#frag", "https://h/p?a=***#***"},
           {"https://h/p#", "https://h/p#"},
           {"https://user:pa:ss@h/x?k=v", "https://user:***@h/x?k=***"},
           {"https://ghp_token@h/x", "https://***@h/x"},
           {"https://u:p@[::1]:9/x", "https://u:***@[::1]:9/x"},
           {"https://h/path@not-user", "https://h/path@not-user"},  // '@' after the authority: not user info
           {"postgresql://relay:pw@db/canvas?sslpassword=x&sslmode=require",
            "postgresql://relay:***@db/canvas?sslpassword=***&sslmode=***"},
           {"not a url?key=value", "not a url?key=***"},
           {"", ""},
       })
    EXPECT_EQ(mask_url(r.in), r.out) << r.in;
}

}  // namespace
}  // namespace appointment_relay
