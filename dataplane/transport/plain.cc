// The plain transport: recv, send and splice(2) on a non-blocking socket. The kTLS transports
// (tls.cc) reuse these calls for the directions the kernel handles.
#include "dataplane/transport/plain.h"

#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>

namespace cvmgate {
namespace {

constexpr unsigned kSpliceFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

Io Fail(Transport&, const uint8_t*, uint32_t) { return Io::Error(); }
Io FailRead(Transport&, uint8_t*, uint32_t) { return Io::Error(); }
Io FailSplice(Transport&, int, uint32_t) { return Io::Error(); }
Io FailResult(Transport&, int) { return Io::Error(); }
void Nothing(Transport&) {}

const TransportOps kNoneOps = {"none", FailRead, Fail, FailSplice, FailResult, FailSplice, FailResult, Nothing,
                               false, false};

const TransportOps kPlainOps = {"plain",         PlainRead,   PlainWrite,    PlainSpliceIn, PlainSpliceInResult,
                                PlainSpliceOut,  PlainSpliceOutResult, PlainShutdownWrite, true, true};

}  // namespace

Io PlainRead(Transport& t, uint8_t* buf, uint32_t len) {
  for (;;) {
    ssize_t n = recv(t.fd(), buf, len, MSG_DONTWAIT);
    if (n > 0) return Io::Bytes(static_cast<size_t>(n));
    if (n == 0) return Io::End();
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return Io::Wait(POLLIN);
    return Io::Error();
  }
}

Io PlainWrite(Transport& t, const uint8_t* buf, uint32_t len) {
  for (;;) {
    ssize_t n = send(t.fd(), buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return Io::Bytes(static_cast<size_t>(n));
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return Io::Wait(POLLOUT);
    return Io::Error();
  }
}

Io PlainSpliceIn(Transport& t, int pipe_w, uint32_t len) {
  for (;;) {
    ssize_t n = splice(t.fd(), nullptr, pipe_w, nullptr, len, kSpliceFlags);
    if (n < 0 && errno == EINTR) continue;
    return t.SpliceInResult(n >= 0 ? static_cast<int>(n) : -errno);
  }
}

Io PlainSpliceInResult(Transport&, int res) {
  if (res > 0) return Io::Bytes(static_cast<size_t>(res));
  if (res == 0) return Io::End();
  if (res == -EAGAIN || res == -EINTR) return Io::Wait(POLLIN);
  // Where splice is refused (a socket type or kernel without it) the direction copies instead.
  if (res == -EINVAL || res == -ENOSYS || res == -EOPNOTSUPP) return Io::Unsupported();
  return Io::Error();
}

Io PlainSpliceOut(Transport& t, int pipe_r, uint32_t len) {
  for (;;) {
    ssize_t n = splice(pipe_r, nullptr, t.fd(), nullptr, len, kSpliceFlags);
    if (n < 0 && errno == EINTR) continue;
    return t.SpliceOutResult(n >= 0 ? static_cast<int>(n) : -errno);
  }
}

Io PlainSpliceOutResult(Transport&, int res) {
  if (res > 0) return Io::Bytes(static_cast<size_t>(res));
  if (res == -EAGAIN || res == -EINTR) return Io::Wait(POLLOUT);
  return Io::Error();
}

void PlainShutdownWrite(Transport& t) { shutdown(t.fd(), SHUT_WR); }

Io UnsupportedSplice(Transport&, int, uint32_t) { return Io::Unsupported(); }
Io UnsupportedResult(Transport&, int) { return Io::Unsupported(); }

Transport OpenInstanceSocket(int family, int unsent_bytes, uint32_t rcvbuf) {
  Fd fd(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Transport();
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NOTSENT_LOWAT, &unsent_bytes, sizeof(unsent_bytes));
  // Before connect, so the window scale fits it. The path to an instance is short (a WireGuard
  // tunnel in the same site): a fixed buffer loses nothing there, and bounds what a relay whose
  // client stopped reading holds.
  if (rcvbuf > 0) {
    int size = static_cast<int>(rcvbuf);
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  }
  return Transport::Plain(std::move(fd));
}

Transport::Transport() : ops_(&kNoneOps) {}

Transport Transport::Plain(Fd fd) {
  Transport t;
  t.ops_ = &kPlainOps;
  t.fd_ = std::move(fd);
  return t;
}

Transport Transport::Custom(const TransportOps* ops, Fd fd, void* context) {
  Transport t;
  t.ops_ = ops;
  t.fd_ = std::move(fd);
  t.context_ = context;
  return t;
}

void Transport::Close() {
  ssl_.reset();
  fd_.reset();
  ops_ = &kNoneOps;
  context_ = nullptr;
  reading_hello = false;
}

}  // namespace cvmgate
