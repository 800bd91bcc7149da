// The handshake phase: TLS ends here, on the non-blocking socket; the ring says when to go on.
#include "dataplane/conn/phases.h"

namespace cvmgate {

Step BeginHandshake(ConnEnv& env, Conn& c) {
  HandshakeStep step = StepTlsHandshake(c.client);
  if (step.hello_used_up) {
    c.hello.buf.reset();
    c.hello.len = c.hello.cap = 0;
  }
  switch (step.status) {
    case HandshakeStep::kDone: return Step::To(Phase::kConnect);
    case HandshakeStep::kWait:
      env.ring.Poll(env.TagOf(c, Op::kTlsPoll), c.client.fd(), step.events);
      ++c.inflight;
      return Step::Stay();
    default: return Step::Close(Counter::closed_tls_handshake_failed);
  }
}

Step OnHandshakePoll(ConnEnv& env, Conn& c, int res) {
  if (res < 0) return Step::Close(Counter::closed_tls_handshake_failed);
  return BeginHandshake(env, c);
}

}  // namespace cvmgate
