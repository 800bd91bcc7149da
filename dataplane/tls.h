// TLS termination contexts: per base domain, the wildcard certificate and the ALPN policy of each mode.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "control/config.h"

namespace cvmgate {

// Immutable once built; SSL_CTX is safe to share between worker threads for SSL_new().
class TlsContexts {
 public:
  // `base_domains` in --base-domain order; a domain without a certificate has
  // no contexts and its default/g names are refused (closed_no_certificate).
  static absl::StatusOr<std::shared_ptr<const TlsContexts>> Load(const std::vector<std::string>& base_domains,
                                                                 const std::vector<TlsCertSpec>& certs);
  ~TlsContexts();

  // The context for base domain `index`: `h2` selects the gRPC one (ALPN h2 only),
  // otherwise ALPN http/1.1 only. Null when that domain has no certificate.
  SSL_CTX* context(size_t index, bool h2) const;

 private:
  TlsContexts() = default;
  std::vector<SSL_CTX*> http_;
  std::vector<SSL_CTX*> h2_;
};

}  // namespace cvmgate
