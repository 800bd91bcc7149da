// A worker's connections (see table.h and connection.h).
#include "dataplane/conn/table.h"

#include <sys/time.h>

#include <algorithm>
#include <cstring>

#include "dataplane/clock.h"
#include "dataplane/log.h"

namespace cvmgate {
namespace {

// Which phase may follow which; closing may follow any (Close), and only freeing follows closing.
bool Allowed(Phase from, Phase to) {
  switch (from) {
    case Phase::kFree: return to == Phase::kHello;
    case Phase::kHello: return to == Phase::kHandshake || to == Phase::kConnect;
    case Phase::kHandshake: return to == Phase::kConnect;
    case Phase::kConnect: return to == Phase::kConnect || to == Phase::kRelay;
    default: return false;
  }
}

}  // namespace

const char* PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kFree: return "free";
    case Phase::kHello: return "hello";
    case Phase::kHandshake: return "handshake";
    case Phase::kConnect: return "connect";
    case Phase::kRelay: return "relay";
    case Phase::kClosing: return "closing";
  }
  return "?";
}

Connections::Connections(uint32_t capacity, ConnEnv& env, std::vector<Runnable>& runq)
    : env_(env), runq_(runq), capacity_(capacity), conns_(new Conn[capacity]) {
  for (uint32_t i = 0; i < capacity_; ++i) {
    conns_[i].slot = i;
    conns_[i].next_free = i + 1;
  }
}

Connections::~Connections() {
  for (uint32_t i = 0; i < capacity_; ++i) env_.relay.Release(conns_[i].relay);
}

bool Connections::Accept(Transport client) {
  if (free_head_ >= capacity_) {
    env_.counters.Add(Counter::closed_overload);
    return false;
  }
  Conn& c = conns_[free_head_];
  free_head_ = c.next_free;
  live_.fetch_add(1, std::memory_order_relaxed);
  c.client = std::move(client);
  c.accepted_ns = MonotonicNs();
  if (env_.access_log != nullptr) {
    // Now: once the client reset, its socket no longer tells.
    socklen_t len = sizeof(c.peer);
    if (getpeername(c.client.fd(), reinterpret_cast<sockaddr*>(&c.peer), &len) != 0) c.peer.sin6_family = AF_UNSPEC;
  }
  Apply(c, Step::To(Phase::kHello));
  return true;
}

int64_t Connections::Timeout(Phase phase) const {
  const WorkerOptions& o = env_.options;
  const LiveTimeouts* live = env_.timeouts;
  auto get = [live](const std::atomic<int64_t> LiveTimeouts::*field, int64_t fallback) {
    return live != nullptr ? (live->*field).load(std::memory_order_relaxed) : fallback;
  };
  switch (phase) {
    case Phase::kHello: return get(&LiveTimeouts::hello_ms, o.hello_timeout_ms);
    case Phase::kHandshake: return get(&LiveTimeouts::handshake_ms, o.handshake_timeout_ms);
    case Phase::kConnect: return get(&LiveTimeouts::connect_ms, o.connect_timeout_ms);
    default: return env_.idle_timeout_ms();
  }
}

void Connections::Apply(Conn& c, Step step) {
  while (step.kind != Step::kStay) {
    if (step.kind == Step::kClose) {
      Close(c, step.reason);
      return;
    }
    if (!Allowed(c.phase, step.next)) {
      // Cannot happen: a handler asked for a phase that cannot follow its own. Loud, not silent.
      Log("connection ", c.slot, ": no way from ", PhaseName(c.phase), " to ", PhaseName(step.next));
      Close(c, Counter::closed_relay_error);
      return;
    }
    Timed(c, step.next);
    c.phase = step.next;
    SetDeadline(c, env_.now_ms + Timeout(c.phase));
    step = Enter(c);
  }
}

Step Connections::Enter(Conn& c) {
  switch (c.phase) {
    case Phase::kHello: return BeginHello(env_, c);
    case Phase::kHandshake: return BeginHandshake(env_, c);
    case Phase::kConnect: return BeginConnect(env_, c);
    case Phase::kRelay: return BeginRelay(env_, c);
    default: return Step::Stay();
  }
}

void Connections::OnCompletion(Tag tag, int res) {
  if (tag.slot >= capacity_ || conns_[tag.slot].gen != tag.gen || conns_[tag.slot].inflight == 0) {
    // Cannot happen: a slot is freed only with nothing in flight. Loud, not silent.
    Log("completion for a stale connection slot (op ", int{static_cast<uint8_t>(tag.op)}, ")");
    return;
  }
  Conn& c = conns_[tag.slot];
  --c.inflight;
  if (c.phase == Phase::kClosing) {
    MaybeFree(c);
    return;
  }
  Step step;
  switch (tag.op) {
    case Op::kHelloRecv: step = OnHelloRecv(env_, c, res); break;
    case Op::kHelloPoll: step = OnHelloPoll(env_, c, res); break;
    case Op::kTlsPoll: step = OnHandshakePoll(env_, c, res); break;
    case Op::kConnect: step = OnConnect(env_, c, res); break;
    default: step = OnRelayEvent(env_, c, tag.op, res); break;
  }
  Apply(c, step);
}

void Connections::RunQueued() {
  if (runq_.empty()) return;
  std::vector<Runnable> batch;
  batch.swap(runq_);
  for (const Runnable& r : batch) {
    Conn& c = conns_[r.slot];
    if (c.gen != r.gen || c.phase != Phase::kRelay) continue;
    Apply(c, ResumeRelay(env_, c, r.dir));
  }
}

