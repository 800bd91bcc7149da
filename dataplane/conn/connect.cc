// The connect phase: a healthy instance not yet tried, picked at random; another one after a failure.
#include <cstring>

#include <absl/hash/hash.h>

#include "dataplane/addresses.h"
#include "dataplane/conn/phases.h"

namespace cvmgate {

bool TakeAppSlot(Conn& c, const RouteSnapshot::Lookup& found) {
  if (c.app_live != nullptr || found.app_live == nullptr) return true;
  if (found.app_live->fetch_add(1, std::memory_order_relaxed) >= found.app_max_connections) {
    found.app_live->fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  c.app_live = found.app_live;
  return true;
}

Step BeginConnect(ConnEnv& env, Conn& c) {
  RouteSnapshot::Lookup found = env.snap->Find(c.id);
  if (c.tries == 0) {
    // The snapshot may have changed since the decision (a handshake outlives a turn).
    if (std::optional<Counter> refusal = Route(env.Inputs(), found, c.port)) return Step::Close(*refusal);
  }
  if (!TakeAppSlot(c, found)) return Step::Close(Counter::closed_app_limit);
  c.proxy_protocol = found.proxy_protocol;
  const RouteSnapshot& snap = *env.snap;
  int64_t pick = PickInstance(
      found.healthy,
      [&](uint32_t i) {
        const Instance& inst = snap.instances()[i];
        if (found.restricted && !Usable(inst, c.port, env.listeners)) return false;
        if (c.tries == 0) return true;
        uint64_t h = absl::Hash<std::string_view>{}(inst.id);
        for (uint8_t t = 0; t < c.tries; ++t) {
          if (c.tried[t] == h) return false;
        }
        return true;
      },
      env.rng);
  if (pick < 0) return Step::Close(Counter::closed_connect_failed);
  const Instance& inst = snap.instances()[pick];
  c.tried[c.tries++] = absl::Hash<std::string_view>{}(inst.id);
  std::memcpy(&c.target, &inst.addr, inst.addr_len);
  c.target_len = inst.addr_len;
  SetSockaddrPort(c.target, c.port);
  env.counters.Add(Counter::connect_attempts);
  c.instance = env.open_instance(c.target.ss_family);
  if (!c.instance.valid()) {
    env.counters.Add(Counter::connect_failed);
    return Step::Close(Counter::closed_connect_failed);
  }
  c.connect_timed_out = false;
  env.ring.Connect(env.TagOf(c, Op::kConnect), c.instance.fd(), &c.target, c.target_len);
  ++c.inflight;
  return Step::Stay();
}

Step OnConnect(ConnEnv& env, Conn& c, int res) {
  if (res == 0 && !c.connect_timed_out) return Step::To(Phase::kRelay);
  env.counters.Add(c.connect_timed_out ? Counter::connect_timeout : Counter::connect_failed);
  c.instance.Close();
  if (c.tries < env.options.connect_tries && !env.draining) return Step::To(Phase::kConnect);
  return Step::Close(Counter::closed_connect_failed);
}

Step OnConnectTimeout(ConnEnv& env, Conn& c) {
  // The connect completes with -ECANCELED, and OnConnect tries the next instance.
  c.connect_timed_out = true;
  env.ring.CancelFd(c.instance.fd());
  return Step::Stay();
}

}  // namespace cvmgate
