// A worker's connections: fixed slots, the transition function that moves each through its phases
// (connection.h), their deadlines, and the run queue of relay directions that yielded.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <vector>

#include "dataplane/conn/phases.h"

namespace cvmgate {

class Connections {
 public:
  // `env` and `runq` outlive the table; the relay engine in `env` queues into `runq`.
  Connections(uint32_t capacity, ConnEnv& env, std::vector<Runnable>& runq);
  ~Connections();
  Connections(const Connections&) = delete;
  Connections& operator=(const Connections&) = delete;

  // A new client, on its accepted socket. False when every slot is taken: it is closed and counted.
  bool Accept(Transport client);
  // A ring operation of a connection completed (the loop's own operations never come here).
  void OnCompletion(Tag tag, int res);
  // Relay directions that used their budget in the last turn go on.
  void RunQueued();
  // Connections whose deadline passed: timed out by phase.
  void RunTimers();
  // When RunTimers has work next (INT64_MAX: no deadline).
  int64_t NextDeadlineMs() const { return timers_.empty() ? INT64_MAX : timers_.top().when_ms; }
  // Every live connection is closed with `reason` (the drain's deadline passed).
  void CloseAll(Counter reason);

  uint32_t live() const { return live_.load(std::memory_order_relaxed); }
  // The phase of slot `slot` (tests).
  const Conn& at(uint32_t slot) const { return conns_[slot]; }

 private:
  struct TimerEntry {
    int64_t when_ms;
    uint32_t slot;
    uint32_t gen;
    bool operator>(const TimerEntry& o) const { return when_ms > o.when_ms; }
  };

  // The transition function: the only place a connection changes phase.
  void Apply(Conn& c, Step step);
  Step Enter(Conn& c);
  void Close(Conn& c, Counter reason);
  // The times of a phase change that ends a handshake or a connect, into the histograms.
  void Timed(Conn& c, Phase next);
  // The access-log record of a closing connection, into this worker's queue (dropped when full).
  void Logged(const Conn& c, Counter reason, int64_t duration_us);
  void MaybeFree(Conn& c);
  void SetDeadline(Conn& c, int64_t when_ms);
  int64_t Timeout(Phase phase) const;

  ConnEnv& env_;
  std::vector<Runnable>& runq_;
  const uint32_t capacity_;
  std::unique_ptr<Conn[]> conns_;
  uint32_t free_head_ = 0;
  std::atomic<uint32_t> live_{0};
  std::priority_queue<TimerEntry, std::vector<TimerEntry>, std::greater<>> timers_;
};

}  // namespace cvmgate
