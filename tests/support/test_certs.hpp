#pragma once
// Certificates for TLS tests, made at test time with the `openssl` command in a temporary directory
// (removed at process exit). EC P-256 keys, valid for two days.
#include <string>

namespace appointment_relay::testing {

struct test_certificates {
  std::string dir;
  std::string ca_file;           // the CA that signed both server certificates
  std::string server_cert_file;  // subjectAltName IP:127.0.0.1, DNS:localhost
  std::string server_key_file;
  std::string wrong_host_cert_file;  // subjectAltName DNS:wrong.example (signed by ca_file)
  std::string wrong_host_key_file;
  std::string client_ca_file;    // a separate CA for client certificates (mTLS)
  std::string client_cert_file;  // signed by client_ca_file, extendedKeyUsage clientAuth
  std::string client_key_file;
};

// Made once per process on first use (thread-safe); throws std::runtime_error when openssl fails.
const test_certificates& test_certs();

}  // namespace appointment_relay::testing
