// TLS termination contexts: TLS 1.2/1.3 with modern AEAD suites, server preference, one ALPN protocol per mode.
#include "dataplane/tls.h"

#include <openssl/err.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <span>

#include <absl/strings/str_cat.h>
#include "dataplane/ktls.h"

namespace cvmgate {
namespace {

constexpr unsigned char kHttp11[] = "\x08http/1.1";
constexpr unsigned char kH2[] = "\x02h2";

std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  char buf[256] = "unknown error";
  if (e != 0) ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

// Offers exactly one protocol; a client that offers none of it gets no ALPN
// (it may still speak that protocol, e.g. curl without ALPN).
int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
               void* arg) {
  const unsigned char* ours = static_cast<const unsigned char*>(arg);
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, ours, ours[0] + 1, in, inlen) == OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

int TicketIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// RFC 5077-style tickets: AES-256-CBC + HMAC-SHA256, keyed by name.
int TicketCallback(SSL* ssl, unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac,
                   int encrypt) {
  auto* keys = static_cast<TicketKeys*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), TicketIndex()));
  if (keys == nullptr) return 0;
  TicketKeys::Key current, previous;
  bool has_previous = false;
  keys->Snapshot(current, previous, has_previous);
  const TicketKeys::Key* key = &current;
  int result = 1;
  if (encrypt) {
    std::memcpy(name, current.name, 16);
    if (RAND_bytes(iv, 16) != 1) return -1;
  } else if (std::memcmp(name, current.name, 16) != 0) {
    if (!has_previous || std::memcmp(name, previous.name, 16) != 0) return 0;  // unknown or expired: full handshake
    key = &previous;
    result = 2;  // valid, but issue a ticket under the current key
  }
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, const_cast<unsigned char*>(key->hmac), 32),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_end()};
  if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
  int ok = encrypt ? EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key->aes, iv)
                   : EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key->aes, iv);
  return ok == 1 ? result : -1;
}

// Loads one chain and key into `ctx`, in the slot of the key's type (ECDSA, RSA, ...): OpenSSL
// serves the one the client's signature algorithms take.
absl::Status UseCertificate(SSL_CTX* ctx, const TlsCertSpec& spec, std::vector<int>& key_types) {
  auto fail = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("certificate for ", spec.domain, ": ", what));
  };
  if (SSL_CTX_use_certificate_chain_file(ctx, spec.chain.c_str()) != 1) {
    return fail(absl::StrCat("cannot load the chain ", spec.chain, ": ", OpenSslError()));
  }
  X509* leaf = SSL_CTX_get0_certificate(ctx);
  const int type = leaf != nullptr ? EVP_PKEY_get_base_id(X509_get0_pubkey(leaf)) : EVP_PKEY_NONE;
  if (std::find(key_types.begin(), key_types.end(), type) != key_types.end()) {
    const char* name = type == EVP_PKEY_EC ? "ECDSA" : type == EVP_PKEY_RSA ? "RSA" : OBJ_nid2sn(type);
    return fail(absl::StrCat(spec.chain, ": a second ", name,
                             " certificate (one of each key type, e.g. an ECDSA and an RSA one)"));
  }
  key_types.push_back(type);
  FILE* f = std::fopen(spec.key.c_str(), "r");
  EVP_PKEY* pkey = f ? PEM_read_PrivateKey(f, nullptr, nullptr, nullptr) : nullptr;
  if (f) std::fclose(f);
  if (pkey == nullptr) {
    return fail(absl::StrCat("cannot load the key ", spec.key, ": ", f ? OpenSslError() : std::strerror(errno)));
  }
  bool matches = X509_check_private_key(leaf, pkey) == 1 && SSL_CTX_use_PrivateKey(ctx, pkey) == 1;
  EVP_PKEY_free(pkey);
  if (!matches) {
    ERR_clear_error();
    return fail(absl::StrCat(spec.key, " does not match ", spec.chain));
  }
  if (leaf != nullptr && X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
    return fail(absl::StrCat(spec.chain, " has expired"));
  }
  return absl::OkStatus();
}

