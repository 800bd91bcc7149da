// Micro-benchmarks (Google Benchmark): ClientHello and host-name parsing, route lookup and choice, snapshot publish.
#include <benchmark/benchmark.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <absl/random/random.h>
#include <absl/strings/str_cat.h>
#include "dataplane/routes.h"
#include "dataplane/snapshot.h"
#include "dataplane/client_hello.h"
#include "dataplane/host_name.h"
#include "tests/common/hello_builder.h"

namespace cvmgate {
namespace {

std::vector<uint8_t> ReadHello(const std::string& name) {
  std::ifstream in(std::string(CVMGATE_TEST_DATA) + "/hello/" + name, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void BM_ParseClientHello(benchmark::State& state, const char* file) {
  std::vector<uint8_t> hello = ReadHello(file);
  for (auto _ : state) {
    HelloResult r = ParseClientHello(hello, 65536);
    benchmark::DoNotOptimize(r);
  }
  state.SetBytesProcessed(state.iterations() * hello.size());
}
BENCHMARK_CAPTURE(BM_ParseClientHello, openssl_tls13_256B, "openssl_tls13.bin");
BENCHMARK_CAPTURE(BM_ParseClientHello, python_2KiB, "python_2k.bin");

std::vector<uint8_t> SyntheticHello(size_t padding, size_t record_size) {
  testing::HelloBuilder b;
  b.Sni("app-443s.example.test").Padding(padding);
  b.record_size = record_size;
  return b.Build();
}

// The parser's work on one hello as a client dribbles it in, fed the way a
// worker feeds it: a first peek of 1 KiB, then each time exactly the bytes the
// parser asked for (the kernel's copy of each peek is measured end to end by
// bench/hello_records.py). 10.8 KB of handshake is 64 KiB on the wire in 1-byte
// records (the --hello-max-bytes default), 2-byte records being the costliest
// per wire byte, or one record.
void BM_HelloAsItArrives(benchmark::State& state) {
  const size_t record_size = static_cast<size_t>(state.range(0));
  std::vector<uint8_t> wire = SyntheticHello(10800, record_size);
  size_t rounds = 0;
  for (auto _ : state) {
    HelloParser parser(65536);
    size_t have = std::min<size_t>(1024, wire.size());
    for (;;) {
      ++rounds;
      HelloResult r = parser.Feed(std::span(wire.data(), have));
      if (r.status != HelloStatus::kNeedMore) {
        if (r.status != HelloStatus::kOk) state.SkipWithError("the hello did not parse");
        break;
      }
      have = r.need;
    }
  }
  state.counters["peeks"] = static_cast<double>(rounds) / static_cast<double>(state.iterations());
  state.counters["wire_bytes"] = static_cast<double>(wire.size());
}
BENCHMARK(BM_HelloAsItArrives)->Arg(16384)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond);

void BM_ParseHostName(benchmark::State& state) {
  std::vector<std::string> bases = {"example.test", "gw.example.org"};
  for (auto _ : state) {
    NameResult r = ParseHostName("My-App-8443s.Example.TEST", bases);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_ParseHostName);

// `apps` apps of `per_app` instances each, all healthy.
std::vector<RouteEntry> Entries(int apps, int per_app) {
  std::vector<RouteEntry> entries;
  entries.reserve(size_t(apps) * per_app);
  uint32_t ip = 0x0a000002;
  for (int a = 0; a < apps; ++a) {
    std::string app = absl::StrCat("app", a);
    for (int i = 0; i < per_app; ++i, ++ip) {
      entries.push_back({app, absl::StrCat(app, "-", i),
                         absl::StrCat(ip >> 24, ".", (ip >> 16) & 255, ".", (ip >> 8) & 255, ".", ip & 255), true});
    }
  }
  return entries;
}

// What a worker does per connection: find the app, choose among its healthy instances.
void BM_LookupAndPick(benchmark::State& state) {
  static const auto snap = *RouteSnapshot::Build(Entries(100000, 10));  // 100k apps, 1M instances
  absl::InsecureBitGen gen;
  int i = 0;
  std::vector<std::string> ids;
  for (int a = 0; a < 1024; ++a) ids.push_back(absl::StrCat("app", (a * 97) % 100000));
  for (auto _ : state) {
    auto found = snap->Find(ids[i++ & 1023]);
    int64_t pick = PickInstance(found.healthy, {}, gen);
    benchmark::DoNotOptimize(pick);
  }
}
BENCHMARK(BM_LookupAndPick);

// The control plane's cost of a routing change: build a snapshot of N instances and publish it.
void BM_BuildAndPublish(benchmark::State& state) {
  std::vector<RouteEntry> entries = Entries(static_cast<int>(state.range(0)) / 10, 10);
  SnapshotDomain domain(2, *RouteSnapshot::Build({}));
  for (auto _ : state) {
    auto snap = RouteSnapshot::Build(entries);
    domain.Publish(*std::move(snap));
    domain.Reclaim();
  }
  state.counters["instances"] = static_cast<double>(entries.size());
}
BENCHMARK(BM_BuildAndPublish)->Arg(1000)->Arg(100000)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace cvmgate

BENCHMARK_MAIN();
