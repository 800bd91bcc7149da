// The gateway's WireGuard interface at start-up (see setup.h).
#include "control/wireguard/setup.h"

#include <unistd.h>

#include "control/durable_file.h"
#include "dataplane/log.h"

namespace cvmgate {

absl::StatusOr<WgKey> GatewayKey(const std::string& path) {
  if (access(path.c_str(), F_OK) != 0) {
    auto key = GeneratePrivateKey();
    if (!key.ok()) return key.status();
    if (auto s = WriteFileDurably(path, key->ToBase64() + "\n"); !s.ok()) return s;
    Log("wireguard: generated a private key in ", path);
    return key;
  }
  auto text = ReadSmallFile(path);
  if (!text.ok()) return text.status();
  auto key = WgKey::FromBase64(*text);
  if (!key.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", key.status().message()));
  return key;
}

absl::StatusOr<WireGuardSetUp> SetUpWireGuard(const Config& config, const std::string& address_cidr) {
  auto backend = EnsureInterface(config.wg_backend, config.wg_interface, address_cidr);
  if (!backend.ok()) return backend.status();
  auto wg = OpenWireGuard(*backend, config.wg_interface, kDefaultUapiDir, absl::Seconds(2));
  if (!wg.ok()) return wg.status();
  auto device = (*wg)->GetDevice();
  if (!device.ok()) return device.status();
  WgKey key;
  if (!config.wg_private_key_file.empty()) {
    auto k = GatewayKey(config.wg_private_key_file);
    if (!k.ok()) return k.status();
    key = *k;
    if (auto s = (*wg)->Configure(key, config.wg_listen_port); !s.ok()) return s;
  } else if (device->has_private_key) {
    key = device->private_key;  // an adopted interface's own: what it is given back if it must be recreated
  } else {
    return absl::FailedPreconditionError(absl::StrCat("interface ", config.wg_interface,
                                                      " has no private key: give --wg-private-key-file"));
  }
  device = (*wg)->GetDevice();
  if (!device.ok()) return device.status();
  Log("wireguard: interface ", config.wg_interface, " via ", (*wg)->backend(), ", public key ",
      device->public_key.ToBase64(), ", port ", device->listen_port, ", ", device->peers.size(), " peers");
  return WireGuardSetUp{*std::move(wg), *backend, key};
}

WireGuardSupervisor::Options SupervisorOptions(const Config& config, const std::string& address_cidr,
                                               const WgKey& private_key) {
  WireGuardSupervisor::Options o;
  o.ifname = config.wg_interface;
  o.backend = config.wg_backend;
  o.address_cidr = address_cidr;
  o.private_key = private_key;
  o.listen_port = config.wg_listen_port;
  o.keep_unknown_peers = config.wg_keep_unknown_peers;
  o.poll_every = config.health_poll;
  o.restart_after = config.wg_restart_after;
  return o;
}

}  // namespace cvmgate
