// The etcd client against a real 3-member etcd cluster on loopback (started by the test).
#include "control/etcd/client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>

#include "tests/common/etcd_cluster.h"

namespace cvmgate {
namespace {

class EtcdClientTest : public testing::WithEtcdCluster {
 protected:
  void SetUp() override {
    if (cluster_ == nullptr) GTEST_SKIP() << "no etcd cluster";
    client_ = Client(cluster_->ClientUrls());
    ASSERT_NE(client_, nullptr);
  }
  static std::unique_ptr<EtcdClient> Client(std::vector<std::string> endpoints,
                                            absl::Duration timeout = absl::Seconds(2)) {
    EtcdOptions o;
    o.endpoints = std::move(endpoints);
    o.timeout = timeout;
    auto c = EtcdClient::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }
  // A prefix of this test's own.
  static std::string Prefix() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return std::string("/t/") + info->name() + "/";
  }

  std::unique_ptr<EtcdClient> client_;
};

TEST(EtcdEndpoints, ParsesAndRefuses) {
  auto ok = ParseEtcdEndpoints("http://10.0.0.1:2379, https://etcd-2.example:2379/");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, (std::vector<std::string>{"http://10.0.0.1:2379", "https://etcd-2.example:2379/"}));
  EXPECT_EQ(ParseEtcdEndpoints("10.0.0.1:2379").status().message(),
            "etcd endpoint '10.0.0.1:2379': expected http://HOST:PORT or https://HOST:PORT");
  EXPECT_EQ(ParseEtcdEndpoints("http://10.0.0.1").status().message(),
            "etcd endpoint 'http://10.0.0.1': expected HOST:PORT after the scheme");
  EXPECT_EQ(ParseEtcdEndpoints(" , ").status().message(), "no etcd endpoint given");
  EXPECT_EQ(PrefixEnd("/cvmgate/"), "/cvmgate0");
  EXPECT_EQ(PrefixEnd("a\xff"), "b");
}

TEST_F(EtcdClientTest, PutsAndReadsAPrefixAtARevision) {
  const std::string p = Prefix();
  auto r1 = client_->Put(p + "a", "1");
  ASSERT_TRUE(r1.ok()) << r1.status();
  auto r2 = client_->Put(p + "b", "2");
  ASSERT_TRUE(r2.ok());
  ASSERT_TRUE(client_->Put(p.substr(0, p.size() - 1) + "X", "outside").ok());
  EXPECT_GT(*r2, *r1);
  auto now = client_->GetPrefix(p);
  ASSERT_TRUE(now.ok()) << now.status();
  ASSERT_EQ(now->kvs.size(), 2u) << "only the keys under the prefix";
  EXPECT_EQ(now->kvs[0].key, p + "a");
  EXPECT_EQ(now->kvs[1].value, "2");
  EXPECT_GE(now->revision, *r2);
  auto then = client_->GetPrefix(p, *r1);
  ASSERT_TRUE(then.ok());
  EXPECT_EQ(then->kvs.size(), 1u) << "the prefix as it was at the first put";
  auto one = client_->Get(p + "a");
  ASSERT_TRUE(one.ok() && one->has_value());
  EXPECT_EQ((*one)->value, "1");
  EXPECT_FALSE(client_->Get(p + "none")->has_value());
}

TEST_F(EtcdClientTest, CreatesOnlyIfAbsentAndUpdatesOnlyWhatItRead) {
  const std::string k = Prefix() + "claim";
  auto first = client_->Txn({EtcdCompare::Absent(k)}, {EtcdOp::Put(k, "A")}, {EtcdOp::Get(k)});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->succeeded);
  auto second = client_->Txn({EtcdCompare::Absent(k)}, {EtcdOp::Put(k, "B")}, {EtcdOp::Get(k)});
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->succeeded) << "a key that exists is not created again";
  ASSERT_EQ(second->gets.size(), 1u);
  ASSERT_TRUE(second->gets[0].has_value());
  EXPECT_EQ(second->gets[0]->value, "A") << "the failure branch says who holds it";

  int64_t read_at = second->gets[0]->mod_revision;
  auto update = client_->Txn({EtcdCompare::ModifiedAt(k, read_at)}, {EtcdOp::Put(k, "C")}, {});
  ASSERT_TRUE(update.ok());
  EXPECT_TRUE(update->succeeded);
  auto stale = client_->Txn({EtcdCompare::ModifiedAt(k, read_at)}, {EtcdOp::Put(k, "D")}, {});
  ASSERT_TRUE(stale.ok());
  EXPECT_FALSE(stale->succeeded) << "an update from a stale read is refused";
  EXPECT_EQ((*client_->Get(k))->value, "C");
  auto gone = client_->Txn({}, {EtcdOp::Delete(k)}, {});
  ASSERT_TRUE(gone.ok() && gone->succeeded);
  EXPECT_FALSE(client_->Get(k)->has_value());
}

