// Control plane: registry + WireGuard peers + health, published as route snapshots; serves the admin API.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <absl/status/status.h>
#include <absl/time/time.h>
#include "control/admin_http.h"
#include "control/registry.h"
#include "dataplane/snapshot.h"
#include "control/wireguard/supervisor.h"
#include "dataplane/tls.h"

namespace cvmgate {

// Time for health decisions; tests inject a fake one.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
};
class RealClock : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

// Healthy = a WireGuard handshake younger than `within`; static instances always are.
bool IsHealthy(const Registration& reg, int64_t last_handshake_sec, absl::Time now, absl::Duration within);

struct ControlOptions {
  absl::Duration healthy_within = absl::Minutes(5);
  std::vector<std::string> base_domains;
  std::vector<TlsCertSpec> tls_certs;  // --tls-cert: reread by LoadCertificates()
  TlsPolicy tls_policy;
  std::string gateway_endpoint;  // host:port the CVMs dial, returned by register
  bool keep_unknown_peers = false;
  int32_t app_max_connections = 2000;  // unless the app overrides it
  absl::Duration ticket_key_rotation = absl::Hours(1);
  bool proxy_protocol = false;  // unless the app overrides it
  std::vector<sockaddr_storage> listeners;  // the data plane's bound listeners: never an instance's address:port
  std::string node_name;  // this gateway host in a cluster sharing its registry (etcd); empty: one host
  bool metrics_per_app = true;  // /metrics has gauges per app (--metrics-per-app)
};

class ControlPlane {
 public:
  // `tunnel` may be null: then only static instances can be registered.
  // `worker_metrics` returns the data plane's counters as Prometheus text.
  ControlPlane(ControlOptions options, Registry& registry, SnapshotDomain& domain, Tunnel* tunnel, Clock& clock,
               std::function<std::string()> worker_metrics);

  // Takes the tunnel's latest reading (never waiting for WireGuard: its
  // supervisor reads the device on a thread of its own), and publishes a
  // snapshot when routing changed. A device that cannot be read keeps its last
  // handshakes, which age: after --healthy-within its instances route nothing.
  absl::Status Poll();
  // Builds and publishes a snapshot when routing changed.
  absl::Status Publish();
  // (Re)reads every --tls-cert file; on error the certificates in force stay.
  absl::Status LoadCertificates();
  // A re-read config file's settings that apply without a restart: the certificates' files and
  // the TLS policy (loaded by the next Reload or reload-certificates), the app connection limit and
  // the per-app metrics (at once). The probe's finding about kTLS stays.
  void SetLiveOptions(std::vector<TlsCertSpec> certs, TlsPolicy policy, int32_t app_max_connections,
                      bool metrics_per_app);
  // Reloads the state file and the certificates (SIGHUP); on any error all of
  // the old state stays in force.
  absl::Status Reload();
  // The registry's store changed from elsewhere (another gateway node wrote to etcd): takes in the
  // changes and publishes the routes. On error the routes in force stay.
  absl::Status RegistryChanged();

  HttpResponse Handle(const HttpRequest& request);

  uint64_t publishes() const { return publishes_; }

 private:
  HttpResponse Register(const HttpRequest& request);
  HttpResponse Deregister(const HttpRequest& request);
  HttpResponse List();
  HttpResponse Nodes();
  HttpResponse Import(const HttpRequest& request);
  HttpResponse Explain(const HttpRequest& request);
  HttpResponse Apps();
  HttpResponse SetAppSettings(const HttpRequest& request);
  // The flags with the app's overrides applied.
  int32_t MaxConnections(const std::string& app) const;
  bool ProxyProtocol(const std::string& app) const;
  HttpResponse Metrics();
  HttpResponse ReloadCertificates();
  int64_t LastHandshake(const Registration& reg) const;
  // What the registry routes at `now`, as the snapshot builder takes it; `health` (may be null)
  // gets each entry's health.
  std::vector<RouteEntry> RouteEntries(absl::Time now, std::vector<bool>* health = nullptr) const;
  // Hands the registry's CVM peers to the tunnel; returns their generation.
  uint64_t SyncPeers();
  bool IsLocal(const std::string& address) const;
  // The first of `ports` at which `address` would reach one of this gateway's listeners, or 0.
  uint16_t OwnListenerPort(const std::string& address, const PortSet& ports) const;

  ControlOptions options_;
  Registry& registry_;
  SnapshotDomain& domain_;
  Tunnel* tunnel_;
  Tunnel::View tunnel_view_;  // the latest reading, taken by Poll()
  uint64_t peers_gen_ = 0;
  Clock& clock_;
  std::function<std::string()> worker_metrics_;
  absl::flat_hash_map<std::string, int64_t> handshakes_;  // peer key (base64) -> last handshake, unix s
  std::vector<bool> published_health_;
  bool published_once_ = false;
  uint64_t registry_version_ = 0;
  uint64_t catch_ups_seen_ = 0;  // registry_.catch_ups() as last published
  uint64_t published_version_ = UINT64_MAX;
  uint64_t publishes_ = 0;
  size_t healthy_count_ = 0;
  size_t peer_count_ = 0;
  uint64_t polls_ = 0;
  int64_t last_poll_unix_ = 0;
  AppCounters app_counters_;
  TicketKeys tickets_;
  absl::Time tickets_rotated_;
  std::shared_ptr<const TlsContexts> tls_;
  uint64_t certificate_reloads_ = 0;
  absl::flat_hash_set<std::string> host_addresses_;  // this host's own addresses, canonical text
};

}  // namespace cvmgate
