// The routing decision: from a host name and the route snapshot to refuse, passthrough or terminate.
//
// It is pure: it reads the snapshot and changes nothing (the app's connection slot is taken by the
// caller). The worker asks it once a ClientHello is complete, the admin API's explain asks it about
// the routes as they stand, and a connection whose TLS handshake outlived its snapshot asks its second
// half, Route(), again at connect.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/counters.h"
#include "dataplane/host_name.h"
#include "dataplane/routes.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace cvmgate {

// What a decision reads besides the name.
struct RouteInputs {
  const RouteSnapshot& snapshot;
  const std::vector<std::string>& base_domains;
  std::span<const sockaddr_storage> listeners;  // the gateway's own: never a connection's target
};

struct Decision {
  enum class Verdict : uint8_t { kRefuse, kPassthrough, kTerminate };
  Verdict verdict = Verdict::kRefuse;
  Counter refusal = Counter::closed_bad_name;  // when refused: the counter the connection closes with
  NameResult name;                             // the parsed host name (its status says why a bad name was refused)
  RouteSnapshot::Lookup found;                 // the candidates (once the name is good)
  SSL_CTX* context = nullptr;                  // terminate: the base domain's context, ALPN by mode
  bool refused() const { return verdict == Verdict::kRefuse; }
};

Decision Decide(std::string_view host, const RouteInputs& in);

// The route half of Decide: why `found` (the snapshot's answer for an id) has no instance to
// connect to at `port`, or nothing when it has one.
std::optional<Counter> Route(const RouteInputs& in, const RouteSnapshot::Lookup& found, uint16_t port);

// An instance may be picked for `port`: it serves the port, and the address is not the gateway's own listener.
bool Usable(const Instance& inst, uint16_t port, std::span<const sockaddr_storage> listeners);

// How many of `found`'s healthy instances may be picked for `port` (what explain reports).
size_t CountUsable(const RouteInputs& in, const RouteSnapshot::Lookup& found, uint16_t port);

}  // namespace cvmgate
