// Unit tests of the host-name grammar `<id>[-<port>][s|g].<base-domain>`.
#include "dataplane/host_name.h"

#include <gtest/gtest.h>

namespace cvmgate {
namespace {

struct Good {
  const char* name;
  const char* id;
  uint16_t port;
  Mode mode;
  size_t base;
};

const std::vector<std::string> kBases = {"example.test", "gw.example.org"};

TEST(HostName, GoodNames) {
  std::vector<Good> cases = {
      {"app.example.test", "app", 80, Mode::kTerminate, 0},
      {"app-8080.example.test", "app", 8080, Mode::kTerminate, 0},
      {"app-8080s.example.test", "app", 8080, Mode::kPassthrough, 0},
      {"app-50051g.example.test", "app", 50051, Mode::kGrpc, 0},
      {"app-s.example.test", "app", 443, Mode::kPassthrough, 0},
      {"app-g.example.test", "app", 80, Mode::kGrpc, 0},
      {"my-app.example.test", "my-app", 80, Mode::kTerminate, 0},
      {"my-app-443s.example.test", "my-app", 443, Mode::kPassthrough, 0},
      {"My-App-443S.Example.TEST", "my-app", 443, Mode::kPassthrough, 0},
      {"app-1s.example.test.", "app", 1, Mode::kPassthrough, 0},
      {"app-65535.gw.example.org", "app", 65535, Mode::kTerminate, 1},
      {"a1b2c3d4e5f6-8080.example.test", "a1b2c3d4e5f6", 8080, Mode::kTerminate, 0},
      {"app-x9.example.test", "app-x9", 80, Mode::kTerminate, 0},  // "x9" is no suffix
      {"s.example.test", "s", 80, Mode::kTerminate, 0},
      {"a-b-c-8080.example.test", "a-b-c", 8080, Mode::kTerminate, 0},
  };
  for (const auto& c : cases) {
    NameResult r = ParseHostName(c.name, kBases);
    ASSERT_EQ(r.status, NameStatus::kOk) << c.name << ": " << NameStatusName(r.status);
    EXPECT_EQ(r.target.id, c.id) << c.name;
    EXPECT_EQ(r.target.port, c.port) << c.name;
    EXPECT_EQ(r.target.mode, c.mode) << c.name;
    EXPECT_EQ(r.target.base_domain, c.base) << c.name;
  }
}

TEST(HostName, BadNames) {
  struct Bad {
    std::string name;
    NameStatus want;
  };
  std::vector<Bad> cases = {
      {"app-0.example.test", NameStatus::kBadPort},
      {"app-65536.example.test", NameStatus::kBadPort},
      {"app-99999s.example.test", NameStatus::kBadPort},
      {"app-123456.example.test", NameStatus::kBadPort},
      {"app-08080.example.test", NameStatus::kBadPort},
      {"app.other.test", NameStatus::kUnknownDomain},
      {"app.example.test.evil", NameStatus::kUnknownDomain},
      {"x.app.example.test", NameStatus::kUnknownDomain},
      {"example.test", NameStatus::kUnknownDomain},
      {"localhost", NameStatus::kUnknownDomain},
      {"app.gw.example.org.example.test", NameStatus::kUnknownDomain},
      {"", NameStatus::kBadName},
      {".", NameStatus::kBadName},
      {".example.test", NameStatus::kBadName},
      {"-8080.example.test", NameStatus::kBadName},
      {"app_1.example.test", NameStatus::kBadName},
      {"app .example.test", NameStatus::kBadName},
      {"app.example.test..", NameStatus::kBadName},
      {std::string(64, 'a') + ".example.test", NameStatus::kBadName},
      // An id is a DNS label: it starts and ends with a letter or digit.
      {"app--8080.example.test", NameStatus::kBadName},
      {"--443s.example.test", NameStatus::kBadName},
      {"---443s.example.test", NameStatus::kBadName},
      {"-.example.test", NameStatus::kBadName},
      {"app-.example.test", NameStatus::kBadName},
      // The first label is at most 63 octets, even when the id inside it is shorter.
      {std::string(63, 'a') + "-443s.example.test", NameStatus::kBadName},
      {std::string(58, 'a') + "-8080s.example.test", NameStatus::kBadName},
  };
  for (const auto& c : cases) {
    NameResult r = ParseHostName(c.name, kBases);
    EXPECT_EQ(r.status, c.want) << c.name << ": " << NameStatusName(r.status);
  }
  EXPECT_EQ(ParseHostName(std::string(63, 'a') + ".example.test", kBases).status, NameStatus::kOk);
  EXPECT_EQ(ParseHostName(std::string(57, 'a') + "-8080s.example.test", kBases).status, NameStatus::kOk)
      << "a 63-octet label";
}

TEST(HostName, NameWithEmbeddedNulIsRefused) {
  std::string name("app\0-443s.example.test", 23);
  EXPECT_EQ(ParseHostName(name, kBases).status, NameStatus::kBadName);
}

TEST(HostName, NormalizeBaseDomain) {
  EXPECT_EQ(*NormalizeBaseDomain("Example.TEST."), "example.test");
  EXPECT_FALSE(NormalizeBaseDomain("").ok());
  EXPECT_FALSE(NormalizeBaseDomain("a..b").ok());
  EXPECT_FALSE(NormalizeBaseDomain("*.example.test").ok());
}

}  // namespace
}  // namespace cvmgate
