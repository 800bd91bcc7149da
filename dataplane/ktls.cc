// kTLS set up by cvmgate (see ktls.h): key derivation, TLS_RX/TLS_TX, and non-data records.
#include "dataplane/ktls.h"

#include <linux/tls.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/obj_mac.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <absl/strings/str_cat.h>

namespace cvmgate {
namespace {

constexpr char kClientSecretLabel[] = "CLIENT_TRAFFIC_SECRET_0 ";
constexpr char kServerSecretLabel[] = "SERVER_TRAFFIC_SECRET_0 ";
constexpr uint8_t kRecordAlert = 21;
constexpr uint8_t kRecordHandshake = 22;
constexpr uint8_t kHandshakeNewSessionTicket = 4;
constexpr uint8_t kHandshakeKeyUpdate = 24;

struct Secret {
  unsigned char bytes[48];
  size_t len = 0;
};

// Per connection, in the SSL's ex_data.
struct KtlsState {
  Secret client;  // CLIENT_TRAFFIC_SECRET_0 (TLS 1.3)
  Secret server;  // SERVER_TRAFFIC_SECRET_0 (TLS 1.3, kTLS after a threshold)
  uint32_t tickets_sent = 0;  // TLS 1.3 NewSessionTickets: records under the first application key
  bool counting = false;      // the handshake is over: records[] are sequence numbers
  bool rekeyed = false;       // a handshake message after the handshake: the keys may have changed
  uint64_t records[2] = {0, 0};  // [0] read from the client, [1] written to it
};

void FreeState(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  if (ptr == nullptr) return;
  OPENSSL_cleanse(ptr, sizeof(KtlsState));
  delete static_cast<KtlsState*>(ptr);
}

int StateIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeState);
  return index;
}

KtlsState* StateOf(const SSL* ssl) { return static_cast<KtlsState*>(SSL_get_ex_data(ssl, StateIndex())); }

KtlsState& MakeState(const SSL* ssl) {
  KtlsState* s = StateOf(ssl);
  if (s == nullptr) {
    s = new KtlsState();
    SSL_set_ex_data(const_cast<SSL*>(ssl), StateIndex(), s);
  }
  return *s;
}

int Hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<label> <client random hex> <secret hex>" -> the secret.
void ParseSecret(const char* line, size_t label_len, Secret& secret) {
  const char* hex = std::strchr(line + label_len, ' ');  // skip the client random
  if (hex == nullptr) return;
  ++hex;
  secret.len = 0;
  while (secret.len < sizeof(secret.bytes) && hex[0] && hex[1]) {
    int hi = Hex(hex[0]), lo = Hex(hex[1]);
    if (hi < 0 || lo < 0) break;
    secret.bytes[secret.len++] = static_cast<unsigned char>(hi << 4 | lo);
    hex += 2;
  }
}

void OnKeylogClient(const SSL* ssl, const char* line) {
  if (std::strncmp(line, kClientSecretLabel, sizeof(kClientSecretLabel) - 1) != 0) return;
  ParseSecret(line, sizeof(kClientSecretLabel) - 1, MakeState(ssl).client);
}

void OnKeylogBoth(const SSL* ssl, const char* line) {
  if (std::strncmp(line, kServerSecretLabel, sizeof(kServerSecretLabel) - 1) == 0) {
    ParseSecret(line, sizeof(kServerSecretLabel) - 1, MakeState(ssl).server);
  } else {
    OnKeylogClient(ssl, line);
  }
}

