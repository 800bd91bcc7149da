// Data-plane worker: one thread, one io_uring, its own listeners, connection slots, pools and counters.
#pragma once

#include <liburing.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <vector>

#include <absl/random/random.h>
#include <absl/status/status.h>
#include "dataplane/options.h"
#include "dataplane/snapshot.h"
#include "dataplane/client_hello.h"
#include "dataplane/counters.h"
#include "dataplane/decide.h"
#include "dataplane/pools.h"
#include "dataplane/tls.h"

namespace cvmgate {

class Worker {
 public:
  Worker(int index, WorkerOptions options, SnapshotDomain::Reader reader, uint32_t max_connections);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Creates the ring and binds this worker's SO_REUSEPORT listeners. Port 0 in
  // `listen` is replaced by the port the kernel chose, so every worker can be
  // given the first worker's resolved addresses.
  absl::Status Init(std::vector<ListenAddress>& addresses);
  // The thread body: returns once stopped and drained.
  void Run();
  // Returns once Run() has named its thread and dropped its capabilities.
  void WaitStarted() const { started_.wait(false); }
  // Thread-safe: stop accepting, let live relays finish (up to --drain-timeout), return from Run().
  void Stop();

  const WorkerCounters& counters() const { return counters_; }
  uint32_t live_connections() const { return live_.load(std::memory_order_relaxed); }
  // Bytes spliced into this worker's pipes and not yet out of them: what
  // stalled relays hold in pipes.
  int64_t pipe_bytes() const { return pipe_bytes_.load(std::memory_order_relaxed); }

 private:
  enum class Phase : uint8_t { kFree, kHello, kTlsHandshake, kConnect, kRelay, kClosing };

  struct Direction {
    Pipe pipe;
    uint32_t pipe_bytes = 0;
    std::unique_ptr<uint8_t[]> buf;  // copy mode
    uint32_t buf_off = 0;
    uint32_t buf_len = 0;
    bool copy = false;
    bool eof = false;
    bool done = false;
    bool op_pending = false;  // a poll or IORING_OP_SPLICE is in flight
    bool fast = false;        // the last splice filled its pipe: the next pipe is a large one
    bool queued = false;      // in the run queue after using its budget
    uint32_t pending() const { return copy ? buf_len - buf_off : pipe_bytes; }
  };

  struct Conn {
    uint32_t gen = 0;
    Phase phase = Phase::kFree;
    bool lowat_set = false;
    bool rdhup = false;
    bool connect_timed_out = false;
    uint8_t tries = 0;
    uint16_t port = 0;
    int cfd = -1;
    int bfd = -1;
    uint32_t inflight = 0;
    uint32_t hello_cap = 0;
    std::unique_ptr<uint8_t[]> hello;  // the peek buffer; or the hello read from the socket, until replayed
    HelloParser hello_parser;          // resumes where the last peek's parse stopped
    uint32_t hello_len = 0;            // bytes read (not peeked) into `hello`: they go to the backend or OpenSSL first
    uint32_t hello_sent = 0;           // of those, already sent to the backend
    uint8_t hello_peeks = 0;
    bool hello_read = false;           // the hello arrived in so many pieces that it is read, not peeked
    std::string id;
    SSL* ssl = nullptr;  // terminated connections: the client side's TLS
    std::atomic<int32_t>* app_live = nullptr;  // the app slot this connection holds
    bool proxy_protocol = false;  // the app wants a PROXY v2 header first
    bool grpc = false;
    bool ktls_tx = false;  // the kernel encrypts toward the client: plain writes and splice work
    bool ktls_rx_raw = false;  // the kernel decrypts the client's records and OpenSSL is out of the read path
    uint64_t tried[16] = {};
    sockaddr_storage backend{};
    socklen_t backend_len = 0;
    int64_t deadline_ms = 0;
    int64_t timer_ms = 0;  // deadline of this conn's live timer-heap entry, 0 if none
    Direction dir[2];      // 0: client to backend, 1: backend to client
    uint32_t next_free = 0;
  };

  struct TimerEntry {
    int64_t when_ms;
    uint32_t slot;
    uint32_t gen;
    bool operator>(const TimerEntry& o) const { return when_ms > o.when_ms; }
  };
  struct Runnable {
    uint32_t slot;
    uint32_t gen;
    uint8_t dir;
  };

  // io_uring user_data: op (8 bits) | slot (24 bits) | generation (32 bits), so
  // a completion can never act on a slot that has since been reused.
  enum Op : uint8_t {
    kOpAccept = 1,   // slot = listener index
    kOpWake,         // the eventfd read
    kOpIgnore,       // cancellations: no connection accounting
    kOpPeek,
    kOpHelloPoll,
    kOpTlsPoll,
    kOpConnect,
    kOpRelayPoll0,   // + direction
    kOpRelayPoll1,
    kOpSpliceIn0,
    kOpSpliceIn1,
    kOpSpliceOut0,
    kOpSpliceOut1,
  };
  static uint64_t UserData(Op op, uint32_t slot, uint32_t gen) {
    return (uint64_t{op} << 56) | (uint64_t{slot & 0xffffff} << 32) | gen;
  }

