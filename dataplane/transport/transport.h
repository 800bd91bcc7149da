// A connection's side: plain TCP, userspace TLS or kTLS behind one table of operations, in the
// spirit of HAProxy's xprt_ops (raw_sock.c and ssl_sock.c fill the same table), so the relay never
// asks which one it has. Every call is non-blocking and answers what happened: bytes, would-block
// (with the events to wait for), end of stream, "cannot splice", or an error with the reason the
// connection closes with. A transport never arms the ring itself.
//
// A transport owns its descriptor and, for TLS, its SSL.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <span>

#include "dataplane/counters.h"
#include "dataplane/fd.h"
#include "dataplane/options.h"

namespace cvmgate {

// One transport call's answer.
struct Io {
  enum Status : uint8_t { kBytes, kWouldBlock, kEnd, kUnsupported, kError };
  Status status = kError;
  uint32_t bytes = 0;                            // kBytes: how many moved
  short events = 0;                              // kWouldBlock: what to poll for
  Counter reason = Counter::closed_relay_error;  // kError: what the connection closes with

  static Io Bytes(size_t n) { return {kBytes, static_cast<uint32_t>(n), 0, Counter::closed_relay_error}; }
  static Io Wait(short events) { return {kWouldBlock, 0, events, Counter::closed_relay_error}; }
  static Io End() { return {kEnd, 0, 0, Counter::closed_relay_error}; }
  static Io Unsupported() { return {kUnsupported, 0, 0, Counter::closed_relay_error}; }
  static Io Error(Counter reason = Counter::closed_relay_error) { return {kError, 0, 0, reason}; }
};

struct SslFree {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using UniqueSsl = std::unique_ptr<SSL, SslFree>;

class Transport;

struct TransportOps {
  const char* name;
  Io (*read)(Transport& t, uint8_t* buf, uint32_t len);
  Io (*write)(Transport& t, const uint8_t* buf, uint32_t len);
  // splice(2) from the transport into a pipe, and from a pipe into it. The *_result functions read
  // what a splice returned (bytes, or -errno), whether it ran inline or on the ring.
  Io (*splice_in)(Transport& t, int pipe_w, uint32_t len);
  Io (*splice_in_result)(Transport& t, int res);
  Io (*splice_out)(Transport& t, int pipe_r, uint32_t len);
  Io (*splice_out_result)(Transport& t, int res);
  // The end of what this side is sent: close_notify first on TLS, then a FIN.
  void (*shutdown_write)(Transport& t);
  bool splices_in;   // the splice operations can move bytes (else they answer kUnsupported)
  bool splices_out;
};

class Transport {
 public:
  Transport();  // none: every call fails
  // Plain TCP (or any stream socket) on `fd`.
  static Transport Plain(Fd fd);
  // Another implementation (test doubles): `ops` over `context`.
  static Transport Custom(const TransportOps* ops, Fd fd, void* context);

  Io Read(uint8_t* buf, uint32_t len) { return ops_->read(*this, buf, len); }
  Io Write(const uint8_t* buf, uint32_t len) { return ops_->write(*this, buf, len); }
  Io SpliceIn(int pipe_w, uint32_t len) { return ops_->splice_in(*this, pipe_w, len); }
  Io SpliceInResult(int res) { return ops_->splice_in_result(*this, res); }
  Io SpliceOut(int pipe_r, uint32_t len) { return ops_->splice_out(*this, pipe_r, len); }
  Io SpliceOutResult(int res) { return ops_->splice_out_result(*this, res); }
  void ShutdownWrite() { ops_->shutdown_write(*this); }
  bool splices_in() const { return ops_->splices_in; }
  bool splices_out() const { return ops_->splices_out; }
  const char* name() const { return ops_->name; }

  int fd() const { return fd_.get(); }
  bool valid() const { return fd_.valid(); }
  SSL* ssl() const { return ssl_.get(); }
  void* context() const { return context_; }
  // Closes the descriptor and frees the SSL: a transport that does nothing.
  void Close();

  // For the implementations: which table serves this transport, and the SSL it owns.
  void set_ops(const TransportOps* ops) { ops_ = ops; }
  void set_ssl(UniqueSsl ssl) { ssl_ = std::move(ssl); }
  bool reading_hello = false;  // TLS: OpenSSL still reads the read hello from memory, not the socket
  // TLS with kTLS after a threshold: how far this connection is from it.
  struct KtlsWait {
    uint64_t bytes_left = 0;
    int64_t due_ms = 0;
    bool due = false;            // reached: moves at the first point OpenSSL holds no bytes
    bool by_time = false;        // reached by --ktls-after rather than by bytes
    bool write_blocked = false;  // OpenSSL holds part of a record it could not send yet
  };
  KtlsWait ktls_wait;
  // Something the connection's counters should hear (kTLS engaged later); kCount: nothing.
  Counter news = Counter::kCount;

 private:
  const TransportOps* ops_;
  Fd fd_;
  UniqueSsl ssl_;
  void* context_ = nullptr;
};

// --- terminated TLS (transport/tls.cc) --------------------------------------

// Starts the server side of a handshake on `t` (plain so far) with `ctx`. `read_hello` holds bytes
// already read from the socket: OpenSSL takes them first, and they must stay valid until a step says
// `hello_used_up`. False when OpenSSL cannot start one.
bool BeginTlsHandshake(Transport& t, SSL_CTX* ctx, std::span<const uint8_t> read_hello);

struct HandshakeStep {
  enum Status : uint8_t { kDone, kWait, kFailed };
  Status status = kFailed;
  short events = 0;            // kWait: what to poll for
  bool hello_used_up = false;  // the read hello is consumed: its buffer may go
};
// Runs the handshake as far as the socket allows.
HandshakeStep StepTlsHandshake(Transport& t);

// What FinishTlsHandshake put in the kernel.
struct TlsOffload {
  bool tx = false;               // the kernel encrypts toward the client
  bool rx = false;               // the kernel decrypts the client's records
  bool tls13_rx_failed = false;  // TLS 1.3 receive keys could not be handed to the kernel
  bool later = false;            // userspace TLS until the kTLS threshold
};
// After the handshake: `t` becomes the TLS transport for the relay, with record crypto in the
// kernel where it took the keys (kTLS; the directions it covers splice) and in OpenSSL otherwise.
// With `later.bytes` > 0 the connection starts in OpenSSL and moves itself to kTLS at the
// threshold (its `news` says how that went; the relay then splices).
TlsOffload FinishTlsHandshake(Transport& t, KtlsThreshold later);

// The size a userspace TLS read (and a copy relay buffer) takes at once.
inline constexpr uint32_t kTlsReadSize = 64 * 1024;

}  // namespace cvmgate