// Every record header (SSL3_RT_HEADER) and every handshake message passes here, both directions.
void OnMessage(int write_p, int, int content_type, const void* buf, size_t len, SSL* ssl, void*) {
  if (content_type == SSL3_RT_HEADER) {
    KtlsState* s = StateOf(ssl);
    if (s != nullptr && s->counting) ++s->records[write_p ? 1 : 0];
    return;
  }
  if (content_type != SSL3_RT_HANDSHAKE || len == 0) return;
  KtlsState& s = MakeState(ssl);
  if (s.counting) {
    s.rekeyed = true;  // KeyUpdate (the only one a TLS 1.3 client may send), or anything else
  } else if (write_p && static_cast<const uint8_t*>(buf)[0] == kHandshakeNewSessionTicket) {
    ++s.tickets_sent;
  }
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

// RFC 5246 5: PRF(secret, label, seed) with the suite's digest (TLS 1.2).
bool Prf(const char* digest, const unsigned char* secret, size_t secret_len, const std::string& seed,
         unsigned char* out, size_t len) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "TLS1-PRF", nullptr);
  if (kdf == nullptr) return false;
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (kctx == nullptr) return false;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, const_cast<unsigned char*>(secret), secret_len),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, const_cast<char*>(seed.data()), seed.size()),
      OSSL_PARAM_construct_end()};
  bool ok = EVP_KDF_derive(kctx, out, len, params) == 1;
  EVP_KDF_CTX_free(kctx);
  return ok;
}

// A suite as the kernel knows it.
struct Suite {
  uint16_t cipher_type = 0;  // TLS_CIPHER_*
  size_t key_len = 0;
  size_t fixed_iv_len = 0;  // TLS 1.2: the implicit IV part of the key block (GCM 4, ChaCha20 12)
  const char* digest = nullptr;
};

bool SuiteOf(SSL* ssl, Suite& s) {
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
  if (cipher == nullptr) return false;
  switch (SSL_CIPHER_get_cipher_nid(cipher)) {
    case NID_aes_128_gcm: s = {TLS_CIPHER_AES_GCM_128, 16, 4, nullptr}; break;
    case NID_aes_256_gcm: s = {TLS_CIPHER_AES_GCM_256, 32, 4, nullptr}; break;
    case NID_chacha20_poly1305: s = {TLS_CIPHER_CHACHA20_POLY1305, 32, 12, nullptr}; break;
    default: return false;
  }
  const EVP_MD* md = SSL_CIPHER_get_handshake_digest(cipher);
  if (md == nullptr) return false;
  s.digest = EVP_MD_get0_name(md);
  return s.digest != nullptr;
}

// One direction's keys: the key, and the 12 bytes the kernel's salt and iv are cut from.
struct DirectionKeys {
  unsigned char key[32];
  unsigned char nonce[12];
  ~DirectionKeys() { OPENSSL_cleanse(this, sizeof(*this)); }
};

void PutSequence(uint64_t seq, unsigned char out[8]) {
  for (int i = 7; i >= 0; --i, seq >>= 8) out[i] = static_cast<unsigned char>(seq & 0xff);
}

bool Tls13Keys(const Suite& suite, const Secret& secret, DirectionKeys& out) {
  return secret.len > 0 && ExpandLabel(suite.digest, secret, "key", out.key, suite.key_len) &&
         ExpandLabel(suite.digest, secret, "iv", out.nonce, 12);
}

// RFC 5246 6.3: key_block = client key | server key | client IV | server IV (AEAD: no MAC keys).
bool Tls12Keys(SSL* ssl, const Suite& suite, const uint64_t records[2], DirectionKeys& rx, DirectionKeys& tx) {
  unsigned char master[SSL_MAX_MASTER_KEY_LENGTH];
  size_t master_len = SSL_SESSION_get_master_key(SSL_get_session(ssl), master, sizeof(master));
  std::string seed = "key expansion";
  unsigned char random[SSL3_RANDOM_SIZE];
  SSL_get_server_random(ssl, random, sizeof(random));
  seed.append(reinterpret_cast<char*>(random), sizeof(random));
  SSL_get_client_random(ssl, random, sizeof(random));
  seed.append(reinterpret_cast<char*>(random), sizeof(random));
  unsigned char block[2 * 32 + 2 * 12];
  const size_t need = 2 * suite.key_len + 2 * suite.fixed_iv_len;
  bool ok = master_len > 0 && Prf(suite.digest, master, master_len, seed, block, need);
  OPENSSL_cleanse(master, sizeof(master));
  if (ok) {
    std::memcpy(rx.key, block, suite.key_len);
    std::memcpy(tx.key, block + suite.key_len, suite.key_len);
    std::memcpy(rx.nonce, block + 2 * suite.key_len, suite.fixed_iv_len);
    std::memcpy(tx.nonce, block + 2 * suite.key_len + suite.fixed_iv_len, suite.fixed_iv_len);
    if (suite.fixed_iv_len == 4) {
      // GCM: the explicit nonce each record carries starts at the record's sequence number (RFC
      // 5288 3) and the kernel counts it up from there; OpenSSL's own started at a random value.
      PutSequence(records[0], rx.nonce + 4);
      PutSequence(records[1], tx.nonce + 4);
    }
  }
  OPENSSL_cleanse(block, sizeof(block));
  return ok;
}

