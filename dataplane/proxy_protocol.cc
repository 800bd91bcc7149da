// PROXY protocol v2 header building.
#include "dataplane/proxy_protocol.h"

#include <netinet/in.h>

#include <cstring>

namespace cvmgate {
namespace {

constexpr uint8_t kSignature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr uint8_t kVersion2Proxy = 0x21;
constexpr uint8_t kTcpOverIpv4 = 0x11;
constexpr uint8_t kTcpOverIpv6 = 0x21;

// The address as IPv6 (IPv4 mapped to ::ffff:a.b.c.d) and its port, both in network order.
void AsIpv6(const sockaddr_storage& ss, uint8_t addr[16], uint16_t& port) {
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    std::memcpy(addr, &a->sin6_addr, 16);
    port = a->sin6_port;
    return;
  }
  auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
  std::memset(addr, 0, 10);
  addr[10] = addr[11] = 0xff;
  std::memcpy(addr + 12, &a->sin_addr, 4);
  port = a->sin_port;
}

}  // namespace

size_t BuildProxyV2(const sockaddr_storage& client, const sockaddr_storage& local, uint8_t* out) {
  std::memcpy(out, kSignature, sizeof(kSignature));
  out[12] = kVersion2Proxy;
  size_t len;
  if (client.ss_family == AF_INET && local.ss_family == AF_INET) {
    auto* c = reinterpret_cast<const sockaddr_in*>(&client);
    auto* l = reinterpret_cast<const sockaddr_in*>(&local);
    out[13] = kTcpOverIpv4;
    len = 12;
    std::memcpy(out + 16, &c->sin_addr, 4);
    std::memcpy(out + 20, &l->sin_addr, 4);
    std::memcpy(out + 24, &c->sin_port, 2);
    std::memcpy(out + 26, &l->sin_port, 2);
  } else {
    out[13] = kTcpOverIpv6;
    len = 36;
    uint16_t cport, lport;
    AsIpv6(client, out + 16, cport);
    AsIpv6(local, out + 32, lport);
    std::memcpy(out + 48, &cport, 2);
    std::memcpy(out + 50, &lport, 2);
  }
  out[14] = static_cast<uint8_t>(len >> 8);
  out[15] = static_cast<uint8_t>(len);
  return 16 + len;
}

}  // namespace cvmgate
