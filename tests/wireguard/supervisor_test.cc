// Unit tests of the WireGuard supervisor, stepped by hand against a fake interface: reconciliation, handshakes
// that survive a restore, a gone interface brought back with its key, port, peers and endpoints, a stuck
// wireguard-go killed after --wg-restart-after, backoff between failed restores.
#include "control/wireguard/supervisor.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>

namespace cvmgate {
namespace {

constexpr char kKey1[] = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
constexpr char kKey2[] = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
constexpr char kStray[] = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";
const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

WgKey Key(const char* b64) { return *WgKey::FromBase64(b64); }
in_addr Ip(const char* text) {
  in_addr a{};
  inet_pton(AF_INET, text, &a);
  return a;
}

// The interface as the fakes share it: the platform recreates it, backends read and write it.
struct FakeInterface {
  bool exists = true;
  absl::Status read_error;  // GetDevice fails with this while it is an error
  WgKey private_key;
  uint16_t port = 0;
  std::map<std::string, WgPeer> peers;  // by base64 key
  std::map<std::string, std::string> endpoints_set;
};

class FakeWireGuard : public WireGuard {
 public:
  FakeWireGuard(FakeInterface* i, std::string backend) : i_(i), backend_(std::move(backend)) {}
  std::string_view backend() const override { return backend_; }
  absl::StatusOr<WgDevice> GetDevice() override {
    if (!i_->exists) return absl::NotFoundError("no such device");
    if (!i_->read_error.ok()) return i_->read_error;
    WgDevice d;
    d.has_private_key = true;
    d.private_key = i_->private_key;
    d.public_key = *PublicKeyFromPrivate(i_->private_key);
    for (auto& [k, p] : i_->peers) d.peers.push_back(p);
    return d;
  }
  using WireGuard::SetPeer;
  absl::Status SetPeer(const WgKey& key, const in_addr& ip, std::string_view endpoint) override {
    if (!i_->exists) return absl::NotFoundError("no such device");
    WgPeer& p = i_->peers[key.ToBase64()];
    p.public_key = key;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &ip, buf, sizeof(buf));
    p.allowed_ips = {std::string(buf) + "/32"};
    if (!endpoint.empty()) i_->endpoints_set[key.ToBase64()] = std::string(endpoint);
    return absl::OkStatus();
  }
  absl::Status RemovePeer(const WgKey& key) override {
    i_->peers.erase(key.ToBase64());
    return absl::OkStatus();
  }
  absl::Status Configure(const WgKey& key, uint16_t port) override {
    i_->private_key = key;
    i_->port = port;
    return absl::OkStatus();
  }

 private:
  FakeInterface* i_;
  std::string backend_;
};

class FakePlatform : public TunnelPlatform {
 public:
  FakePlatform(FakeInterface* i, std::string backend) : i_(i), backend_(std::move(backend)) {}
  absl::StatusOr<std::string> Ensure(const std::string&, const std::string&, const std::string&) override {
    ++ensures;
    if (!ensure_error.ok()) return ensure_error;
    *i_ = FakeInterface();  // a new interface: no key, no peers, no handshakes
    daemon = backend_ == "uapi" ? 4'000'000 + ensures : -1;
    return backend_;
  }
  absl::StatusOr<std::unique_ptr<WireGuard>> Open(const std::string& backend, const std::string&) override {
    return std::unique_ptr<WireGuard>(new FakeWireGuard(i_, backend));
  }
  absl::StatusOr<bool> LinkExists(const std::string&) override { return i_->exists; }
  pid_t Daemon(const std::string&) override { return daemon; }
  void Nudge(const in_addr& ip) override {
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &ip, text, sizeof(text));
    nudged.push_back(text);
  }
  void Kill(pid_t pid, absl::Duration) override {
    killed.push_back(pid);
    daemon = -1;
    i_->exists = false;  // wireguard-go's interface goes with it
  }

  pid_t daemon = -1;
  int ensures = 0;
  absl::Status ensure_error;
  std::vector<pid_t> killed;
  std::vector<std::string> nudged;

 private:
  FakeInterface* i_;
  std::string backend_;
};

