// Terminated TLS as a transport: the server side of the handshake on a non-blocking socket, then
// record crypto in the kernel (kTLS) for the directions it took, in OpenSSL for the others.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

#include "dataplane/clock.h"
#include "dataplane/ktls.h"
#include "dataplane/transport/plain.h"
#include "dataplane/transport/transport.h"

namespace cvmgate {
namespace {

short WantEvents(int ssl_error) { return ssl_error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT; }

// Userspace reads: SSL_read returns one record at a time, so the records already read ahead are
// taken too, without another syscall, and the instance gets one send.
Io SslRead(Transport& t, uint8_t* buf, uint32_t len) {
  ERR_clear_error();
  int n = SSL_read(t.ssl(), buf, static_cast<int>(len));
  if (n > 0) {
    size_t total = static_cast<size_t>(n);
    while (total < len && SSL_has_pending(t.ssl())) {
      int more = SSL_read(t.ssl(), buf + total, static_cast<int>(len - total));
      if (more <= 0) {
        ERR_clear_error();  // the next call sees the same condition and reports it
        break;
      }
      total += static_cast<size_t>(more);
    }
    return Io::Bytes(total);
  }
  int e = SSL_get_error(t.ssl(), n);
  ERR_clear_error();
  if (e == SSL_ERROR_ZERO_RETURN) return Io::End();  // close_notify (or, ignored, a bare FIN)
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return Io::Wait(WantEvents(e));
  return Io::Error();
}

Io SslWrite(Transport& t, const uint8_t* buf, uint32_t len) {
  ERR_clear_error();
  int n = SSL_write(t.ssl(), buf, static_cast<int>(len));
  if (n > 0) return Io::Bytes(static_cast<size_t>(n));
  int e = SSL_get_error(t.ssl(), n);
  ERR_clear_error();
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return Io::Wait(WantEvents(e));
  return Io::Error();
}

// A non-data record stopped a read on a kTLS RX socket: the client's close_notify ends the stream,
// anything else ends the connection.
Io ControlRecord(Transport& t) {
  switch (ReadControlRecord(t.fd())) {
    case ControlRecord::kCloseNotify: return Io::End();
    case ControlRecord::kAlert: return Io::Error(Counter::closed_tls_alert);
    case ControlRecord::kKeyUpdate: return Io::Error(Counter::closed_tls_keyupdate);
    default: return Io::Error();
  }
}

// kTLS RX: the socket yields plaintext; recv reports a non-data record with EIO.
Io KtlsRead(Transport& t, uint8_t* buf, uint32_t len) {
  for (;;) {
    ssize_t n = recv(t.fd(), buf, len, MSG_DONTWAIT);
    if (n > 0) return Io::Bytes(static_cast<size_t>(n));
    if (n == 0) return Io::End();
    if (errno == EINTR) continue;
    if (errno == EIO) return ControlRecord(t);
    if (errno == EAGAIN) return Io::Wait(POLLIN);
    return Io::Error();
  }
}

// splice stops at a non-data record with EINVAL or EIO.
Io KtlsSpliceInResult(Transport& t, int res) {
  if (res == -EINVAL || res == -EIO) return ControlRecord(t);
  return PlainSpliceInResult(t, res);
}

Io KtlsSpliceIn(Transport& t, int pipe_w, uint32_t len) { return PlainSpliceIn(t, pipe_w, len); }

// The backend finished: the client gets close_notify (through the kernel with kTLS TX) before the FIN.
void TlsShutdownWrite(Transport& t) {
  ERR_clear_error();
  SSL_shutdown(t.ssl());
  ERR_clear_error();
  PlainShutdownWrite(t);
}

// kTLS TX set up by cvmgate: OpenSSL no longer encrypts, so the kernel writes the close_notify.
void KernelShutdownWrite(Transport& t) {
  SendKernelCloseNotify(t.fd());
  PlainShutdownWrite(t);
}

void MoveToKtls(Transport& t);

// Userspace TLS until the threshold: the bytes each call moves count toward it.
void Progress(Transport& t, size_t n) {
  Transport::KtlsWait& w = t.ktls_wait;
  if (!w.due) {
    w.bytes_left = n >= w.bytes_left ? 0 : w.bytes_left - n;
    if (w.bytes_left > 0 && MonotonicMs() < w.due_ms) return;
    w.due = true;
    w.by_time = w.bytes_left > 0;
    // From here on OpenSSL stops reading at the end of a record, where the kernel can take over.
    SSL_set_read_ahead(t.ssl(), 0);
  }
  if (!w.write_blocked) MoveToKtls(t);
}

Io SslReadThenKtls(Transport& t, uint8_t* buf, uint32_t len) {
  Io io = SslRead(t, buf, len);
  if (io.status == Io::kBytes) Progress(t, io.bytes);
  return io;
}

Io SslWriteThenKtls(Transport& t, const uint8_t* buf, uint32_t len) {
  Io io = SslWrite(t, buf, len);
  t.ktls_wait.write_blocked = io.status == Io::kWouldBlock;
  if (io.status == Io::kBytes) Progress(t, io.bytes);
  return io;
}

// One table for each split of the record crypto between OpenSSL and the kernel.
const TransportOps kTlsOps = {"tls",          SslRead,         SslWrite,          UnsupportedSplice, UnsupportedResult,
                              UnsupportedSplice, UnsupportedResult, TlsShutdownWrite, false, false};
const TransportOps kKtlsTxOps = {"ktls-tx",       SslRead,         PlainWrite,           UnsupportedSplice,
                                 UnsupportedResult, PlainSpliceOut, PlainSpliceOutResult, TlsShutdownWrite,
                                 false,             true};
const TransportOps kKtlsRxOps = {"ktls-rx",      KtlsRead,          SslWrite,          KtlsSpliceIn, KtlsSpliceInResult,
                                 UnsupportedSplice, UnsupportedResult, TlsShutdownWrite, true,         false};
const TransportOps kKtlsOps = {"ktls",         KtlsRead,       PlainWrite,           KtlsSpliceIn, KtlsSpliceInResult,
                               PlainSpliceOut, PlainSpliceOutResult, TlsShutdownWrite, true,         true};
// Userspace until the threshold, then the kernel both ways with keys cvmgate installed (no SSL left).
const TransportOps kTlsThenKtlsOps = {"tls-then-ktls",   SslReadThenKtls,   SslWriteThenKtls,
                                      UnsupportedSplice, UnsupportedResult, UnsupportedSplice,
                                      UnsupportedResult, TlsShutdownWrite,  false,
                                      false};
const TransportOps kKtlsLaterOps = {"ktls-later",   KtlsRead,       PlainWrite,           KtlsSpliceIn, KtlsSpliceInResult,
                                    PlainSpliceOut, PlainSpliceOutResult, KernelShutdownWrite, true,     true};

// The threshold is reached and OpenSSL holds no unsent bytes: the kernel takes the connection once
// OpenSSL holds no unread ones either.
void MoveToKtls(Transport& t) {
  absl::Status why;
  switch (EngageKtls(t.ssl(), t.fd(), &why)) {
    case Engaged::kNotNow: return;
    case Engaged::kBoth:
      t.set_ops(&kKtlsLaterOps);
      t.set_ssl(nullptr);  // its buffers and state are no longer needed
      t.news = t.ktls_wait.by_time ? Counter::ktls_later_time : Counter::ktls_later_bytes;
      return;
    case Engaged::kRxOnly:
      t.set_ops(&kKtlsRxOps);
      t.news = Counter::ktls_later_rx_only;
      return;
    case Engaged::kNever:
      t.set_ops(&kTlsOps);
      t.news = Counter::ktls_later_failed;
      return;
  }
}

}  // namespace

bool BeginTlsHandshake(Transport& t, SSL_CTX* ctx, std::span<const uint8_t> read_hello) {
  // SSL_new takes its own reference on the context, so a certificate reload never pulls it from
  // under a live connection.
  UniqueSsl ssl(SSL_new(ctx));
  if (!ssl || SSL_set_fd(ssl.get(), t.fd()) != 1) return false;
  if (!read_hello.empty()) {
    // The hello was read, not peeked: OpenSSL takes it from memory, then the socket (the step
    // that drains the memory swaps the BIO).
    BIO* read = BIO_new_mem_buf(read_hello.data(), static_cast<int>(read_hello.size()));
    if (read == nullptr) return false;
    BIO_set_mem_eof_return(read, -1);  // drained: "retry", not end of stream
    SSL_set0_rbio(ssl.get(), read);
    t.reading_hello = true;
  }
  SSL_set_accept_state(ssl.get());
  t.set_ssl(std::move(ssl));
  return true;
}

HandshakeStep StepTlsHandshake(Transport& t) {
  HandshakeStep step;
  for (;;) {
    ERR_clear_error();
    int r = SSL_do_handshake(t.ssl());
    if (r == 1) {
      step.status = HandshakeStep::kDone;
      return step;
    }
    int e = SSL_get_error(t.ssl(), r);
    if (e == SSL_ERROR_WANT_READ && t.reading_hello && BIO_ctrl_pending(SSL_get_rbio(t.ssl())) == 0) {
      // The read hello is used up: the rest of the stream is in the socket, and a socket BIO is
      // what kTLS needs.
      BIO* sock = BIO_new_socket(t.fd(), BIO_NOCLOSE);
      if (sock == nullptr) break;
      SSL_set0_rbio(t.ssl(), sock);
      t.reading_hello = false;
      step.hello_used_up = true;
      continue;
    }
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      step.status = HandshakeStep::kWait;
      step.events = WantEvents(e);
      return step;
    }
    break;
  }
  ERR_clear_error();
  step.status = HandshakeStep::kFailed;
  return step;
}

