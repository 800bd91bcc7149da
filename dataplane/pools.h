// Per-worker pools of pipes and copy buffers, so an idle relay holds neither.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "dataplane/counters.h"
#include "dataplane/fd.h"

namespace cvmgate {

struct Pipe {
  Fd r;
  Fd w;
  uint32_t capacity = 0;  // what one splice into it may move
  bool valid() const { return r.valid(); }
};

// A relay direction takes a pipe when bytes arrive and gives it back, empty, as
// soon as it waits for more; so a worker needs about as many pipes as it has
// directions moving at the same moment, not one per connection.
//
// Two sizes: the kernel's default (64 KiB) for every direction, and a large
// one (--pipe-size) only while a flow is fast (a splice filled the small pipe
// to the brim). A relay whose reader stalls therefore holds a small pipe, unless
// it stalled in the middle of a fast transfer.
class PipePool {
 public:
  static constexpr uint32_t kSmall = 65536;  // F_SETPIPE_SZ not needed: the kernel's default

  // `large_size` 0 (or 64 KiB) keeps every pipe small.
  PipePool(size_t max_idle, uint32_t large_size, WorkerCounters& counters)
      : max_idle_(max_idle), large_size_(large_size > kSmall ? large_size : 0), counters_(counters) {}
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  // False when no pipe can be made (e.g. EMFILE); the caller falls back to copying.
  bool Get(Pipe& out, bool large) {
    large = large && large_size_ > 0;
    std::vector<Pipe>& idle = large ? large_ : small_;
    if (!idle.empty()) {
      out = std::move(idle.back());
      idle.pop_back();
      return true;
    }
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
    out = {Fd(fds[0]), Fd(fds[1]), kSmall};
    // A larger pipe moves more per splice call. Unprivileged processes are
    // capped by fs.pipe-max-size and fs.pipe-user-pages-soft: then the
    // kernel's default capacity stays, which is correct, only slower.
    if (large) {
      int got = fcntl(out.w.get(), F_SETPIPE_SZ, static_cast<int>(large_size_));
      if (got < 0) {
        counters_.Add(Counter::pipe_resize_failed);
        large_size_ = 0;  // the limit stays: small pipes from now on, without asking each time
      } else {
        out.capacity = static_cast<uint32_t>(got);
      }
    }
    return true;
  }
  bool IsLarge(const Pipe& p) const { return p.capacity > kSmall; }
  // Whether `large` would get a pipe of another size than `p`.
  bool Differs(const Pipe& p, bool large) const { return IsLarge(p) != (large && large_size_ > 0); }
  // `p` must be empty: what a pipe still holds would leak into another relay.
  void PutEmpty(Pipe& p) {
    if (!p.valid()) return;
    std::vector<Pipe>& idle = IsLarge(p) ? large_ : small_;
    if (idle.size() < max_idle_) idle.push_back(std::move(p));
    p = {};  // closes it when the pool is full
  }
  // For a pipe that may still hold bytes (a relay that was cut).
  void Discard(Pipe& p) { p = {}; }

 private:
  size_t max_idle_;
  uint32_t large_size_;
  WorkerCounters& counters_;
  std::vector<Pipe> small_;
  std::vector<Pipe> large_;
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
