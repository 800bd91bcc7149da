// TLS termination contexts: per base domain, the wildcard certificate and the ALPN policy of each mode.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <absl/status/statusor.h>
#include "dataplane/options.h"

namespace cvmgate {

// Session-ticket keys shared by every context: the current key encrypts new
// tickets, the previous one still decrypts (and the ticket is renewed), older
// ones are gone, so a stolen ticket key opens at most two rotation periods.
// Rotate() runs on the control thread, the callback on workers: a mutex guards
// the few bytes, held only to copy them.
class TicketKeys {
 public:
  TicketKeys();
  void Rotate();
  uint64_t rotations() const;

  struct Key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
  };
  // Copies the current key (and the previous one, if any) under the lock.
  void Snapshot(Key& current, Key& previous, bool& has_previous) const;

 private:
  mutable std::mutex mu_;
  Key current_;
  Key previous_;
  bool has_previous_ = false;
  uint64_t rotations_ = 0;
};

// Immutable once built; SSL_CTX is safe to share between worker threads for SSL_new().
class TlsContexts {
 public:
  // `base_domains` in --base-domain order; a domain without a certificate has
  // no contexts and its default/g names are refused (closed_no_certificate).
  // Every context encrypts session tickets with `tickets` (which must outlive them).
  static absl::StatusOr<std::shared_ptr<const TlsContexts>> Load(const std::vector<std::string>& base_domains,
                                                                 const std::vector<TlsCertSpec>& certs,
                                                                 TicketKeys* tickets = nullptr,
                                                                 const TlsPolicy& policy = TlsPolicy());
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
