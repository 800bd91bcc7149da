// Times one WireGuard GetDevice() with 1k and 10k peers, against `wg show IF dump` on the same device as baseline.
//
//   build/tests/wireguard/wg_poll --backend uapi                  # this host, wireguard-go
//   tools/kernel-lab/run-in-kernel build/tests/wireguard/wg_poll --backend netlink
//
// The interface lives in a throwaway network namespace. Peers get random
// public keys and distinct /32s from 10.0.0.0/8. The device has no private
// key: with one, the kernel computes a Curve25519 product per added peer,
// which takes minutes under kernel-lab's emulated CPU and does not change
// what a dump costs.
#include <openssl/rand.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <absl/strings/numbers.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>
#include <absl/time/clock.h>
#include "control/wireguard/wireguard.h"
#include "tests/wireguard/netns.h"

namespace {

using cvmgate::testing::Netns;
using cvmgate::testing::RunCommand;
using cvmgate::testing::ScopedNetns;

struct Spread {
  double median, min, max;
};

Spread Summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

int Fail(const std::string& what) {
  fprintf(stderr, "wg_poll: %s\n", what.c_str());
  return 1;
}

int Run(const std::string& backend, const std::vector<int>& counts, int reps) {
  const std::string pid = std::to_string(getpid());
  cvmgate::testing::CleanupStale("cvmgate-wgbench-", "cvwgp");
  auto ns = Netns::Create("cvmgate-wgbench-" + pid);
  if (!ns.ok()) return Fail(std::string(ns.status().message()));
  const std::string ifname = "cvwgp" + pid;
  int rc = 0;
  {
    ScopedNetns in(ns->name());
    if (!in.status().ok()) return Fail(std::string(in.status().message()));
    auto made = cvmgate::EnsureInterface(backend, ifname, "10.0.0.1/8");
    if (!made.ok()) return Fail(std::string(made.status().message()));
    auto wg = cvmgate::OpenWireGuard(*made, ifname);
    if (!wg.ok()) return Fail(std::string(wg.status().message()));
    utsname u;
    uname(&u);
    printf(
        "wg_poll: backend %s, kernel %s, %d repetitions; baseline: `wg show %s dump` (wireguard-tools, one process "
        "each)\n\n",
        std::string((*wg)->backend()).c_str(), u.release, reps, ifname.c_str());
    printf(
        "| peers | add (peers/s) | GetDevice median ms | min-max ms | wg show dump median ms | min-max ms | ratio |\n");
    printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    int have = 0;
    for (int count : counts) {
      absl::Time start = absl::Now();
      for (; have < count; ++have) {
        cvmgate::WgKey key;
        RAND_bytes(key.bytes.data(), 32);
        in_addr ip;
        ip.s_addr = htonl((10u << 24) + 2 + static_cast<uint32_t>(have));
        absl::Status st = (*wg)->SetPeer(key, ip);
        if (!st.ok()) return Fail(std::string(st.message()));
      }
      double add_s = absl::ToDoubleSeconds(absl::Now() - start);
      std::vector<double> ours, theirs;
      for (int r = 0; r < reps; ++r) {
        absl::Time t0 = absl::Now();
        auto d = (*wg)->GetDevice();
        ours.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        if (!d.ok()) return Fail(std::string(d.status().message()));
        if (d->peers.size() != static_cast<size_t>(count)) {
          return Fail(absl::StrFormat("GetDevice saw %d peers, expected %d", d->peers.size(), count));
        }
      }
      for (int r = 0; r < reps; ++r) {
        absl::Time t0 = absl::Now();
        auto out = RunCommand({"wg", "show", ifname, "dump"}, absl::Minutes(5));
        theirs.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        if (!out.ok()) return Fail(std::string(out.status().message()));
      }
      Spread o = Summarize(ours), t = Summarize(theirs);
      printf("| %d | %.0f | %.2f | %.2f-%.2f | %.2f | %.2f-%.2f | %.2f |\n", count,
             add_s > 0 ? (count - 0.0) / add_s : 0, o.median, o.min, o.max, t.median, t.min, t.max,
             o.median / t.median);
      fflush(stdout);
    }
  }
  cvmgate::testing::StopWireguardGo(ifname);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend = "auto";
  std::vector<int> counts = {1000, 10000};
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value = i + 1 < argc ? argv[i + 1] : "";
    if (arg == "--backend" && !value.empty()) {
      backend = value;
      ++i;
    } else if (arg == "--peers" && !value.empty()) {
      counts.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        int n;
        if (!absl::SimpleAtoi(part, &n) || n < 1) return Fail("--peers takes counts such as 1000,10000");
        counts.push_back(n);
      }
      std::sort(counts.begin(), counts.end());
      ++i;
    } else if (arg == "--reps" && !value.empty()) {
      if (!absl::SimpleAtoi(value, &reps) || reps < 1) return Fail("--reps takes a positive count");
      ++i;
    } else {
      fprintf(stderr, "usage: %s [--backend auto|netlink|uapi] [--peers 1000,10000] [--reps 5]\n", argv[0]);
      return 2;
    }
  }
  return Run(backend, counts, reps);
}