class SupervisorTest : public ::testing::Test {
 protected:
  void Make(const std::string& backend, bool keep_unknown = false) {
    iface_.private_key = Key(kKey2);
    auto platform = std::make_unique<FakePlatform>(&iface_, backend);
    platform_ = platform.get();
    if (backend == "uapi") platform_->daemon = 4'000'000;
    WireGuardSupervisor::Options o;
    o.ifname = "wgtest";
    o.backend = backend;
    o.address_cidr = "10.0.0.1/8";
    o.private_key = Key(kKey2);
    o.listen_port = 51999;
    o.keep_unknown_peers = keep_unknown;
    o.restart_after = absl::Seconds(10);
    sup_ = std::make_unique<WireGuardSupervisor>(o, std::make_unique<FakeWireGuard>(&iface_, backend),
                                                 std::move(platform));
  }
  WgPeer& Peer(const char* key) {
    WgPeer& p = iface_.peers[key];
    p.public_key = Key(key);
    return p;
  }

  FakeInterface iface_;
  FakePlatform* platform_ = nullptr;
  std::unique_ptr<WireGuardSupervisor> sup_;
};

TEST_F(SupervisorTest, ReadsMakesThePeersMatchAndRecordsHandshakes) {
  Make("netlink");
  Peer(kKey1).allowed_ips = {"10.0.0.9/32"};  // a wrong /32
  Peer(kKey1).last_handshake_sec = 1000;
  Peer(kStray);
  sup_->Want({{Key(kKey1), Ip("10.0.0.2")}, {Key(kKey2), Ip("10.0.0.3")}}, 7);
  EXPECT_EQ(sup_->Step(kT0), kT0 + absl::Seconds(10));
  EXPECT_EQ(iface_.peers[kKey1].allowed_ips, std::vector<std::string>{"10.0.0.2/32"});
  EXPECT_EQ(iface_.peers[kKey2].allowed_ips, std::vector<std::string>{"10.0.0.3/32"});
  EXPECT_FALSE(iface_.peers.contains(kStray)) << "a peer the registry does not know goes";
  Tunnel::View v = sup_->Read();
  EXPECT_TRUE(v.readable);
  EXPECT_EQ(v.applied, 7u);
  EXPECT_EQ(v.last_read, kT0);
  EXPECT_EQ(v.handshakes[kKey1], 1000);
  EXPECT_EQ(v.handshakes[kKey2], 0);
  EXPECT_EQ(v.public_key, PublicKeyFromPrivate(Key(kKey2))->ToBase64());
  EXPECT_TRUE(sup_->WaitApplied(7, absl::ZeroDuration()));
}

TEST_F(SupervisorTest, KeepingUnknownPeersStillRemovesTheOnesItSetAndNoLongerWants) {
  Make("netlink", /*keep_unknown=*/true);
  Peer(kStray);
  sup_->Want({{Key(kKey1), Ip("10.0.0.2")}}, 1);
  sup_->Step(kT0);
  ASSERT_TRUE(iface_.peers.contains(kKey1));
  sup_->Want({}, 2);  // deregistered
  sup_->Step(kT0 + absl::Seconds(1));
  EXPECT_FALSE(iface_.peers.contains(kKey1));
  EXPECT_TRUE(iface_.peers.contains(kStray)) << "--wg-keep-unknown-peers keeps what it never set";
}

TEST_F(SupervisorTest, AGoneInterfaceIsRecreatedWithItsKeyPortPeersAndEndpoints) {
  Make("netlink");
  Peer(kKey1).last_handshake_sec = 1000;
  Peer(kKey1).endpoint = "192.0.2.2:51821";
  sup_->Want({{Key(kKey1), Ip("10.0.0.2")}, {Key(kKey2), Ip("10.0.0.3")}}, 1);
  sup_->Step(kT0);
  iface_.exists = false;  // ip link del
  EXPECT_EQ(sup_->Step(kT0 + absl::Seconds(10)), kT0 + absl::Seconds(20));
  EXPECT_EQ(platform_->ensures, 1);
  EXPECT_TRUE(iface_.exists);
  EXPECT_EQ(iface_.private_key, Key(kKey2));
  EXPECT_EQ(iface_.port, 51999);
  EXPECT_EQ(iface_.peers[kKey1].allowed_ips, std::vector<std::string>{"10.0.0.2/32"});
  EXPECT_EQ(iface_.peers[kKey2].allowed_ips, std::vector<std::string>{"10.0.0.3/32"});
  EXPECT_EQ(iface_.endpoints_set[kKey1], "192.0.2.2:51821") << "so the gateway can start the handshake itself";
  EXPECT_EQ(platform_->nudged, (std::vector<std::string>{"10.0.0.2", "10.0.0.3"})) << "and does, at once";
  Tunnel::View v = sup_->Read();
  EXPECT_EQ(v.restores, 1u);
  EXPECT_TRUE(v.readable);
  EXPECT_EQ(v.handshakes[kKey1], 1000) << "the new device starts at 0; what was seen stays until it ages";
}

