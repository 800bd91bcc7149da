// Per-worker pools of pipes and copy buffers, so an idle relay holds neither.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "dataplane/counters.h"

namespace cvmgate {

struct Pipe {
  int r = -1;
  int w = -1;
  bool valid() const { return r >= 0; }
};

// A relay direction takes a pipe when bytes arrive and gives it back, empty, as
// soon as it waits for more; so a worker needs about as many pipes as it has
// directions moving at the same moment, not one per connection.
class PipePool {
 public:
  // `pipe_size` 0 keeps the kernel's default capacity (64 KiB).
  PipePool(size_t max_idle, int pipe_size, WorkerCounters& counters)
      : max_idle_(max_idle), pipe_size_(pipe_size), counters_(counters) {}
  ~PipePool() {
    for (Pipe& p : idle_) Close(p);
  }
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  // False when no pipe can be made (e.g. EMFILE); the caller falls back to copying.
  bool Get(Pipe& out) {
    if (!idle_.empty()) {
      out = idle_.back();
      idle_.pop_back();
      return true;
    }
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
    out = {fds[0], fds[1]};
    // A larger pipe moves more per splice call. Unprivileged processes are
    // capped by fs.pipe-max-size and fs.pipe-user-pages-soft: then the
    // kernel's default capacity stays, which is correct, only slower.
    if (pipe_size_ > 0 && fcntl(fds[1], F_SETPIPE_SZ, pipe_size_) < 0) counters_.Add(Counter::pipe_resize_failed);
    return true;
  }
  // `p` must be empty: what a pipe still holds would leak into another relay.
  void PutEmpty(Pipe& p) {
    if (!p.valid()) return;
    if (idle_.size() < max_idle_) {
      idle_.push_back(p);
    } else {
      Close(p);
    }
    p = {};
  }
  // For a pipe that may still hold bytes (a relay that was cut).
  void Discard(Pipe& p) {
    if (p.valid()) Close(p);
    p = {};
  }

 private:
  static void Close(Pipe& p) {
    close(p.r);
    close(p.w);
  }
  size_t max_idle_;
  int pipe_size_;
  WorkerCounters& counters_;
  std::vector<Pipe> idle_;
};

// Copy buffers for relay directions that cannot splice.
class BufferPool {
 public:
  static constexpr uint32_t kSize = 64 * 1024;
  explicit BufferPool(size_t max_idle) : max_idle_(max_idle) {}
  std::unique_ptr<uint8_t[]> Get() {
    if (idle_.empty()) return std::make_unique_for_overwrite<uint8_t[]>(kSize);
    auto b = std::move(idle_.back());
    idle_.pop_back();
    return b;
  }
  void Put(std::unique_ptr<uint8_t[]>& b) {
    if (b && idle_.size() < max_idle_) idle_.push_back(std::move(b));
    b.reset();
  }

 private:
  size_t max_idle_;
  std::vector<std::unique_ptr<uint8_t[]>> idle_;
};

}  // namespace cvmgate