TEST_F(EtcdClientTest, WatchesPutsAndDeletesFromARevision) {
  const std::string p = Prefix();
  auto start = client_->Put(p + "before", "x");
  ASSERT_TRUE(start.ok());
  auto watch = client_->Watch(p, *start + 1);
  ASSERT_TRUE(watch.ok()) << watch.status();
  ASSERT_TRUE(client_->Put(p + "a", "1").ok());
  ASSERT_TRUE(client_->Txn({}, {EtcdOp::Delete(p + "before")}, {}).ok());
  std::vector<EtcdEvent> seen;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (seen.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    auto batch = (*watch)->Next(absl::Seconds(1));
    ASSERT_TRUE(batch.ok()) << batch.status();
    seen.insert(seen.end(), batch->events.begin(), batch->events.end());
  }
  ASSERT_EQ(seen.size(), 2u) << "the put and the delete after the start revision, not the put before it";
  EXPECT_EQ(seen[0].type, EtcdEvent::Type::kPut);
  EXPECT_EQ(seen[0].kv.key, p + "a");
  EXPECT_EQ(seen[0].kv.value, "1");
  EXPECT_EQ(seen[1].type, EtcdEvent::Type::kDelete);
  EXPECT_EQ(seen[1].kv.key, p + "before");
  EXPECT_GT(seen[1].kv.mod_revision, seen[0].kv.mod_revision);
  (*watch)->Cancel();
  auto after = (*watch)->Next(absl::Seconds(5));
  EXPECT_FALSE(after.ok()) << "a cancelled watch ends";
}

TEST_F(EtcdClientTest, AWatchFromACompactedRevisionSaysSo) {
  const std::string p = Prefix();
  auto r1 = client_->Put(p + "k", "1");
  ASSERT_TRUE(r1.ok());
  auto r2 = client_->Put(p + "k", "2");
  ASSERT_TRUE(r2.ok());
  ASSERT_TRUE(client_->Compact(*r2).ok());
  auto watch = client_->Watch(p, *r1);
  ASSERT_TRUE(watch.ok());
  int64_t compacted = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (compacted == 0 && std::chrono::steady_clock::now() < deadline) {
    auto batch = (*watch)->Next(absl::Seconds(1));
    if (!batch.ok()) break;
    compacted = batch->compacted;
  }
  EXPECT_EQ(compacted, *r2) << "the watch names the revision history now starts at";
  auto range = client_->GetPrefix(p, *r1);
  EXPECT_EQ(range.status().code(), absl::StatusCode::kOutOfRange) << range.status();
}

TEST_F(EtcdClientTest, LeasedKeysGoWithTheirLease) {
  const std::string k = Prefix() + "node";
  auto lease = client_->GrantLease(absl::Seconds(5));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_GE(lease->second, absl::Seconds(5));
  ASSERT_TRUE(client_->Put(k, "alive", lease->first).ok());
  EXPECT_TRUE(client_->KeepAlive(lease->first).ok());
  EXPECT_EQ((*client_->Get(k))->lease, lease->first);
  ASSERT_TRUE(client_->RevokeLease(lease->first).ok());
  EXPECT_FALSE(client_->Get(k)->has_value()) << "the key went with its lease";
  EXPECT_EQ(client_->KeepAlive(lease->first).code(), absl::StatusCode::kNotFound);
}

TEST_F(EtcdClientTest, ReadsARangeLargerThanGrpcsDefaultCap) {
  // A registry of ~50k instances answers a range of 5 MB: more than gRPC's default 4 MiB answer.
  const std::string p = Prefix();
  const std::string value(1 << 20, 'x');
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(client_->Put(p + std::to_string(i), value).ok());
  auto all = client_->GetPrefix(p);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->kvs.size(), 5u);
}

TEST_F(EtcdClientTest, ListsTheMembers) {
  auto members = client_->Members();
  ASSERT_TRUE(members.ok()) << members.status();
  ASSERT_EQ(members->size(), 3u);
  std::vector<std::string> urls;
  for (const EtcdMember& m : *members) urls.insert(urls.end(), m.client_urls.begin(), m.client_urls.end());
  std::sort(urls.begin(), urls.end());
  std::vector<std::string> want = cluster_->ClientUrls();
  std::sort(want.begin(), want.end());
  EXPECT_EQ(urls, want);
}

// Last: it stops members.
TEST_F(EtcdClientTest, ZFailsOverAMemberAndFailsFastWithoutQuorum) {
  const std::string p = Prefix();
  cluster_->Stop(0);
  auto put = client_->Put(p + "a", "1");
  ASSERT_TRUE(put.ok()) << "two of three members are a quorum: " << put.status();
  EXPECT_NE(client_->endpoint(), cluster_->ClientUrl(0));

  cluster_->Stop(1);
  auto fast = Client(cluster_->ClientUrls(), absl::Milliseconds(1500));
  auto started = std::chrono::steady_clock::now();
  auto lost = fast->Put(p + "b", "2");
  auto took = std::chrono::steady_clock::now() - started;
  EXPECT_FALSE(lost.ok()) << "one member of three cannot commit";
  EXPECT_LT(took, std::chrono::seconds(6)) << "the deadline bounds the wait";
  EXPECT_FALSE(fast->GetPrefix(p).ok()) << "nor answer a linearizable read";

  cluster_->Start(0);
  cluster_->Start(1);
  ASSERT_TRUE(cluster_->WaitReady());
  auto back = client_->Put(p + "c", "3");
  EXPECT_TRUE(back.ok()) << back.status();
  auto all = client_->GetPrefix(p);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->kvs.size(), 2u) << "what was acknowledged is kept; what failed is not there";
}

}  // namespace
}  // namespace cvmgate
