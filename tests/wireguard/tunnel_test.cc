// Two WireGuard peers in two namespaces: set peers, handshake, read it back, remove (uapi here, netlink in kernel-lab).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <absl/cleanup/cleanup.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <absl/time/clock.h>
#include "control/wireguard/genl.h"
#include "control/wireguard/wireguard.h"
#include "tests/wireguard/netns.h"

namespace cvmgate {
namespace {

using testing::Netns;
using testing::RunCommand;
using testing::ScopedNetns;

constexpr char kNsPrefix[] = "cvmgate-wgt-";
constexpr char kIfPrefix[] = "cvwg";
constexpr uint16_t kPortA = 51820, kPortB = 51821;

in_addr Ip(const char* text) {
  in_addr a{};
  inet_pton(AF_INET, text, &a);
  return a;
}

// Crypto under qemu's TCG (kernel-lab) is some 500 times slower.
absl::Duration Patience() { return absl::Seconds(90); }

class TunnelTest : public ::testing::Test {
 protected:
  // backend_a drives side A (the gateway), backend_b side B (the CVM); both
  // must come out as `expected`.
  void SetUpPair(const std::string& backend_a, const std::string& backend_b, const std::string& expected) {
    testing::CleanupStale(kNsPrefix, kIfPrefix);
    const std::string pid = std::to_string(getpid());
    if_a_ = kIfPrefix + std::string("a") + pid;
    if_b_ = kIfPrefix + std::string("b") + pid;
    for (const char* side : {"a", "b"}) {
      auto ns = Netns::Create(absl::StrCat(kNsPrefix, side, "-", pid));
      ASSERT_TRUE(ns.ok()) << ns.status();
      ns_.push_back(std::move(*ns));
    }
    const std::string veth_a = "cvva" + pid, veth_b = "cvvb" + pid;
    for (const auto& cmd : std::vector<std::vector<std::string>>{
             {"ip", "-n", ns_a(), "link", "add", veth_a, "type", "veth", "peer", "name", veth_b, "netns", ns_b()},
             {"ip", "-n", ns_a(), "addr", "add", "192.0.2.1/24", "dev", veth_a},
             {"ip", "-n", ns_b(), "addr", "add", "192.0.2.2/24", "dev", veth_b},
             {"ip", "-n", ns_a(), "link", "set", veth_a, "up"},
             {"ip", "-n", ns_b(), "link", "set", veth_b, "up"}}) {
      auto r = RunCommand(cmd);
      ASSERT_TRUE(r.ok()) << r.status();
    }
    auto ka = GeneratePrivateKey(), kb = GeneratePrivateKey();
    ASSERT_TRUE(ka.ok() && kb.ok());
    priv_a_ = *ka;
    priv_b_ = *kb;
    pub_a_ = *PublicKeyFromPrivate(priv_a_);
    pub_b_ = *PublicKeyFromPrivate(priv_b_);

    {
      ScopedNetns in(ns_a());
      ASSERT_TRUE(in.status().ok()) << in.status();
      auto made = EnsureInterface(backend_a, if_a_, "10.0.0.1/8");
      ASSERT_TRUE(made.ok()) << made.status();
      EXPECT_EQ(*made, expected);
      auto wg = OpenWireGuard(backend_a, if_a_);
      ASSERT_TRUE(wg.ok()) << wg.status();
      wg_a_ = std::move(*wg);
      EXPECT_EQ(wg_a_->backend(), expected);
      ASSERT_TRUE(wg_a_->Configure(priv_a_, kPortA).ok());
      // Adopting the interface a second time changes nothing and says the same.
      auto again = EnsureInterface("auto", if_a_, "10.0.0.1/8");
      ASSERT_TRUE(again.ok()) << again.status();
      EXPECT_EQ(*again, expected);
    }
    {
      ScopedNetns in(ns_b());
      ASSERT_TRUE(in.status().ok()) << in.status();
      auto made = EnsureInterface(backend_b, if_b_, "10.0.0.2/8");
      ASSERT_TRUE(made.ok()) << made.status();
      EXPECT_EQ(*made, expected);
      auto wg = OpenWireGuard(backend_b, if_b_);
      ASSERT_TRUE(wg.ok()) << wg.status();
      wg_b_ = std::move(*wg);
      EXPECT_EQ(wg_b_->backend(), expected);
      ASSERT_TRUE(wg_b_->Configure(priv_b_, kPortB).ok());
      ASSERT_TRUE(wg_b_->SetPeer(pub_a_, Ip("10.0.0.1")).ok());
    }
    // The CVM side dials the gateway: the endpoint is set with wireguard-tools,
    // since the gateway's interface never needs to set one.
    auto r = RunCommand({"ip", "netns", "exec", ns_b(), "wg", "set", if_b_, "peer", pub_a_.ToBase64(), "endpoint",
                         absl::StrCat("192.0.2.1:", kPortA)});
    ASSERT_TRUE(r.ok()) << r.status();
  }

