// CVM registry: apps, instances, their WireGuard keys and /32s, persisted crash-safely in the state file.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <absl/container/flat_hash_map.h>
#include <absl/status/statusor.h>
#include "control/ip_pool.h"
#include "control/wireguard/wireguard.h"
#include "dataplane/ports.h"

namespace cvmgate {

struct Registration {
  std::string app;
  std::string id;
  std::optional<WgKey> key;  // empty: a static instance (fixed address, no WireGuard peer)
  std::string address;       // the allocated /32, or the static address (canonical IPv4 or IPv6 text)
  PortSet ports;             // a static instance's ports (never empty); a CVM serves every port (empty)
  bool is_static() const { return !key.has_value(); }
};

// An app's overrides of the global flags; unset fields follow the flag.
struct AppSettings {
  std::optional<bool> proxy_protocol = std::nullopt;      // --proxy-protocol
  std::optional<int32_t> max_connections = std::nullopt;  // --app-max-connections
  bool empty() const { return !proxy_protocol && !max_connections; }
  bool operator==(const AppSettings&) const = default;
};
inline constexpr int32_t kMaxAppConnectionsLimit = 1 << 24;

class Registry;

// A gateway host of a cluster that shares its registry (etcd): what a CVM needs to peer with it.
struct GatewayNode {
  std::string name;
  std::string public_key;      // its WireGuard key (base64); empty: a host without a tunnel
  std::string endpoint;        // host:port CVMs dial (--wg-endpoint)
  std::string tunnel_address;  // its address in the pool (--wg-address), claimed like a CVM's
  bool operator==(const GatewayNode&) const = default;
};

// One change the registry made in memory, for its store to make durable: an instance registered,
// replaced or deregistered (`before` and/or `after`), or an app's settings (`app`).
struct RegistryChange {
  std::optional<Registration> before;
  std::optional<Registration> after;
  std::optional<std::string> app;
  AppSettings settings;  // with `app`: its settings now (empty: none)
};

// What another gateway host changed in a shared store since this host last read it, as the store's
// watch saw it: each instance, app and gateway host touched, as it is now (nullopt: gone), in the
// JSON the store keeps it in. `resync`: the store lost track of what changed (its history was
// compacted, or it cannot tell): the registry reads it whole.
struct RegistryUpdate {
  bool resync = false;
  std::map<std::string, std::optional<std::string>> instances;  // id -> {"app": A, "address": IP, ...}
  std::map<std::string, std::optional<std::string>> apps;       // app -> its settings {"max_connections": N}
  std::map<std::string, std::optional<std::string>> gateways;   // name -> {"public_key", "endpoint", ...}
  bool empty() const { return !resync && instances.empty() && apps.empty() && gateways.empty(); }
};

// Where the registry is kept: the state file (one gateway host) or etcd (several). A store reads
// and writes the state file's document shape, so one set of rules validates both.
class RegistryStore {
 public:
  virtual ~RegistryStore() = default;
  // What errors name: "state file /var/lib/cvmgate/state.json", "etcd registry /cvmgate/".
  virtual const std::string& name() const = 0;
  // The whole registry as a state-file document; an empty store reads as {"version": 1}.
  virtual absl::StatusOr<std::string> Read() = 0;
  // Makes `changes` durable, all or none; `after` is the whole registry with them. Aborted: the
  // store changed since it was read (another gateway node wrote): read it again and redo them.
  virtual absl::Status Write(std::span<const RegistryChange> changes, const Registry& after) = 0;
  // How many changes one Write may take (etcd bounds a transaction's operations).
  virtual size_t max_changes() const { return SIZE_MAX; }
  // A descriptor that polls readable when the store changed from elsewhere (Registry::CatchUp), or -1.
  virtual int changes_fd() const { return -1; }
  // What changed from elsewhere since the last Read or TakeUpdate.
  virtual RegistryUpdate TakeUpdate() {
    RegistryUpdate whole;
    whole.resync = true;
    return whole;
  }
};

// The state file, replaced crash-safely on every write (durable_file.h).
class FileStore final : public RegistryStore {
 public:
  explicit FileStore(std::string path) : path_(std::move(path)), name_("state file " + path_) {}
  const std::string& name() const override { return name_; }
  absl::StatusOr<std::string> Read() override;
  absl::Status Write(std::span<const RegistryChange> changes, const Registry& after) override;