template <typename Info>
absl::Status InstallAs(int fd, int direction, int version, uint16_t cipher_type, const DirectionKeys& keys,
                       uint64_t seq) {
  Info info{};
  info.info.version = static_cast<uint16_t>(version);
  info.info.cipher_type = cipher_type;
  std::memcpy(info.key, keys.key, sizeof(info.key));
  // GCM: 4-byte salt + 8-byte IV; ChaCha20-Poly1305: the whole 12-byte IV, no salt.
  std::memcpy(info.salt, keys.nonce, sizeof(info.salt));
  std::memcpy(info.iv, keys.nonce + sizeof(info.salt), sizeof(info.iv));
  PutSequence(seq, info.rec_seq);
  int rc = setsockopt(fd, SOL_TLS, direction, &info, sizeof(info));
  OPENSSL_cleanse(&info, sizeof(info));
  if (rc != 0) {
    return absl::InternalError(absl::StrCat(direction == TLS_RX ? "setsockopt(TLS_RX): " : "setsockopt(TLS_TX): ",
                                            std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status Install(int fd, int direction, int version, const Suite& suite, const DirectionKeys& keys,
                     uint64_t seq) {
  switch (suite.cipher_type) {
    case TLS_CIPHER_AES_GCM_128:
      return InstallAs<tls12_crypto_info_aes_gcm_128>(fd, direction, version, suite.cipher_type, keys, seq);
    case TLS_CIPHER_AES_GCM_256:
      return InstallAs<tls12_crypto_info_aes_gcm_256>(fd, direction, version, suite.cipher_type, keys, seq);
    default:
      return InstallAs<tls12_crypto_info_chacha20_poly1305>(fd, direction, version, suite.cipher_type, keys, seq);
  }
}

// One TLS record through a kTLS socket: its bytes, and room for the SOL_TLS control message that
// carries its type (TLS_SET_RECORD_TYPE out, TLS_GET_RECORD_TYPE in).
struct RecordMessage {
  RecordMessage(void* data, size_t len) : iov{data, len} {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  RecordMessage(const RecordMessage&) = delete;  // msg points into this object
  RecordMessage& operator=(const RecordMessage&) = delete;
  char control[CMSG_SPACE(sizeof(unsigned char))] = {};
  iovec iov;
  msghdr msg{};
};

}  // namespace

void TrackKtlsKeys(SSL_CTX* ctx, bool later) {
  StateIndex();
  SSL_CTX_set_keylog_callback(ctx, later ? OnKeylogBoth : OnKeylogClient);
  if (later) SSL_CTX_set_msg_callback(ctx, OnMessage);
}

absl::Status EnableTls13KtlsRx(SSL* ssl, int fd) {
  if (SSL_version(ssl) != TLS1_3_VERSION) return absl::FailedPreconditionError("not TLS 1.3");
  if (SSL_has_pending(ssl)) return absl::FailedPreconditionError("OpenSSL holds unread bytes");
  KtlsState* state = StateOf(ssl);
  if (state == nullptr || state->client.len == 0) return absl::FailedPreconditionError("no client traffic secret");
  Suite suite;
  if (!SuiteOf(ssl, suite)) return absl::FailedPreconditionError("cipher suite without kTLS support");
  DirectionKeys rx;
  if (!Tls13Keys(suite, state->client, rx)) return absl::InternalError("HKDF-Expand-Label failed");
  // rec_seq 0: no application record was read under this key.
  return Install(fd, TLS_RX, TLS_1_3_VERSION, suite, rx, 0);
}

void StartCountingRecords(SSL* ssl) {
  KtlsState& s = MakeState(ssl);
  s.counting = true;
  if (SSL_version(ssl) == TLS1_3_VERSION) {
    // Nothing was read under the client's application key yet (no read-ahead in the handshake);
    // the server wrote its tickets under its own.
    s.records[0] = 0;
    s.records[1] = s.tickets_sent;
  } else {
    // TLS 1.2: each side's Finished is the first record under the new keys.
    s.records[0] = 1;
    s.records[1] = 1;
  }
}

Engaged EngageKtls(SSL* ssl, int fd, absl::Status* why) {
  auto never = [why](absl::Status s) {
    *why = std::move(s);
    return Engaged::kNever;
  };
  KtlsState* state = StateOf(ssl);
  if (state == nullptr || !state->counting) return never(absl::FailedPreconditionError("records were not counted"));
  if (state->rekeyed) return never(absl::FailedPreconditionError("a handshake message after the handshake"));
  if (SSL_has_pending(ssl)) return Engaged::kNotNow;
  Suite suite;
  if (!SuiteOf(ssl, suite)) return never(absl::FailedPreconditionError("cipher suite without kTLS support"));
  const int version = SSL_version(ssl);
  DirectionKeys rx, tx;
  bool keys = false;
  if (version == TLS1_3_VERSION) {
    keys = Tls13Keys(suite, state->client, rx) && Tls13Keys(suite, state->server, tx);
  } else if (version == TLS1_2_VERSION) {
    keys = Tls12Keys(ssl, suite, state->records, rx, tx);
  }
  if (!keys) return never(absl::InternalError("the traffic keys could not be derived"));
  if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) {
    return never(absl::UnavailableError(absl::StrCat("TCP_ULP \"tls\": ", std::strerror(errno))));
  }
  // RX first: if the kernel refuses it nothing has changed for OpenSSL.
  const int kversion = version == TLS1_3_VERSION ? TLS_1_3_VERSION : TLS_1_2_VERSION;
  if (absl::Status s = Install(fd, TLS_RX, kversion, suite, rx, state->records[0]); !s.ok()) return never(s);
  if (absl::Status s = Install(fd, TLS_TX, kversion, suite, tx, state->records[1]); !s.ok()) {
    *why = s;
    return Engaged::kRxOnly;
  }
  return Engaged::kBoth;
}

void SendKernelCloseNotify(int fd) {
  unsigned char alert[2] = {1, 0};  // warning, close_notify
  RecordMessage m(alert, sizeof(alert));
  cmsghdr* c = CMSG_FIRSTHDR(&m.msg);
  c->cmsg_level = SOL_TLS;
  c->cmsg_type = TLS_SET_RECORD_TYPE;
  c->cmsg_len = CMSG_LEN(sizeof(unsigned char));
  *CMSG_DATA(c) = kRecordAlert;
  (void)sendmsg(fd, &m.msg, MSG_DONTWAIT | MSG_NOSIGNAL);  // best effort, as SSL_shutdown's is
}

ControlRecord ReadControlRecord(int fd) {
  unsigned char data[16384 + 256];
  RecordMessage m(data, sizeof(data));
  ssize_t n = recvmsg(fd, &m.msg, MSG_DONTWAIT);
  if (n < 0) return ControlRecord::kError;
  cmsghdr* c = CMSG_FIRSTHDR(&m.msg);
  if (c == nullptr || c->cmsg_level != SOL_TLS || c->cmsg_type != TLS_GET_RECORD_TYPE) return ControlRecord::kError;
  unsigned char type = *CMSG_DATA(c);
  if (type == kRecordAlert) {
    return n >= 2 && data[1] == 0 ? ControlRecord::kCloseNotify : ControlRecord::kAlert;
  }
  if (type == kRecordHandshake && n >= 1 && data[0] == kHandshakeKeyUpdate) return ControlRecord::kKeyUpdate;
  return ControlRecord::kOther;
}

}  // namespace cvmgate
