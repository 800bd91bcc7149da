// Route snapshot: the immutable app/instance table the workers route from.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <concepts>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/random/random.h>
#include <absl/status/statusor.h>
#include "dataplane/ports.h"

namespace cvmgate {

class TlsContexts;

struct Instance {
  std::string id;
  std::string app;
  std::string address;  // as written in the state file
  bool healthy = true;
  std::atomic<int32_t>* app_live = nullptr;  // the app's live-connection count (see AppCounters)
  int32_t app_max_connections = INT32_MAX;
  bool proxy_protocol = false;  // the app's PROXY v2 setting
  sockaddr_storage addr{};  // port left 0: the port comes from the host name
  socklen_t addr_len = 0;
  PortSet ports{};     // a static instance's ports; empty: every port (a CVM)
  bool local = false;  // the address is this host's own: a wildcard listener would accept it
  bool Serves(uint16_t port) const { return ports.empty() || ports.Contains(port); }
  // Only instances that may refuse a port need a look before they are picked.
  bool restricted() const { return !ports.empty() || local; }
};

// What the control plane knows of one instance when it builds a snapshot.
struct RouteEntry {
  std::string app;
  std::string id;
  std::string address;  // IPv4 or IPv6 literal
  bool healthy = true;
  // The app's effective settings (global flag or the app's override); the
  // first entry of an app decides them.
  int32_t max_connections = INT32_MAX;
  bool proxy_protocol = false;
  PortSet ports{};     // a static instance's ports; empty: every port (a CVM)
  bool local = false;  // the address is one of this host's
};

// Live connections per app, counted by every worker. The counters outlive
// snapshots (a connection may end long after the snapshot that routed it), so
// one is made per app id and kept: a few bytes per app ever registered.
class AppCounters {
 public:
  // Control thread only. The pointer stays valid for the AppCounters' lifetime.
  std::atomic<int32_t>* Counter(const std::string& app);
  int32_t live(const std::string& app) const;

 private:
  absl::flat_hash_map<std::string, std::unique_ptr<std::atomic<int32_t>>> counters_;
};

// Built once, never changed after publication; workers read it without locks.
class RouteSnapshot {
 public:
  // Ids are valid lowercase ids and unique (the registry guarantees it); an
  // address that is not an IP literal is an error.
  // With `counters`, each app's connections are counted against its entries'
  // max_connections.
  // `tls` (may be null) travels with the routes, so a certificate reload
  // reaches the workers the same lock-free way.
  static absl::StatusOr<std::unique_ptr<const RouteSnapshot>> Build(
      const std::vector<RouteEntry>& entries, AppCounters* counters = nullptr,
      std::shared_ptr<const TlsContexts> tls = nullptr);
  struct Lookup {
    bool known = false;                // an instance or app with this id exists
    std::span<const uint32_t> healthy;  // indexes into instances() that may be picked
    std::atomic<int32_t>* app_live = nullptr;  // null: not counted
    int32_t app_max_connections = INT32_MAX;
    bool proxy_protocol = false;
    // Some candidate serves only some ports or is a local address: each must
    // be checked against the port before it is picked (static instances only).
    bool restricted = false;
  };
  // The termination contexts in force; null when no --tls-cert is configured.
  const TlsContexts* tls() const { return tls_.get(); }
  // `id` is tried as an instance id first (pinning that instance), then as an app id.
  Lookup Find(std::string_view id) const;
  std::span<const uint32_t> Candidates(std::string_view id) const { return Find(id).healthy; }

  const std::vector<Instance>& instances() const { return instances_; }
  size_t app_count() const { return apps_.size(); }

 private:
  std::vector<Instance> instances_;
  struct App {
    std::vector<uint32_t> healthy;
    std::atomic<int32_t>* live = nullptr;
    int32_t max_connections = INT32_MAX;
    bool proxy_protocol = false;
    bool restricted = false;
  };
  absl::flat_hash_map<std::string, App> apps_;
  std::shared_ptr<const TlsContexts> tls_;
  absl::flat_hash_map<std::string, uint32_t> by_instance_id_;
  // Candidates() hands out a one-element span for a pinned instance.
  std::vector<uint32_t> self_index_;
};

// Uniform choice among the `candidates` for which `usable(index)` is true.
// Returns -1 when none is.
template <typename Usable, typename Gen>
  requires std::predicate<Usable, uint32_t>
int64_t PickInstance(std::span<const uint32_t> candidates, Usable usable, Gen& gen) {
  uint32_t ok[64];
  size_t n = 0;
  // Small apps take the fast path; large ones retry random draws (few are unusable: tried ones, mostly).
  if (candidates.size() <= 64) {
    for (uint32_t c : candidates) {
      if (usable(c)) ok[n++] = c;
    }
    if (n == 0) return -1;
    return ok[absl::Uniform<size_t>(gen, 0, n)];
  }
  for (int attempt = 0; attempt < 64; ++attempt) {
    uint32_t c = candidates[absl::Uniform<size_t>(gen, 0, candidates.size())];
    if (usable(c)) return c;
  }
  for (uint32_t c : candidates) {
    if (usable(c)) return c;
  }
  return -1;
}

// The same, skipping the candidates listed in `tried`.
template <typename Gen>
int64_t PickInstance(std::span<const uint32_t> candidates, std::span<const uint32_t> tried, Gen& gen) {
  return PickInstance(
      candidates,
      [&](uint32_t c) {
        for (uint32_t t : tried) {
          if (t == c) return false;
        }
        return true;
      },
      gen);
}

}  // namespace cvmgate
