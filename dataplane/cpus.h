// Worker placement: the CPUs this process may run on, and pinning a thread to one of them.
#pragma once

#include <vector>

#include <absl/status/status.h>

namespace cvmgate {

// The CPUs the process may run on (its affinity mask: online CPUs, narrowed by taskset or a cpuset
// cgroup), ascending.
std::vector<int> AllowedCpus();

// The CPU for worker `index`: the allowed ones in turn.
inline int CpuForWorker(const std::vector<int>& allowed, int index) {
  return allowed.empty() ? -1 : allowed[static_cast<size_t>(index) % allowed.size()];
}

// Pins the calling thread to `cpu`.
absl::Status PinThisThread(int cpu);

}  // namespace cvmgate
