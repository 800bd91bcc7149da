// WireGuard peers for the control plane: one interface over kernel WireGuard (netlink) or wireguard-go (UAPI).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/time/time.h>

#include "dataplane/fd.h"

namespace cvmgate {

// A Curve25519 key as WireGuard uses it (private, public or preshared).
struct WgKey {
  std::array<uint8_t, 32> bytes{};

  // Canonical base64 as `wg genkey` prints it: 44 characters ending in '='.
  static absl::StatusOr<WgKey> FromBase64(std::string_view text);
  std::string ToBase64() const;
  // 64 hex digits, as the UAPI protocol writes keys.
  static absl::StatusOr<WgKey> FromHex(std::string_view text);
  std::string ToHex() const;

  bool operator==(const WgKey&) const = default;
};

// X25519 base-point multiplication (OpenSSL), as `wg pubkey` does.
absl::StatusOr<WgKey> PublicKeyFromPrivate(const WgKey& private_key);
// 32 random bytes clamped for Curve25519, as `wg genkey` does.
absl::StatusOr<WgKey> GeneratePrivateKey();

struct WgPeer {
  WgKey public_key;
  std::vector<std::string> allowed_ips;  // "10.0.0.2/32", "fd00::2/128"
  int64_t last_handshake_sec = 0;        // unix time; 0 = never
  std::string endpoint;                  // "192.0.2.2:51820", "[2001:db8::2]:51820"; empty = unknown
  uint64_t rx_bytes = 0;
  uint64_t tx_bytes = 0;
};

struct WgDevice {
  std::string ifname;
  WgKey public_key;  // meaningful only when has_private_key
  bool has_private_key = false;
  WgKey private_key;  // likewise: what a recreated interface is given again
  uint16_t listen_port = 0;
  std::vector<WgPeer> peers;
};

// One WireGuard interface. Not thread-safe: the control thread owns it.
class WireGuard {
 public:
  virtual ~WireGuard() = default;
  virtual std::string_view backend() const = 0;  // "netlink" or "uapi"
  virtual absl::StatusOr<WgDevice> GetDevice() = 0;
  // Adds the peer or updates it; its allowed-ips become exactly ip/32. A
  // non-empty `endpoint` ("192.0.2.2:51820", "[2001:db8::2]:51820") is where
  // to reach it before it speaks first: an interface recreated with its peers'
  // last endpoints can start their handshakes itself.
  virtual absl::Status SetPeer(const WgKey& public_key, const in_addr& ip, std::string_view endpoint) = 0;
  absl::Status SetPeer(const WgKey& public_key, const in_addr& ip) { return SetPeer(public_key, ip, ""); }
  // Removing a peer the device does not have succeeds.
  virtual absl::Status RemovePeer(const WgKey& public_key) = 0;
  virtual absl::Status Configure(const WgKey& private_key, uint16_t listen_port) = 0;
};

inline constexpr char kDefaultUapiDir[] = "/var/run/wireguard";

// Opens the interface `ifname` of the calling thread's network namespace.
// backend: "netlink" (kernel WireGuard), "uapi" (wireguard-go's socket
// <uapi_dir>/<ifname>.sock) or "auto" (netlink when the kernel has the
// "wireguard" generic-netlink family and ifname is a kernel WireGuard link,
// else uapi when its socket answers). Errors say what was tried and why it failed.
// Each UAPI request has `uapi_timeout` to complete.
absl::StatusOr<std::unique_ptr<WireGuard>> OpenWireGuard(const std::string& backend, const std::string& ifname,
                                                         const std::string& uapi_dir = kDefaultUapiDir,
                                                         absl::Duration uapi_timeout = absl::Seconds(10));

// Makes sure `ifname` exists in the calling thread's network namespace and
// returns the backend that drives it ("netlink" or "uapi"). A missing
// interface is created, as a kernel WireGuard link when backend is "netlink"
// or "auto" and the kernel has WireGuard, else by starting `wireguard-go
// IFNAME` (found in PATH), and is given `address_cidr` (e.g. "10.0.0.1/8") and
// set up. An existing interface is adopted as it is; only the address is added
// when it lacks it.
absl::StatusOr<std::string> EnsureInterface(const std::string& backend, const std::string& ifname,
                                            const std::string& address_cidr);

// "192.0.2.2:51820" or "[2001:db8::2]:51820" as a socket address; nullopt when it is neither.
std::optional<sockaddr_storage> ParseEndpoint(std::string_view text);

// Whether the calling thread's network namespace has a link named `ifname`
// (an error only when rtnetlink cannot be asked).
absl::StatusOr<bool> LinkExists(const std::string& ifname);

// The wireguard-go process serving `ifname` in the calling thread's network
// namespace (the one cvmgate started, or one it adopted), or -1.
pid_t FindWireguardGo(const std::string& ifname);

// pidfd_open(2): a descriptor that polls readable once `pid` has exited
// (invalid when the kernel or the pid says no).
Fd PidfdOpen(pid_t pid);

}  // namespace cvmgate
