// Test helper: self-signed certificates written to files, as --tls-cert takes them.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace cvmgate::testing {

// Paths of a PEM chain and key.
struct TestCert {
  std::string chain;
  std::string key;
};

// A self-signed EC certificate for *.example.test, valid from now + `from_s` to now + `to_s`,
// written to <dir>/<name>.pem and .key.
inline TestCert MakeCert(const std::filesystem::path& dir, const std::string& name, long from_s, long to_s) {
  EVP_PKEY* pkey = EVP_EC_gen("P-256");
  X509* x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), from_s);
  X509_gmtime_adj(X509_getm_notAfter(x), to_s);
  X509_set_pubkey(x, pkey);
  X509_NAME* subject = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("*.example.test"),
                             -1, -1, 0);
  X509_set_issuer_name(x, subject);
  X509_sign(x, pkey, EVP_sha256());
  TestCert out{(dir / (name + ".pem")).string(), (dir / (name + ".key")).string()};
  FILE* f = std::fopen(out.chain.c_str(), "w");
  PEM_write_X509(f, x);
  std::fclose(f);
  f = std::fopen(out.key.c_str(), "w");
  PEM_write_PrivateKey(f, pkey, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  X509_free(x);
  EVP_PKEY_free(pkey);
  return out;
}

}  // namespace cvmgate::testing
