// Kernel WireGuard over generic netlink: request builders, the GET_DEVICE dump parser, and the backend.
#pragma once

#include <linux/netlink.h>
#include <netinet/in.h>

#include <cstdint>
#include <memory>
#include <string>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include "control/wireguard/wireguard.h"

namespace cvmgate {

// Each writes one complete request into buf (kNlRequestBuffer bytes) and
// returns it; NlSocket::Transact fills in its sequence number. `family` is
// the id the kernel gave the "wireguard" generic-netlink family.
nlmsghdr* PutWgGetDevice(char* buf, uint16_t family, const std::string& ifname);
// One peer, WGPEER_F_REPLACE_ALLOWEDIPS, allowed-ips exactly ip/32, and its endpoint when given.
nlmsghdr* PutWgSetPeer(char* buf, uint16_t family, const std::string& ifname, const WgKey& public_key,
                       const in_addr& ip, const sockaddr_storage* endpoint = nullptr);
// One peer, WGPEER_F_REMOVE_ME.
nlmsghdr* PutWgRemovePeer(char* buf, uint16_t family, const std::string& ifname, const WgKey& public_key);
nlmsghdr* PutWgConfigure(char* buf, uint16_t family, const std::string& ifname, const WgKey& private_key,
                         uint16_t listen_port);

// Builds a WgDevice from the messages of one WG_CMD_GET_DEVICE dump. The
// kernel spreads a device over as many messages as it needs: only the first
// carries the device's own attributes, and a peer whose allowed-ips did not
// fit is repeated at the start of the next message (public key, then the
// rest of its allowed-ips).
class WgDumpParser {
 public:
  absl::Status Add(const nlmsghdr* nlh);
  // The device changed while the kernel was dumping it (NLM_F_DUMP_INTR):
  // the result mixes two states, so the dump must be asked for again.
  bool interrupted() const { return interrupted_; }
  int messages() const { return messages_; }
  WgDevice Take() { return std::move(device_); }

 private:
  WgDevice device_;
  int messages_ = 0;
  bool interrupted_ = false;
};

// Parses a buffer of netlink messages as received for one dump (a
// recording), up to its NLMSG_DONE. `messages` gets the count of
// WG_CMD_GET_DEVICE messages.
absl::StatusOr<WgDevice> ParseWgDump(const char* data, size_t len, int* messages = nullptr);

// The netlink backend for `ifname` in the calling thread's network namespace.
// Fails when the kernel has no "wireguard" generic-netlink family; does not
// check the interface (OpenWireGuard does).
absl::StatusOr<std::unique_ptr<WireGuard>> OpenNetlinkWireGuard(const std::string& ifname);

}  // namespace cvmgate
