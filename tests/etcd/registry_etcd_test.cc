// The registry kept in etcd: two gateway nodes (two Registry objects, each with its own EtcdStore)
// on one real 3-member etcd cluster.
#include "control/etcd/registry_store.h"

#include <poll.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <thread>

#include "tests/common/etcd_cluster.h"

namespace cvmgate {
namespace {

std::string Key(uint32_t n, uint8_t node) {
  WgKey k;
  k.bytes[0] = node;
  std::memcpy(k.bytes.data() + 1, &n, sizeof(n));
  return k.ToBase64();
}

class RegistryEtcdTest : public testing::WithEtcdCluster {
 protected:

  // A gateway node's registry on this test's own prefix.
  std::unique_ptr<Registry> Node(absl::Duration timeout = absl::Seconds(2), bool watch = true) {
    EtcdOptions o;
    o.endpoints = cluster_->ClientUrls();
    o.timeout = timeout;
    auto store = EtcdStore::Open(o, Prefix());
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return nullptr;
    EtcdStore* raw = store->get();
    auto pool = IpPool::Create("10.9.0.0/22", "10.9.0.1");
    auto reg = std::make_unique<Registry>(*std::move(pool), *std::move(store));
    EXPECT_TRUE(reg->Load().ok());
    if (watch) raw->StartWatching();
    return reg;
  }
  static std::string Prefix() {
    return std::string("/t/") + ::testing::UnitTest::GetInstance()->current_test_info()->name() + "/";
  }
  // Waits (bounded) for `node`'s store to report a change from elsewhere, and takes it in. (The store
  // also wakes the node for its own writes, which bring nothing to take in.)
  static bool CatchUp(Registry& node, std::chrono::milliseconds within = std::chrono::milliseconds(5000)) {
    auto deadline = std::chrono::steady_clock::now() + within;
    while (std::chrono::steady_clock::now() < deadline) {
      if (!Changed(node, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()))) {
        return false;
      }
      auto changed = node.CatchUp();
      if (!changed.ok()) return false;
      if (*changed) return true;
    }
    return false;
  }
  static bool Changed(Registry& node, std::chrono::milliseconds within) {
    pollfd p{node.store().changes_fd(), POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(within.count())) != 1) return false;
    uint64_t n;
    (void)!read(p.fd, &n, sizeof(n));
    return true;
  }
  std::unique_ptr<EtcdClient> Client() {
    EtcdOptions o;
    o.endpoints = cluster_->ClientUrls();
    return *EtcdClient::Connect(o);
  }
};

TEST_F(RegistryEtcdTest, ARegistrationOnOneNodeReachesTheOther) {
  auto a = Node();
  auto b = Node();
  ASSERT_TRUE(a && b);
  auto reg = a->Register("shop", "shop-1", Key(1, 1));
  ASSERT_TRUE(reg.ok()) << reg.status();
  auto started = std::chrono::steady_clock::now();
  ASSERT_TRUE(CatchUp(*b)) << "node B hears of the change";
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(1));
  ASSERT_TRUE(b->instances().contains("shop-1"));
  EXPECT_EQ(b->instances().at("shop-1").address, reg->reg.address) << "the same /32 on both nodes";
  ASSERT_TRUE(b->SetAppSettings("shop", AppSettings{true, 50}).ok());
  ASSERT_TRUE(CatchUp(*a));
  EXPECT_EQ(a->app_settings("shop").max_connections, 50);

  auto gone = b->Deregister("shop-1");
  ASSERT_TRUE(gone.ok()) << gone.status();
  ASSERT_TRUE(CatchUp(*a));
  EXPECT_FALSE(a->instances().contains("shop-1"));
  auto claims = Client()->GetPrefix(Prefix() + "claims/");
  ASSERT_TRUE(claims.ok());
  EXPECT_TRUE(claims->kvs.empty()) << "a deregistered instance holds no claim";
}

TEST_F(RegistryEtcdTest, ANodeThatIsBehindRedoesItsChangeOnWhatIsThere) {
  auto a = Node();
  auto b = Node();
  ASSERT_TRUE(a && b);
  // B has not heard of A's instance "web" when it tries to use "web" as an app id.
  ASSERT_TRUE(a->Register("site", "web", Key(1, 2)).ok());
  auto clash = b->Register("web", "web-1", Key(2, 2));
  ASSERT_FALSE(clash.ok()) << "the registry's rules hold across nodes";
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kAlreadyExists) << clash.status();
  // And one that does not clash gets an address A does not hold.
  auto other = b->Register("site", "web-2", Key(3, 2));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NE(other->reg.address, a->instances().at("web").address);
  EXPECT_TRUE(b->instances().contains("web")) << "B read what A wrote before redoing its change";
}

