// Unit tests of the routing decision: every refusal, both verdicts, pinning, static ports and the
// gateway's own listeners, read from a route snapshot alone.
#include "dataplane/decide.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "dataplane/addresses.h"
#include "dataplane/tls.h"
#include "tests/common/test_cert.h"

namespace cvmgate {
namespace {

sockaddr_storage V4(const char* ip, uint16_t port) { return SockaddrFromIp(ip, port).value(); }

class DecideTest : public ::testing::Test {
 protected:
  DecideTest() : dir_(std::filesystem::temp_directory_path() / ("cvmgate-decide-" + std::to_string(getpid()))) {
    std::filesystem::create_directories(dir_);
    testing::TestCert cert = testing::MakeCert(dir_, "wild", -60, 86400);
    auto tls = TlsContexts::Load(domains_, {{"example.test", cert.chain, cert.key}});
    EXPECT_TRUE(tls.ok()) << tls.status();
    tls_ = *std::move(tls);
    PortSet web_ports = *PortSet::Parse("8080,9000-9001");
    PortSet self_ports = *PortSet::Parse("443");
    auto snap = RouteSnapshot::Build(
        {
            {"app", "app-1", "10.0.0.2", true},
            {"app", "app-2", "10.0.0.3", true},
            {"down", "down-1", "10.0.0.4", false},
            {"web", "web-1", "192.0.2.10", true, INT32_MAX, false, web_ports, false},
            {"loop", "loop-1", "127.0.0.2", true, INT32_MAX, false, self_ports, true},
        },
        nullptr, tls_);
    EXPECT_TRUE(snap.ok()) << snap.status();
    snap_ = *std::move(snap);
  }
  ~DecideTest() override { std::filesystem::remove_all(dir_); }

  Decision Ask(std::string_view host) { return Decide(host, {*snap_, domains_, listeners_}); }

  std::filesystem::path dir_;
  std::vector<std::string> domains_ = {"example.test", "plain.test"};  // a certificate for the first only
  std::vector<sockaddr_storage> listeners_ = {V4("0.0.0.0", 443)};
  std::shared_ptr<const TlsContexts> tls_;
  std::unique_ptr<const RouteSnapshot> snap_;
};

TEST_F(DecideTest, PassthroughGoesToTheAppsHealthyInstances) {
  Decision d = Ask("app-8080s.example.test");
  ASSERT_EQ(d.verdict, Decision::Verdict::kPassthrough);
  EXPECT_EQ(d.name.target.id, "app");
  EXPECT_EQ(d.name.target.port, 8080);
  EXPECT_EQ(d.found.healthy.size(), 2u);
  EXPECT_EQ(d.context, nullptr) << "passthrough needs no certificate";
  Decision other = Ask("app-8080s.plain.test");
  EXPECT_EQ(other.verdict, Decision::Verdict::kPassthrough) << "nor does a base domain without one";
}

TEST_F(DecideTest, TerminateCarriesTheContextOfItsModeAndDomain) {
  Decision d = Ask("app-8080.example.test");
  ASSERT_EQ(d.verdict, Decision::Verdict::kTerminate);
  EXPECT_EQ(d.context, tls_->context(0, false));
  Decision grpc = Ask("app-8080g.example.test");
  ASSERT_EQ(grpc.verdict, Decision::Verdict::kTerminate);
  EXPECT_EQ(grpc.context, tls_->context(0, true)) << "g: the ALPN h2 context";
  EXPECT_EQ(Ask("app.example.test").name.target.port, 80) << "terminated, no port: the instance's 80";
}

TEST_F(DecideTest, AnInstanceIdPinsThatInstance) {
  Decision d = Ask("app-2-8080s.example.test");
  ASSERT_FALSE(d.refused());
  ASSERT_EQ(d.found.healthy.size(), 1u);
  EXPECT_EQ(snap_->instances()[d.found.healthy[0]].id, "app-2");
}

TEST_F(DecideTest, EachRefusalNamesItsReason) {
  struct Case {
    const char* host;
    Counter refusal;
  };
  for (const Case& c : std::vector<Case>{
           {"-bad-.example.test", Counter::closed_bad_name},
           {"app-8080s.other.test", Counter::closed_unknown_domain},
           {"app-70000s.example.test", Counter::closed_bad_port},
           {"app-8080.plain.test", Counter::closed_no_certificate},
           {"nope-8080s.example.test", Counter::closed_unknown_app},
           {"down-8080s.example.test", Counter::closed_no_healthy_instance},
           {"web-2222s.example.test", Counter::closed_port_not_served},
           {"loop-443s.example.test", Counter::closed_own_listener},
       }) {
    Decision d = Ask(c.host);
    EXPECT_TRUE(d.refused()) << c.host;
    EXPECT_EQ(d.refusal, c.refusal) << c.host << ": " << kCounterInfo[static_cast<size_t>(d.refusal)].name;
  }
  EXPECT_EQ(Ask("app-8080s.other.test").name.status, NameStatus::kUnknownDomain);
}

TEST_F(DecideTest, AStaticInstanceServesOnlyItsPorts) {
  EXPECT_EQ(Ask("web-9001s.example.test").verdict, Decision::Verdict::kPassthrough);
  const RouteInputs in{*snap_, domains_, listeners_};
  Decision d = Ask("web-9001s.example.test");
  EXPECT_EQ(CountUsable(in, d.found, 9001), 1u);
  EXPECT_EQ(CountUsable(in, d.found, 9002), 0u);
  EXPECT_EQ(Route(in, d.found, 9002), Counter::closed_port_not_served);
  EXPECT_EQ(Route(in, d.found, 8080), std::nullopt);
}

// The same name decided against a newer snapshot (a handshake outlived the old one): Route() says so.
TEST_F(DecideTest, RouteAsksTheSnapshotItIsGiven) {
  Decision d = Ask("app-8080.example.test");
  ASSERT_EQ(d.verdict, Decision::Verdict::kTerminate);
  auto later = RouteSnapshot::Build({{"app", "app-1", "10.0.0.2", false}}, nullptr, tls_);
  ASSERT_TRUE(later.ok());
  const RouteInputs in{**later, domains_, listeners_};
  EXPECT_EQ(Route(in, (*later)->Find(d.name.target.id), d.name.target.port), Counter::closed_no_healthy_instance);
  auto gone = RouteSnapshot::Build({}, nullptr, tls_);
  const RouteInputs none{**gone, domains_, listeners_};
  EXPECT_EQ(Route(none, (*gone)->Find("app"), 8080), Counter::closed_unknown_app);
}

}  // namespace
}  // namespace cvmgate
