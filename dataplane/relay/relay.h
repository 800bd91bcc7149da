// The relay: both directions of a connection moved by one pump, with three engines behind it —
// splice(2) run inline after a readiness poll, IORING_OP_SPLICE run by the ring, and a copy through
// a pooled buffer where a transport cannot splice. Direction d reads side d and writes the other
// side (0: client to instance, 1: instance to client); an ended source is passed on as a half-close.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "dataplane/counters.h"
#include "dataplane/options.h"
#include "dataplane/pools.h"
#include "dataplane/ring.h"
#include "dataplane/transport/transport.h"

namespace cvmgate {

struct Direction {
  enum class State : uint8_t {
    kReady,    // may move bytes now
    kWaiting,  // a readiness poll or a ring splice is in flight
    kQueued,   // used its budget in one turn: waits in the run queue
    kDone,     // its source ended, every byte went out, and the destination was shut for writing
  };
  enum class Engine : uint8_t { kSplice, kCopy };

  State state = State::kReady;
  Engine engine = Engine::kSplice;
  bool eof = false;   // the source ended; bytes still pending go out first
  bool fast = false;  // the last splice filled its pipe: the next pipe is a large one
  bool may_splice_later = false;  // copies only because a side cannot splice yet (kTLS after a threshold)
  Pipe pipe;          // splice: taken from the pool only while bytes move
  uint32_t pipe_bytes = 0;
  std::unique_ptr<uint8_t[]> buf;  // copy: taken from the pool only while bytes move
  uint32_t buf_off = 0;
  uint32_t buf_len = 0;
  uint64_t bytes = 0;  // delivered to the destination, for the access log
  uint32_t pending() const { return engine == Engine::kCopy ? buf_len - buf_off : pipe_bytes; }
};

struct Relay {
  Direction dir[2];
  // A ClientHello that was read rather than peeked (passthrough): it goes to the instance before any
  // other client byte.
  std::unique_ptr<uint8_t[]> replay;
  uint32_t replay_len = 0;
  uint32_t replay_sent = 0;
};

// What a relay step came to.
struct RelayStatus {
  enum Kind : uint8_t { kRunning, kFinished, kFailed };
  Kind kind = kRunning;
  Counter reason = Counter::relay_done;  // kFailed: why
  bool moved = false;                    // bytes went out: the connection is not idle
};

// A connection as its relay sees it.
struct RelayConn {
  Relay& relay;
  Transport* side[2];  // [0] the client, [1] the instance
  Ring& ring;
  uint32_t slot;
  uint32_t gen;
  uint32_t& inflight;  // ring operations in flight for this connection
};

// Entries of the worker's run queue: a direction that used its budget goes on next turn.
struct Runnable {
  uint32_t slot;
  uint32_t gen;
  uint8_t dir;
};

// One per worker: the pools and counters relays draw on, and the engine (--splice-mode).
class RelayEngine {
 public:
  RelayEngine(SpliceMode mode, PipePool& pipes, BufferPool& buffers, WorkerCounters& counters,
              std::atomic<int64_t>& pipe_bytes, std::vector<Runnable>& runq)
      : mode_(mode), pipes_(pipes), buffers_(buffers), counters_(counters), pipe_bytes_(pipe_bytes), runq_(runq) {}

  // Chooses each direction's engine (copy where a side cannot splice) and starts both.
  RelayStatus Start(RelayConn& c);
  // A readiness poll of direction `d` completed.
  RelayStatus OnPoll(RelayConn& c, int d, int res);
  // A ring splice of direction `d` into (in) or out of (out) its pipe completed.
  RelayStatus OnSpliceIn(RelayConn& c, int d, int res);
  RelayStatus OnSpliceOut(RelayConn& c, int d, int res);
  // Direction `d` comes off the run queue.
  RelayStatus Resume(RelayConn& c, int d);
  // The connection closes: pipes and buffers go back (a pipe still holding bytes is discarded).
  void Release(Relay& relay);

 private:
  RelayStatus Pump(RelayConn& c, int d);
  RelayStatus PumpInline(RelayConn& c, int d);
  RelayStatus PumpRing(RelayConn& c, int d);
  RelayStatus Finish(RelayConn& c, int d, RelayStatus st);
  // Sends a read hello to the instance; false while it waits for the socket (or failed: `st` says).
  bool FlushReplay(RelayConn& c, RelayStatus& st);
  void Wait(RelayConn& c, int d, const Transport& t, short events);
  void Idle(Direction& x);
  bool TakePipe(Direction& x);
  void SwitchToCopy(Direction& x);
  void Filled(Direction& x, uint32_t n);
  void Delivered(Direction& x, int d, uint32_t n);
  void HoldPipeBytes(int64_t n) {
    pipe_bytes_.store(pipe_bytes_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }

  const SpliceMode mode_;
  PipePool& pipes_;
  BufferPool& buffers_;
  WorkerCounters& counters_;
  std::atomic<int64_t>& pipe_bytes_;  // written by this worker only
  std::vector<Runnable>& runq_;
};

}  // namespace cvmgate
