// PROXY protocol v2: the header that tells an instance the client's address (haproxy.org proxy-protocol.txt).
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

namespace cvmgate {

// Longest header this writes: 16 bytes of preamble + two IPv6 addresses and ports.
inline constexpr size_t kProxyV2MaxHeader = 16 + 36;

// Writes a PROXY v2 "PROXY" command for a TCP connection from `client` to
// `local` (both AF_INET or both AF_INET6; mixed families are sent as IPv6 with
// the IPv4 address mapped). Returns the header's length.
size_t BuildProxyV2(const sockaddr_storage& client, const sockaddr_storage& local, uint8_t* out);

}  // namespace cvmgate
