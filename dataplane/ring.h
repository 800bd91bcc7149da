// What a connection asks of its event loop: operations that complete later, once each, with the
// kernel's result. The worker's io_uring implements it (dataplane/uring.h); unit tests drive
// connections through a fake one.
#pragma once

#include <sys/socket.h>

#include <cstdint>

namespace cvmgate {

enum class Op : uint8_t {
  kAccept = 1,  // the loop's own: slot = listener index
  kWake,        // the loop's own: the eventfd read
  kIgnore,      // cancellations: no connection accounting
  kHelloRecv,   // a peek (or read) of the ClientHello
  kHelloPoll,
  kTlsPoll,
  kConnect,
  kRelayPoll0,  // + direction
  kRelayPoll1,
  kSpliceIn0,
  kSpliceIn1,
  kSpliceOut0,
  kSpliceOut1,
};

inline Op ForDirection(Op base, int d) { return static_cast<Op>(static_cast<uint8_t>(base) + d); }

// Names an operation's completion: op (8 bits) | slot (24 bits) | generation (32 bits) in the
// ring's user_data, so a completion can never act on a slot that has since been reused.
struct Tag {
  Op op;
  uint32_t slot;
  uint32_t gen;
  uint64_t Pack() const { return (uint64_t{static_cast<uint8_t>(op)} << 56) | (uint64_t{slot & 0xffffff} << 32) | gen; }
  static Tag Unpack(uint64_t data) {
    return {static_cast<Op>(data >> 56), static_cast<uint32_t>(data >> 32) & 0xffffff, static_cast<uint32_t>(data)};
  }
};

class Ring {
 public:
  virtual ~Ring() = default;
  // recv(2) into `buf` (which stays valid until the completion); `flags` may hold MSG_PEEK.
  virtual void Recv(Tag tag, int fd, uint8_t* buf, uint32_t len, int flags) = 0;
  // Completes with the ready events (a one-shot poll).
  virtual void Poll(Tag tag, int fd, short events) = 0;
  // `addr` stays valid until the completion.
  virtual void Connect(Tag tag, int fd, const sockaddr_storage* addr, socklen_t len) = 0;
  // A non-blocking splice(2) from `in` to `out`, run by the ring.
  virtual void Splice(Tag tag, int in, int out, uint32_t len) = 0;
  // Every operation on `fd` completes (with -ECANCELED where it had not finished).
  virtual void CancelFd(int fd) = 0;
};

}  // namespace cvmgate