 private:
  std::string path_;
  std::string name_;
};

// A static instance's address as the registry keeps it: an IPv4 or IPv6
// literal in canonical form (an IPv4-mapped IPv6 address becomes IPv4), never
// unspecified, multicast or broadcast.
absl::StatusOr<std::string> CanonicalStaticAddress(std::string_view text);

// Owned by the control thread. Every mutation is validated first and written
// to the state file before it is acknowledged; when the write fails, memory is
// rolled back, so nothing is ever half-applied. The API and the state file obey
// the same rules:
// - app and instance ids are DNS labels and share one namespace: an id names
//   one app or one instance, so no app can take over another's names;
// - a CVM has a unique WireGuard key and a unique /32 from the pool;
// - a static instance names the ports it serves; its address is unique when it
//   lies in the pool (a tunnel address), and may be shared outside it.
class Registry {
 public:
  Registry(IpPool pool, std::string path)
      : pool_(std::move(pool)), store_(std::make_unique<FileStore>(std::move(path))) {}
  Registry(IpPool pool, std::unique_ptr<RegistryStore> store) : pool_(std::move(pool)), store_(std::move(store)) {}

  // Replaces the registry with the store's contents (a missing state file is
  // empty). On error the registry is unchanged and the error names the store.
  absl::Status Load();
  // Takes in what other gateway hosts changed in the store (RegistryUpdate): only what they touched,
  // checked by the same rules as Load, all or nothing; the whole store is read again when the store
  // lost track or the changes do not fit (then as Load). Returns whether anything changed.
  absl::StatusOr<bool> CatchUp();
  // How many times the registry took in the store's changes from elsewhere (Load or CatchUp; a
  // write that had to be redone catches up too): a caller that saw another count publishes again.
  uint64_t catch_ups() const { return catch_ups_; }

  struct Outcome {
    Registration reg;
    std::optional<WgKey> replaced_key;  // the peer key this registration replaced
    bool changed = false;               // false: an idempotent repeat
  };
  absl::StatusOr<Outcome> Register(std::string_view app, std::string_view id, std::string_view public_key) {
    return Retried([&] { return RegisterOnce(app, id, public_key); });
  }
  absl::StatusOr<Outcome> RegisterStatic(std::string_view app, std::string_view id, std::string_view address,
                                         std::string_view ports) {
    return Retried([&] { return RegisterStaticOnce(app, id, address, ports); });
  }
  absl::StatusOr<Registration> Deregister(std::string_view id) {
    return Retried([&] { return DeregisterOnce(id); });
  }
  // Replaces an app's overrides (an empty value removes them). The app need
  // not have instances yet: settings may be made before the first CVM registers.
  // Returns whether anything changed.
  absl::StatusOr<bool> SetAppSettings(std::string_view app, const AppSettings& settings) {
    return Retried([&] { return SetAppSettingsOnce(app, settings); });
  }
  const AppSettings& app_settings(const std::string& app) const;
  const std::map<std::string, AppSettings>& all_app_settings() const { return settings_; }

  // Adds what a state-file document holds (cvmgatectl import: a registry moved between the state
  // file and etcd). The document is checked whole by the registry's rules first; then each app's
  // settings are written, and the instances with their addresses, as many a write as the store
  // takes (each write all or none). An instance already here as it is in the document is left
  // alone; one that differs stops the import (what earlier writes added stays), so an import can
  // be run again once it is fixed.
  struct Imported {
    size_t added = 0;
    size_t unchanged = 0;
    size_t settings = 0;
  };
  absl::StatusOr<Imported> Import(const std::string& document);

