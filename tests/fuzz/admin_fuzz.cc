// libFuzzer target: the admin API end to end (HTTP request parsing, then every handler) on a fresh registry and
// state file, for a sequence of requests per input. After each request: no exception escaped, the answer is JSON
// with a 2xx or 4xx (507 when the small address pool runs out), the state file holds exactly what the registry
// holds in memory, and the published snapshot routes the registry's instances.
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "control/control_plane.h"
#include "dataplane/addresses.h"
#include "tests/common/fake_tunnel.h"

namespace {

const std::string& StatePath() {
  static const std::string path = [] {
    char dir[] = "/dev/shm/cvmgate-admin-fuzz-XXXXXX";
    if (mkdtemp(dir) == nullptr) std::abort();
    return std::string(dir) + "/state.json";
  }();
  return path;
}

cvmgate::IpPool Pool() { return *cvmgate::IpPool::Create("10.0.0.0/29", "10.0.0.1"); }  // 5 CVM addresses

class FixedClock : public cvmgate::Clock {
 public:
  absl::Time Now() override { return absl::FromUnixSeconds(1'800'000'000); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = StatePath();
  unlink(path.c_str());
  cvmgate::Registry registry(Pool(), path);
  cvmgate::SnapshotDomain domain(1, *cvmgate::RouteSnapshot::Build({}));
  cvmgate::testing::FakeTunnel tunnel;
  FixedClock clock;
  cvmgate::ControlOptions options;
  options.base_domains = {"example.test", "gw.example.org"};
  options.listeners = {cvmgate::SockaddrFromIp("0.0.0.0", 443).value()};
  cvmgate::ControlPlane control(options, registry, domain, &tunnel, clock, [] { return std::string(); });

  const std::string input(reinterpret_cast<const char*>(data), size);
  size_t off = 0;
  for (int i = 0; i < 8 && off < input.size(); ++i) {
    cvmgate::HttpRequest request;
    auto used = cvmgate::ParseHttpRequest(input.substr(off), 8192, request);
    if (!used.ok() || *used == 0) break;
    off += *used;
    cvmgate::HttpResponse response = control.Handle(request);
    if (response.status >= 500 && response.status != 507) std::abort();
    if (response.content_type == "application/json" && !nlohmann::json::accept(response.body)) std::abort();
    // What a crash right now would leave: the state file, read back by the same rules.
    cvmgate::Registry reread(Pool(), path);
    if (!reread.Load().ok() || reread.ToJson() != registry.ToJson()) std::abort();
    if (domain.current()->instances().size() != registry.instances().size()) std::abort();
    domain.Reclaim();
  }
  return 0;
}
