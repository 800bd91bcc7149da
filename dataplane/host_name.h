// Host-name grammar: `<id>[-<port>][s|g].<base-domain>` to a routing target.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <absl/status/statusor.h>

namespace cvmgate {

enum class Mode : uint8_t {
  kTerminate,    // default: TLS ends at the gateway
  kPassthrough,  // `s`: the raw TLS stream is relayed
  kGrpc,         // `g`: terminate with ALPN h2
};
std::string_view ModeName(Mode mode);

enum class NameStatus : uint8_t {
  kOk,
  kBadName,        // not a host name, or an empty/overlong id
  kUnknownDomain,  // does not sit directly under a served base domain
  kBadPort,        // a port suffix outside 1-65535
};
std::string_view NameStatusName(NameStatus status);

struct RouteTarget {
  std::string id;  // lowercase instance or app id
  uint16_t port = 0;
  Mode mode = Mode::kTerminate;
  size_t base_domain = 0;  // index into the served base domains
};

struct NameResult {
  NameStatus status = NameStatus::kBadName;
  RouteTarget target;
};

// Base domains are lowercase, without a trailing dot (see NormalizeBaseDomain).
NameResult ParseHostName(std::string_view name, const std::vector<std::string>& base_domains);

// Lowercases and validates a base domain given by an operator; strips one trailing dot.
absl::StatusOr<std::string> NormalizeBaseDomain(std::string_view domain);

// True for a valid app or instance id, a DNS label: 1-63 of [a-z0-9-], starting
// and ending with a letter or digit.
bool IsValidId(std::string_view id);

}  // namespace cvmgate
