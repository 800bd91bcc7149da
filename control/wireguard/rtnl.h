// rtnetlink for WireGuard interfaces: what a link is, creating a kernel WireGuard link, its address, bringing it up.
#pragma once

#include <netinet/in.h>

#include <string>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include "kernel-config/netlink.h"

namespace cvmgate {

struct LinkInfo {
  int index = 0;
  std::string kind;  // IFLA_INFO_KIND: "wireguard", "tun", ...; empty when the link has none
  bool up = false;
};

// NotFound when the calling namespace has no link of that name.
absl::StatusOr<LinkInfo> GetLink(NlSocket& rtnl, const std::string& ifname);

// RTM_NEWLINK kind "wireguard". Unimplemented when the kernel has no
// WireGuard (no module, or modules cannot be loaded).
absl::Status CreateWireGuardLink(NlSocket& rtnl, const std::string& ifname);

// Adds addr/prefix_len to the link unless it already has that address.
absl::Status AddAddress(NlSocket& rtnl, const LinkInfo& link, const std::string& ifname, const in_addr& addr,
                        int prefix_len);

absl::Status SetLinkUp(NlSocket& rtnl, const LinkInfo& link, const std::string& ifname);

}  // namespace cvmgate