  io_uring_sqe* Sqe();
  void Submit(Conn& c, Op op, io_uring_sqe* sqe);
  void ArmAccept(size_t listener);
  void ArmWake();
  void Handle(io_uring_cqe* cqe);
  void OnAccept(size_t listener, int res, bool more);
  void OnWake();
  void BeginDrain();

  uint32_t SlotOf(const Conn& c) const { return static_cast<uint32_t>(&c - conns_.get()); }
  void SubmitPeek(Conn& c);
  void OnPeek(Conn& c, int res);
  void OnHelloPoll(Conn& c, int res);
  void OnHelloDone(Conn& c, std::string_view sni);
  void StartTls(Conn& c, SSL_CTX* ctx);
  void DoHandshake(Conn& c);
  // One read into / write from the direction's buffer: plain recv/send, or
  // SSL_read/SSL_write on a terminated client. Returns >0 bytes, 0 at EOF, or
  // -1 having armed the readiness poll it waits for (`wait` set), or -1 on error.
  ssize_t CopyIn(Conn& c, int d, bool& wait);
  ssize_t CopyOut(Conn& c, int d, bool& wait);
  // A non-data record stopped a read on a kTLS RX socket: true when it was the
  // client's close_notify (the direction ends); otherwise the relay is closed.
  bool OnControlRecord(Conn& c);
  // What the routing decision (dataplane/decide.h) reads besides the name.
  RouteInputs Inputs() const { return {*snap_, options_.base_domains, listen_addrs_}; }
  // Counts the connection against its app's limit once; false when the app is full.
  bool TakeAppSlot(Conn& c, const RouteSnapshot::Lookup& found);
  // Passthrough of a hello that was read: sends it to the backend before any
  // other client byte; false when it waits for the socket (or the relay was closed).
  bool FlushReadHello(Conn& c);
  // After the handshake, and on each retry: asks the snapshot of this batch again.
  void StartConnect(Conn& c);
  // Picks an instance of `found` not yet tried and connects to it.
  void Connect(Conn& c, const RouteSnapshot::Lookup& found);
  void OnConnect(Conn& c, int res);
  void StartRelay(Conn& c);
  // The direction's pipe for its next fill: small, or large while the flow is
  // fast; false when none can be made.
  bool TakePipe(Direction& x);
  void Pump(Conn& c, int d);
  void PumpUring(Conn& c, int d);
  void OnRelayPoll(Conn& c, int d, int res);
  void OnSpliceIn(Conn& c, int d, int res);
  void OnSpliceOut(Conn& c, int d, int res);
  void ArmRelayPoll(Conn& c, int d, int fd, short events);
  void FinishDirection(Conn& c, int d);
  void SwitchToCopy(Conn& c, int d);
  void Abort(Conn& c, Counter reason);
  void MaybeFree(Conn& c);
  void SetDeadline(Conn& c, int64_t when_ms);
  void RunTimers();
  void RunQueued();
  int64_t WaitMs() const;

  const int index_;
  const WorkerOptions options_;
  SnapshotDomain::Reader reader_;
  const RouteSnapshot* snap_ = nullptr;  // valid only between reader_.Enter() and Leave()
  const uint32_t max_connections_;

  io_uring ring_{};
  bool ring_ready_ = false;
  std::vector<int> listeners_;
  std::vector<sockaddr_storage> listen_addrs_;  // what listeners_ are bound to: never a connect target
  std::vector<bool> accept_armed_;
  bool accept_paused_ = false;  // EMFILE: re-armed by the timer tick
  int64_t accept_retry_ms_ = 0;
  int wake_fd_ = -1;
  uint64_t wake_value_ = 0;
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> started_{false};
  bool draining_ = false;
  int64_t drain_deadline_ms_ = 0;
  bool drain_cut_ = false;

  std::unique_ptr<Conn[]> conns_;
  uint32_t free_head_ = 0;
  std::atomic<uint32_t> live_{0};
  std::atomic<int64_t> pipe_bytes_{0};  // written by this worker only
  void HoldPipeBytes(int64_t n) {
    pipe_bytes_.store(pipe_bytes_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  int64_t now_ms_ = 0;
  std::priority_queue<TimerEntry, std::vector<TimerEntry>, std::greater<>> timers_;
  std::vector<Runnable> runq_;
  WorkerCounters counters_;  // before the pools, which count into it
  PipePool pipes_;
  const int unsent_bytes_;  // TCP_NOTSENT_LOWAT of both relay sockets: a large pipe's worth, at least 256 KiB
  BufferPool buffers_;
  absl::InsecureBitGen rng_;
};

}  // namespace cvmgate
