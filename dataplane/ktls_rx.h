// TLS 1.3 kTLS RX set by cvmgate: OpenSSL 3.0 offloads only TX for TLS 1.3, so the receive key is
// derived here from the client's traffic secret and handed to the kernel.
#pragma once

#include <openssl/ssl.h>

#include <absl/status/status.h>

namespace cvmgate {

// Makes `ctx` remember each connection's CLIENT_TRAFFIC_SECRET_0 (keylog callback).
void CaptureClientTrafficSecret(SSL_CTX* ctx);

// Installs TLS_RX on `fd` for a finished TLS 1.3 handshake whose TX is already
// kTLS (so the "tls" ULP is set). Refuses when OpenSSL holds unread bytes:
// the kernel must see the stream from the first application record on (rec_seq 0).
absl::Status EnableTls13KtlsRx(SSL* ssl, int fd);

// What a non-data record on a kTLS RX socket was.
enum class ControlRecord { kCloseNotify, kAlert, kKeyUpdate, kOther, kError };
// Reads the pending non-data record (after splice/recv refused it) with recvmsg.
ControlRecord ReadControlRecord(int fd);

}  // namespace cvmgate