TEST_F(RegistryEtcdTest, RacingRegistrationsNeverShareAnAddress) {
  constexpr int kPerNode = 60;
  auto a = Node(absl::Seconds(5));
  auto b = Node(absl::Seconds(5));
  ASSERT_TRUE(a && b);
  std::vector<std::string> acked[2];
  std::vector<std::string> failed[2];
  auto run = [&](Registry& node, int n) {
    for (int i = 0; i < kPerNode; ++i) {
      std::string id = "app-" + std::to_string(n) + "-" + std::to_string(i);
      auto r = node.Register("race", id, Key(i, static_cast<uint8_t>(10 + n)));
      (r.ok() ? acked[n] : failed[n]).push_back(r.ok() ? id : std::string(r.status().message()));
    }
  };
  std::thread ta([&] { run(*a, 0); });
  std::thread tb([&] { run(*b, 1); });
  ta.join();
  tb.join();
  EXPECT_TRUE(failed[0].empty() && failed[1].empty())
      << (failed[0].empty() ? "" : failed[0][0]) << (failed[1].empty() ? "" : failed[1][0]);
  auto reader = Node();
  ASSERT_TRUE(reader);
  std::set<std::string> addresses;
  for (const auto& [id, reg] : reader->instances()) addresses.insert(reg.address);
  EXPECT_EQ(reader->instances().size(), acked[0].size() + acked[1].size());
  EXPECT_EQ(addresses.size(), reader->instances().size()) << "no address handed out twice";
  for (int n : {0, 1}) {
    for (const std::string& id : acked[n]) EXPECT_TRUE(reader->instances().contains(id)) << id << " was acknowledged";
  }
  auto claims = Client()->GetPrefix(Prefix() + "claims/address/");
  ASSERT_TRUE(claims.ok());
  EXPECT_EQ(claims->kvs.size(), addresses.size()) << "one claim per address";
}

TEST_F(RegistryEtcdTest, ANodeTakesInWhatOthersWroteAndNotItsOwnWrites) {
  auto a = Node();
  auto b = Node();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(b->Register("mine", "mine-1", Key(1, 40)).ok());
  ASSERT_TRUE(a->Register("theirs", "theirs-1", Key(2, 40)).ok());
  // The watch brings B both writes, in order; B's update holds A's only (its own is in its copy).
  std::set<std::string> seen;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!seen.contains("theirs-1") && std::chrono::steady_clock::now() < deadline) {
    if (!Changed(*b, std::chrono::milliseconds(1000))) continue;
    RegistryUpdate u = b->store().TakeUpdate();
    EXPECT_FALSE(u.resync);
    for (const auto& [id, value] : u.instances) seen.insert(id);
  }
  EXPECT_TRUE(seen.contains("theirs-1"));
  EXPECT_FALSE(seen.contains("mine-1")) << "a node's own write is not handed back to it";
}

TEST_F(RegistryEtcdTest, AWatchBehindACompactionReadsTheRegistryWholeAndGoesOn) {
  auto a = Node();
  auto b = Node(absl::Seconds(2), /*watch=*/false);
  ASSERT_TRUE(a && b);
  for (uint32_t i = 0; i < 3; ++i) ASSERT_TRUE(a->Register("old", "old-" + std::to_string(i), Key(i, 50)).ok());
  auto now = Client()->Put("/t-marker", "");
  ASSERT_TRUE(now.ok()) << now.status();
  ASSERT_TRUE(Client()->Compact(*now).ok());
  // B's watch starts from the revision B last read, which etcd no longer has.
  static_cast<EtcdStore&>(b->store()).StartWatching();
  ASSERT_TRUE(Changed(*b, std::chrono::milliseconds(5000)));
  RegistryUpdate whole = b->store().TakeUpdate();
  EXPECT_TRUE(whole.resync) << "the history B missed is gone: it reads the registry whole";
  static_cast<EtcdStore&>(b->store()).StartWatching();  // already running: no second watch
  ASSERT_TRUE(b->Load().ok());
  EXPECT_EQ(b->instances().size(), 3u);
  // And the watch goes on from there.
  ASSERT_TRUE(a->Register("new", "new-1", Key(9, 50)).ok());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!b->instances().contains("new-1") && std::chrono::steady_clock::now() < deadline) {
    if (Changed(*b, std::chrono::milliseconds(1000))) {
      ASSERT_TRUE(b->CatchUp().ok());
    }
  }
  EXPECT_TRUE(b->instances().contains("new-1"));
}

// Last: it stops members.
TEST_F(RegistryEtcdTest, ZWithoutQuorumAWriteFailsFastAndChangesNothing) {
  auto a = Node(absl::Milliseconds(1500));
  ASSERT_TRUE(a);
  ASSERT_TRUE(a->Register("calm", "calm-1", Key(1, 30)).ok());
  cluster_->Stop(1);
  cluster_->Stop(2);
  auto started = std::chrono::steady_clock::now();
  auto r = a->Register("calm", "calm-2", Key(2, 30));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(8));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsUnavailable(r.status()) || absl::IsDeadlineExceeded(r.status())) << r.status();
  EXPECT_FALSE(a->instances().contains("calm-2")) << "memory is rolled back";
  EXPECT_TRUE(a->instances().contains("calm-1")) << "and keeps what it had";
  cluster_->Start(1);
  cluster_->Start(2);
  ASSERT_TRUE(cluster_->WaitReady());
  auto again = a->Register("calm", "calm-2", Key(2, 30));
  EXPECT_TRUE(again.ok()) << again.status();
}

}  // namespace
}  // namespace cvmgate
