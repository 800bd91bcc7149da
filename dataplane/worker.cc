// Data-plane worker: the event loop (see worker.h).
#include "dataplane/worker.h"

#include <linux/capability.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <absl/strings/str_cat.h>

#include "dataplane/addresses.h"
#include "dataplane/clock.h"
#include "dataplane/log.h"
#include "dataplane/transport/plain.h"

namespace cvmgate {
namespace {

constexpr uint32_t kRingEntries = 4096;
constexpr int64_t kMaxWaitMs = 1000;
constexpr int64_t kAcceptRetryMs = 100;
// Unsent bytes a relay socket may hold beyond those in flight
// (TCP_NOTSENT_LOWAT): without it a reader that stops lets the send queue grow
// to tcp_wmem's maximum (4 MiB by default) behind its closed window.
constexpr int kMinUnsentBytes = 256 * 1024;

// The threads that face the internet need no privilege once their listeners
// are bound, and capabilities belong to each thread: these drop all of theirs,
// while the control thread keeps CAP_NET_ADMIN for WireGuard. The io_uring
// worker threads the kernel starts for this thread inherit the empty set.
void DropThreadCapabilities(int index) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capset, &header, none) != 0) {
    Log("worker ", index, ": cannot drop its capabilities: ", std::strerror(errno));
  }
}

}  // namespace

Worker::Worker(int index, WorkerOptions options, SnapshotDomain::Reader reader, uint32_t max_connections)
    : index_(index),
      options_(std::move(options)),
      unsent_bytes_(std::max<int>(kMinUnsentBytes, static_cast<int>(options_.pipe_size))),
      reader_(reader),
      pipes_(16, options_.pipe_size, counters_),
      buffers_(16),
      relay_(options_.splice_mode, pipes_, buffers_, counters_, pipe_bytes_, runq_),
      env_{ring_,
           options_,
           counters_,
           relay_,
           listen_addrs_,
           [this](int family) { return OpenInstanceSocket(family, unsent_bytes_, options_.backend_rcvbuf); }},
      conns_(max_connections, env_, runq_) {
  env_.histograms = &histograms_;
  env_.timeouts = &timeouts_;
}

Worker::~Worker() = default;

std::vector<int> Worker::listener_fds() const {
  std::vector<int> out;
  for (const Fd& l : listeners_) {
    if (l.valid()) out.push_back(l.get());
  }
  return out;
}

absl::Status Worker::Init(std::vector<ListenAddress>& addresses, std::vector<Fd> inherited) {
  if (auto s = ring_.Init(kRingEntries, options_.ring_taskrun); !s.ok()) return s;
  wake_fd_.reset(eventfd(0, EFD_CLOEXEC));
  if (!wake_fd_.valid()) return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));

  for (ListenAddress& la : addresses) {
    // The predecessor's sockets for this address: taken as they are (their accept queues too).
    bool took = false;
    for (Fd& fd : inherited) {
      sockaddr_storage bound{};
      socklen_t len = sizeof(bound);
      if (!fd.valid() || getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) continue;
      if (SockaddrText(bound) != SockaddrText(la.addr)) continue;
      la.text = SockaddrText(bound);
      listen_addrs_.push_back(bound);
      listeners_.push_back(std::move(fd));
      took = true;
    }
    if (took) continue;
    // SO_REUSEPORT would let this process join another's listener group and
    // take a share of its connections: the first worker makes sure that no
    // listener is there before the group is made.
    if (index_ == 0 && SockaddrPort(la.addr) != 0) {
      Fd probe(socket(la.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
      int one = 1;
      setsockopt(probe.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (la.addr.ss_family == AF_INET6) setsockopt(probe.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
      int rc = bind(probe.get(), reinterpret_cast<sockaddr*>(&la.addr), la.addr_len);
      int err = errno;
      if (rc != 0 && err == EADDRINUSE) {
        return absl::UnavailableError(absl::StrCat("cannot listen on ", la.text,
                                                   ": another process listens there (a second cvmgate?)"));
      }
    }
    Fd fd(socket(la.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return absl::InternalError(absl::StrCat("socket for ", la.text, ": ", std::strerror(errno)));
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    // Accepted sockets inherit TCP_NODELAY (relayed small writes are not
    // delayed) and TCP_NOTSENT_LOWAT.
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NOTSENT_LOWAT, &unsent_bytes_, sizeof(unsent_bytes_));
    if (la.addr.ss_family == AF_INET6) setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&la.addr), la.addr_len) != 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", la.text, ": bind: ", std::strerror(errno)));
    }
    if (::listen(fd.get(), options_.backlog) != 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", la.text, ": ", std::strerror(errno)));
    }
    socklen_t len = sizeof(la.addr);
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&la.addr), &len);
    la.text = SockaddrText(la.addr);
    listen_addrs_.push_back(la.addr);
    listeners_.push_back(std::move(fd));
  }
  env_.listeners = listen_addrs_;
  accept_armed_.assign(listeners_.size(), false);
  return absl::OkStatus();
}

void Worker::Stop() {
  {
    std::lock_guard lock(inbox_mu_);
    inbox_closed_ = true;
  }
  stop_requested_.store(true);
  uint64_t one = 1;
  (void)!write(wake_fd_.get(), &one, sizeof(one));
}

void Worker::ArmAccept(size_t i) {
  ring_.Accept({Op::kAccept, static_cast<uint32_t>(i), 0}, listeners_[i].get());
  accept_armed_[i] = true;
}

