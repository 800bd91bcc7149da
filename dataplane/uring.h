// The worker's io_uring: the Ring its connections submit to, and the loop's own operations
// (multishot accept, the wake-up read, cancellations whose completions are ignored).
#pragma once

#include <liburing.h>

#include <cstdint>

#include <absl/status/status.h>

#include "dataplane/options.h"
#include "dataplane/ring.h"

namespace cvmgate {

class Uring final : public Ring {
 public:
  Uring() = default;
  ~Uring() override;
  Uring(const Uring&) = delete;
  Uring& operator=(const Uring&) = delete;

  // Creates the ring with the task-work mode asked for (kAuto: the first this kernel takes). A
  // single-issuer ring stays disabled until Start, so the thread that calls Start owns it.
  absl::Status Init(uint32_t entries, RingTaskRun taskrun = RingTaskRun::kAuto);
  // On the thread that submits from now on: enables the ring, and registers its descriptor (each
  // io_uring_enter then skips looking it up).
  absl::Status Start();
  // The task-work mode the ring was created with (never kAuto).
  RingTaskRun taskrun() const { return taskrun_; }

  void Recv(Tag tag, int fd, uint8_t* buf, uint32_t len, int flags) override;
  void Poll(Tag tag, int fd, short events) override;
  void Connect(Tag tag, int fd, const sockaddr_storage* addr, socklen_t len) override;
  void Splice(Tag tag, int in, int out, uint32_t len) override;
  void CancelFd(int fd) override;

  void Accept(Tag tag, int listener);            // multishot
  void Read(Tag tag, int fd, void* buf, uint32_t len);

  // Submits what is queued and waits up to `wait_ms` for one completion (0: does not wait).
  void SubmitAndWait(int64_t wait_ms);
  // Calls `f(tag, res, flags)` for every completion ready, and marks them seen.
  template <typename F>
  void ForEachCompletion(F&& f) {
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      f(Tag::Unpack(io_uring_cqe_get_data64(cqe)), cqe->res, cqe->flags);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
  }

 private:
  io_uring_sqe* Sqe();
  io_uring ring_{};
  bool ready_ = false;
  RingTaskRun taskrun_ = RingTaskRun::kOff;
};

}  // namespace cvmgate
