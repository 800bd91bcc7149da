// Socket addresses: the one parser and formatter of their text form, and
// whether a connection target is one of the gateway's own listeners.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <absl/status/statusor.h>

namespace cvmgate {

// An IPv4 or IPv6 literal ("192.0.2.1", "2001:db8::1"; no brackets, no port)
// and a port; nullopt when `ip` is neither.
std::optional<sockaddr_storage> SockaddrFromIp(std::string_view ip, uint16_t port = 0);

// "ADDR:PORT" or "[IPv6]:PORT", ADDR a literal and PORT 0-65535. The error
// names the part that is wrong, for the caller to put after the flag's name.
absl::StatusOr<sockaddr_storage> ParseSockaddr(std::string_view text);

// "192.0.2.1:443", "[2001:db8::1]:443", "[fe80::1%2]:443".
std::string SockaddrText(const sockaddr_storage& ss);
// The address alone: "192.0.2.1", "2001:db8::1".
std::string IpText(const sockaddr_storage& ss);
std::string IpText(in_addr a);

uint16_t SockaddrPort(const sockaddr_storage& ss);
void SetSockaddrPort(sockaddr_storage& ss, uint16_t port);
// The length bind/connect take for this family.
socklen_t SockaddrLen(const sockaddr_storage& ss);

// True when a connection to `target` would be accepted by one of `listeners`:
// the same address and port, or the port of a wildcard listener of the same
// family while `target_local` says the address is one of this host's. The
// gateway never connects to itself: each such connection would open another.
bool IsOwnListener(const sockaddr_storage& target, bool target_local, std::span<const sockaddr_storage> listeners);

}  // namespace cvmgate
