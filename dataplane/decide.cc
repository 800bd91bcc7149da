// The routing decision (see decide.h).
#include "dataplane/decide.h"

#include "dataplane/addresses.h"
#include "dataplane/tls.h"

namespace cvmgate {
namespace {

Counter NameCounter(NameStatus s) {
  switch (s) {
    case NameStatus::kUnknownDomain: return Counter::closed_unknown_domain;
    case NameStatus::kBadPort: return Counter::closed_bad_port;
    default: return Counter::closed_bad_name;
  }
}

}  // namespace

bool Usable(const Instance& inst, uint16_t port, std::span<const sockaddr_storage> listeners) {
  if (!inst.Serves(port)) return false;
  sockaddr_storage target = inst.addr;
  SetSockaddrPort(target, port);
  return !IsOwnListener(target, inst.local, listeners);
}

std::optional<Counter> Route(const RouteInputs& in, const RouteSnapshot::Lookup& found, uint16_t port) {
  if (found.healthy.empty()) return found.known ? Counter::closed_no_healthy_instance : Counter::closed_unknown_app;
  if (!found.restricted) return std::nullopt;
  bool served = false;
  for (uint32_t i : found.healthy) {
    const Instance& inst = in.snapshot.instances()[i];
    if (Usable(inst, port, in.listeners)) return std::nullopt;
    served = served || inst.Serves(port);
  }
  return served ? Counter::closed_own_listener : Counter::closed_port_not_served;
}

size_t CountUsable(const RouteInputs& in, const RouteSnapshot::Lookup& found, uint16_t port) {
  if (!found.restricted) return found.healthy.size();
  size_t n = 0;
  for (uint32_t i : found.healthy) n += Usable(in.snapshot.instances()[i], port, in.listeners);
  return n;
}

Decision Decide(std::string_view host, const RouteInputs& in) {
  Decision d;
  d.name = ParseHostName(host, in.base_domains);
  if (d.name.status != NameStatus::kOk) {
    d.refusal = NameCounter(d.name.status);
    return d;
  }
  const RouteTarget& target = d.name.target;
  if (target.mode != Mode::kPassthrough) {
    const TlsContexts* tls = in.snapshot.tls();
    d.context = tls ? tls->context(target.base_domain, target.mode == Mode::kGrpc) : nullptr;
    if (d.context == nullptr) {
      d.refusal = Counter::closed_no_certificate;
      return d;
    }
  }
  d.found = in.snapshot.Find(target.id);
  if (std::optional<Counter> refusal = Route(in, d.found, target.port)) {
    d.refusal = *refusal;
    return d;
  }
  d.verdict = target.mode == Mode::kPassthrough ? Decision::Verdict::kPassthrough : Decision::Verdict::kTerminate;
  return d;
}

}  // namespace cvmgate
