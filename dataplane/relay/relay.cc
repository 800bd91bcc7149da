// The relay's pump (see relay.h).
#include "dataplane/relay/relay.h"

#include <poll.h>

namespace cvmgate {
namespace {

constexpr size_t kPumpBudget = 512 * 1024;  // bytes one direction moves before yielding to others

RelayStatus Failed(Counter reason) { return {RelayStatus::kFailed, reason, false}; }

}  // namespace

RelayStatus RelayEngine::Start(RelayConn& c) {
  const bool copy = mode_ == SpliceMode::kCopy;
  for (int d = 0; d < 2; ++d) {
    Direction& x = c.relay.dir[d];
    bool splices = !copy && c.side[d]->splices_in() && c.side[1 - d]->splices_out();
    x.engine = splices ? Direction::Engine::kSplice : Direction::Engine::kCopy;
    x.may_splice_later = !copy && !splices;
  }
  const bool all_copy =
      c.relay.dir[0].engine == Direction::Engine::kCopy && c.relay.dir[1].engine == Direction::Engine::kCopy;
  counters_.Add(all_copy ? Counter::relay_copy : Counter::relay_splice);
  RelayStatus st;
  for (int d = 0; d < 2; ++d) {
    RelayStatus s = Pump(c, d);
    if (s.kind != RelayStatus::kRunning) return s;
    st.moved = st.moved || s.moved;
  }
  return st;
}

RelayStatus RelayEngine::OnPoll(RelayConn& c, int d, int res) {
  c.relay.dir[d].state = Direction::State::kReady;
  if (res < 0) return Failed(Counter::closed_relay_error);
  return Pump(c, d);
}

RelayStatus RelayEngine::Resume(RelayConn& c, int d) {
  c.relay.dir[d].state = Direction::State::kReady;
  return Pump(c, d);
}

RelayStatus RelayEngine::Pump(RelayConn& c, int d) {
  if (mode_ == SpliceMode::kUring && c.relay.dir[d].engine == Direction::Engine::kSplice) return PumpRing(c, d);
  return PumpInline(c, d);
}

// Moves bytes for one direction with inline non-blocking calls until the source or the destination
// would block, then waits for readiness on the ring.
RelayStatus RelayEngine::PumpInline(RelayConn& c, int d) {
  Direction& x = c.relay.dir[d];
  RelayStatus st;
  if (x.state != Direction::State::kReady) return st;
  if (d == 0 && c.relay.replay_len > 0 && !FlushReplay(c, st)) return st;
  Transport& src = *c.side[d];
  Transport& dst = *c.side[1 - d];
  size_t moved = 0;
  for (;;) {
    const bool copy = x.engine == Direction::Engine::kCopy;
    if (x.pending() > 0) {
      Io io = copy ? dst.Write(x.buf.get() + x.buf_off, x.pending()) : dst.SpliceOut(x.pipe.r.get(), x.pipe_bytes);
      if (io.status == Io::kBytes) {
        Delivered(x, d, io.bytes);
        st.moved = true;
        continue;
      }
      if (io.status == Io::kWouldBlock) {
        if (!copy) x.fast = false;  // the reader is slower than the writer: small pipes from the next fill on
        Wait(c, d, dst, io.events);
        return st;
      }
      return Failed(io.reason);
    }
    if (x.eof) return Finish(c, d, st);
    if (moved >= kPumpBudget) {
      // Let other connections run; this direction goes on next turn.
      x.state = Direction::State::kQueued;
      runq_.push_back({c.slot, c.gen, static_cast<uint8_t>(d)});
      return st;
    }
    if (copy && x.may_splice_later && src.splices_in() && dst.splices_out()) {
      // The connection moved to kTLS between two reads: this direction splices from here on.
      buffers_.Put(x.buf);
      x.buf_off = x.buf_len = 0;
      x.engine = Direction::Engine::kSplice;
      x.may_splice_later = false;
      counters_.Add(Counter::relay_spliced_after_ktls);
      if (mode_ != SpliceMode::kUring) continue;
      RelayStatus ring = PumpRing(c, d);
      ring.moved = ring.moved || st.moved;
      return ring;
    }
    if (!copy && !TakePipe(x)) {
      counters_.Add(Counter::pipe_create_failed);
      x.engine = Direction::Engine::kCopy;
      continue;
    }
    if (copy && !x.buf) x.buf = buffers_.Get();
    Io io = copy ? src.Read(x.buf.get(), BufferPool::kSize) : src.SpliceIn(x.pipe.w.get(), x.pipe.capacity);
    switch (io.status) {
      case Io::kBytes:
        Filled(x, io.bytes);
        moved += io.bytes;
        continue;
      case Io::kEnd: x.eof = true; continue;
      case Io::kWouldBlock:
        Idle(x);
        Wait(c, d, src, io.events);
        return st;
      case Io::kUnsupported: SwitchToCopy(x); continue;
      case Io::kError: return Failed(io.reason);
    }
  }
}

// The IORING_OP_SPLICE engine: each splice is a ring operation (run by io-wq).
RelayStatus RelayEngine::PumpRing(RelayConn& c, int d) {
  Direction& x = c.relay.dir[d];
  RelayStatus st;
  if (x.state != Direction::State::kReady) return st;
  if (d == 0 && c.relay.replay_len > 0 && !FlushReplay(c, st)) return st;
  const Transport& src = *c.side[d];
  const Transport& dst = *c.side[1 - d];
  if (x.pipe_bytes > 0) {
    x.state = Direction::State::kWaiting;
    c.ring.Splice({ForDirection(Op::kSpliceOut0, d), c.slot, c.gen}, x.pipe.r.get(), dst.fd(), x.pipe_bytes);
    ++c.inflight;
    return st;
  }
  if (x.eof) return Finish(c, d, st);
  if (!TakePipe(x)) {
    counters_.Add(Counter::pipe_create_failed);
    x.engine = Direction::Engine::kCopy;
    return PumpInline(c, d);
  }
  x.state = Direction::State::kWaiting;
  c.ring.Splice({ForDirection(Op::kSpliceIn0, d), c.slot, c.gen}, src.fd(), x.pipe.w.get(), x.pipe.capacity);
  ++c.inflight;
  return st;
}

RelayStatus RelayEngine::OnSpliceIn(RelayConn& c, int d, int res) {
  Direction& x = c.relay.dir[d];
  x.state = Direction::State::kReady;
  Transport& src = *c.side[d];
  Io io = src.SpliceInResult(res);
  switch (io.status) {
    case Io::kBytes: Filled(x, io.bytes); break;
    case Io::kEnd: x.eof = true; break;
    case Io::kWouldBlock:
      Idle(x);
      Wait(c, d, src, io.events);
      return {};
    case Io::kUnsupported:
      SwitchToCopy(x);
      return PumpInline(c, d);
    case Io::kError: return Failed(io.reason);
  }
  return PumpRing(c, d);
}

RelayStatus RelayEngine::OnSpliceOut(RelayConn& c, int d, int res) {
  Direction& x = c.relay.dir[d];
  x.state = Direction::State::kReady;
  Transport& dst = *c.side[1 - d];
  Io io = dst.SpliceOutResult(res);
  if (io.status == Io::kBytes) {
    Delivered(x, d, io.bytes);
    RelayStatus st = PumpRing(c, d);
    st.moved = true;
    return st;
  }
  if (io.status == Io::kWouldBlock) {
    x.fast = false;
    Wait(c, d, dst, io.events);
    return {};
  }
  return Failed(io.reason);
}

// The source ended and everything went out: the end is passed on as a half-close (a terminated
// client gets close_notify first), and the other direction keeps flowing until it ends too.
RelayStatus RelayEngine::Finish(RelayConn& c, int d, RelayStatus st) {
  Direction& x = c.relay.dir[d];
  c.side[1 - d]->ShutdownWrite();
  x.state = Direction::State::kDone;
  pipes_.PutEmpty(x.pipe);
  buffers_.Put(x.buf);
  if (c.relay.dir[1 - d].state == Direction::State::kDone) st.kind = RelayStatus::kFinished;
  return st;
}

bool RelayEngine::FlushReplay(RelayConn& c, RelayStatus& st) {
  Relay& r = c.relay;
  Transport& instance = *c.side[1];
  while (r.replay_sent < r.replay_len) {
    Io io = instance.Write(r.replay.get() + r.replay_sent, r.replay_len - r.replay_sent);
    if (io.status == Io::kBytes && io.bytes > 0) {
      r.replay_sent += io.bytes;
      r.dir[0].bytes += io.bytes;
      counters_.Add(Counter::bytes_client_to_backend, io.bytes);
      st.moved = true;
      continue;
    }
    if (io.status == Io::kWouldBlock) {
      Wait(c, 0, instance, io.events);
    } else {
      st = Failed(Counter::closed_relay_error);
    }
    return false;
  }
  r.replay.reset();
  r.replay_len = r.replay_sent = 0;
  return true;
}

void RelayEngine::Wait(RelayConn& c, int d, const Transport& t, short events) {
  c.relay.dir[d].state = Direction::State::kWaiting;
  c.ring.Poll({ForDirection(Op::kRelayPoll0, d), c.slot, c.gen}, t.fd(), events);
  ++c.inflight;
}

// Waiting for the source: the empty pipe or buffer goes back to the pool meanwhile.
void RelayEngine::Idle(Direction& x) {
  pipes_.PutEmpty(x.pipe);
  buffers_.Put(x.buf);
  x.buf_off = x.buf_len = 0;
}

bool RelayEngine::TakePipe(Direction& x) {
  // Between fills the pipe is empty: the time to change its size to the flow's.
  if (x.pipe.valid() && x.pipe_bytes == 0 && pipes_.Differs(x.pipe, x.fast)) pipes_.PutEmpty(x.pipe);
  return x.pipe.valid() || pipes_.Get(x.pipe, x.fast);
}

void RelayEngine::SwitchToCopy(Direction& x) {
  pipes_.PutEmpty(x.pipe);
  x.engine = Direction::Engine::kCopy;
  counters_.Add(Counter::splice_fallback_copy);
}

void RelayEngine::Filled(Direction& x, uint32_t n) {
  if (x.engine == Direction::Engine::kCopy) {
    x.buf_off = 0;
    x.buf_len = n;
  } else {
    x.pipe_bytes = n;
    HoldPipeBytes(n);
    if (x.pipe_bytes == x.pipe.capacity) x.fast = true;  // more was waiting than the pipe could take
  }
}

void RelayEngine::Delivered(Direction& x, int d, uint32_t n) {
  if (x.engine == Direction::Engine::kCopy) {
    x.buf_off += n;
  } else {
    x.pipe_bytes -= n;
    HoldPipeBytes(-static_cast<int64_t>(n));
  }
  x.bytes += n;
  counters_.Add(d == 0 ? Counter::bytes_client_to_backend : Counter::bytes_backend_to_client, n);
}

void RelayEngine::Release(Relay& relay) {
  for (Direction& x : relay.dir) {
    if (x.pipe_bytes > 0) {
      HoldPipeBytes(-static_cast<int64_t>(x.pipe_bytes));
      pipes_.Discard(x.pipe);
    } else {
      pipes_.PutEmpty(x.pipe);
    }
    buffers_.Put(x.buf);
  }
}

}  // namespace cvmgate
