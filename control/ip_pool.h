// IPv4 pool: hands out one /32 per CVM from a CIDR, never the gateway's own address.
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <string>

#include <absl/container/flat_hash_set.h>
#include <absl/status/statusor.h>

#include "dataplane/addresses.h"  // IpText

namespace cvmgate {

class IpPool {
 public:
  // `cidr` like "10.0.0.0/8"; `gateway` must lie inside it and is never handed out,
  // nor are the network and broadcast addresses.
  static absl::StatusOr<IpPool> Create(const std::string& cidr, const std::string& gateway);

  // The lowest free address at or after the last one handed out, wrapping once;
  // an error when the pool is exhausted.
  absl::StatusOr<in_addr> Allocate();
  // Marks an address (from the state file) as taken; an error when it is outside
  // the pool, reserved, or taken already. CanReserve says the same without taking it.
  absl::Status Reserve(in_addr ip);
  absl::Status CanReserve(in_addr ip) const;
  void Release(in_addr ip);

  bool Contains(in_addr ip) const;
  size_t used() const { return used_.size(); }
  uint64_t capacity() const { return last_ - first_ + 1 - 1; }  // minus the gateway
  in_addr gateway() const;
  std::string cidr() const { return cidr_; }

 private:
  IpPool() = default;
  uint32_t first_ = 0;  // host order, first usable
  uint32_t last_ = 0;   // host order, last usable
  uint32_t gateway_ = 0;
  uint32_t cursor_ = 0;
  std::string cidr_;
  absl::flat_hash_set<uint32_t> used_;
};

}  // namespace cvmgate
