// kTLS that cvmgate sets up itself where OpenSSL 3.0 does not: TLS 1.3 RX right after the handshake
// (OpenSSL offloads only TX for TLS 1.3), and both directions, TLS 1.2 and 1.3, of a connection
// that began in userspace TLS and reached the kTLS threshold (--ktls-after-bytes, --ktls-after).
// The keys are derived here (RFC 8446 7.1/7.3, RFC 5246 6.3) from what OpenSSL exposes: the traffic
// secrets through its keylog callback (TLS 1.3), the master secret and randoms (TLS 1.2). Each
// direction's record sequence number is counted through OpenSSL's message callback.
#pragma once

#include <openssl/ssl.h>

#include <absl/status/status.h>

namespace cvmgate {

// Makes `ctx` keep what kTLS set up here needs: each connection's CLIENT_TRAFFIC_SECRET_0 and,
// with `later` (kTLS engaged after a threshold), its SERVER_TRAFFIC_SECRET_0 and the number of
// records each direction carried.
void TrackKtlsKeys(SSL_CTX* ctx, bool later);

// Installs TLS_RX on `fd` for a finished TLS 1.3 handshake whose TX is already
// kTLS (so the "tls" ULP is set). Refuses when OpenSSL holds unread bytes:
// the kernel must see the stream from the first application record on (rec_seq 0).
absl::Status EnableTls13KtlsRx(SSL* ssl, int fd);

// The handshake is over: records are counted from here on (TrackKtlsKeys with `later`).
void StartCountingRecords(SSL* ssl);

// What EngageKtls did.
enum class Engaged {
  kBoth,    // the kernel encrypts and decrypts: OpenSSL is done with this connection
  kRxOnly,  // the kernel decrypts; OpenSSL still encrypts (TLS_TX was refused)
  kNotNow,  // OpenSSL holds bytes it read ahead: try again after the next read
  kNever,   // this connection stays in userspace (no "tls" ULP, cipher, rekeyed, ...)
};
// Hands a connection in userspace TLS to the kernel, RX first. The caller makes sure OpenSSL holds
// no unsent bytes. `why` says what went wrong for kNever.
Engaged EngageKtls(SSL* ssl, int fd, absl::Status* why);

// close_notify written through kTLS TX set up here (OpenSSL no longer has the keys' state).
void SendKernelCloseNotify(int fd);

// What a non-data record on a kTLS RX socket was.
enum class ControlRecord { kCloseNotify, kAlert, kKeyUpdate, kOther, kError };
// Reads the pending non-data record (after splice/recv refused it) with recvmsg.
ControlRecord ReadControlRecord(int fd);

}  // namespace cvmgate
