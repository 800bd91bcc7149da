// Worker placement (see cpus.h).
#include "dataplane/cpus.h"

#include <pthread.h>
#include <sched.h>

#include <cstring>

#include <absl/strings/str_cat.h>

namespace cvmgate {

std::vector<int> AllowedCpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

absl::Status PinThisThread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (int e = pthread_setaffinity_np(pthread_self(), sizeof(set), &set); e != 0) {
    return absl::InternalError(absl::StrCat("cannot pin to CPU ", cpu, ": ", std::strerror(e)));
  }
  return absl::OkStatus();
}

}  // namespace cvmgate
