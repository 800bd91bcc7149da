// Data-plane options: names of their enumerations.
#include "dataplane/options.h"

namespace cvmgate {

std::string_view SpliceModeName(SpliceMode mode) {
  switch (mode) {
    case SpliceMode::kInline: return "inline";
    case SpliceMode::kUring: return "uring";
    case SpliceMode::kCopy: return "copy";
  }
  return "unknown";
}

}  // namespace cvmgate
