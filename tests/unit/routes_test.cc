// Unit tests of the route snapshot: state-file validation, pinning, and uniform instance choice.
#include "control/routes.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "control/snapshot.h"

namespace cvmgate {
namespace {

constexpr char kState[] = R"({"version": 1, "apps": {
  "app": {"instances": [{"id": "app-i1", "address": "127.0.0.2"},
                        {"id": "app-i2", "address": "127.0.0.3"},
                        {"id": "app-i3", "address": "::1"}]},
  "Other": {"instances": [{"id": "solo", "address": "10.0.0.7"}]}}})";

std::unique_ptr<const RouteSnapshot> Load(const char* text) {
  auto s = RouteSnapshot::FromJson(text);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

TEST(Routes, AppsInstancesAndPinning) {
  auto snap = Load(kState);
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->app_count(), 2u);
  EXPECT_EQ(snap->Candidates("app").size(), 3u);
  auto pinned = snap->Candidates("app-i2");
  ASSERT_EQ(pinned.size(), 1u);
  EXPECT_EQ(snap->instances()[pinned[0]].id, "app-i2");
  EXPECT_EQ(snap->instances()[pinned[0]].addr.ss_family, AF_INET);
  EXPECT_EQ(snap->Candidates("other").size(), 1u) << "app ids are stored lowercase";
  EXPECT_TRUE(snap->Candidates("nope").empty());
  EXPECT_EQ(snap->instances()[snap->Candidates("app-i3")[0]].addr.ss_family, AF_INET6);
}

TEST(Routes, InstanceIdWinsOverAppId) {
  auto snap = Load(R"({"version": 1, "apps": {
      "web": {"instances": [{"id": "w1", "address": "127.0.0.2"}, {"id": "w2", "address": "127.0.0.3"}]},
      "other": {"instances": [{"id": "web2", "address": "127.0.0.4"}]},
      "w1": {"instances": [{"id": "x", "address": "127.0.0.5"}]}}})");
  ASSERT_TRUE(snap);
  auto c = snap->Candidates("w1");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(snap->instances()[c[0]].id, "w1");
}

TEST(Routes, BadStateFilesSayWhatIsWrong) {
  struct Case {
    const char* text;
    const char* message;
  };
  std::vector<Case> cases = {
      {"{", "not valid JSON"},
      {"[]", "top level"},
      {R"({"apps": {}})", "version"},
      {R"({"version": 2})", "unsupported state version 2"},
      {R"({"version": 1, "apps": []})", "'apps' must be an object"},
      {R"({"version": 1, "apps": {"a b": {"instances": []}}})", "app id 'a b'"},
      {R"({"version": 1, "apps": {"a": {}}})", "'instances' must be an array"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x"}]}}})", "'id' and 'address'"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x", "address": "nope"}]}}})",
       "address 'nope' is not an IPv4 or IPv6 address"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x", "address": "127.0.0.1"}]},
                                  "b": {"instances": [{"id": "X", "address": "127.0.0.2"}]}}})",
       "instance id 'x' appears twice"},
  };
  for (const auto& c : cases) {
    auto s = RouteSnapshot::FromJson(c.text);
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_NE(s.status().message().find(c.message), std::string::npos)
        << "got: " << s.status().message() << "\nwant: " << c.message;
  }
}

TEST(Routes, MissingStateFileIsAnEmptyTable) {
  auto s = RouteSnapshot::FromFile("/nonexistent/cvmgate-state.json");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->app_count(), 0u);
}

// Chi-square over 3 instances: with 2 degrees of freedom, 13.8 is the 0.1 % tail.
TEST(PickInstance, UniformAmongCandidates) {
  auto snap = Load(kState);
  absl::BitGen gen;
  std::map<int64_t, int> hits;
  constexpr int kDraws = 30000;
  for (int i = 0; i < kDraws; ++i) hits[PickInstance(snap->Candidates("app"), {}, gen)]++;
  ASSERT_EQ(hits.size(), 3u);
  double chi2 = 0;
  for (auto& [k, n] : hits) chi2 += std::pow(n - kDraws / 3.0, 2) / (kDraws / 3.0);
  EXPECT_LT(chi2, 13.8);
}

TEST(PickInstance, SkipsTriedInstancesAndReportsExhaustion) {
  auto snap = Load(kState);
  absl::BitGen gen;
  auto all = snap->Candidates("app");
  std::vector<uint32_t> tried = {all[0], all[2]};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(PickInstance(all, tried, gen), all[1]);
  tried.push_back(all[1]);
  EXPECT_EQ(PickInstance(all, tried, gen), -1);
}

TEST(PickInstance, LargeAppsStayUniformEnough) {
  std::vector<uint32_t> big(1000);
  for (uint32_t i = 0; i < big.size(); ++i) big[i] = i;
  absl::BitGen gen;
  std::vector<int> hits(big.size());
  for (int i = 0; i < 100000; ++i) hits[PickInstance(big, {}, gen)]++;
  for (int h : hits) {
    EXPECT_GT(h, 40);  // mean 100, sd 10: 6 sd below
    EXPECT_LT(h, 160);
  }
  std::vector<uint32_t> tried = {5, 6, 7};
  for (int i = 0; i < 1000; ++i) {
    int64_t p = PickInstance(big, tried, gen);
    EXPECT_TRUE(p != 5 && p != 6 && p != 7);
  }
}

// The publisher frees a replaced snapshot only once no reader can hold it.
TEST(SnapshotDomain, ReclaimWaitsForReadersThatMayHoldTheOldSnapshot) {
  SnapshotDomain domain(2, Load(kState));
  auto r0 = domain.reader(0);
  auto r1 = domain.reader(1);
  const RouteSnapshot* held = r0.Enter();  // reader 0 is inside a batch with the first snapshot
  r1.Leave();
  domain.Publish(Load(R"({"version": 1})"));
  EXPECT_EQ(domain.Reclaim(), 1u) << "reader 0 may still use the old snapshot";
  EXPECT_EQ(held->app_count(), 2u);
  EXPECT_EQ(r1.Enter()->app_count(), 0u) << "a reader entering after the swap sees the new one";
  EXPECT_EQ(domain.Reclaim(), 1u);
  EXPECT_EQ(r0.Enter()->app_count(), 0u);
  EXPECT_EQ(domain.Reclaim(), 0u) << "both readers have moved on";
  r0.Leave();
  r1.Leave();
}

TEST(SnapshotDomain, ConcurrentReadersNeverSeeAFreedSnapshot) {
  SnapshotDomain domain(2, Load(kState));
  std::atomic<bool> stop{false};
  std::vector<std::thread> readers;
  std::atomic<uint64_t> reads{0};
  for (int i = 0; i < 2; ++i) {
    readers.emplace_back([&, i] {
      auto r = domain.reader(i);
      while (!stop.load()) {
        const RouteSnapshot* s = r.Enter();
        // Touch the snapshot: under ASan a freed one would be reported here.
        size_t n = s->instances().size();
        EXPECT_TRUE(n == 4 || n == 1);
        r.Leave();
        reads.fetch_add(1);
      }
    });
  }
  for (int i = 0; i < 2000; ++i) {
    domain.Publish(Load(i % 2 ? kState : R"({"version": 1, "apps": {"a": {"instances": [{"id": "b", "address": "127.0.0.1"}]}}})"));
    domain.Reclaim();
  }
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(domain.Reclaim(), 0u);
  EXPECT_GT(reads.load(), 0u);
}

}  // namespace
}  // namespace cvmgate
