// The phase handlers of a connection (see connection.h): each answers a Step, and only the table's
// transition function acts on it.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <span>

#include <absl/random/random.h>

#include "dataplane/access_log.h"
#include "dataplane/conn/connection.h"
#include "dataplane/decide.h"
#include "dataplane/options.h"
#include "dataplane/ring.h"
#include "dataplane/routes.h"

namespace cvmgate {

// What connections run with: the worker's ring, options, counters and relay engine, and this
// turn's route snapshot and clock.
struct ConnEnv {
  Ring& ring;
  const WorkerOptions& options;
  WorkerCounters& counters;
  RelayEngine& relay;
  std::span<const sockaddr_storage> listeners;  // the gateway's own: never an instance's address
  // A non-blocking stream socket toward an instance of address family `family`; an invalid
  // transport when none can be made.
  std::function<Transport(int family)> open_instance;
  absl::InsecureBitGen rng{};
  WorkerHistograms* histograms = nullptr;  // null: not measured (tests)
  AccessLog* access_log = nullptr;         // null: --access-log off
  AccessLogQueue* access_queue = nullptr;  // this worker's queue in `access_log`
  const LiveTimeouts* timeouts = nullptr;  // null: the options' (tests)

  int64_t idle_timeout_ms() const {
    return timeouts != nullptr ? timeouts->idle_ms.load(std::memory_order_relaxed) : options.idle_timeout_ms;
  }
  const RouteSnapshot* snap = nullptr;  // this turn's; valid only while the worker handles it
  int64_t now_ms = 0;
  bool draining = false;

  RouteInputs Inputs() const { return {*snap, options.base_domains, listeners}; }
  Tag TagOf(const Conn& c, Op op) const { return {op, c.slot, c.gen}; }
};

// hello (conn/hello.cc)
Step BeginHello(ConnEnv& env, Conn& c);
Step OnHelloRecv(ConnEnv& env, Conn& c, int res);
Step OnHelloPoll(ConnEnv& env, Conn& c, int res);

// handshake (conn/handshake.cc)
Step BeginHandshake(ConnEnv& env, Conn& c);
Step OnHandshakePoll(ConnEnv& env, Conn& c, int res);

// connect (conn/connect.cc)
// Counts the connection against its app's limit, once; false when the app is full.
bool TakeAppSlot(Conn& c, const RouteSnapshot::Lookup& found);
Step BeginConnect(ConnEnv& env, Conn& c);
Step OnConnect(ConnEnv& env, Conn& c, int res);
Step OnConnectTimeout(ConnEnv& env, Conn& c);

// relay (conn/relay_phase.cc)
Step BeginRelay(ConnEnv& env, Conn& c);
// A relay poll or ring splice completed.
Step OnRelayEvent(ConnEnv& env, Conn& c, Op op, int res);
// Direction `d` comes off the run queue.
Step ResumeRelay(ConnEnv& env, Conn& c, int d);

}  // namespace cvmgate
