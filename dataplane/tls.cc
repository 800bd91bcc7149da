// TLS termination contexts: TLS 1.2/1.3 with modern AEAD suites, server preference, one ALPN protocol per mode.
#include "dataplane/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "absl/strings/str_cat.h"

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

absl::StatusOr<SSL_CTX*> MakeContext(const TlsCertSpec& spec, const unsigned char* alpn) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", OpenSslError()));
  auto fail = [&](const std::string& what) {
    SSL_CTX_free(ctx);
    return absl::InvalidArgumentError(absl::StrCat("certificate for ", spec.domain, ": ", what));
  };
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // A client that closes without close_notify ends its direction like a FIN
  // (SSL_ERROR_ZERO_RETURN) instead of failing the relay.
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_IGNORE_UNEXPECTED_EOF);
  // Forward-secret AEAD suites only.
  SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
  SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  // The relay writes from a buffer that may move and accepts partial progress.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_read_ahead(ctx, 0);
  if (SSL_CTX_use_certificate_chain_file(ctx, spec.chain.c_str()) != 1) {
    return fail(absl::StrCat("cannot load the chain ", spec.chain, ": ", OpenSslError()));
  }
  X509* leaf = SSL_CTX_get0_certificate(ctx);
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
  SSL_CTX_set_alpn_select_cb(ctx, SelectAlpn, const_cast<unsigned char*>(alpn));
  return ctx;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TlsContexts>> TlsContexts::Load(const std::vector<std::string>& base_domains,
                                                                     const std::vector<TlsCertSpec>& certs) {
  auto out = std::shared_ptr<TlsContexts>(new TlsContexts());
  out->http_.assign(base_domains.size(), nullptr);
  out->h2_.assign(base_domains.size(), nullptr);
  for (const TlsCertSpec& spec : certs) {
    size_t index = base_domains.size();
    for (size_t i = 0; i < base_domains.size(); ++i) {
      if (base_domains[i] == spec.domain) index = i;
    }
    if (index == base_domains.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("certificate for ", spec.domain, ": not one of the --base-domain values"));
    }
    auto http = MakeContext(spec, kHttp11);
    if (!http.ok()) return http.status();
    out->http_[index] = *http;
    auto h2 = MakeContext(spec, kH2);
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
