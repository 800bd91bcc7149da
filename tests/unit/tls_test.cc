// Unit tests of the TLS termination contexts: loading, and clear refusals of bad certificates.
#include "dataplane/tls.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "tests/common/test_cert.h"

namespace cvmgate {
namespace {

using testing::MakeCert;
using testing::TestCert;

class TlsContextsTest : public ::testing::Test {
 protected:
  TlsContextsTest() : dir_(std::filesystem::temp_directory_path() / ("cvmgate-tls-" + std::to_string(getpid()))) {
    std::filesystem::create_directories(dir_);
    good_ = MakeCert(dir_, "good", -60, 86400);
    other_ = MakeCert(dir_, "other", -60, 86400);
    expired_ = MakeCert(dir_, "expired", -86400, -3600);
  }
  ~TlsContextsTest() override { std::filesystem::remove_all(dir_); }

  std::string LoadError(const TlsCertSpec& spec) {
    auto r = TlsContexts::Load({"example.test", "other.test"}, {spec});
    EXPECT_FALSE(r.ok());
    return r.ok() ? "" : std::string(r.status().message());
  }

  std::filesystem::path dir_;
  TestCert good_, other_, expired_;
};

TEST_F(TlsContextsTest, OneContextPerDomainAndMode) {
  auto tls = TlsContexts::Load({"example.test", "other.test"}, {{"example.test", good_.chain, good_.key}});
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_NE((*tls)->context(0, false), nullptr);
  EXPECT_NE((*tls)->context(0, true), nullptr);
  EXPECT_NE((*tls)->context(0, false), (*tls)->context(0, true)) << "each mode has its own ALPN policy";
  EXPECT_EQ((*tls)->context(1, false), nullptr) << "no certificate for other.test";
  EXPECT_EQ((*tls)->context(7, false), nullptr);
  EXPECT_EQ(SSL_CTX_get_min_proto_version((*tls)->context(0, false)), TLS1_2_VERSION);
}

TEST_F(TlsContextsTest, BadCertificatesAreRefusedWithTheReason) {
  EXPECT_NE(LoadError({"example.test", good_.chain, other_.key}).find("does not match"), std::string::npos);
  EXPECT_NE(LoadError({"example.test", expired_.chain, expired_.key}).find("has expired"), std::string::npos);
  EXPECT_NE(LoadError({"example.test", "/nonexistent.pem", good_.key}).find("cannot load the chain"),
            std::string::npos);
  EXPECT_NE(LoadError({"example.test", good_.chain, "/nonexistent.key"}).find("cannot load the key"),
            std::string::npos);
  EXPECT_NE(LoadError({"elsewhere.test", good_.chain, good_.key}).find("not one of the --base-domain"),
            std::string::npos);
}

TEST_F(TlsContextsTest, PolicyIsAppliedAndBadListsAreRefused) {
  TlsPolicy only13;
  only13.min_version = TLS1_3_VERSION;
  auto tls = TlsContexts::Load({"example.test"}, {{"example.test", good_.chain, good_.key}}, nullptr, only13);
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_EQ(SSL_CTX_get_min_proto_version((*tls)->context(0, false)), TLS1_3_VERSION);
  TlsPolicy bad;
  bad.ciphers = "NO-SUCH-CIPHER";
  auto r = TlsContexts::Load({"example.test"}, {{"example.test", good_.chain, good_.key}}, nullptr, bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--tls-ciphers=NO-SUCH-CIPHER: no usable cipher"), std::string::npos);
  bad = TlsPolicy();
  bad.ciphersuites = "TLS_NOPE";
  r = TlsContexts::Load({"example.test"}, {{"example.test", good_.chain, good_.key}}, nullptr, bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("no usable TLS 1.3 suite"), std::string::npos);
}

}  // namespace
}  // namespace cvmgate
