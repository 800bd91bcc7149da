// Port sets: parsing, canonical form and membership.
#include "dataplane/ports.h"

#include <algorithm>

#include <absl/strings/ascii.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include "dataplane/strings.h"

namespace cvmgate {
namespace {

bool ParsePort(absl::string_view text, uint16_t* port) {
  uint32_t n = 0;
  // Canonical decimal only, as in host names: no sign, no leading zero.
  if (text.empty() || text.size() > 5 || text[0] == '0' || !absl::ascii_isdigit(text[0]) ||
      !absl::SimpleAtoi(text, &n) || n < 1 || n > 65535) {
    return false;
  }
  *port = static_cast<uint16_t>(n);
  return true;
}

}  // namespace

absl::StatusOr<PortSet> PortSet::Parse(std::string_view text) {
  PortSet set;
  auto bad = [&](absl::string_view item, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("ports '", AbslView(text.substr(0, 200)), "': '", item, "' ", why,
                                                   " (expected a list such as 8080,8443,9000-9100)"));
  };
  for (absl::string_view raw : absl::StrSplit(AbslView(text), ',')) {
    absl::string_view item = absl::StripAsciiWhitespace(raw);
    Range r{};
    std::pair<absl::string_view, absl::string_view> ends = absl::StrSplit(item, absl::MaxSplits('-', 1));
    bool is_range = item.find('-') != absl::string_view::npos;
    if (!ParsePort(ends.first, &r.lo) || (is_range && !ParsePort(ends.second, &r.hi))) {
      return bad(item, "is not a port from 1 to 65535 or a range of them");
    }
    if (!is_range) r.hi = r.lo;
    if (r.hi < r.lo) return bad(item, "ends before it starts");
    set.ranges_.push_back(r);
  }
  std::sort(set.ranges_.begin(), set.ranges_.end(), [](Range a, Range b) { return a.lo < b.lo; });
  std::vector<Range> merged;
  for (Range r : set.ranges_) {
    if (!merged.empty() && r.lo <= uint32_t{merged.back().hi} + 1) {
      merged.back().hi = std::max(merged.back().hi, r.hi);
    } else {
      merged.push_back(r);
    }
  }
  set.ranges_ = std::move(merged);
  return set;
}

bool PortSet::Contains(uint16_t port) const {
  for (const Range& r : ranges_) {
    if (port < r.lo) return false;
    if (port <= r.hi) return true;
  }
  return false;
}

std::string PortSet::ToString() const {
  std::string out;
  for (const Range& r : ranges_) {
    if (!out.empty()) out += ',';
    absl::StrAppend(&out, r.lo);
    if (r.hi != r.lo) absl::StrAppend(&out, "-", r.hi);
  }
  return out;
}

}  // namespace cvmgate
