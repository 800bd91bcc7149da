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

std::string_view RingTaskRunName(RingTaskRun mode) {
  switch (mode) {
    case RingTaskRun::kAuto: return "auto";
    case RingTaskRun::kDefer: return "defer";
    case RingTaskRun::kCoop: return "coop";
    case RingTaskRun::kOff: return "off";
  }
  return "unknown";
}

}  // namespace cvmgate
