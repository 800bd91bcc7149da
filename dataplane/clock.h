// The one clock for timers and timeouts: monotonic milliseconds, which a change
// of the wall clock never moves. Wall time (absl::Now) is only for what is
// compared with wall time from elsewhere, such as WireGuard's last handshake.
#pragma once

#include <time.h>

#include <cstdint>

namespace cvmgate {

inline int64_t MonotonicMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// The same clock in nanoseconds, for measuring phases of a connection.
inline int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace cvmgate
