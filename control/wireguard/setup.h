// The gateway's WireGuard interface at start-up: made or adopted, given the
// gateway's key and port. From then on its supervisor keeps it so.
#pragma once

#include <memory>
#include <string>

#include <absl/status/statusor.h>

#include "control/config.h"
#include "control/wireguard/supervisor.h"
#include "control/wireguard/wireguard.h"

namespace cvmgate {

struct WireGuardSetUp {
  std::unique_ptr<WireGuard> wg;
  std::string backend;
  WgKey private_key;
};

// The gateway's private key: read from `path`, or generated and written 0600 when the file is missing.
absl::StatusOr<WgKey> GatewayKey(const std::string& path);

// Makes --wg-interface (or adopts it) with `address_cidr`, and sets its key
// (--wg-private-key-file, else the adopted interface's own) and listen port.
absl::StatusOr<WireGuardSetUp> SetUpWireGuard(const Config& config, const std::string& address_cidr);

// What the supervisor needs to keep the interface as SetUpWireGuard made it.
WireGuardSupervisor::Options SupervisorOptions(const Config& config, const std::string& address_cidr,
                                               const WgKey& private_key);

}  // namespace cvmgate
