// The hello phase: the ClientHello is peeked until its server name is known, then decided.
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "dataplane/conn/phases.h"

namespace cvmgate {
namespace {

constexpr uint32_t kHelloInitialPeek = 1024;  // most hellos fit; larger ones grow the buffer geometrically
// A whole hello takes one peek, or two or three when it is larger than the first peek or spans
// records; one still incomplete after this many was cut into many small records, and is read rather
// than peeked again.
constexpr uint8_t kPeeksBeforeReading = 4;

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

// The TLS alert a client refused after its ClientHello gets, so curl and browsers say why
// ("unrecognized name", "internal error") rather than "connection reset"; 0: none.
uint8_t RefusalAlert(Counter reason) {
  switch (reason) {
    case Counter::closed_no_sni:
    case Counter::closed_bad_name:
    case Counter::closed_bad_port:
    case Counter::closed_unknown_domain:
    case Counter::closed_unknown_app:
    case Counter::closed_port_not_served: return 112;  // unrecognized_name: nothing answers to that name
    case Counter::closed_no_certificate: return 40;    // handshake_failure: no certificate to end TLS with
    case Counter::closed_no_healthy_instance:
    case Counter::closed_app_limit:
    case Counter::closed_own_listener: return 80;  // internal_error: the name is known, nothing can serve it now
    default: return 0;
  }
}

// Refuses a client after its ClientHello. Where the refusal has an alert, the hello's bytes are
// taken off the socket (so the close is a FIN, not a reset that could overtake the alert), then a
// fatal alert goes out in a plaintext record, as a TLS server sends one before its ServerHello.
Step Refuse(Conn& c, Counter reason) {
  uint8_t alert = RefusalAlert(reason);
  if (alert != 0) {
    const int fd = c.client.fd();
    char sink[4096];
    for (int i = 0; i < 32 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT | MSG_TRUNC) > 0; ++i) {
    }
    const uint8_t record[7] = {21, 3, 3, 0, 2, 2 /* fatal */, alert};
    (void)send(fd, record, sizeof(record), MSG_DONTWAIT | MSG_NOSIGNAL);  // best effort: the close follows
  }
  return Step::Close(reason);
}

Step SubmitRecv(ConnEnv& env, Conn& c) {
  HelloState& h = c.hello;
  // A peek copies every byte from the first one again (and the kernel walks every queued segment to
  // do it): a hello still incomplete after a few peeks is read instead, each byte once, and replayed.
  env.ring.Recv(env.TagOf(c, Op::kHelloRecv), c.client.fd(), h.buf.get() + h.len, h.cap - h.len,
                h.read ? 0 : MSG_PEEK);
  ++c.inflight;
  return Step::Stay();
}

Step HelloDone(ConnEnv& env, Conn& c, std::string_view sni) {
  HelloState& h = c.hello;
  if (env.access_log != nullptr) c.sni.assign(sni);
  if (h.lowat_set) {
    int one = 1;
    setsockopt(c.client.fd(), SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    h.lowat_set = false;
  }
  Decision d = Decide(sni, env.Inputs());
  h.parser = HelloParser();
  if (h.len == 0) {
    h.buf.reset();  // peeked: the bytes are still in the socket
    h.cap = 0;
  }
  if (d.refused()) return Refuse(c, d.refusal);
  c.id = std::move(d.name.target.id);
  c.port = d.name.target.port;
  c.mode = d.name.target.mode;
  // A terminated name that cannot be routed now gets no handshake: it is refused as passthrough
  // would be, and so is one over its app's limit.
  if (!TakeAppSlot(c, d.found)) return Refuse(c, Counter::closed_app_limit);
  if (d.verdict == Decision::Verdict::kPassthrough) {
    if (h.len > 0) {
      // Read, not peeked: the instance gets these bytes before any other client byte.
      c.relay.replay = std::move(h.buf);
      c.relay.replay_len = h.len;
      h.len = h.cap = 0;
    }
    return Step::To(Phase::kConnect);
  }
  if (!BeginTlsHandshake(c.client, d.context, std::span<const uint8_t>(h.buf.get(), h.len))) {
    return Step::Close(Counter::closed_tls_handshake_failed);
  }
  return Step::To(Phase::kHandshake);
}

}  // namespace

Step BeginHello(ConnEnv& env, Conn& c) {
  HelloState& h = c.hello;
  h.cap = std::min<uint32_t>(kHelloInitialPeek, env.options.hello_max_bytes);
  h.buf = std::make_unique_for_overwrite<uint8_t[]>(h.cap);
  h.parser = HelloParser(env.options.hello_max_bytes);
  return SubmitRecv(env, c);
}

Step OnHelloRecv(ConnEnv& env, Conn& c, int res) {
  HelloState& h = c.hello;
  if (res <= 0) return Step::Close(Counter::closed_hello_peer_closed);
  size_t have = static_cast<size_t>(res);
  if (h.read) have = h.len += static_cast<uint32_t>(res);
  HelloResult hello = h.parser.Feed(std::span<const uint8_t>(h.buf.get(), have));
  if (hello.status == HelloStatus::kOk) return HelloDone(env, c, hello.sni);
  if (hello.status != HelloStatus::kNeedMore) return Refuse(c, HelloCounter(hello.status));
  if (hello.need > h.cap) {
    // Geometric growth: the buffer is replaced a logarithmic number of times.
    bool was_full = have == h.cap;
    uint32_t cap =
        std::max(static_cast<uint32_t>(hello.need), std::min(2 * h.cap, env.options.hello_max_bytes));
    auto bigger = std::make_unique_for_overwrite<uint8_t[]>(cap);
    if (h.read) std::memcpy(bigger.get(), h.buf.get(), h.len);  // read bytes are not in the socket
    h.buf = std::move(bigger);
    h.cap = cap;
    if (was_full) return SubmitRecv(env, c);  // more bytes may already be queued than the old buffer could show
  }
  if (!h.read && ++h.peeks >= kPeeksBeforeReading) {
    // From now on the bytes are read: the next read takes what was peeked again, from the first byte.
    h.read = true;
    env.counters.Add(Counter::hello_read_not_peeked);
  }
  if (h.rdhup) return Step::Close(Counter::closed_hello_peer_closed);
  // A peek leaves the bytes queued, so a plain readiness poll would fire at once and spin.
  // SO_RCVLOWAT makes the socket readable only when the bytes still needed are there (or the peer
  // closed).
  int need = static_cast<int>(hello.need - h.len);
  setsockopt(c.client.fd(), SOL_SOCKET, SO_RCVLOWAT, &need, sizeof(need));
  h.lowat_set = true;
  env.ring.Poll(env.TagOf(c, Op::kHelloPoll), c.client.fd(), POLLIN | POLLRDHUP);
  ++c.inflight;
  return Step::Stay();
}

Step OnHelloPoll(ConnEnv& env, Conn& c, int res) {
  if (res < 0) return Step::Close(Counter::closed_hello_peer_closed);
  if (res & (POLLRDHUP | POLLHUP | POLLERR)) c.hello.rdhup = true;
  return SubmitRecv(env, c);
}

}  // namespace cvmgate