  void TearDown() override {
    wg_a_.reset();
    wg_b_.reset();
    // wireguard-go keeps its namespace alive: stop it before deleting that.
    if (!if_a_.empty()) testing::StopWireguardGo(if_a_);
    if (!if_b_.empty()) testing::StopWireguardGo(if_b_);
    ns_.clear();
  }

  const std::string& ns_a() const { return ns_[0].name(); }
  const std::string& ns_b() const { return ns_[1].name(); }

  // A UDP datagram from B (10.0.0.2) to A (10.0.0.1) and A's answer back:
  // the first one makes B start the handshake.
  void ExchangeDatagrams() {
    int sa, sb;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr = Ip("10.0.0.1");
    a.sin_port = htons(7777);
    {
      ScopedNetns in(ns_a());
      ASSERT_TRUE(in.status().ok());
      sa = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      ASSERT_EQ(bind(sa, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0) << strerror(errno);
    }
    {
      ScopedNetns in(ns_b());
      ASSERT_TRUE(in.status().ok());
      sb = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    }
    auto close_both = absl::MakeCleanup([&] {
      close(sa);
      close(sb);
    });
    const absl::Time deadline = absl::Now() + Patience();
    char buf[64];
    sockaddr_in from{};
    socklen_t from_len = sizeof(from);
    bool got = false;
    // WireGuard queues a few packets while it handshakes, but a datagram
    // sent before the route exists can be lost: resend until one arrives.
    while (!got && absl::Now() < deadline) {
      ASSERT_EQ(sendto(sb, "ping", 4, 0, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 4) << strerror(errno);
      pollfd pfd{sa, POLLIN, 0};
      if (poll(&pfd, 1, 500) == 1) {
        ssize_t n = recvfrom(sa, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &from_len);
        got = n == 4 && memcmp(buf, "ping", 4) == 0;
      }
    }
    ASSERT_TRUE(got) << "no datagram crossed the tunnel B -> A within " << absl::FormatDuration(Patience());
    char src[INET_ADDRSTRLEN];
    EXPECT_STREQ(inet_ntop(AF_INET, &from.sin_addr, src, sizeof(src)), "10.0.0.2");
    ASSERT_EQ(sendto(sa, "pong", 4, 0, reinterpret_cast<sockaddr*>(&from), from_len), 4);
    pollfd pfd{sb, POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()))), 1)
        << "A's answer did not cross the tunnel A -> B";
    ASSERT_EQ(recv(sb, buf, sizeof(buf), 0), 4);
    EXPECT_EQ(std::string(buf, 4), "pong");
  }

  // The gateway side's view of peers through `wg show IF dump`: key -> fields.
  std::map<std::string, std::vector<std::string>> WgShowA() {
    auto text = RunCommand({"ip", "netns", "exec", ns_a(), "wg", "show", if_a_, "dump"});
    EXPECT_TRUE(text.ok()) << text.status();
    std::map<std::string, std::vector<std::string>> peers;
    if (!text.ok()) return peers;
    std::vector<std::string> lines = absl::StrSplit(*text, '\n', absl::SkipEmpty());
    for (size_t i = 1; i < lines.size(); ++i) {
      std::vector<std::string> f = absl::StrSplit(lines[i], '\t');
      if (!f.empty()) peers[f[0]] = f;
    }
    return peers;
  }

