// Data-plane worker: the io_uring reactor and the per-connection state machine
// (accept -> peek ClientHello -> route -> connect -> splice relay).
#include "dataplane/worker.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <openssl/err.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <absl/hash/hash.h>
#include "dataplane/addresses.h"
#include "dataplane/client_hello.h"
#include "dataplane/host_name.h"
#include "dataplane/ktls_rx.h"
#include "dataplane/log.h"
#include "dataplane/proxy_protocol.h"

namespace cvmgate {
namespace {

constexpr uint32_t kRingEntries = 4096;
constexpr uint32_t kHelloInitialPeek = 1024;  // most hellos fit; larger ones grow the buffer geometrically
// A whole hello takes one peek, or two or three when it is larger than the
// first peek or spans records; one still incomplete after this many was cut
// into many small records, and is read rather than peeked again.
constexpr uint8_t kPeeksBeforeReading = 4;
constexpr size_t kPumpBudget = 512 * 1024;    // bytes one direction moves before yielding to others
constexpr unsigned kSpliceFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
constexpr int64_t kMaxWaitMs = 1000;
constexpr int64_t kAcceptRetryMs = 100;
// Unsent bytes a relay socket may hold beyond those in flight
// (TCP_NOTSENT_LOWAT): without it a reader that stops lets the send queue grow
// to tcp_wmem's maximum (4 MiB by default) behind its closed window.
constexpr int kMinUnsentBytes = 256 * 1024;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1000000;
}


Counter HelloCounter(HelloStatus s) {
  switch (s) {
    case HelloStatus::kNotTls: return Counter::closed_not_tls;
    case HelloStatus::kSslV2: return Counter::closed_sslv2;
    case HelloStatus::kNotClientHello: return Counter::closed_not_client_hello;
    case HelloStatus::kNoSni: return Counter::closed_no_sni;
    case HelloStatus::kTooLarge: return Counter::closed_hello_too_large;
    default: return Counter::closed_hello_malformed;
  }
}

}  // namespace

Worker::Worker(int index, WorkerOptions options, SnapshotDomain::Reader reader, uint32_t max_connections)
    : index_(index),
      options_(std::move(options)),
      reader_(reader),
      max_connections_(max_connections),
      conns_(new Conn[max_connections]),
      pipes_(16, options_.pipe_size, counters_),
      unsent_bytes_(std::max<int>(kMinUnsentBytes, static_cast<int>(options_.pipe_size))),
      buffers_(16) {
  for (uint32_t i = 0; i < max_connections_; ++i) conns_[i].next_free = i + 1;
}

Worker::~Worker() {
  for (uint32_t i = 0; i < max_connections_; ++i) {
    Conn& c = conns_[i];
    if (c.cfd >= 0) close(c.cfd);
    if (c.bfd >= 0) close(c.bfd);
    if (c.ssl != nullptr) SSL_free(c.ssl);
    for (auto& d : c.dir) pipes_.Discard(d.pipe);
  }
  for (int fd : listeners_) {
    if (fd >= 0) close(fd);
  }
  if (wake_fd_ >= 0) close(wake_fd_);
  if (ring_ready_) io_uring_queue_exit(&ring_);
}

absl::Status Worker::Init(std::vector<ListenAddress>& addresses) {
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE;
  params.cq_entries = kRingEntries * 4;
  int ret = io_uring_queue_init_params(kRingEntries, &ring_, &params);
  if (ret < 0) {
    return absl::InternalError(absl::StrCat("io_uring_queue_init: ", std::strerror(-ret),
                                            " (cvmgate needs io_uring: Linux 6.1 or newer)"));
  }
  ring_ready_ = true;
  // IORING_OP_SPLICE always runs in io-wq threads; they only ever run
  // non-blocking splices here, so a few per ring are enough.
  unsigned iowq_max[2] = {2, 4};
  io_uring_register_iowq_max_workers(&ring_, iowq_max);

  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));

  for (ListenAddress& la : addresses) {
    // SO_REUSEPORT would let this process join another's listener group and
    // take a share of its connections: the first worker makes sure that no
    // listener is there before the group is made.
    if (index_ == 0 && SockaddrPort(la.addr) != 0) {
      int probe = socket(la.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      int one = 1;
      setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (la.addr.ss_family == AF_INET6) setsockopt(probe, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
      int rc = bind(probe, reinterpret_cast<sockaddr*>(&la.addr), la.addr_len);
      int err = errno;
      close(probe);
      if (rc != 0 && err == EADDRINUSE) {
        return absl::UnavailableError(absl::StrCat("cannot listen on ", la.text,
                                                   ": another process listens there (a second cvmgate?)"));
      }
    }
    int fd = socket(la.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError(absl::StrCat("socket for ", la.text, ": ", std::strerror(errno)));
    listeners_.push_back(fd);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    // Accepted sockets inherit TCP_NODELAY (relayed small writes are not
    // delayed) and TCP_NOTSENT_LOWAT.
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &unsent_bytes_, sizeof(unsent_bytes_));
    if (la.addr.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<sockaddr*>(&la.addr), la.addr_len) != 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", la.text, ": bind: ", std::strerror(errno)));
    }
    if (::listen(fd, options_.backlog) != 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", la.text, ": ", std::strerror(errno)));
    }
    socklen_t len = sizeof(la.addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&la.addr), &len);
    la.text = SockaddrText(la.addr);
    listen_addrs_.push_back(la.addr);
  }
  accept_armed_.assign(listeners_.size(), false);
  return absl::OkStatus();
}

