// CVM registry: apps, instances, their WireGuard keys and /32s, persisted crash-safely in the state file.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "control/ip_pool.h"
#include "control/wireguard/wireguard.h"

namespace cvmgate {

struct Registration {
  std::string app;
  std::string id;
  std::optional<WgKey> key;  // empty: a static instance (fixed address, no WireGuard peer)
  std::string address;       // the allocated /32, or the static address (IPv4 or IPv6)
  bool is_static() const { return !key.has_value(); }
};

// Owned by the control thread. Every mutation is validated first and written
// to the state file before it is acknowledged; when the write fails, memory is
// rolled back, so nothing is ever half-applied.
class Registry {
 public:
  Registry(IpPool pool, std::string path) : pool_(std::move(pool)), path_(std::move(path)) {}

  // Replaces the registry with the state file's contents (a missing file is
  // empty). On error the registry is unchanged and the error names the file.
  absl::Status Load();

  struct Outcome {
    Registration reg;
    std::optional<WgKey> replaced_key;  // the peer key this registration replaced
    bool changed = false;               // false: an idempotent repeat
  };
  absl::StatusOr<Outcome> Register(std::string_view app, std::string_view id, std::string_view public_key);
  absl::StatusOr<Outcome> RegisterStatic(std::string_view app, std::string_view id, std::string_view address);
  absl::StatusOr<Registration> Deregister(std::string_view id);

  const std::map<std::string, Registration>& instances() const { return instances_; }
  const IpPool& pool() const { return pool_; }
  const std::string& path() const { return path_; }
  std::string ToJson() const;

 private:
  absl::Status Save() const;
  absl::StatusOr<Outcome> Commit(Registration reg, std::optional<Registration> previous, bool allocated);

  IpPool pool_;
  std::string path_;
  std::map<std::string, Registration> instances_;  // by instance id
};

}  // namespace cvmgate