TEST_F(SupervisorTest, AStuckWireguardGoIsKilledAfterRestartAfterThenReplaced) {
  Make("uapi");
  sup_->Want({{Key(kKey1), Ip("10.0.0.2")}}, 1);
  sup_->Step(kT0);
  iface_.read_error = absl::DeadlineExceededError("wireguard-go did not answer within 2s");  // SIGSTOP
  absl::Time t = kT0 + absl::Seconds(10);
  EXPECT_EQ(sup_->Step(t), t + absl::Milliseconds(500)) << "read again soon";
  EXPECT_FALSE(sup_->Read().readable);
  EXPECT_FALSE(sup_->WaitApplied(99, absl::Seconds(30))) << "an unreadable tunnel is not waited for";
  EXPECT_TRUE(platform_->killed.empty());
  sup_->Step(t + absl::Seconds(5));
  EXPECT_TRUE(platform_->killed.empty()) << "5 s without an answer is not yet 10";
  sup_->Step(t + absl::Seconds(11));
  EXPECT_EQ(platform_->killed, std::vector<pid_t>{4'000'000});
  EXPECT_EQ(platform_->ensures, 1);
  Tunnel::View v = sup_->Read();
  EXPECT_EQ(v.wireguard_go_kills, 1u);
  EXPECT_EQ(v.restores, 1u);
  EXPECT_TRUE(v.readable);
  EXPECT_TRUE(iface_.peers.contains(kKey1));
}

TEST_F(SupervisorTest, AMissingWireguardGoIsReplacedAtOnce) {
  Make("uapi");
  sup_->Step(kT0);
  platform_->daemon = -1;  // kill -9
  iface_.read_error = absl::NotFoundError("cannot connect to /var/run/wireguard/wgtest.sock");
  sup_->Step(kT0 + absl::Seconds(1));
  EXPECT_EQ(platform_->ensures, 1);
  EXPECT_EQ(sup_->Read().restores, 1u);
}

TEST_F(SupervisorTest, FailedRestoresBackOffUpToTheCapThenSucceed) {
  Make("netlink");
  sup_->Step(kT0);
  iface_.exists = false;
  platform_->ensure_error = absl::UnavailableError("RTM_NEWLINK: no memory");
  absl::Time t = kT0 + absl::Seconds(1);
  std::vector<absl::Duration> waits;
  for (int i = 0; i < 9; ++i) {
    absl::Time next = sup_->Step(t);
    waits.push_back(next - t);
    t = next;
  }
  EXPECT_EQ(waits, (std::vector<absl::Duration>{absl::Milliseconds(500), absl::Seconds(1), absl::Seconds(2),
                                                absl::Seconds(4), absl::Seconds(8), absl::Seconds(16),
                                                absl::Seconds(30), absl::Seconds(30), absl::Seconds(30)}));
  EXPECT_EQ(sup_->Read().restore_failures, 9u);
  platform_->ensure_error = absl::OkStatus();
  EXPECT_EQ(sup_->Step(t), t + absl::Seconds(10));
  EXPECT_EQ(sup_->Read().restores, 1u);
  iface_.exists = false;
  platform_->ensure_error = absl::UnavailableError("again");
  EXPECT_EQ(sup_->Step(t), t + absl::Milliseconds(500)) << "a success starts the backoff over";
}

TEST_F(SupervisorTest, KernelReadErrorsWithTheLinkThereAreRetriedNotRecreated) {
  Make("netlink");
  sup_->Step(kT0);
  iface_.read_error = absl::UnavailableError("reading WireGuard device wgtest: no buffer space");
  EXPECT_EQ(sup_->Step(kT0 + absl::Seconds(10)), kT0 + absl::Seconds(10) + absl::Milliseconds(500));
  EXPECT_EQ(platform_->ensures, 0);
  Tunnel::View v = sup_->Read();
  EXPECT_EQ(v.read_failures, 1u);
  EXPECT_EQ(v.last_read, kT0) << "the last read that worked";
}

}  // namespace
}  // namespace cvmgate
