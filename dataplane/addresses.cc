// Socket addresses: text form and the own-listener test.
#include "dataplane/addresses.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include <absl/strings/str_cat.h>

namespace cvmgate {

std::string SockaddrText(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return absl::StrCat(host, ":", ntohs(a->sin_port));
  }
  auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
  inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
  return absl::StrCat("[", host, "]:", ntohs(a->sin6_port));
}

uint16_t SockaddrPort(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

bool IsOwnListener(const sockaddr_storage& target, bool target_local, std::span<const sockaddr_storage> listeners) {
  for (const sockaddr_storage& l : listeners) {
    if (l.ss_family != target.ss_family || SockaddrPort(l) != SockaddrPort(target)) continue;
    if (l.ss_family == AF_INET) {
      in_addr la = reinterpret_cast<const sockaddr_in*>(&l)->sin_addr;
      in_addr ta = reinterpret_cast<const sockaddr_in*>(&target)->sin_addr;
      if (la.s_addr == ta.s_addr || (la.s_addr == htonl(INADDR_ANY) && target_local)) return true;
    } else {
      const in6_addr& la = reinterpret_cast<const sockaddr_in6*>(&l)->sin6_addr;
      const in6_addr& ta = reinterpret_cast<const sockaddr_in6*>(&target)->sin6_addr;
      if (std::memcmp(&la, &ta, sizeof(la)) == 0 || (IN6_IS_ADDR_UNSPECIFIED(&la) && target_local)) return true;
    }
  }
  return false;
}

}  // namespace cvmgate
