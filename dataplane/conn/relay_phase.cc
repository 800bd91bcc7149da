// The relay phase: the PROXY header and kTLS set-up, then both directions through the relay engine.
#include <sys/socket.h>

#include "dataplane/conn/phases.h"
#include "dataplane/proxy_protocol.h"

namespace cvmgate {
namespace {

RelayConn ViewOf(ConnEnv& env, Conn& c) { return {c.relay, {&c.client, &c.instance}, env.ring, c.slot, c.gen, c.inflight}; }

Step FromRelay(ConnEnv& env, Conn& c, RelayStatus st) {
  if (c.client.news != Counter::kCount) {  // the client's TLS moved to the kernel (or could not)
    env.counters.Add(c.client.news);
    c.client.news = Counter::kCount;
  }
  if (st.kind == RelayStatus::kFailed) return Step::Close(st.reason);
  if (st.kind == RelayStatus::kFinished) return Step::Close(Counter::relay_done);
  // The idle timer's heap entry is found stale and moved when it pops: relay traffic never touches it.
  if (st.moved) c.deadline_ms = env.now_ms + env.idle_timeout_ms();
  return Step::Stay();
}

void CountTls(ConnEnv& env, const TlsOffload& k) {
  if (k.later) {
    env.counters.Add(Counter::ktls_later);
    return;
  }
  env.counters.Add(k.tx ? Counter::ktls_tx : Counter::relay_tls_userspace);
  if (k.rx) env.counters.Add(Counter::ktls_rx);
  if (!env.options.ktls) {
    env.counters.Add(Counter::ktls_fallback_disabled);
  } else if (!k.tx) {
    env.counters.Add(Counter::ktls_fallback_no_kernel_tls);
  } else if (k.tls13_rx_failed) {
    env.counters.Add(Counter::ktls_fallback_tls13_rx);
  }
}

}  // namespace

Step BeginRelay(ConnEnv& env, Conn& c) {
  if (c.proxy_protocol) {
    // The header goes first on a fresh, empty socket: a short write would mean a socket that cannot
    // take 52 bytes, which is an error, not back-pressure.
    sockaddr_storage client{}, local{};
    socklen_t len = sizeof(client);
    getpeername(c.client.fd(), reinterpret_cast<sockaddr*>(&client), &len);
    len = sizeof(local);
    getsockname(c.client.fd(), reinterpret_cast<sockaddr*>(&local), &len);
    uint8_t header[kProxyV2MaxHeader];
    size_t n = BuildProxyV2(client, local, header);
    Io io = c.instance.Write(header, static_cast<uint32_t>(n));
    if (io.status != Io::kBytes || io.bytes != n) return Step::Close(Counter::closed_proxy_header_failed);
  }
  env.counters.Add(c.mode == Mode::kPassthrough ? Counter::routed_passthrough
                   : c.mode == Mode::kGrpc      ? Counter::routed_grpc
                                                : Counter::routed_terminate);
  if (c.mode != Mode::kPassthrough) CountTls(env, FinishTlsHandshake(c.client, env.options.ktls_after));
  RelayConn view = ViewOf(env, c);
  return FromRelay(env, c, env.relay.Start(view));
}

Step OnRelayEvent(ConnEnv& env, Conn& c, Op op, int res) {
  RelayConn view = ViewOf(env, c);
  const uint8_t o = static_cast<uint8_t>(op);
  switch (op) {
    case Op::kRelayPoll0:
    case Op::kRelayPoll1: return FromRelay(env, c, env.relay.OnPoll(view, o - uint8_t(Op::kRelayPoll0), res));
    case Op::kSpliceIn0:
    case Op::kSpliceIn1: return FromRelay(env, c, env.relay.OnSpliceIn(view, o - uint8_t(Op::kSpliceIn0), res));
    case Op::kSpliceOut0:
    case Op::kSpliceOut1: return FromRelay(env, c, env.relay.OnSpliceOut(view, o - uint8_t(Op::kSpliceOut0), res));
    default: return Step::Close(Counter::closed_relay_error);
  }
}

Step ResumeRelay(ConnEnv& env, Conn& c, int d) {
  RelayConn view = ViewOf(env, c);
  return FromRelay(env, c, env.relay.Resume(view, d));
}

}  // namespace cvmgate