void Worker::Stop() {
  stop_requested_.store(true);
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

io_uring_sqe* Worker::Sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Worker::Submit(Conn& c, Op op, io_uring_sqe* sqe) {
  io_uring_sqe_set_data64(sqe, UserData(op, SlotOf(c), c.gen));
  ++c.inflight;
}

void Worker::ArmAccept(size_t i) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_multishot_accept(sqe, listeners_[i], nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, UserData(kOpAccept, static_cast<uint32_t>(i), 0));
  accept_armed_[i] = true;
}

void Worker::ArmWake() {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_value_, sizeof(wake_value_), 0);
  io_uring_sqe_set_data64(sqe, UserData(kOpWake, 0, 0));
}

namespace {

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

void Worker::Run() {
  pthread_setname_np(pthread_self(), absl::StrCat("cvmgate-w", index_).c_str());
  DropThreadCapabilities(index_);
  started_.store(true);
  started_.notify_all();
  now_ms_ = NowMs();
  for (size_t i = 0; i < listeners_.size(); ++i) ArmAccept(i);
  ArmWake();
  for (;;) {
    int64_t wait_ms = WaitMs();
    __kernel_timespec ts{wait_ms / 1000, (wait_ms % 1000) * 1000000};
    io_uring_cqe* cqe = nullptr;
    reader_.Leave();
    if (wait_ms == 0) {
      io_uring_submit(&ring_);
    } else {
      io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    }
    snap_ = reader_.Enter();
    now_ms_ = NowMs();
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      Handle(cqe);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    RunQueued();
    RunTimers();
    if (accept_paused_ && !draining_ && now_ms_ >= accept_retry_ms_) {
      accept_paused_ = false;
      for (size_t i = 0; i < listeners_.size(); ++i) {
        if (!accept_armed_[i]) ArmAccept(i);
      }
    }
    if (draining_) {
      if (!drain_cut_ && now_ms_ >= drain_deadline_ms_) {
        drain_cut_ = true;
        for (uint32_t i = 0; i < max_connections_; ++i) {
          if (conns_[i].phase != Phase::kFree) Abort(conns_[i], Counter::closed_drain_timeout);
        }
      }
      bool accepting = false;
      for (bool armed : accept_armed_) accepting = accepting || armed;
      if (live_.load(std::memory_order_relaxed) == 0 && !accepting) break;
    }
  }
  reader_.Leave();
  snap_ = nullptr;
}

int64_t Worker::WaitMs() const {
  if (!runq_.empty()) return 0;
  int64_t wait = kMaxWaitMs;
  if (!timers_.empty()) wait = std::min(wait, timers_.top().when_ms - now_ms_);
  if (draining_ && !drain_cut_) wait = std::min(wait, drain_deadline_ms_ - now_ms_);
  if (accept_paused_) wait = std::min(wait, accept_retry_ms_ - now_ms_);
  return std::max<int64_t>(wait, 1);  // never 0 here: 0 means "do not block"
}

void Worker::Handle(io_uring_cqe* cqe) {
  uint64_t data = io_uring_cqe_get_data64(cqe);
  Op op = static_cast<Op>(data >> 56);
  uint32_t slot = static_cast<uint32_t>(data >> 32) & 0xffffff;
  uint32_t gen = static_cast<uint32_t>(data);
  int res = cqe->res;
  switch (op) {
    case kOpAccept: OnAccept(slot, res, cqe->flags & IORING_CQE_F_MORE); return;
    case kOpWake: OnWake(); return;
    case kOpIgnore: return;
    default: break;
  }
  Conn& c = conns_[slot];
  if (c.gen != gen || c.inflight == 0) {
    // Cannot happen: a slot is freed only with nothing in flight. Loud, not silent.
    Log("worker ", index_, ": completion for a stale slot (op ", int{op}, ")");
    return;
  }
  --c.inflight;
  if (c.phase == Phase::kClosing) {
    MaybeFree(c);
    return;
  }
  switch (op) {
    case kOpPeek: OnPeek(c, res); break;
    case kOpHelloPoll: OnHelloPoll(c, res); break;
    case kOpTlsPoll:
      if (res < 0) {
        Abort(c, Counter::closed_tls_handshake_failed);
      } else {
        DoHandshake(c);
      }
      break;
    case kOpConnect: OnConnect(c, res); break;
    case kOpRelayPoll0:
    case kOpRelayPoll1: OnRelayPoll(c, op - kOpRelayPoll0, res); break;
    case kOpSpliceIn0:
    case kOpSpliceIn1: OnSpliceIn(c, op - kOpSpliceIn0, res); break;
    case kOpSpliceOut0:
    case kOpSpliceOut1: OnSpliceOut(c, op - kOpSpliceOut0, res); break;
    default: break;
  }
}

void Worker::OnWake() {
  if (stop_requested_.load() && !draining_) BeginDrain();
  if (!draining_) ArmWake();
}

void Worker::BeginDrain() {
  draining_ = true;
  drain_deadline_ms_ = now_ms_ + options_.drain_timeout_ms;
  // A listener is closed once its multishot accept has ended (OnAccept): the
  // cancel resolves the descriptor when it is submitted.
  for (size_t i = 0; i < listeners_.size(); ++i) {
    if (accept_armed_[i]) {
      io_uring_sqe* sqe = Sqe();
      io_uring_prep_cancel_fd(sqe, listeners_[i], IORING_ASYNC_CANCEL_ALL);
      io_uring_sqe_set_data64(sqe, UserData(kOpIgnore, 0, 0));
    } else if (listeners_[i] >= 0) {
      close(listeners_[i]);
      listeners_[i] = -1;
    }
  }
}

void Worker::OnAccept(size_t listener, int res, bool more) {
  if (!more) accept_armed_[listener] = false;
  if (res < 0) {
    if (res != -ECANCELED) counters_.Add(Counter::accept_errors);
    if (draining_) {
      if (!more && listeners_[listener] >= 0) {
        close(listeners_[listener]);
        listeners_[listener] = -1;
      }
      return;
    }
    if (!more) {
      if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) {
        // Out of descriptors or memory: back off instead of spinning on the error.
        accept_paused_ = true;
        accept_retry_ms_ = now_ms_ + kAcceptRetryMs;
      } else {
        ArmAccept(listener);
      }
    }
    return;
  }
  int fd = res;
  if (!more && !draining_) ArmAccept(listener);
  counters_.Add(Counter::accepted);
  if (free_head_ >= max_connections_) {
    counters_.Add(Counter::closed_overload);
    close(fd);
    return;
  }
  Conn& c = conns_[free_head_];
  free_head_ = c.next_free;
  live_.fetch_add(1, std::memory_order_relaxed);
  c.phase = Phase::kHello;
  c.cfd = fd;
  c.hello_cap = std::min<uint32_t>(kHelloInitialPeek, options_.hello_max_bytes);
  c.hello = std::make_unique_for_overwrite<uint8_t[]>(c.hello_cap);
  c.hello_parser = HelloParser(options_.hello_max_bytes);
  SetDeadline(c, now_ms_ + options_.hello_timeout_ms);
  SubmitPeek(c);
}

