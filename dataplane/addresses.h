// Socket addresses: their text form, and whether a connection target is one of the gateway's own listeners.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <span>
#include <string>

namespace cvmgate {

// "192.0.2.1:443", "[2001:db8::1]:443".
std::string SockaddrText(const sockaddr_storage& ss);

uint16_t SockaddrPort(const sockaddr_storage& ss);

// True when a connection to `target` would be accepted by one of `listeners`:
// the same address and port, or the port of a wildcard listener of the same
// family while `target_local` says the address is one of this host's. The
// gateway never connects to itself: each such connection would open another.
bool IsOwnListener(const sockaddr_storage& target, bool target_local, std::span<const sockaddr_storage> listeners);

}  // namespace cvmgate
