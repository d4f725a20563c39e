#include "support/test_certs.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace appointment_relay::testing {
namespace {

void run(const std::string& command) {
  // Quiet unless it fails; the command's own error output stays visible on failure.
  if (std::system((command + " >/dev/null 2>&1").c_str()) != 0) {
    [[maybe_unused]] const int again = std::system((command + " >/dev/null").c_str());
    throw std::runtime_error("test certificates: command failed: " + command);
  }
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("test certificates: cannot write " + path);
}

const std::string key_options = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

void make_ca(const std::string& dir, const std::string& name) {
  run("openssl req -x509 " + key_options + " -days 2 -subj /CN=" + name + " -keyout " + dir + "/" + name +
      ".key -out " + dir + "/" + name +
      ".crt -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign");
}

void make_leaf(const std::string& dir, const std::string& ca, const std::string& name,
               const std::string& extensions) {
  const std::string base = dir + "/" + name;
  write_file(base + ".ext", extensions);
  run("openssl req " + key_options + " -subj /CN=" + name + " -keyout " + base + ".key -out " + base +
      ".csr");
  run("openssl x509 -req -days 2 -in " + base + ".csr -CA " + dir + "/" + ca + ".crt -CAkey " + dir + "/" +
      ca + ".key -CAcreateserial -out " + base + ".crt -extfile " + base + ".ext");
}

struct owned_certificates {
  test_certificates certs;
  owned_certificates() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "appointment-relay-certs.XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("test certificates: mkdtemp failed");
    const std::string dir = pattern;
    certs.dir = dir;
    make_ca(dir, "ca");
    make_ca(dir, "client-ca");
    make_leaf(dir, "ca", "server",
              "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
              "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
    make_leaf(dir, "ca", "wrong-host",
              "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
              "subjectAltName=DNS:wrong.example\n");
    make_leaf(dir, "client-ca", "client",
              "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n");
    certs.ca_file = dir + "/ca.crt";
    certs.server_cert_file = dir + "/server.crt";
    certs.server_key_file = dir + "/server.key";
    certs.wrong_host_cert_file = dir + "/wrong-host.crt";
    certs.wrong_host_key_file = dir + "/wrong-host.key";
    certs.client_ca_file = dir + "/client-ca.crt";
    certs.client_cert_file = dir + "/client.crt";
    certs.client_key_file = dir + "/client.key";
  }
  ~owned_certificates() {
    std::error_code ignored;
    std::filesystem::remove_all(certs.dir, ignored);
  }
};

}  // namespace

const test_certificates& test_certs() {
  static const owned_certificates owned;
  return owned.certs;
}

}  // namespace appointment_relay::testing