// --- ClientHello -----------------------------------------------------------

void Worker::SubmitPeek(Conn& c) {
  io_uring_sqe* sqe = Sqe();
  // A peek copies every byte from the first one again (and the kernel walks
  // every queued segment to do it): a hello still incomplete after a few peeks
  // is read instead, each byte once, and replayed (OnHelloDone).
  io_uring_prep_recv(sqe, c.cfd, c.hello.get() + c.hello_len, c.hello_cap - c.hello_len,
                     c.hello_read ? 0 : MSG_PEEK);
  Submit(c, kOpPeek, sqe);
}

void Worker::OnPeek(Conn& c, int res) {
  if (res <= 0) {
    Abort(c, Counter::closed_hello_peer_closed);
    return;
  }
  size_t have = static_cast<size_t>(res);
  if (c.hello_read) have = c.hello_len += static_cast<uint32_t>(res);
  HelloResult hello = c.hello_parser.Feed(std::span<const uint8_t>(c.hello.get(), have));
  if (hello.status == HelloStatus::kOk) {
    OnHelloDone(c, hello.sni);
    return;
  }
  if (hello.status != HelloStatus::kNeedMore) {
    Abort(c, HelloCounter(hello.status));
    return;
  }
  if (hello.need > c.hello_cap) {
    // Geometric growth: the buffer is replaced a logarithmic number of times.
    bool was_full = have == c.hello_cap;
    uint32_t cap = std::max(static_cast<uint32_t>(hello.need), std::min(2 * c.hello_cap, options_.hello_max_bytes));
    auto bigger = std::make_unique_for_overwrite<uint8_t[]>(cap);
    if (c.hello_read) std::memcpy(bigger.get(), c.hello.get(), c.hello_len);  // read bytes are not in the socket
    c.hello = std::move(bigger);
    c.hello_cap = cap;
    if (was_full) {
      // More bytes may already be queued than the old buffer could show.
      SubmitPeek(c);
      return;
    }
  }
  if (!c.hello_read && ++c.hello_peeks >= kPeeksBeforeReading) {
    // From now on the bytes are read: the next read takes what was peeked again, from the first byte.
    c.hello_read = true;
    counters_.Add(Counter::hello_read_not_peeked);
  }
  if (c.rdhup) {
    Abort(c, Counter::closed_hello_peer_closed);
    return;
  }
  // A peek leaves the bytes queued, so a plain readiness poll would fire at
  // once and spin. SO_RCVLOWAT makes the socket readable only when the bytes
  // still needed are there (or the peer closed).
  int need = static_cast<int>(hello.need - c.hello_len);
  setsockopt(c.cfd, SOL_SOCKET, SO_RCVLOWAT, &need, sizeof(need));
  c.lowat_set = true;
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_poll_add(sqe, c.cfd, POLLIN | POLLRDHUP);
  Submit(c, kOpHelloPoll, sqe);
}

void Worker::OnHelloPoll(Conn& c, int res) {
  if (res < 0) {
    Abort(c, Counter::closed_hello_peer_closed);
    return;
  }
  if (res & (POLLRDHUP | POLLHUP | POLLERR)) c.rdhup = true;
  SubmitPeek(c);
}

