// Terminated TLS as a transport: the server side of the handshake on a non-blocking socket, then
// record crypto in the kernel (kTLS) for the directions it took, in OpenSSL for the others.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

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

// --- userspace TX: the records of one relay write leave in one send(2) -----------------------
//
// OpenSSL writes each record to its BIO as it seals it, and a socket BIO makes that one send per
// 16 KiB record. After the handshake, a userspace-TX connection writes to this BIO instead: the
// records gather in the worker's scratch buffer and go out together. What the socket does not take
// waits in the connection's own buffer (the only per-connection memory, and only while the client
// reads slower than the instance writes).

struct Gathered {
  int fd;
  std::string unsent;     // ciphertext the socket did not take yet
  uint32_t accepted = 0;  // plaintext bytes those records carry, reported once they are sent
};

// Room for a relay buffer's worth of records (64 KiB of plaintext: 4 records and their overhead).
constexpr size_t kScratchSize = kTlsReadSize + 4 * 512;
thread_local uint8_t scratch[kScratchSize];
thread_local size_t scratch_len = 0;
thread_local Gathered* gathering = nullptr;  // the connection whose SslWrite fills the scratch now

// Sends what `g` still holds, then the scratch; false on a socket error. Whatever the socket does
// not take stays in g.unsent. The scratch is empty afterwards in every case: it is this
// connection's only until this call returns.
bool SendGathered(Gathered& g) {
  const size_t gathered = std::exchange(scratch_len, 0);
  if (!g.unsent.empty()) {
    ssize_t n = send(g.fd, g.unsent.data(), g.unsent.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (n > 0) g.unsent.erase(0, static_cast<size_t>(n));
  }
  if (gathered == 0) return true;
  size_t sent = 0;
  if (g.unsent.empty()) {
    ssize_t n = send(g.fd, scratch, gathered, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (n > 0) sent = static_cast<size_t>(n);
  }
  g.unsent.append(reinterpret_cast<const char*>(scratch) + sent, gathered - sent);
  if (g.unsent.empty()) g.unsent.shrink_to_fit();
  return true;
}

int GatherWrite(BIO* bio, const char* data, int len) {
  auto* g = static_cast<Gathered*>(BIO_get_data(bio));
  if (scratch_len + static_cast<size_t>(len) > kScratchSize && !SendGathered(*g)) return -1;
  if (scratch_len + static_cast<size_t>(len) > kScratchSize) {  // larger than the scratch: straight on
    g->unsent.append(data, static_cast<size_t>(len));
    return len;
  }
  std::memcpy(scratch + scratch_len, data, static_cast<size_t>(len));
  scratch_len += static_cast<size_t>(len);
  // A record written outside SslWrite (an alert while reading) goes out at once, as a socket BIO's.
  if (gathering != g && !SendGathered(*g)) return -1;
  return len;
}

long GatherCtrl(BIO* bio, int cmd, long, void*) {
  auto* g = static_cast<Gathered*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH: return SendGathered(*g) ? 1 : 0;  // an alert, close_notify: out now, best effort
    case BIO_CTRL_WPENDING: return static_cast<long>(g->unsent.size() + scratch_len);
    default: return 0;
  }
}

int GatherDestroy(BIO* bio) {
  delete static_cast<Gathered*>(BIO_get_data(bio));
  BIO_set_data(bio, nullptr);
  return 1;
}

int GatherType() {
  static const int type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK;
  return type;
}

const BIO_METHOD* GatherMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(GatherType(), "cvmgate gathered records");
    BIO_meth_set_write(m, GatherWrite);
    BIO_meth_set_ctrl(m, GatherCtrl);
    BIO_meth_set_destroy(m, GatherDestroy);
    return m;
  }();
  return method;
}

// Userspace TX from here on: OpenSSL writes its records to a gathering BIO.
bool GatherRecords(Transport& t) {
  BIO* bio = BIO_new(GatherMethod());
  if (bio == nullptr) return false;
  BIO_set_data(bio, new Gathered{t.fd(), {}, 0});
  BIO_set_init(bio, 1);
  SSL_set0_wbio(t.ssl(), bio);  // drops the write side's reference to the socket BIO
  return true;
}

Gathered* GatheredOf(SSL* ssl) {
  BIO* wbio = SSL_get_wbio(ssl);
  return BIO_method_type(wbio) == GatherType() ? static_cast<Gathered*>(BIO_get_data(wbio)) : nullptr;
}

// Seals as much of `buf` as a relay buffer holds, one record per SSL_write, then sends the records
// at once. When the socket takes only part, the plaintext counts as written once the rest is out:
// until then the relay hears "wait" and offers the same bytes again.
Io SslWrite(Transport& t, const uint8_t* buf, uint32_t len) {
  SSL* ssl = t.ssl();
  Gathered* g = GatheredOf(ssl);
  if (g != nullptr && !g->unsent.empty()) {
    if (!SendGathered(*g)) return Io::Error();
    if (!g->unsent.empty()) return Io::Wait(POLLOUT);
    if (g->accepted > 0) return Io::Bytes(std::exchange(g->accepted, 0));
  }
  size_t total = 0;
  ERR_clear_error();
  gathering = g;
  while (total < len) {
    int n = SSL_write(ssl, buf + total, static_cast<int>(len - total));
    if (n <= 0) {
      int e = SSL_get_error(ssl, n);
      ERR_clear_error();
      if (total > 0) break;  // what was sealed goes out; the next call meets the condition again
      gathering = nullptr;
      if (g != nullptr && !SendGathered(*g)) return Io::Error();  // leaves the scratch empty
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return Io::Wait(WantEvents(e));
      return Io::Error();
    }
    total += static_cast<size_t>(n);
    // A socket BIO sent the record already; the scratch takes records while one more fits.
    if (g == nullptr || scratch_len + SSL3_RT_MAX_PLAIN_LENGTH + 512 > kScratchSize) break;
  }
  gathering = nullptr;
  if (g != nullptr) {
    if (!SendGathered(*g)) return Io::Error();
    if (!g->unsent.empty()) {
      g->accepted = static_cast<uint32_t>(total);
      return Io::Wait(POLLOUT);
    }
  }
  return Io::Bytes(total);
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

// Userspace RX: read ahead into a buffer as large as a relay buffer, so one recv brings several
// records and a read decrypts them all before one send to the instance (read_ahead stays off during
// the handshake, where kTLS needs OpenSSL to hold no bytes beyond the last record).
void ReadAhead(SSL* ssl) {
  SSL_set_default_read_buffer_len(ssl, kTlsReadSize);
  SSL_set_read_ahead(ssl, 1);
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
    ReadAhead(ssl);
    t.set_ops(&kTlsThenKtlsOps);
    GatherRecords(t);
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
  if (!k.rx) ReadAhead(ssl);
  t.set_ops(rx_raw ? (k.tx ? &kKtlsOps : &kKtlsRxOps) : (k.tx ? &kKtlsTxOps : &kTlsOps));
  if (!k.tx) GatherRecords(t);
  return k;
}

}  // namespace cvmgate