TlsOffload FinishTlsHandshake(Transport& t, KtlsThreshold later) {
  SSL* ssl = t.ssl();
  TlsOffload k;
  if (later.bytes > 0) {
    // Userspace TLS (read ahead, as below) until the threshold, then kTLS both ways.
    StartCountingRecords(ssl);
    t.ktls_wait = {later.bytes, MonotonicMs() + later.ms, false, false, false};
    SSL_set_default_read_buffer_len(ssl, kTlsReadSize);
    SSL_set_read_ahead(ssl, 1);
    t.set_ops(&kTlsThenKtlsOps);
    k.later = true;
    return k;
  }
  // With kTLS TX the kernel encrypts what is written to the client socket, so the
  // backend-to-client direction splices like passthrough; with kTLS RX the client's socket yields
  // plaintext and the other direction splices too, non-data records (close_notify, alerts,
  // KeyUpdate) being read with recvmsg.
  k.tx = BIO_get_ktls_send(SSL_get_wbio(ssl)) != 0;
  k.rx = BIO_get_ktls_recv(SSL_get_rbio(ssl)) != 0;
  bool rx_raw = false;
  if (k.tx && !k.rx && SSL_version(ssl) == TLS1_3_VERSION) {
    // OpenSSL 3.0 offloads TLS 1.3 TX only: cvmgate installs RX itself, and from then on reads
    // the client's socket directly (splice).
    rx_raw = k.rx = EnableTls13KtlsRx(ssl, t.fd()).ok();
    k.tls13_rx_failed = !k.rx;
  } else if (k.rx && !SSL_has_pending(ssl)) {
    // TLS 1.2 RX offloaded by OpenSSL, and nothing left in its buffers: the socket yields
    // plaintext, so this direction splices too.
    rx_raw = true;
  }
  if (!k.rx) {
    // Userspace RX: read ahead into a buffer as large as a relay buffer, so one recv brings
    // several records and a read decrypts them all before one send to the instance (read_ahead
    // stays off during the handshake, where kTLS needs OpenSSL to hold no bytes beyond the last
    // record).
    SSL_set_default_read_buffer_len(ssl, kTlsReadSize);
    SSL_set_read_ahead(ssl, 1);
  }
  t.set_ops(rx_raw ? (k.tx ? &kKtlsOps : &kKtlsRxOps) : (k.tx ? &kKtlsTxOps : &kTlsOps));
  return k;
}

}  // namespace cvmgate