  const std::map<std::string, Registration>& instances() const { return instances_; }
  const IpPool& pool() const { return pool_; }
  // The live gateway hosts sharing this registry, by name (etcd only; empty with the state file).
  const std::map<std::string, GatewayNode>& gateways() const { return gateways_; }
  RegistryStore& store() const { return *store_; }
  std::string ToJson() const;

 private:
  absl::Status Save(const RegistryChange& change) { return Save(std::span<const RegistryChange>(&change, 1)); }
  absl::Status Save(std::span<const RegistryChange> changes);
  // Runs `change` (a mutation that validates, applies and saves), and again on what the store holds
  // now each time another gateway node wrote first: after a random pause that grows with each try,
  // so that nodes racing for the registry do not keep colliding; kWriteAttempts at most.
  // Catching up takes in what the other node's write was as soon as the watch brought it; the whole
  // store is read again every kReadWholeEvery tries, should the watch lag behind.
  template <typename Change>
  auto Retried(Change&& change) -> decltype(change()) {
    for (int attempt = 1;; ++attempt) {
      auto result = change();
      if (result.ok() || !absl::IsAborted(result.status()) || attempt == kWriteAttempts) return result;
      BackOff(attempt);
      absl::Status s = attempt % kReadWholeEvery == 0 ? Load() : CatchUp().status();
      if (!s.ok()) return s;
    }
  }
  static constexpr int kReadWholeEvery = 4;
  // Applies `update` (CatchUp); on a conflict with what is here, nothing changes and it says why.
  absl::Status Apply(const RegistryUpdate& update);
  // A gateway host's tunnel address is reserved in the pool (when it lies there): never a CVM's.
  absl::Status ReserveGateway(const GatewayNode& node);
  void ReleaseGateway(const GatewayNode& node);
  static void BackOff(int attempt);
  static constexpr int kWriteAttempts = 30;
  absl::StatusOr<Outcome> RegisterOnce(std::string_view app, std::string_view id, std::string_view public_key);
  absl::StatusOr<Outcome> RegisterStaticOnce(std::string_view app, std::string_view id, std::string_view address,
                                             std::string_view ports);
  absl::StatusOr<Registration> DeregisterOnce(std::string_view id);
  absl::StatusOr<bool> SetAppSettingsOnce(std::string_view app, const AppSettings& settings);
  // Adds the instances of `batch` not here yet (as they are, addresses included) in one write;
  // counts into `out` those added and those already here alike. Nothing is added on error.
  absl::StatusOr<bool> ImportBatchOnce(std::span<const Registration> batch, Imported& out);
  bool IsApp(const std::string& id) const { return app_sizes_.contains(id) || settings_.contains(id); }
  // The shared namespace, for `id` joining `app` (an existing instance of
  // `app` may be registered again).
  absl::Status CheckNames(const std::string& app, const std::string& id) const;
  // A static address inside the pool must be free there (or be `reg`'s own).
  absl::Status CheckAddress(const Registration& reg) const;
  // Adds or removes an instance with its indexes and its pool address; Link
  // expects CheckNames/CheckAddress to have passed.
  void Link(const Registration& reg);
  void Unlink(const std::string& id);
  // Replaces `previous` (if any) by `next` in memory and in the state file, or
  // changes nothing and says why.
  absl::StatusOr<Outcome> Commit(std::optional<Registration> previous, Registration next);

  IpPool pool_;
  std::unique_ptr<RegistryStore> store_;  // null in the scratch registry Load validates with
  std::map<std::string, Registration> instances_;          // by instance id
  std::map<std::string, AppSettings> settings_;             // by app id; never holds an empty value
  std::map<std::string, GatewayNode> gateways_;             // by name
  absl::flat_hash_map<std::string, size_t> app_sizes_;      // app id -> instances
  absl::flat_hash_map<std::string, std::string> key_owner_;  // CVM key (base64) -> instance id
  uint64_t catch_ups_ = 0;
};

}  // namespace cvmgate
