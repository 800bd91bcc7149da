// IPv4 pool: allocation with a cursor so freed addresses are not reused at once.
#include "control/ip_pool.h"

#include <arpa/inet.h>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

namespace cvmgate {

absl::StatusOr<IpPool> IpPool::Create(const std::string& cidr, const std::string& gateway) {
  size_t slash = cidr.find('/');
  in_addr net{};
  int prefix = -1;
  if (slash == std::string::npos || inet_pton(AF_INET, cidr.substr(0, slash).c_str(), &net) != 1 ||
      !absl::SimpleAtoi(cidr.substr(slash + 1), &prefix) || prefix < 8 || prefix > 30) {
    return absl::InvalidArgumentError(
        absl::StrCat("address pool '", cidr, "' is not an IPv4 CIDR with a prefix from /8 to /30"));
  }
  uint32_t mask = prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix);
  uint32_t base = ntohl(net.s_addr);
  if ((base & ~mask) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("address pool '", cidr, "' has host bits set"));
  }
  in_addr gw{};
  if (inet_pton(AF_INET, gateway.c_str(), &gw) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("gateway address '", gateway, "' is not an IPv4 address"));
  }
  IpPool pool;
  pool.first_ = base + 1;
  pool.last_ = (base | ~mask) - 1;
  pool.gateway_ = ntohl(gw.s_addr);
  if (pool.gateway_ < pool.first_ || pool.gateway_ > pool.last_) {
    return absl::InvalidArgumentError(
        absl::StrCat("gateway address ", gateway, " is not a usable address of the pool ", cidr));
  }
  pool.cursor_ = pool.first_;
  pool.cidr_ = cidr;
  return pool;
}

bool IpPool::Contains(in_addr ip) const {
  uint32_t h = ntohl(ip.s_addr);
  return h >= first_ && h <= last_;
}

in_addr IpPool::gateway() const { return in_addr{htonl(gateway_)}; }

absl::StatusOr<in_addr> IpPool::Allocate() {
  uint64_t span = uint64_t{last_} - first_ + 1;
  if (used_.size() + 1 >= span) {
    return absl::ResourceExhaustedError(absl::StrCat("address pool ", cidr_, " is exhausted (", used_.size(),
                                                     " addresses in use)"));
  }
  for (uint64_t i = 0; i < span; ++i) {
    uint32_t candidate = cursor_;
    cursor_ = cursor_ == last_ ? first_ : cursor_ + 1;
    if (candidate != gateway_ && !used_.contains(candidate)) {
      used_.insert(candidate);
      return in_addr{htonl(candidate)};
    }
  }
  return absl::ResourceExhaustedError(absl::StrCat("address pool ", cidr_, " is exhausted"));
}

absl::Status IpPool::CanReserve(in_addr ip) const {
  uint32_t h = ntohl(ip.s_addr);
  if (!Contains(ip)) {
    return absl::InvalidArgumentError(absl::StrCat(IpText(ip), " is outside the address pool ", cidr_));
  }
  if (h == gateway_) return absl::InvalidArgumentError(absl::StrCat(IpText(ip), " is the gateway's own address"));
  if (used_.contains(h)) return absl::AlreadyExistsError(absl::StrCat(IpText(ip), " is assigned twice"));
  return absl::OkStatus();
}

absl::Status IpPool::Reserve(in_addr ip) {
  if (auto s = CanReserve(ip); !s.ok()) return s;
  used_.insert(ntohl(ip.s_addr));
  return absl::OkStatus();
}

void IpPool::Release(in_addr ip) { used_.erase(ntohl(ip.s_addr)); }

}  // namespace cvmgate
