// Route snapshot: building the immutable lookup tables from the control plane's view.
#include "dataplane/routes.h"

#include <absl/strings/str_cat.h>

#include "dataplane/addresses.h"
#include "dataplane/strings.h"
#include "dataplane/tls.h"

namespace cvmgate {
namespace {

absl::Status ParseAddress(const std::string& text, Instance& inst) {
  std::optional<sockaddr_storage> addr = SockaddrFromIp(text);
  if (!addr) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance '", inst.id, "': address '", text, "' is not an IPv4 or IPv6 address"));
  }
  inst.addr = *addr;
  inst.addr_len = SockaddrLen(*addr);
  return absl::OkStatus();
}

}  // namespace

std::atomic<int32_t>* AppCounters::Counter(const std::string& app) {
  auto& c = counters_[app];
  if (!c) c = std::make_unique<std::atomic<int32_t>>(0);
  return c.get();
}

int32_t AppCounters::live(const std::string& app) const {
  auto it = counters_.find(app);
  return it == counters_.end() ? 0 : it->second->load(std::memory_order_relaxed);
}

absl::StatusOr<std::unique_ptr<const RouteSnapshot>> RouteSnapshot::Build(const std::vector<RouteEntry>& entries,
                                                                          AppCounters* counters,
                                                                          std::shared_ptr<const TlsContexts> tls) {
  auto snap = std::unique_ptr<RouteSnapshot>(new RouteSnapshot());
  snap->tls_ = std::move(tls);
  snap->instances_.reserve(entries.size());
  for (const RouteEntry& e : entries) {
    auto [it, first] = snap->apps_.try_emplace(e.app);
    App& app = it->second;
    if (first) {
      app.max_connections = e.max_connections;
      app.proxy_protocol = e.proxy_protocol;
      if (counters != nullptr) app.live = counters->Counter(e.app);
    }
    if (e.id.empty()) continue;  // an app without instances: known, never routable
    Instance inst;
    inst.id = e.id;
    inst.app = e.app;
    inst.address = e.address;
    inst.healthy = e.healthy;
    inst.app_live = app.live;
    inst.app_max_connections = app.max_connections;
    inst.proxy_protocol = app.proxy_protocol;
    if (auto s = ParseAddress(inst.address, inst); !s.ok()) return s;
    inst.ports = e.ports;
    inst.local = e.local;
    if (inst.healthy && inst.restricted()) app.restricted = true;
    uint32_t index = static_cast<uint32_t>(snap->instances_.size());
    snap->by_instance_id_[inst.id] = index;
    if (inst.healthy) app.healthy.push_back(index);
    snap->instances_.push_back(std::move(inst));
  }
  snap->self_index_.resize(snap->instances_.size());
  for (uint32_t i = 0; i < snap->self_index_.size(); ++i) snap->self_index_[i] = i;
  return std::unique_ptr<const RouteSnapshot>(std::move(snap));
}

RouteSnapshot::Lookup RouteSnapshot::Find(std::string_view id) const {
  if (auto it = by_instance_id_.find(AbslView(id)); it != by_instance_id_.end()) {
    const Instance& inst = instances_[it->second];
    std::span<const uint32_t> self = inst.healthy ? std::span(self_index_).subspan(it->second, 1)
                                                  : std::span<const uint32_t>();
    return {true, self, inst.app_live, inst.app_max_connections, inst.proxy_protocol, inst.restricted()};
  }
  if (auto it = apps_.find(AbslView(id)); it != apps_.end()) {
    const App& app = it->second;
    return {true, app.healthy, app.live, app.max_connections, app.proxy_protocol, app.restricted};
  }
  return {};
}

}  // namespace cvmgate
