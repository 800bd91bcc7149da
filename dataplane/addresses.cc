// Socket addresses: text form and the own-listener test.
#include "dataplane/addresses.h"

#include <arpa/inet.h>
#include <sys/un.h>

#include <cstring>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

#include "dataplane/strings.h"

namespace cvmgate {
namespace {

const sockaddr_in& V4(const sockaddr_storage& ss) { return *reinterpret_cast<const sockaddr_in*>(&ss); }
const sockaddr_in6& V6(const sockaddr_storage& ss) { return *reinterpret_cast<const sockaddr_in6*>(&ss); }
sockaddr_in& V4(sockaddr_storage& ss) { return *reinterpret_cast<sockaddr_in*>(&ss); }
sockaddr_in6& V6(sockaddr_storage& ss) { return *reinterpret_cast<sockaddr_in6*>(&ss); }

}  // namespace

std::optional<sockaddr_storage> SockaddrFromIp(std::string_view ip, uint16_t port) {
  char text[INET6_ADDRSTRLEN];
  if (ip.size() >= sizeof(text)) return std::nullopt;
  std::memcpy(text, ip.data(), ip.size());
  text[ip.size()] = '\0';
  sockaddr_storage ss{};
  if (inet_pton(AF_INET, text, &V4(ss).sin_addr) == 1) {
    ss.ss_family = AF_INET;
  } else if (inet_pton(AF_INET6, text, &V6(ss).sin6_addr) == 1) {
    ss.ss_family = AF_INET6;
  } else {
    return std::nullopt;
  }
  SetSockaddrPort(ss, port);
  return ss;
}

absl::StatusOr<sockaddr_storage> ParseSockaddr(std::string_view text) {
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return absl::InvalidArgumentError("expected [IPv6]:PORT");
    }
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return absl::InvalidArgumentError("expected ADDR:PORT");
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }
  uint32_t port;
  if (!absl::SimpleAtoi(AbslView(port_text), &port) || port > 65535) {
    return absl::InvalidArgumentError("the port must be 0-65535");
  }
  std::optional<sockaddr_storage> ss = SockaddrFromIp(host, static_cast<uint16_t>(port));
  if (!ss) return absl::InvalidArgumentError("the address must be an IPv4 or IPv6 literal");
  return *ss;
}

std::string IpText(in_addr a) {
  char host[INET_ADDRSTRLEN] = "?";
  inet_ntop(AF_INET, &a, host, sizeof(host));
  return host;
}

std::string IpText(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) return IpText(V4(ss).sin_addr);
  if (ss.ss_family == AF_INET6) inet_ntop(AF_INET6, &V6(ss).sin6_addr, host, sizeof(host));
  return host;
}

std::string SockaddrText(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return absl::StrCat(IpText(ss), ":", SockaddrPort(ss));
  std::string scope = ss.ss_family == AF_INET6 && V6(ss).sin6_scope_id != 0 ? absl::StrCat("%", V6(ss).sin6_scope_id)
                                                                              : std::string();
  return absl::StrCat("[", IpText(ss), scope, "]:", SockaddrPort(ss));
}

uint16_t SockaddrPort(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return ntohs(V4(ss).sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(V6(ss).sin6_port);
  return 0;
}

void SetSockaddrPort(sockaddr_storage& ss, uint16_t port) {
  if (ss.ss_family == AF_INET) V4(ss).sin_port = htons(port);
  if (ss.ss_family == AF_INET6) V6(ss).sin6_port = htons(port);
}

socklen_t SockaddrLen(const sockaddr_storage& ss) {
  switch (ss.ss_family) {
    case AF_INET: return sizeof(sockaddr_in);
    case AF_INET6: return sizeof(sockaddr_in6);
    case AF_UNIX: return sizeof(sockaddr_un);
    default: return sizeof(ss);
  }
}

bool IsOwnListener(const sockaddr_storage& target, bool target_local, std::span<const sockaddr_storage> listeners) {
  for (const sockaddr_storage& l : listeners) {
    if (l.ss_family != target.ss_family || SockaddrPort(l) != SockaddrPort(target)) continue;
    if (l.ss_family == AF_INET) {
      in_addr la = V4(l).sin_addr;
      in_addr ta = V4(target).sin_addr;
      if (la.s_addr == ta.s_addr || (la.s_addr == htonl(INADDR_ANY) && target_local)) return true;
    } else {
      const in6_addr& la = V6(l).sin6_addr;
      const in6_addr& ta = V6(target).sin6_addr;
      if (std::memcmp(&la, &ta, sizeof(la)) == 0 || (IN6_IS_ADDR_UNSPECIFIED(&la) && target_local)) return true;
    }
  }
  return false;
}

}  // namespace cvmgate