// A context for one base domain with every certificate given for it.
absl::StatusOr<SSL_CTX*> MakeContext(std::span<const TlsCertSpec> specs, const unsigned char* alpn,
                                     TicketKeys* tickets, const TlsPolicy& policy) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", OpenSslError()));
  SSL_CTX_set_min_proto_version(ctx, policy.min_version);
  // A client that closes without close_notify ends its direction like a FIN
  // (SSL_ERROR_ZERO_RETURN) instead of failing the relay.
  // SSL_OP_ENABLE_KTLS: where the kernel has kTLS, OpenSSL 3.0 hands the
  // socket's TX (TLS 1.2 and 1.3) and RX (TLS 1.2 only) crypto to it after the
  // handshake; elsewhere it silently stays in userspace (the relay counts which). With a kTLS
  // threshold the connection starts in userspace and cvmgate installs kTLS itself later.
  const bool at_handshake = policy.offload() && !policy.offload_later();
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_IGNORE_UNEXPECTED_EOF | (at_handshake ? SSL_OP_ENABLE_KTLS : 0));
  // By default forward-secret AEAD suites only.
  if (SSL_CTX_set_cipher_list(ctx, policy.ciphers.c_str()) != 1) {
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("--tls-ciphers=", policy.ciphers, ": no usable cipher"));
  }
  if (SSL_CTX_set_ciphersuites(ctx, policy.ciphersuites.c_str()) != 1) {
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-ciphersuites=", policy.ciphersuites, ": no usable TLS 1.3 suite"));
  }
  // The relay writes from a buffer that may move and accepts partial progress. The chain sent is
  // the chain file's, as it is: OpenSSL does not try to build one from its store per handshake.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
  SSL_CTX_set_read_ahead(ctx, 0);
  std::vector<int> key_types;
  for (const TlsCertSpec& spec : specs) {
    if (absl::Status s = UseCertificate(ctx, spec, key_types); !s.ok()) {
      SSL_CTX_free(ctx);
      return s;
    }
  }
  SSL_CTX_set_alpn_select_cb(ctx, SelectAlpn, const_cast<unsigned char*>(alpn));
  if (policy.offload()) TrackKtlsKeys(ctx, policy.offload_later());  // kTLS set up by cvmgate (dataplane/ktls.cc)
  if (tickets != nullptr) {
    SSL_CTX_set_ex_data(ctx, TicketIndex(), tickets);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, TicketCallback);
  }
  // Resumption is stateless (tickets): no per-session cache to share between workers. One TLS 1.3
  // ticket per handshake, not OpenSSL's two: each costs a session copy, its encoding and
  // encryption, and a record of its own; a client resumes with one.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 1);
  return ctx;
}

}  // namespace

TicketKeys::TicketKeys() { Rotate(); }

void TicketKeys::Rotate() {
  Key fresh;
  RAND_bytes(fresh.name, sizeof(fresh.name));
  RAND_bytes(fresh.aes, sizeof(fresh.aes));
  RAND_bytes(fresh.hmac, sizeof(fresh.hmac));
  std::lock_guard lock(mu_);
  if (rotations_ > 0) {
    previous_ = current_;
    has_previous_ = true;
  }
  current_ = fresh;
  ++rotations_;
}

uint64_t TicketKeys::rotations() const {
  std::lock_guard lock(mu_);
  return rotations_;
}

void TicketKeys::Snapshot(Key& current, Key& previous, bool& has_previous) const {
  std::lock_guard lock(mu_);
  current = current_;
  previous = previous_;
  has_previous = has_previous_;
}

absl::StatusOr<std::shared_ptr<const TlsContexts>> TlsContexts::Load(const std::vector<std::string>& base_domains,
                                                                     const std::vector<TlsCertSpec>& certs,
                                                                     TicketKeys* tickets, const TlsPolicy& policy) {
  auto out = std::shared_ptr<TlsContexts>(new TlsContexts());
  out->http_.assign(base_domains.size(), nullptr);
  out->h2_.assign(base_domains.size(), nullptr);
  // Every certificate of a domain goes into its one context (one per key type).
  std::vector<std::vector<TlsCertSpec>> per_domain(base_domains.size());
  for (const TlsCertSpec& spec : certs) {
    auto it = std::find(base_domains.begin(), base_domains.end(), spec.domain);
    if (it == base_domains.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("certificate for ", spec.domain, ": not one of the --base-domain values"));
    }
    per_domain[it - base_domains.begin()].push_back(spec);
  }
  for (size_t index = 0; index < base_domains.size(); ++index) {
    if (per_domain[index].empty()) continue;
    auto http = MakeContext(per_domain[index], kHttp11, tickets, policy);
    if (!http.ok()) return http.status();
    out->http_[index] = *http;
    auto h2 = MakeContext(per_domain[index], kH2, tickets, policy);
    if (!h2.ok()) return h2.status();
    out->h2_[index] = *h2;
  }
  return std::shared_ptr<const TlsContexts>(std::move(out));
}

TlsContexts::~TlsContexts() {
  for (SSL_CTX* c : http_) SSL_CTX_free(c);
  for (SSL_CTX* c : h2_) SSL_CTX_free(c);
}

SSL_CTX* TlsContexts::context(size_t index, bool h2) const {
  if (index >= http_.size()) return nullptr;
  return h2 ? h2_[index] : http_[index];
}

}  // namespace cvmgate