void Worker::OnHelloDone(Conn& c, std::string_view sni) {
  if (c.lowat_set) {
    int one = 1;
    setsockopt(c.cfd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    c.lowat_set = false;
  }
  Decision d = Decide(sni, Inputs());
  c.hello_parser = HelloParser();
  if (c.hello_len == 0) {
    c.hello.reset();  // peeked: the bytes are still in the socket
    c.hello_cap = 0;
  }
  if (d.refused()) {
    Abort(c, d.refusal);
    return;
  }
  c.id = std::move(d.name.target.id);
  c.port = d.name.target.port;
  c.grpc = d.name.target.mode == Mode::kGrpc;
  // A terminated name that cannot be routed now gets no handshake: refused as passthrough would be.
  if (!TakeAppSlot(c, d.found)) {
    Abort(c, Counter::closed_app_limit);
    return;
  }
  if (d.verdict == Decision::Verdict::kPassthrough) {
    Connect(c, d.found);
  } else {
    // SSL_new takes its own reference on the context, so a certificate reload
    // never pulls it from under a live connection.
    StartTls(c, d.context);
  }
}

// --- TLS termination (userspace) --------------------------------------------

void Worker::StartTls(Conn& c, SSL_CTX* ctx) {
  c.ssl = SSL_new(ctx);
  if (c.ssl == nullptr || SSL_set_fd(c.ssl, c.cfd) != 1) {
    Abort(c, Counter::closed_tls_handshake_failed);
    return;
  }
  if (c.hello_len > 0) {
    // The hello was read, not peeked: OpenSSL takes it from memory, then the
    // socket (DoHandshake swaps the BIO once the memory is drained).
    BIO* read = BIO_new_mem_buf(c.hello.get(), static_cast<int>(c.hello_len));
    if (read == nullptr) {
      Abort(c, Counter::closed_tls_handshake_failed);
      return;
    }
    BIO_set_mem_eof_return(read, -1);  // drained: "retry", not end of stream
    SSL_set0_rbio(c.ssl, read);
  }
  SSL_set_accept_state(c.ssl);
  c.phase = Phase::kTlsHandshake;
  SetDeadline(c, now_ms_ + options_.handshake_timeout_ms);
  DoHandshake(c);
}

// The handshake runs on the non-blocking socket; the ring tells when to go on.
void Worker::DoHandshake(Conn& c) {
  ERR_clear_error();
  int r = SSL_do_handshake(c.ssl);
  if (r == 1) {
    StartConnect(c);
    return;
  }
  int e = SSL_get_error(c.ssl, r);
  if (e == SSL_ERROR_WANT_READ && c.hello_len > 0 && BIO_ctrl_pending(SSL_get_rbio(c.ssl)) == 0) {
    // The read hello is used up: the rest of the stream is in the socket, and
    // a socket BIO is what kTLS needs.
    BIO* sock = BIO_new_socket(c.cfd, BIO_NOCLOSE);
    if (sock == nullptr) {
      Abort(c, Counter::closed_tls_handshake_failed);
      return;
    }
    SSL_set0_rbio(c.ssl, sock);
    c.hello.reset();
    c.hello_len = 0;
    c.hello_cap = 0;
    DoHandshake(c);
    return;
  }
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    io_uring_sqe* sqe = Sqe();
    io_uring_prep_poll_add(sqe, c.cfd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
    Submit(c, kOpTlsPoll, sqe);
    return;
  }
  ERR_clear_error();
  Abort(c, Counter::closed_tls_handshake_failed);
}

ssize_t Worker::CopyIn(Conn& c, int d, bool& wait) {
  Direction& x = c.dir[d];
  wait = false;
  if (d == 0 && c.ssl != nullptr && !c.ktls_rx_raw) {
    ERR_clear_error();
    int n = SSL_read(c.ssl, x.buf.get(), BufferPool::kSize);
    if (n > 0) {
      // SSL_read returns one record at a time: take the ones already read
      // ahead too, without another syscall, so the backend gets one send.
      size_t total = static_cast<size_t>(n);
      while (total < BufferPool::kSize && SSL_has_pending(c.ssl)) {
        int more = SSL_read(c.ssl, x.buf.get() + total, static_cast<int>(BufferPool::kSize - total));
        if (more <= 0) {
          ERR_clear_error();  // the next call sees the same condition and reports it
          break;
        }
        total += static_cast<size_t>(more);
      }
      return static_cast<ssize_t>(total);
    }
    int e = SSL_get_error(c.ssl, n);
    if (e == SSL_ERROR_ZERO_RETURN) return 0;  // close_notify (or, ignored, a bare FIN)
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      wait = true;
      buffers_.Put(x.buf);
      ArmRelayPoll(c, d, c.cfd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
    }
    ERR_clear_error();
    return -1;
  }
  const int src = d == 0 ? c.cfd : c.bfd;
  for (;;) {
    ssize_t n = recv(src, x.buf.get(), BufferPool::kSize, MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (d == 0 && c.ktls_rx_raw && errno == EIO) return OnControlRecord(c) ? 0 : -1;
    if (errno == EAGAIN) {
      wait = true;
      buffers_.Put(x.buf);
      ArmRelayPoll(c, d, src, POLLIN);
    }
    return -1;
  }
}

bool Worker::OnControlRecord(Conn& c) {
  switch (ReadControlRecord(c.cfd)) {
    case ControlRecord::kCloseNotify: return true;
    case ControlRecord::kAlert: Abort(c, Counter::closed_tls_alert); return false;
    case ControlRecord::kKeyUpdate: Abort(c, Counter::closed_tls_keyupdate); return false;
    default: Abort(c, Counter::closed_relay_error); return false;
  }
}

ssize_t Worker::CopyOut(Conn& c, int d, bool& wait) {
  Direction& x = c.dir[d];
  wait = false;
  if (d == 1 && c.ssl != nullptr && !c.ktls_tx) {
    ERR_clear_error();
    int n = SSL_write(c.ssl, x.buf.get() + x.buf_off, static_cast<int>(x.pending()));
    if (n > 0) return n;
    int e = SSL_get_error(c.ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      wait = true;
      ArmRelayPoll(c, d, c.cfd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
    }
    ERR_clear_error();
    return -1;
  }
  const int dst = d == 0 ? c.bfd : c.cfd;
  for (;;) {
    ssize_t n = send(dst, x.buf.get() + x.buf_off, x.pending(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      wait = true;
      ArmRelayPoll(c, d, dst, POLLOUT);
    }
    return -1;
  }
}

// --- connect ---------------------------------------------------------------

bool Worker::TakeAppSlot(Conn& c, const RouteSnapshot::Lookup& found) {
  if (c.app_live != nullptr || found.app_live == nullptr) return true;
  if (found.app_live->fetch_add(1, std::memory_order_relaxed) >= found.app_max_connections) {
    found.app_live->fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  c.app_live = found.app_live;
  return true;
}

void Worker::StartConnect(Conn& c) {
  RouteSnapshot::Lookup found = snap_->Find(c.id);
  if (c.tries == 0) {
    // After a handshake: the snapshot may have changed since the decision.
    if (std::optional<Counter> refusal = Route(Inputs(), found, c.port)) {
      Abort(c, *refusal);
      return;
    }
  }
  Connect(c, found);
}

void Worker::Connect(Conn& c, const RouteSnapshot::Lookup& found) {
  if (!TakeAppSlot(c, found)) {
    Abort(c, Counter::closed_app_limit);
    return;
  }
  c.proxy_protocol = found.proxy_protocol;
  // Instances already tried are remembered by id hash: indexes do not survive a reload.
  const bool restricted = found.restricted;
  int64_t pick = PickInstance(
      found.healthy,
      [&](uint32_t i) {
        const Instance& inst = snap_->instances()[i];
        if (restricted && !Usable(inst, c.port, listen_addrs_)) return false;
        if (c.tries == 0) return true;
        uint64_t h = absl::Hash<std::string_view>{}(inst.id);
        for (uint8_t t = 0; t < c.tries; ++t) {
          if (c.tried[t] == h) return false;
        }
        return true;
      },
      rng_);
  if (pick < 0) {
    Abort(c, Counter::closed_connect_failed);
    return;
  }
  const Instance& inst = snap_->instances()[pick];
  c.tried[c.tries++] = absl::Hash<std::string_view>{}(inst.id);
  std::memcpy(&c.backend, &inst.addr, inst.addr_len);
  c.backend_len = inst.addr_len;
  if (c.backend.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&c.backend)->sin_port = htons(c.port);
  } else {
    reinterpret_cast<sockaddr_in6*>(&c.backend)->sin6_port = htons(c.port);
  }
  counters_.Add(Counter::connect_attempts);
  c.bfd = socket(c.backend.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.bfd < 0) {
    counters_.Add(Counter::connect_failed);
    Abort(c, Counter::closed_connect_failed);
    return;
  }
  int one = 1;
  setsockopt(c.bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(c.bfd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &unsent_bytes_, sizeof(unsent_bytes_));
  // Before connect, so the window scale fits it. The path to an instance is
  // short (a WireGuard tunnel in the same site): a fixed buffer loses nothing
  // there, and bounds what a relay whose client stopped reading holds.
  if (options_.backend_rcvbuf > 0) {
    int rcvbuf = static_cast<int>(options_.backend_rcvbuf);
    setsockopt(c.bfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  }
  c.phase = Phase::kConnect;
  c.connect_timed_out = false;
  SetDeadline(c, now_ms_ + options_.connect_timeout_ms);
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_connect(sqe, c.bfd, reinterpret_cast<sockaddr*>(&c.backend), c.backend_len);
  Submit(c, kOpConnect, sqe);
}

void Worker::OnConnect(Conn& c, int res) {
  if (res == 0 && !c.connect_timed_out) {
    StartRelay(c);
    return;
  }
  counters_.Add(c.connect_timed_out ? Counter::connect_timeout : Counter::connect_failed);
  close(c.bfd);
  c.bfd = -1;
  if (c.tries < options_.connect_tries && !draining_) {
    StartConnect(c);
  } else {
    Abort(c, Counter::closed_connect_failed);
  }
}

// --- relay -----------------------------------------------------------------

void Worker::StartRelay(Conn& c) {
  if (c.proxy_protocol) {
    // The header goes first on a fresh, empty socket: a short write would mean
    // a socket that cannot take 52 bytes, which is an error, not back-pressure.
    sockaddr_storage client{}, local{};
    socklen_t len = sizeof(client);
    getpeername(c.cfd, reinterpret_cast<sockaddr*>(&client), &len);
    len = sizeof(local);
    getsockname(c.cfd, reinterpret_cast<sockaddr*>(&local), &len);
    uint8_t header[kProxyV2MaxHeader];
    size_t n = BuildProxyV2(client, local, header);
    if (send(c.bfd, header, n, MSG_NOSIGNAL | MSG_DONTWAIT) != static_cast<ssize_t>(n)) {
      Abort(c, Counter::closed_proxy_header_failed);
      return;
    }
  }
  c.phase = Phase::kRelay;
  counters_.Add(c.ssl == nullptr ? Counter::routed_passthrough
                                 : (c.grpc ? Counter::routed_grpc : Counter::routed_terminate));
  bool copy = options_.splice_mode == SpliceMode::kCopy;
  c.dir[0].copy = c.dir[1].copy = copy;
  if (c.ssl != nullptr) {
    // With kTLS TX the kernel encrypts what is written to the client socket, so
    // the backend-to-client direction splices like passthrough; with kTLS RX the
    // client's socket yields plaintext and the other direction splices too,
    // non-data records (close_notify, alerts, KeyUpdate) being read with recvmsg.
    c.ktls_tx = BIO_get_ktls_send(SSL_get_wbio(c.ssl)) != 0;
    bool ktls_rx = BIO_get_ktls_recv(SSL_get_rbio(c.ssl)) != 0;
    bool tls13_rx_failed = false;
    if (c.ktls_tx && !ktls_rx && SSL_version(c.ssl) == TLS1_3_VERSION) {
      // OpenSSL 3.0 offloads TLS 1.3 TX only: cvmgate installs RX itself, and
      // from then on reads the client's socket directly (splice).
      c.ktls_rx_raw = ktls_rx = EnableTls13KtlsRx(c.ssl, c.cfd).ok();
      tls13_rx_failed = !ktls_rx;
    } else if (ktls_rx && !SSL_has_pending(c.ssl)) {
      // TLS 1.2 RX offloaded by OpenSSL, and nothing left in its buffers: the
      // socket yields plaintext, so this direction splices too.
      c.ktls_rx_raw = true;
    }
    c.dir[0].copy = copy || !c.ktls_rx_raw;
    c.dir[1].copy = copy || !c.ktls_tx;
    if (!ktls_rx) {
      // Userspace RX: read ahead into a buffer as large as a relay buffer, so
      // one recv brings several records and CopyIn decrypts them all before
      // one send to the backend (read_ahead stays off during the handshake,
      // where kTLS needs OpenSSL to hold no bytes beyond the last record).
      SSL_set_default_read_buffer_len(c.ssl, BufferPool::kSize);
      SSL_set_read_ahead(c.ssl, 1);
    }
    counters_.Add(c.ktls_tx ? Counter::ktls_tx : Counter::relay_tls_userspace);
    if (ktls_rx) counters_.Add(Counter::ktls_rx);
    if (!options_.ktls) {
      counters_.Add(Counter::ktls_fallback_disabled);
    } else if (!c.ktls_tx) {
      counters_.Add(Counter::ktls_fallback_no_kernel_tls);
    } else if (tls13_rx_failed) {
      counters_.Add(Counter::ktls_fallback_tls13_rx);
    }
  }
  counters_.Add(c.dir[0].copy && c.dir[1].copy ? Counter::relay_copy : Counter::relay_splice);
  SetDeadline(c, now_ms_ + options_.idle_timeout_ms);
  for (int d = 0; d < 2; ++d) {
    if (c.phase != Phase::kRelay) return;
    if (options_.splice_mode == SpliceMode::kUring && !c.dir[d].copy) {
      PumpUring(c, d);
    } else {
      Pump(c, d);
    }
  }
}

void Worker::ArmRelayPoll(Conn& c, int d, int fd, short events) {
  c.dir[d].op_pending = true;
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_poll_add(sqe, fd, events);
  Submit(c, static_cast<Op>(kOpRelayPoll0 + d), sqe);
}

void Worker::SwitchToCopy(Conn& c, int d) {
  Direction& x = c.dir[d];
  pipes_.PutEmpty(x.pipe);
  x.copy = true;
  counters_.Add(Counter::splice_fallback_copy);
}

void Worker::FinishDirection(Conn& c, int d) {
  Direction& x = c.dir[d];
  int dst = d == 0 ? c.bfd : c.cfd;
  // The backend finished: a terminated client gets close_notify before the FIN.
  if (d == 1 && c.ssl != nullptr) {
    ERR_clear_error();
    SSL_shutdown(c.ssl);
    ERR_clear_error();
  }
  // Half-close: the other direction keeps flowing until it ends too.
  shutdown(dst, SHUT_WR);
  x.done = true;
  pipes_.PutEmpty(x.pipe);
  buffers_.Put(x.buf);
  if (c.dir[0].done && c.dir[1].done) Abort(c, Counter::relay_done);
}

bool Worker::FlushReadHello(Conn& c) {
  while (c.hello_sent < c.hello_len) {
    ssize_t n = send(c.bfd, c.hello.get() + c.hello_sent, c.hello_len - c.hello_sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.hello_sent += static_cast<uint32_t>(n);
      counters_.Add(Counter::bytes_client_to_backend, static_cast<uint64_t>(n));
      c.deadline_ms = now_ms_ + options_.idle_timeout_ms;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      ArmRelayPoll(c, 0, c.bfd, POLLOUT);
      return false;
    }
    Abort(c, Counter::closed_relay_error);
    return false;
  }
  c.hello.reset();
  c.hello_len = c.hello_sent = c.hello_cap = 0;
  return true;
}

bool Worker::TakePipe(Direction& x) {
  // Between fills the pipe is empty: the time to change its size to the flow's.
  if (x.pipe.valid() && x.pipe_bytes == 0 && pipes_.Differs(x.pipe, x.fast)) pipes_.PutEmpty(x.pipe);
  return x.pipe.valid() || pipes_.Get(x.pipe, x.fast);
}

// Moves bytes for one direction with inline non-blocking syscalls until the
// source or the destination would block, then waits for readiness on the ring.
void Worker::Pump(Conn& c, int d) {
  Direction& x = c.dir[d];
  if (c.phase != Phase::kRelay || x.done || x.op_pending || x.queued) return;
  if (d == 0 && c.hello_len > 0 && !FlushReadHello(c)) return;
  const int src = d == 0 ? c.cfd : c.bfd;
  const int dst = d == 0 ? c.bfd : c.cfd;
  const Counter bytes_counter = d == 0 ? Counter::bytes_client_to_backend : Counter::bytes_backend_to_client;
  size_t moved = 0;
  for (;;) {
    if (x.pending() > 0) {
      bool wait = false;
      ssize_t n = x.copy ? CopyOut(c, d, wait) : splice(x.pipe.r, nullptr, dst, nullptr, x.pipe_bytes, kSpliceFlags);
      if (wait) return;
      if (n > 0) {
        if (x.copy) {
          x.buf_off += n;
        } else {
          x.pipe_bytes -= n;
          HoldPipeBytes(-n);
        }
        counters_.Add(bytes_counter, n);
        c.deadline_ms = now_ms_ + options_.idle_timeout_ms;
        continue;
      }
      // CopyOut handles EINTR and EAGAIN itself; splice's are handled here.
      if (!x.copy && n < 0 && errno == EINTR) continue;
      if (!x.copy && n < 0 && errno == EAGAIN) {
        x.fast = false;  // the reader is slower than the writer: small pipes from the next fill on
        ArmRelayPoll(c, d, dst, POLLOUT);
        return;
      }
      Abort(c, Counter::closed_relay_error);
      return;
    }
    if (x.eof) {
      FinishDirection(c, d);
      return;
    }
    if (moved >= kPumpBudget) {
      // Let other connections run; this direction continues next loop.
      x.queued = true;
      runq_.push_back({SlotOf(c), c.gen, static_cast<uint8_t>(d)});
      return;
    }
    if (!x.copy && !TakePipe(x)) {
      counters_.Add(Counter::pipe_create_failed);
      x.copy = true;
    }
    if (x.copy && !x.buf) x.buf = buffers_.Get();
    bool wait = false;
    ssize_t n = x.copy ? CopyIn(c, d, wait) : splice(src, nullptr, x.pipe.w, nullptr, x.pipe.capacity, kSpliceFlags);
    if (wait) return;
    if (n > 0) {
      if (x.copy) {
        x.buf_off = 0;
        x.buf_len = static_cast<uint32_t>(n);
      } else {
        x.pipe_bytes = static_cast<uint32_t>(n);
        HoldPipeBytes(n);
        if (x.pipe_bytes == x.pipe.capacity) x.fast = true;  // more was waiting than the pipe could take
      }
      moved += n;
      continue;
    }
    if (n == 0) {
      x.eof = true;
      continue;
    }
    if (x.copy) {  // CopyIn already retried EINTR and armed the poll for EAGAIN
      Abort(c, Counter::closed_relay_error);
      return;
    }
    if (errno == EINTR) continue;
    if (d == 0 && c.ktls_rx_raw && (errno == EINVAL || errno == EIO)) {
      // splice stops at a non-data record on a kTLS RX socket.
      if (!OnControlRecord(c)) return;
      x.eof = true;
      continue;
    }
    if (errno == EAGAIN) {
      // Idle: give the empty pipe or buffer back while waiting.
      pipes_.PutEmpty(x.pipe);
      buffers_.Put(x.buf);
      x.buf_off = x.buf_len = 0;
      ArmRelayPoll(c, d, src, POLLIN);
      return;
    }
    if (!x.copy && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
      SwitchToCopy(c, d);
      continue;
    }
    Abort(c, Counter::closed_relay_error);
    return;
  }
}

// The IORING_OP_SPLICE variant: each splice is a ring operation (run by io-wq).
void Worker::PumpUring(Conn& c, int d) {
  Direction& x = c.dir[d];
  if (c.phase != Phase::kRelay || x.done || x.op_pending) return;
  if (d == 0 && c.hello_len > 0 && !FlushReadHello(c)) return;
  if (x.copy) {
    Pump(c, d);
    return;
  }
  const int src = d == 0 ? c.cfd : c.bfd;
  const int dst = d == 0 ? c.bfd : c.cfd;
  if (x.pipe_bytes > 0) {
    io_uring_sqe* sqe = Sqe();
    io_uring_prep_splice(sqe, x.pipe.r, -1, dst, -1, x.pipe_bytes, kSpliceFlags);
    x.op_pending = true;
    Submit(c, static_cast<Op>(kOpSpliceOut0 + d), sqe);
    return;
  }
  if (x.eof) {
    FinishDirection(c, d);
    return;
  }
  if (!TakePipe(x)) {
    counters_.Add(Counter::pipe_create_failed);
    x.copy = true;
    Pump(c, d);
    return;
  }
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_splice(sqe, src, -1, x.pipe.w, -1, x.pipe.capacity, kSpliceFlags);
  x.op_pending = true;
  Submit(c, static_cast<Op>(kOpSpliceIn0 + d), sqe);
}

void Worker::OnRelayPoll(Conn& c, int d, int res) {
  c.dir[d].op_pending = false;
  if (res < 0) {
    Abort(c, Counter::closed_relay_error);
    return;
  }
  if (options_.splice_mode == SpliceMode::kUring) {
    PumpUring(c, d);
  } else {
    Pump(c, d);
  }
}

void Worker::OnSpliceIn(Conn& c, int d, int res) {
  Direction& x = c.dir[d];
  x.op_pending = false;
  if (res > 0) {
    x.pipe_bytes = static_cast<uint32_t>(res);
    HoldPipeBytes(res);
    if (x.pipe_bytes == x.pipe.capacity) x.fast = true;
  } else if (res == 0) {
    x.eof = true;
  } else if (res == -EAGAIN) {
    pipes_.PutEmpty(x.pipe);
    ArmRelayPoll(c, d, d == 0 ? c.cfd : c.bfd, POLLIN);
    return;
  } else if (d == 0 && c.ktls_rx_raw && (res == -EINVAL || res == -EIO)) {
    // A non-data record on the kTLS RX socket.
    if (!OnControlRecord(c)) return;
    x.eof = true;
  } else if (res == -EINVAL || res == -EOPNOTSUPP) {
    SwitchToCopy(c, d);
    Pump(c, d);
    return;
  } else {
    Abort(c, Counter::closed_relay_error);
    return;
  }
  PumpUring(c, d);
}

void Worker::OnSpliceOut(Conn& c, int d, int res) {
  Direction& x = c.dir[d];
  x.op_pending = false;
  if (res > 0) {
    x.pipe_bytes -= static_cast<uint32_t>(res);
    HoldPipeBytes(-res);
    counters_.Add(d == 0 ? Counter::bytes_client_to_backend : Counter::bytes_backend_to_client, res);
    c.deadline_ms = now_ms_ + options_.idle_timeout_ms;
    PumpUring(c, d);
  } else if (res == -EAGAIN) {
    x.fast = false;
    ArmRelayPoll(c, d, d == 0 ? c.bfd : c.cfd, POLLOUT);
  } else {
    Abort(c, Counter::closed_relay_error);
  }
}

void Worker::RunQueued() {
  if (runq_.empty()) return;
  std::vector<Runnable> batch;
  batch.swap(runq_);
  for (const Runnable& r : batch) {
    Conn& c = conns_[r.slot];
    if (c.gen != r.gen) continue;
    c.dir[r.dir].queued = false;
    Pump(c, r.dir);
  }
}

// --- closing and timers ----------------------------------------------------

void Worker::Abort(Conn& c, Counter reason) {
  if (c.phase == Phase::kClosing || c.phase == Phase::kFree) return;
  counters_.Add(reason);
  c.phase = Phase::kClosing;
  if (c.inflight > 0) {
    for (int fd : {c.cfd, c.bfd}) {
      if (fd < 0) continue;
      io_uring_sqe* sqe = Sqe();
      io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
      io_uring_sqe_set_data64(sqe, UserData(kOpIgnore, 0, 0));
    }
  }
  MaybeFree(c);
}

void Worker::MaybeFree(Conn& c) {
  if (c.phase != Phase::kClosing || c.inflight > 0) return;
  if (c.ssl != nullptr) SSL_free(c.ssl);
  if (c.app_live != nullptr) c.app_live->fetch_sub(1, std::memory_order_relaxed);
  if (c.cfd >= 0) close(c.cfd);
  if (c.bfd >= 0) close(c.bfd);
  for (auto& d : c.dir) {
    if (d.pipe_bytes > 0) {
      HoldPipeBytes(-static_cast<int64_t>(d.pipe_bytes));
      pipes_.Discard(d.pipe);
    } else {
      pipes_.PutEmpty(d.pipe);
    }
    buffers_.Put(d.buf);
  }
  uint32_t gen = c.gen + 1;
  uint32_t next = free_head_;
  c = Conn();
  c.gen = gen;
  c.next_free = next;
  free_head_ = SlotOf(c);
  live_.fetch_sub(1, std::memory_order_relaxed);
}

void Worker::SetDeadline(Conn& c, int64_t when_ms) {
  c.deadline_ms = when_ms;
  // One live heap entry per connection; a later deadline is found lazily when
  // the earlier entry pops, so relay traffic never touches the heap.
  if (c.timer_ms == 0 || when_ms < c.timer_ms) {
    timers_.push({when_ms, SlotOf(c), c.gen});
    c.timer_ms = when_ms;
  }
}

void Worker::RunTimers() {
  while (!timers_.empty() && timers_.top().when_ms <= now_ms_) {
    TimerEntry e = timers_.top();
    timers_.pop();
    Conn& c = conns_[e.slot];
    if (c.gen != e.gen || c.timer_ms != e.when_ms) continue;  // stale entry
    c.timer_ms = 0;
    if (c.phase == Phase::kFree || c.phase == Phase::kClosing) continue;
    if (c.deadline_ms > now_ms_) {
      SetDeadline(c, c.deadline_ms);
      continue;
    }
    switch (c.phase) {
      case Phase::kHello: Abort(c, Counter::closed_hello_timeout); break;
      case Phase::kTlsHandshake: Abort(c, Counter::closed_tls_handshake_timeout); break;
      case Phase::kConnect: {
        // The connect completes with -ECANCELED and OnConnect tries the next instance.
        c.connect_timed_out = true;
        io_uring_sqe* sqe = Sqe();
        io_uring_prep_cancel_fd(sqe, c.bfd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, UserData(kOpIgnore, 0, 0));
        break;
      }
      case Phase::kRelay: Abort(c, Counter::closed_idle_timeout); break;
      default: break;
    }
  }
}

}  // namespace cvmgate