  void HandshakeThenRemove() {
    // The gateway adds the CVM with its /32, first a wrong one: SetPeer
    // must replace allowed-ips, not add to them.
    ASSERT_TRUE(wg_a_->SetPeer(pub_b_, Ip("10.0.0.9")).ok());
    ASSERT_TRUE(wg_a_->SetPeer(pub_b_, Ip("10.0.0.2")).ok());
    auto before = wg_a_->GetDevice();
    ASSERT_TRUE(before.ok()) << before.status();
    EXPECT_EQ(before->ifname, if_a_);
    EXPECT_TRUE(before->has_private_key);
    EXPECT_EQ(before->public_key, pub_a_);
    EXPECT_EQ(before->listen_port, kPortA);
    ASSERT_EQ(before->peers.size(), 1u);
    EXPECT_EQ(before->peers[0].public_key, pub_b_);
    EXPECT_EQ(before->peers[0].allowed_ips, (std::vector<std::string>{"10.0.0.2/32"}));
    EXPECT_EQ(before->peers[0].last_handshake_sec, 0);

    ExchangeDatagrams();
    if (HasFatalFailure()) return;

    auto after = wg_a_->GetDevice();
    ASSERT_TRUE(after.ok()) << after.status();
    ASSERT_EQ(after->peers.size(), 1u);
    const WgPeer& p = after->peers[0];
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    EXPECT_GT(p.last_handshake_sec, now - 60) << "the handshake should be within the last minute";
    EXPECT_LE(p.last_handshake_sec, now + 1);
    EXPECT_EQ(p.endpoint, absl::StrCat("192.0.2.2:", kPortB));
    EXPECT_GT(p.rx_bytes, 0u);
    EXPECT_GT(p.tx_bytes, 0u);

    // wireguard-tools reads the same device the same way.
    auto wg = WgShowA();
    ASSERT_EQ(wg.count(pub_b_.ToBase64()), 1u);
    const auto& f = wg[pub_b_.ToBase64()];
    ASSERT_EQ(f.size(), 8u);
    EXPECT_EQ(f[2], p.endpoint);
    EXPECT_EQ(f[3], "10.0.0.2/32");
    EXPECT_EQ(f[4], std::to_string(p.last_handshake_sec));

    ASSERT_TRUE(wg_a_->RemovePeer(pub_b_).ok());
    auto gone = wg_a_->GetDevice();
    ASSERT_TRUE(gone.ok()) << gone.status();
    EXPECT_TRUE(gone->peers.empty());
    EXPECT_TRUE(WgShowA().empty());
    // Removing a peer that is not there is not an error.
    absl::Status again = wg_a_->RemovePeer(pub_b_);
    EXPECT_TRUE(again.ok()) << again;
  }

  // Enough peers that the kernel splits its dump over several messages.
  void ManyPeers(int count) {
    std::map<std::string, std::string> want;  // base64 key -> allowed-ip
    std::vector<WgKey> keys;
    for (int i = 0; i < count; ++i) {
      auto priv = GeneratePrivateKey();
      ASSERT_TRUE(priv.ok());
      WgKey pub = *PublicKeyFromPrivate(*priv);
      in_addr ip;
      ip.s_addr = htonl((10u << 24) | (1u << 16) | static_cast<uint32_t>(i + 1));
      absl::Status st = wg_a_->SetPeer(pub, ip);
      ASSERT_TRUE(st.ok()) << st;
      char text[INET_ADDRSTRLEN];
      want[pub.ToBase64()] = absl::StrCat(inet_ntop(AF_INET, &ip, text, sizeof(text)), "/32");
      keys.push_back(pub);
    }
    auto d = wg_a_->GetDevice();
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_EQ(d->peers.size(), static_cast<size_t>(count));
    for (const WgPeer& p : d->peers) {
      auto it = want.find(p.public_key.ToBase64());
      ASSERT_NE(it, want.end());
      EXPECT_EQ(p.allowed_ips, std::vector<std::string>{it->second});
    }
    for (const WgKey& k : keys) ASSERT_TRUE(wg_a_->RemovePeer(k).ok());
    auto empty = wg_a_->GetDevice();
    ASSERT_TRUE(empty.ok()) << empty.status();
    EXPECT_TRUE(empty->peers.empty());
  }

