// The plain transport's calls, for the transports that use them for a direction the kernel handles
// (kTLS) and for test doubles.
#pragma once

#include "dataplane/transport/transport.h"

namespace cvmgate {

Io PlainRead(Transport& t, uint8_t* buf, uint32_t len);
Io PlainWrite(Transport& t, const uint8_t* buf, uint32_t len);
Io PlainSpliceIn(Transport& t, int pipe_w, uint32_t len);
Io PlainSpliceInResult(Transport& t, int res);
Io PlainSpliceOut(Transport& t, int pipe_r, uint32_t len);
Io PlainSpliceOutResult(Transport& t, int res);
void PlainShutdownWrite(Transport& t);
// For transports that cannot splice a direction: the relay copies it.
Io UnsupportedSplice(Transport& t, int pipe, uint32_t len);
Io UnsupportedResult(Transport& t, int res);

}  // namespace cvmgate

namespace cvmgate {

// A non-blocking TCP socket toward an instance: TCP_NODELAY, at most `unsent_bytes` unsent beyond
// those in flight (TCP_NOTSENT_LOWAT), and a fixed receive buffer (`rcvbuf`, 0: autotuning). An
// invalid transport when no socket can be made.
Transport OpenInstanceSocket(int family, int unsent_bytes, uint32_t rcvbuf);

}  // namespace cvmgate