void Worker::ArmWake() { ring_.Read({Op::kWake, 0, 0}, wake_fd_.get(), &wake_value_, sizeof(wake_value_)); }

void Worker::Run() {
  pthread_setname_np(pthread_self(), absl::StrCat("cvmgate-w", index_).c_str());
  DropThreadCapabilities(index_);
  start_status_ = ring_.Start();  // this thread is the ring's one submitter
  started_.store(true);
  started_.notify_all();
  if (!start_status_.ok()) return;
  env_.now_ms = MonotonicMs();
  for (size_t i = 0; i < listeners_.size(); ++i) ArmAccept(i);
  ArmWake();
  for (;;) {
    int64_t wait_ms = WaitMs();
    reader_.Leave();
    ring_.SubmitAndWait(wait_ms);
    env_.snap = reader_.Enter();
    env_.now_ms = MonotonicMs();
    ring_.ForEachCompletion([this](Tag tag, int res, unsigned flags) { Handle(tag, res, flags); });
    conns_.RunQueued();
    conns_.RunTimers();
    if (accept_paused_ && !draining_ && env_.now_ms >= accept_retry_ms_) {
      accept_paused_ = false;
      for (size_t i = 0; i < listeners_.size(); ++i) {
        if (!accept_armed_[i]) ArmAccept(i);
      }
    }
    if (draining_) {
      if (!drain_cut_ && env_.now_ms >= drain_deadline_ms_) {
        drain_cut_ = true;
        conns_.CloseAll(Counter::closed_drain_timeout);
      }
      bool accepting = false;
      for (bool armed : accept_armed_) accepting = accepting || armed;
      if (conns_.live() == 0 && !accepting) break;
    }
  }
  reader_.Leave();
  env_.snap = nullptr;
}

int64_t Worker::WaitMs() const {
  if (!runq_.empty()) return 0;
  int64_t wait = std::min(kMaxWaitMs, conns_.NextDeadlineMs() - env_.now_ms);
  if (draining_ && !drain_cut_) wait = std::min(wait, drain_deadline_ms_ - env_.now_ms);
  if (accept_paused_) wait = std::min(wait, accept_retry_ms_ - env_.now_ms);
  return std::max<int64_t>(wait, 1);  // never 0 here: 0 means "do not block"
}

void Worker::Handle(Tag tag, int res, unsigned flags) {
  switch (tag.op) {
    case Op::kAccept: OnAccept(tag.slot, res, flags & IORING_CQE_F_MORE); return;
    case Op::kWake: OnWake(); return;
    case Op::kIgnore: return;
    default: conns_.OnCompletion(tag, res); return;
  }
}

bool Worker::Adopt(Fd& client) {
  {
    std::lock_guard lock(inbox_mu_);
    if (inbox_closed_) return false;
    inbox_.push_back(std::move(client));
  }
  handed_.fetch_add(1, std::memory_order_relaxed);
  uint64_t one = 1;
  (void)!write(wake_fd_.get(), &one, sizeof(one));
  return true;
}

Worker* Worker::LessLoaded() const {
  if (!options_.rebalance || peers_.size() < 2) return nullptr;
  Worker* best = nullptr;
  uint32_t least = UINT32_MAX;
  for (Worker* w : peers_) {
    if (w == this) continue;
    if (uint32_t l = w->load(); l < least) {
      least = l;
      best = w;
    }
  }
  return best != nullptr && load() > least + least / 8 ? best : nullptr;
}

void Worker::OnWake() {
  std::vector<Fd> adopted;
  {
    std::lock_guard lock(inbox_mu_);
    adopted.swap(inbox_);
  }
  for (Fd& fd : adopted) {
    handed_.fetch_sub(1, std::memory_order_relaxed);
    counters_.Add(Counter::adopted);
    conns_.Accept(Transport::Plain(std::move(fd)));
  }
  if (stop_requested_.load() && !draining_) BeginDrain();
  if (!draining_) ArmWake();
}

void Worker::BeginDrain() {
  draining_ = env_.draining = true;
  drain_deadline_ms_ = env_.now_ms + options_.drain_timeout_ms;
  // A listener is closed once its multishot accept has ended (OnAccept): the
  // cancel resolves the descriptor when it is submitted.
  for (size_t i = 0; i < listeners_.size(); ++i) {
    if (accept_armed_[i]) {
      ring_.CancelFd(listeners_[i].get());
    } else {
      listeners_[i].reset();
    }
  }
}

void Worker::OnAccept(size_t listener, int res, bool more) {
  if (!more) accept_armed_[listener] = false;
  if (res < 0) {
    if (res != -ECANCELED) counters_.Add(Counter::accept_errors);
    if (draining_) {
      if (!more) listeners_[listener].reset();
      return;
    }
    if (!more) {
      if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) {
        // Out of descriptors or memory: back off instead of spinning on the error.
        accept_paused_ = true;
        accept_retry_ms_ = env_.now_ms + kAcceptRetryMs;
      } else {
        ArmAccept(listener);
      }
    }
    return;
  }
  Fd fd(res);
  if (!more && !draining_) ArmAccept(listener);
  counters_.Add(Counter::accepted);
  if (Worker* to = LessLoaded(); to != nullptr && to->Adopt(fd)) {
    counters_.Add(Counter::handed_off);
    return;
  }
  conns_.Accept(Transport::Plain(std::move(fd)));
}

}  // namespace cvmgate