  std::vector<Netns> ns_;
  std::string if_a_, if_b_;
  WgKey priv_a_, priv_b_, pub_a_, pub_b_;
  std::unique_ptr<WireGuard> wg_a_, wg_b_;
};

// --- wireguard-go on this host --------------------------------------------

class Uapi : public TunnelTest {
 protected:
  void SetUp() override {
    if (!testing::HaveCommand("wireguard-go"))
      GTEST_SKIP() << "wireguard-go is not installed (tools/setup installs it)";
    // Side B shows that "auto" falls back to wireguard-go where the kernel
    // has no WireGuard; where it has, "auto" would rightly pick the kernel.
    SetUpPair("uapi", KernelHasWireGuard() ? "uapi" : "auto", "uapi");
  }
  static bool KernelHasWireGuard() { return OpenNetlinkWireGuard("probe").ok(); }
};

TEST_F(Uapi, HandshakeThenRemove) { HandshakeThenRemove(); }
TEST_F(Uapi, ManyPeers) { ManyPeers(300); }

TEST_F(Uapi, ErrorsNameWhatWasTried) {
  ScopedNetns in(ns_a());
  auto bad = EnsureInterface("uapi", if_a_, "10.0.0.1");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("expected IPv4 address/prefix"), std::string::npos);
  auto wrong = EnsureInterface("netlink", if_a_, "10.0.0.1/8");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(std::string(wrong.status().message()).find("wireguard-go's: the netlink backend cannot drive it"),
            std::string::npos)
      << wrong.status();
  if (KernelHasWireGuard()) return;  // the rest is about a kernel without WireGuard
  auto nl = OpenWireGuard("netlink", if_a_);
  ASSERT_FALSE(nl.ok());
  EXPECT_NE(std::string(nl.status().message()).find("the kernel has no WireGuard"), std::string::npos) << nl.status();
  auto none = OpenWireGuard("auto", "cvwgnone");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(std::string(none.status().message()).find("netlink: the kernel has no WireGuard"), std::string::npos)
      << none.status();
  EXPECT_NE(std::string(none.status().message()).find("wireguard-go is not running for cvwgnone"), std::string::npos)
      << none.status();
  auto kernel_only = EnsureInterface("netlink", "cvwgk" + std::to_string(getpid()), "10.9.0.1/24");
  ASSERT_FALSE(kernel_only.ok());
  EXPECT_NE(std::string(kernel_only.status().message()).find("use the uapi backend"), std::string::npos)
      << kernel_only.status();
}

// --- kernel WireGuard under tools/kernel-lab/run-in-kernel ----------------

class Netlink : public TunnelTest {
 protected:
  void SetUp() override {
    if (!OpenNetlinkWireGuard("probe").ok()) {
      GTEST_SKIP()
          << "this kernel has no WireGuard: run under tools/kernel-lab/run-in-kernel (meson test --suite kernel)";
    }
    SetUpPair("netlink", "auto", "netlink");
  }
};

TEST_F(Netlink, HandshakeThenRemove) { HandshakeThenRemove(); }
TEST_F(Netlink, ManyPeers) { ManyPeers(300); }

TEST_F(Netlink, ErrorsNameWhatWasTried) {
  ScopedNetns in(ns_a());
  auto uapi = OpenWireGuard("uapi", if_a_);
  ASSERT_FALSE(uapi.ok());
  EXPECT_NE(std::string(uapi.status().message()).find("wireguard-go is not running for " + if_a_), std::string::npos)
      << uapi.status();
  auto lo = OpenWireGuard("netlink", "lo");
  ASSERT_FALSE(lo.ok());
  EXPECT_NE(std::string(lo.status().message()).find("lo is a plain link, not a kernel WireGuard one"),
            std::string::npos)
      << lo.status();
  auto wrong = EnsureInterface("uapi", if_a_, "10.0.0.1/8");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(std::string(wrong.status().message()).find("a kernel WireGuard link: the uapi backend cannot drive it"),
            std::string::npos)
      << wrong.status();
}

}  // namespace
}  // namespace cvmgate
