// wireguard-go over its UAPI socket: the text protocol (requests, reply parsing) and the backend.
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/time/time.h>
#include "control/wireguard/wireguard.h"

namespace cvmgate {

// Requests, each a whole message ending in an empty line.
std::string UapiGetRequest();
// replace_allowed_ips=true, then exactly one allowed_ip=<ip>/32; the endpoint when one is given.
std::string UapiSetPeerRequest(const WgKey& public_key, const in_addr& ip, std::string_view endpoint = "");
std::string UapiRemovePeerRequest(const WgKey& public_key);
std::string UapiConfigureRequest(const WgKey& private_key, uint16_t listen_port);

// The reply to get=1: `key=value` lines, the device's first, then each peer's
// from its public_key line on, ending with errno=N and an empty line. The
// device's public key is derived from its private_key (the reply has none).
// Keys it does not know are skipped, so newer wireguard-go versions parse.
absl::StatusOr<WgDevice> ParseUapiGetReply(std::string_view reply, const std::string& ifname);
// The reply to set=1: errno=0, or the error wireguard-go reports.
absl::Status ParseUapiSetReply(std::string_view reply);

// The UAPI backend for `ifname` at `socket_path`; fails unless wireguard-go
// answers a connection there. Each request has `timeout` to complete.
absl::StatusOr<std::unique_ptr<WireGuard>> OpenUapiWireGuard(const std::string& ifname, const std::string& socket_path,
                                                             absl::Duration timeout = absl::Seconds(10));

}  // namespace cvmgate
