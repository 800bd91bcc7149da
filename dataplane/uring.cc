// The worker's io_uring (see uring.h).
#include "dataplane/uring.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <absl/strings/str_cat.h>

#include "dataplane/strings.h"

namespace cvmgate {
namespace {

constexpr unsigned kSpliceFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

}  // namespace

Uring::~Uring() {
  if (ready_) io_uring_queue_exit(&ring_);
}

absl::Status Uring::Init(uint32_t entries, RingTaskRun taskrun) {
  auto flags_of = [](RingTaskRun mode) -> unsigned {
    switch (mode) {
      case RingTaskRun::kDefer:
        return IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
      case RingTaskRun::kCoop: return IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
      default: return 0;
    }
  };
  std::vector<RingTaskRun> tries = {taskrun};
  if (taskrun == RingTaskRun::kAuto) tries = {RingTaskRun::kDefer, RingTaskRun::kCoop, RingTaskRun::kOff};
  int ret = -EINVAL;
  for (RingTaskRun mode : tries) {
    io_uring_params params{};
    params.flags = IORING_SETUP_CQSIZE | flags_of(mode);
    params.cq_entries = entries * 4;
    ret = io_uring_queue_init_params(entries, &ring_, &params);
    if (ret == 0) {
      taskrun_ = mode;
      break;
    }
    if (ret != -EINVAL) break;  // an older kernel refuses a flag it does not know with EINVAL
  }
  if (ret < 0) {
    if (taskrun != RingTaskRun::kAuto && ret == -EINVAL) {
      return absl::FailedPreconditionError(absl::StrCat("io_uring task work '", AbslView(RingTaskRunName(taskrun)),
                                                        "': this kernel does not have it (auto takes what it has)"));
    }
    return absl::InternalError(absl::StrCat("io_uring_queue_init: ", std::strerror(-ret),
                                            " (cvmgate needs io_uring: Linux 6.1 or newer)"));
  }
  ready_ = true;
  // IORING_OP_SPLICE always runs in io-wq threads; they only ever run non-blocking splices here, so
  // a few per ring are enough.
  unsigned iowq_max[2] = {2, 4};
  io_uring_register_iowq_max_workers(&ring_, iowq_max);
  return absl::OkStatus();
}

absl::Status Uring::Start() {
  // io_uring_enable_rings, which Debian's liburing 2.3 declares but does not export.
  if (taskrun_ == RingTaskRun::kDefer &&
      syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) != 0) {
    return absl::InternalError(absl::StrCat("io_uring: enabling the ring: ", std::strerror(errno)));
  }
  (void)io_uring_register_ring_fd(&ring_);  // an optimisation: without it, io_uring_enter looks the fd up
  return absl::OkStatus();
}

io_uring_sqe* Uring::Sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Uring::Recv(Tag tag, int fd, uint8_t* buf, uint32_t len, int flags) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_recv(sqe, fd, buf, len, flags);
  io_uring_sqe_set_data64(sqe, tag.Pack());
}

void Uring::Poll(Tag tag, int fd, short events) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_poll_add(sqe, fd, static_cast<unsigned>(events));
  io_uring_sqe_set_data64(sqe, tag.Pack());
}

void Uring::Connect(Tag tag, int fd, const sockaddr_storage* addr, socklen_t len) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_connect(sqe, fd, reinterpret_cast<const sockaddr*>(addr), len);
  io_uring_sqe_set_data64(sqe, tag.Pack());
}

void Uring::Splice(Tag tag, int in, int out, uint32_t len) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_splice(sqe, in, -1, out, -1, len, kSpliceFlags);
  io_uring_sqe_set_data64(sqe, tag.Pack());
}

void Uring::CancelFd(int fd) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, Tag{Op::kIgnore, 0, 0}.Pack());
}

void Uring::Accept(Tag tag, int listener) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_multishot_accept(sqe, listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, tag.Pack());
}

void Uring::Read(Tag tag, int fd, void* buf, uint32_t len) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_read(sqe, fd, buf, len, 0);
  io_uring_sqe_set_data64(sqe, tag.Pack());
}

void Uring::SubmitAndWait(int64_t wait_ms) {
  if (wait_ms == 0) {
    // A deferred ring runs its completions' task work only when asked to get events; the others
    // run it on their own, and a submit without SQEs stays out of the kernel.
    if (taskrun_ == RingTaskRun::kDefer) {
      io_uring_submit_and_get_events(&ring_);
    } else {
      io_uring_submit(&ring_);
    }
    return;
  }
  __kernel_timespec ts{wait_ms / 1000, (wait_ms % 1000) * 1000000};
  io_uring_cqe* cqe = nullptr;
  io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
}

}  // namespace cvmgate
