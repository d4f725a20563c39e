#include "appointment_relay/signature.hpp"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace appointment_relay {
namespace {

// Vectors from the reference implementation (see the file's "about"), kept in the repository as test data.
nlohmann::json load_vectors() {
  const std::string path =
      std::string(APPOINTMENT_RELAY_SOURCE_DIR) + "/tests/data/standard-webhooks-vectors.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(in);
}

signing_key key_of(std::string_view secret) {
  auto key = signing_key::parse(secret);
  if (!key) throw std::runtime_error("bad test secret");
  return *key;
}

TEST(signature, should_match_every_reference_vector) {
  const nlohmann::json vectors = load_vectors().at("vectors");
  ASSERT_GE(vectors.size(), 2u);
  for (const auto& v : vectors) {
    const signing_key key = key_of(v.at("secret").get<std::string>());
    const std::string id = v.at("id").get<std::string>();
    const std::int64_t ts = v.at("timestamp").get<std::int64_t>();
    const std::string body = v.at("body").get<std::string>();
    const std::string expected = v.at("signature").get<std::string>();
    EXPECT_EQ(sign(key, id, ts, body), expected) << id;
    EXPECT_EQ(signature_header({key}, id, ts, body), expected) << id;
    EXPECT_TRUE(verify_signature(key, expected, id, ts, body)) << id;
  }
}

TEST(signature, should_reject_a_tampered_body_id_or_timestamp) {
  const nlohmann::json v = load_vectors().at("vectors").at(0);
  const signing_key key = key_of(v.at("secret").get<std::string>());
  const std::string id = v.at("id").get<std::string>();
  const std::int64_t ts = v.at("timestamp").get<std::int64_t>();
  const std::string body = v.at("body").get<std::string>();
  const std::string header = v.at("signature").get<std::string>();
  EXPECT_TRUE(verify_signature(key, header, id, ts, body));
  EXPECT_FALSE(verify_signature(key, header, id, ts, body + " "));
  EXPECT_FALSE(verify_signature(key, header, id, ts + 1, body));
  EXPECT_FALSE(verify_signature(key, header, id + "x", ts, body));
  EXPECT_FALSE(verify_signature(key, "v2," + header.substr(3), id, ts, body));
  EXPECT_FALSE(verify_signature(key, header.substr(0, header.size() - 2), id, ts, body));
  EXPECT_FALSE(verify_signature(key, "", id, ts, body));
  EXPECT_FALSE(verify_signature(key_of("whsec_" + base64_encode("another key")), header, id, ts, body));
}

TEST(signature, should_sign_with_every_key_separated_by_spaces) {
  const signing_key old_key = key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
  const signing_key new_key = key_of("whsec_" + base64_encode("a brand new signing key, 32 byte"));
  const std::string header = signature_header({old_key, new_key}, "evt_9", 1700000000, "{}");
  const std::string first = sign(old_key, "evt_9", 1700000000, "{}");
  const std::string second = sign(new_key, "evt_9", 1700000000, "{}");
  EXPECT_NE(first, second);
  EXPECT_EQ(header, first + " " + second);
  EXPECT_TRUE(verify_signature(old_key, header, "evt_9", 1700000000, "{}"));
  EXPECT_TRUE(verify_signature(new_key, header, "evt_9", 1700000000, "{}"));
  EXPECT_EQ(signature_header({}, "evt_9", 1700000000, "{}"), "");
}

TEST(signature, should_reject_bad_secrets) {
  for (const char* secret :
       {"", "whsec_", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_MfKQ9r8G*YqrTwjUPD8ILPZIo2LaLaSw", "whsec_=abc",
        "whsec_ab=c", "whsec_Zg==="}) {
    EXPECT_FALSE(signing_key::parse(secret)) << "'" << secret << "'";
  }
  const auto key = signing_key::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
  ASSERT_TRUE(key);
  EXPECT_EQ(key->bytes().size(), 24u);
}

TEST(signature, should_round_trip_base64_with_correct_padding) {
  struct row {
    std::string bytes;
    std::string text;
  };
  const std::vector<row> rows = {{"", ""},
                                 {"f", "Zg=="},
                                 {"fo", "Zm8="},
                                 {"foo", "Zm9v"},
                                 {"foob", "Zm9vYg=="},
                                 {"fooba", "Zm9vYmE="},
                                 {"foobar", "Zm9vYmFy"},
                                 {std::string("\xff\xfe\x00", 3), "//4A"}};
  for (const row& r : rows) {
    EXPECT_EQ(base64_encode(r.bytes), r.text);
    EXPECT_EQ(base64_decode(r.text), r.bytes) << r.text;
  }
  EXPECT_EQ(base64_decode("Zm8"), "fo");  // padding may be left out
  EXPECT_FALSE(base64_decode("Zm9vY"));   // a length no encoding has
  EXPECT_FALSE(base64_decode("Zm=8"));
  EXPECT_FALSE(base64_decode("Zm9v="));
  EXPECT_FALSE(base64_decode("Zg==="));
  EXPECT_FALSE(base64_decode("Zm9v-_"));
}

}  // namespace
}  // namespace appointment_relay
