// Port sets: the ports a static instance serves, written "8080,8443,9000-9100".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <absl/status/statusor.h>

namespace cvmgate {

class PortSet {
 public:
  struct Range {
    uint16_t lo;
    uint16_t hi;
    bool operator==(const Range&) const = default;
  };

  // "8080", "8080,8443", "9000-9100" (whitespace around items allowed). Ports
  // are 1-65535; the set is kept sorted with overlapping ranges merged, so
  // ToString() is canonical. An empty text is an error: a set names ports.
  static absl::StatusOr<PortSet> Parse(std::string_view text);

  bool Contains(uint16_t port) const;
  bool empty() const { return ranges_.empty(); }
  std::string ToString() const;
  bool operator==(const PortSet&) const = default;

 private:
  std::vector<Range> ranges_;
};

}  // namespace cvmgate
