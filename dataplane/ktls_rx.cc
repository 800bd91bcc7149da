// TLS 1.3 kTLS RX: HKDF-Expand-Label from the traffic secret, TLS_RX, and reading non-data records.
#include "dataplane/ktls_rx.h"

#include <linux/tls.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <absl/strings/str_cat.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

namespace cvmgate {
namespace {

constexpr char kClientSecretLabel[] = "CLIENT_TRAFFIC_SECRET_0 ";
constexpr uint8_t kRecordAlert = 21;
constexpr uint8_t kRecordHandshake = 22;
constexpr uint8_t kHandshakeKeyUpdate = 24;

struct Secret {
  unsigned char bytes[48];
  size_t len = 0;
};

void FreeSecret(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  if (ptr == nullptr) return;
  OPENSSL_cleanse(ptr, sizeof(Secret));
  delete static_cast<Secret*>(ptr);
}

int SecretIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeSecret);
  return index;
}

int Hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void OnKeylog(const SSL* ssl, const char* line) {
  if (std::strncmp(line, kClientSecretLabel, sizeof(kClientSecretLabel) - 1) != 0) return;
  const char* hex = std::strchr(line + sizeof(kClientSecretLabel) - 1, ' ');  // skip the client random
  if (hex == nullptr) return;
  ++hex;
  auto* secret = new Secret();
  while (secret->len < sizeof(secret->bytes) && hex[0] && hex[1]) {
    int hi = Hex(hex[0]), lo = Hex(hex[1]);
    if (hi < 0 || lo < 0) break;
    secret->bytes[secret->len++] = static_cast<unsigned char>(hi << 4 | lo);
    hex += 2;
  }
  SSL* mutable_ssl = const_cast<SSL*>(ssl);
  FreeSecret(nullptr, SSL_get_ex_data(mutable_ssl, SecretIndex()), nullptr, 0, 0, nullptr);
  SSL_set_ex_data(mutable_ssl, SecretIndex(), secret);
}

// RFC 8446 7.1: HKDF-Expand-Label(secret, label, "", length).
bool ExpandLabel(const char* digest, const Secret& secret, const char* label, unsigned char* out, size_t len) {
  std::string info;
  info += static_cast<char>(len >> 8);
  info += static_cast<char>(len & 0xff);
  std::string full = std::string("tls13 ") + label;
  info += static_cast<char>(full.size());
  info += full;
  info += '\0';  // empty context
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (kdf == nullptr) return false;
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (kctx == nullptr) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<unsigned char*>(secret.bytes), secret.len),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end()};
  bool ok = EVP_KDF_derive(kctx, out, len, params) == 1;
  EVP_KDF_CTX_free(kctx);
  return ok;
}

template <typename Info>
absl::Status Install(int fd, uint16_t cipher_type, const unsigned char* key, const unsigned char* iv12) {
  Info info{};
  info.info.version = TLS_1_3_VERSION;
  info.info.cipher_type = cipher_type;
  std::memcpy(info.key, key, sizeof(info.key));
  // GCM: 4-byte salt + 8-byte explicit IV; ChaCha20-Poly1305: the whole 12-byte IV, no salt.
  std::memcpy(info.salt, iv12, sizeof(info.salt));
  std::memcpy(info.iv, iv12 + sizeof(info.salt), sizeof(info.iv));
  // rec_seq stays 0: no application record was read under this key.
  int rc = setsockopt(fd, SOL_TLS, TLS_RX, &info, sizeof(info));
  OPENSSL_cleanse(&info, sizeof(info));
  if (rc != 0) return absl::InternalError(absl::StrCat("setsockopt(TLS_RX): ", std::strerror(errno)));
  return absl::OkStatus();
}

}  // namespace

void CaptureClientTrafficSecret(SSL_CTX* ctx) {
  SecretIndex();
  SSL_CTX_set_keylog_callback(ctx, OnKeylog);
}

absl::Status EnableTls13KtlsRx(SSL* ssl, int fd) {
  if (SSL_version(ssl) != TLS1_3_VERSION) return absl::FailedPreconditionError("not TLS 1.3");
  if (SSL_has_pending(ssl)) return absl::FailedPreconditionError("OpenSSL holds unread bytes");
  auto* secret = static_cast<Secret*>(SSL_get_ex_data(ssl, SecretIndex()));
  if (secret == nullptr || secret->len == 0) return absl::FailedPreconditionError("no client traffic secret");
  uint16_t id = SSL_CIPHER_get_id(SSL_get_current_cipher(ssl)) & 0xffff;
  unsigned char key[32];
  unsigned char iv[12];
  absl::Status st;
  switch (id) {
    case 0x1301:  // TLS_AES_128_GCM_SHA256
      if (!ExpandLabel("SHA256", *secret, "key", key, 16) || !ExpandLabel("SHA256", *secret, "iv", iv, 12)) {
        return absl::InternalError("HKDF-Expand-Label failed");
      }
      st = Install<tls12_crypto_info_aes_gcm_128>(fd, TLS_CIPHER_AES_GCM_128, key, iv);
      break;
    case 0x1302:  // TLS_AES_256_GCM_SHA384
      if (!ExpandLabel("SHA384", *secret, "key", key, 32) || !ExpandLabel("SHA384", *secret, "iv", iv, 12)) {
        return absl::InternalError("HKDF-Expand-Label failed");
      }
      st = Install<tls12_crypto_info_aes_gcm_256>(fd, TLS_CIPHER_AES_GCM_256, key, iv);
      break;
    case 0x1303:  // TLS_CHACHA20_POLY1305_SHA256
      if (!ExpandLabel("SHA256", *secret, "key", key, 32) || !ExpandLabel("SHA256", *secret, "iv", iv, 12)) {
        return absl::InternalError("HKDF-Expand-Label failed");
      }
      st = Install<tls12_crypto_info_chacha20_poly1305>(fd, TLS_CIPHER_CHACHA20_POLY1305, key, iv);
      break;
    default:
      return absl::FailedPreconditionError("cipher suite without kTLS support");
  }
  OPENSSL_cleanse(key, sizeof(key));
  OPENSSL_cleanse(iv, sizeof(iv));
  return st;
}

ControlRecord ReadControlRecord(int fd) {
  unsigned char data[16384 + 256];
  char control[CMSG_SPACE(sizeof(unsigned char))];
  iovec iov{data, sizeof(data)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
  if (n < 0) return ControlRecord::kError;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (c == nullptr || c->cmsg_level != SOL_TLS || c->cmsg_type != TLS_GET_RECORD_TYPE) return ControlRecord::kError;
  unsigned char type = *CMSG_DATA(c);
  if (type == kRecordAlert) {
    return n >= 2 && data[1] == 0 ? ControlRecord::kCloseNotify : ControlRecord::kAlert;
  }
  if (type == kRecordHandshake && n >= 1 && data[0] == kHandshakeKeyUpdate) return ControlRecord::kKeyUpdate;
  return ControlRecord::kOther;
}

}  // namespace cvmgate
