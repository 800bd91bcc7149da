// Data-plane worker: the event loop of one thread. It owns an io_uring, its own SO_REUSEPORT
// listeners, a connection table (conn/table.h), pools and counters; the one thing other workers
// touch is its inbox of connections handed over (--rebalance). The connections' phases, their
// transports and the relay live in their own files.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include <absl/status/status.h>

#include "dataplane/access_log.h"
#include "dataplane/conn/table.h"
#include "dataplane/counters.h"
#include "dataplane/fd.h"
#include "dataplane/options.h"
#include "dataplane/pools.h"
#include "dataplane/relay/relay.h"
#include "dataplane/snapshot.h"
#include "dataplane/uring.h"

namespace cvmgate {

class Worker {
 public:
  Worker(int index, WorkerOptions options, SnapshotDomain::Reader reader, uint32_t max_connections);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Creates the ring and binds this worker's SO_REUSEPORT listeners. Port 0 in
  // `listen` is replaced by the port the kernel chose, so every worker can be
  // given the first worker's resolved addresses. Listening sockets in `inherited`
  // (from the process this one replaces) are taken for the addresses they are
  // bound to instead of new ones; those bound to no address in `addresses` are closed.
  absl::Status Init(std::vector<ListenAddress>& addresses, std::vector<Fd> inherited = {});
  // The listening sockets, to hand to a successor (they stay this worker's until it stops).
  std::vector<int> listener_fds() const;
  // The thread body: returns once stopped and drained.
  void Run();
  // Returns once Run() has named its thread and dropped its capabilities; then start_status()
  // says whether it runs (an error: Run() returned at once).
  void WaitStarted() const { started_.wait(false); }
  const absl::Status& start_status() const { return start_status_; }
  // Thread-safe: stop accepting, let live relays finish (up to --drain-timeout), return from Run().
  void Stop();

  // The process's workers, this one included, for --rebalance: SO_REUSEPORT's hash spreads
  // connections evenly only on average, so a few long-lived ones may all land on one worker while
  // another is idle. A worker that accepts a connection while it holds more than the least loaded
  // one (by an eighth, or by any when that one holds none) hands it to that one.
  void SetPeers(std::vector<Worker*> peers) { peers_ = std::move(peers); }
  // Thread-safe: takes `client`, which another worker accepted, and wakes this worker for it; false
  // (and `client` left alone) once this worker is stopping.
  bool Adopt(Fd& client);

  // Before Run(): the connections this worker closes are logged into its queue of `log`.
  void SetAccessLog(AccessLog* log) {
    env_.access_log = log;
    env_.access_queue = log != nullptr ? log->queue(index_) : nullptr;
  }

  // Thread-safe: the timeouts of phases entered from now on (a re-read config file).
  void SetTimeouts(const WorkerOptions& options) { timeouts_.Set(options); }

  const WorkerCounters& counters() const { return counters_; }
  const WorkerHistograms& histograms() const { return histograms_; }
  uint32_t live_connections() const { return conns_.live(); }
  RingTaskRun ring_taskrun() const { return ring_.taskrun(); }
  // Bytes spliced into this worker's pipes and not yet out of them: what
  // stalled relays hold in pipes.
  int64_t pipe_bytes() const { return pipe_bytes_.load(std::memory_order_relaxed); }

 private:
  void Handle(Tag tag, int res, unsigned flags);
  void ArmAccept(size_t listener);
  void ArmWake();
  void OnAccept(size_t listener, int res, bool more);
  void OnWake();
  void BeginDrain();
  int64_t WaitMs() const;
  // What --rebalance weighs: connections held, and those handed over but not yet taken in.
  uint32_t load() const { return conns_.live() + handed_.load(std::memory_order_relaxed); }
  Worker* LessLoaded() const;

  const int index_;
  const WorkerOptions options_;
  const int unsent_bytes_;  // TCP_NOTSENT_LOWAT of both relay sockets: a large pipe's worth, at least 256 KiB
  SnapshotDomain::Reader reader_;

  Uring ring_;
  std::vector<Fd> listeners_;
  std::vector<sockaddr_storage> listen_addrs_;  // what listeners_ are bound to: never a connect target
  std::vector<bool> accept_armed_;
  bool accept_paused_ = false;  // EMFILE: re-armed by the timer tick
  int64_t accept_retry_ms_ = 0;
  Fd wake_fd_;
  uint64_t wake_value_ = 0;
  std::atomic<bool> stop_requested_{false};
  std::vector<Worker*> peers_;
  std::mutex inbox_mu_;
  std::vector<Fd> inbox_;      // connections handed over by other workers (guarded by inbox_mu_)
  bool inbox_closed_ = false;  // Stop was called: no more are taken (guarded by inbox_mu_)
  std::atomic<uint32_t> handed_{0};
  std::atomic<bool> started_{false};
  absl::Status start_status_;  // written by Run() before started_
  bool draining_ = false;
  int64_t drain_deadline_ms_ = 0;
  bool drain_cut_ = false;

  std::atomic<int64_t> pipe_bytes_{0};
  WorkerCounters counters_;  // before the pools, which count into it
  WorkerHistograms histograms_;
  LiveTimeouts timeouts_{options_};
  PipePool pipes_;
  BufferPool buffers_;
  std::vector<Runnable> runq_;
  RelayEngine relay_;
  ConnEnv env_;
  Connections conns_;  // last: its connections give their pipes and buffers back to the pools
};

}  // namespace cvmgate