void Connections::Timed(Conn& c, Phase next) {
  if (next != Phase::kHandshake && next != Phase::kConnect && next != Phase::kRelay) return;
  if (next == Phase::kConnect && c.phase == Phase::kConnect) return;  // another try: the time runs on
  const int64_t now = MonotonicNs();
  if (next == Phase::kConnect && c.phase == Phase::kHandshake) {
    c.handshake_us = (now - c.phase_ns) / 1000;
    if (env_.histograms != nullptr) env_.histograms->Observe(Histogram::kHandshake, c.handshake_us);
    if (SSL* ssl = c.client.ssl(); ssl != nullptr && env_.access_log != nullptr) {
      c.tls_version = static_cast<uint16_t>(SSL_version(ssl));
      if (const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl)) c.cipher = SSL_CIPHER_get_name(cipher);
    }
  }
  if (next == Phase::kRelay) {
    c.connect_us = (now - c.phase_ns) / 1000;
    if (env_.histograms != nullptr) env_.histograms->Observe(Histogram::kConnect, c.connect_us);
  }
  c.phase_ns = now;
}

void Connections::Logged(const Conn& c, Counter reason, int64_t duration_us) {
  AccessRecord* r = env_.access_queue->Claim();
  if (r == nullptr) {
    env_.counters.Add(Counter::access_log_dropped);
    return;
  }
  timeval tv;
  gettimeofday(&tv, nullptr);
  r->unix_us = static_cast<int64_t>(tv.tv_sec) * 1'000'000 + tv.tv_usec;
  r->client = c.peer;
  r->instance = {};
  if (c.target_len > 0 && c.target_len <= sizeof(r->instance)) {
    std::memcpy(&r->instance, &c.target, c.target_len);
  }
  r->sni_len = static_cast<uint16_t>(std::min(c.sni.size(), sizeof(r->sni)));
  std::memcpy(r->sni, c.sni.data(), r->sni_len);
  r->app_len = static_cast<uint8_t>(std::min(c.id.size(), sizeof(r->app)));
  std::memcpy(r->app, c.id.data(), r->app_len);
  r->routed = !c.id.empty();
  r->mode = c.mode;
  r->tls_version = c.tls_version;
  r->cipher = c.cipher;
  r->bytes_in = c.relay.dir[0].bytes;
  r->bytes_out = c.relay.dir[1].bytes;
  r->handshake_us = c.handshake_us;
  r->connect_us = c.connect_us;
  r->duration_us = duration_us;
  r->reason = reason;
  env_.access_queue->Commit();
  env_.access_log->Wake();
}

void Connections::Close(Conn& c, Counter reason) {
  if (c.phase == Phase::kClosing || c.phase == Phase::kFree) return;
  env_.counters.Add(reason);
  if (env_.histograms != nullptr || env_.access_log != nullptr) {
    const int64_t duration_us = (MonotonicNs() - c.accepted_ns) / 1000;
    if (env_.histograms != nullptr) env_.histograms->Observe(Histogram::kDuration, duration_us);
    if (env_.access_log != nullptr) Logged(c, reason, duration_us);
  }
  c.phase = Phase::kClosing;
  if (c.inflight > 0) {
    for (const Transport* t : {&c.client, &c.instance}) {
      if (t->valid()) env_.ring.CancelFd(t->fd());
    }
  }
  MaybeFree(c);
}

void Connections::MaybeFree(Conn& c) {
  if (c.phase != Phase::kClosing || c.inflight > 0) return;
  if (c.app_live != nullptr) c.app_live->fetch_sub(1, std::memory_order_relaxed);
  env_.relay.Release(c.relay);
  c.client.Close();
  c.instance.Close();
  const uint32_t slot = c.slot;
  const uint32_t gen = c.gen + 1;
  c = Conn();
  c.slot = slot;
  c.gen = gen;
  c.next_free = free_head_;
  free_head_ = slot;
  live_.fetch_sub(1, std::memory_order_relaxed);
}

void Connections::SetDeadline(Conn& c, int64_t when_ms) {
  c.deadline_ms = when_ms;
  // One live heap entry per connection; a later deadline is found lazily when the earlier entry pops,
  // so relay traffic never touches the heap.
  if (c.timer_ms == 0 || when_ms < c.timer_ms) {
    timers_.push({when_ms, c.slot, c.gen});
    c.timer_ms = when_ms;
  }
}

void Connections::RunTimers() {
  while (!timers_.empty() && timers_.top().when_ms <= env_.now_ms) {
    TimerEntry e = timers_.top();
    timers_.pop();
    Conn& c = conns_[e.slot];
    if (c.gen != e.gen || c.timer_ms != e.when_ms) continue;  // stale entry
    c.timer_ms = 0;
    if (c.phase == Phase::kFree || c.phase == Phase::kClosing) continue;
    if (c.deadline_ms > env_.now_ms) {
      SetDeadline(c, c.deadline_ms);
      continue;
    }
    switch (c.phase) {
      case Phase::kHello: Apply(c, Step::Close(Counter::closed_hello_timeout)); break;
      case Phase::kHandshake: Apply(c, Step::Close(Counter::closed_tls_handshake_timeout)); break;
      case Phase::kConnect: Apply(c, OnConnectTimeout(env_, c)); break;
      case Phase::kRelay: Apply(c, Step::Close(Counter::closed_idle_timeout)); break;
      default: break;
    }
  }
}

void Connections::CloseAll(Counter reason) {
  for (uint32_t i = 0; i < capacity_; ++i) {
    if (conns_[i].phase != Phase::kFree) Apply(conns_[i], Step::Close(reason));
  }
}

}  // namespace cvmgate
