// A connection's life, one slot of a worker's table. Everything below runs on the worker's thread.
//
//   accept --> hello --+--> handshake --+--> connect --> relay --> closing --> free
//                      |   (terminate)  |     ^   |
//                      +----------------+     +---+  another instance, up to --connect-tries
//                        (passthrough)
//   any phase --(refused, failed, timed out, cut by the drain)--> closing
//
// hello      The ClientHello is peeked (MSG_PEEK) until the parser has the server name; one that
//            still is not whole after four peeks is read instead, and replayed later. The routing
//            decision (decide.h) refuses the name, or sends it on to passthrough or terminate; the
//            app's connection slot is taken here.
// handshake  TLS ends here: OpenSSL on the non-blocking socket, fed the read hello first; kTLS once
//            the keys are known, where the kernel has it.
// connect    A healthy instance not yet tried is picked at random, each within --connect-timeout.
// relay      Both directions through the relay engine (relay/relay.h) until both ended (a half-close
//            passed on) or one failed; --idle-timeout without a byte ends it.
// closing    Ring operations still in flight are cancelled; the slot is freed when the last completes.
//
// Every phase change goes through one transition function (Connections::Apply); the phase handlers
// (conn/phases.h) answer a Step: stay, go to a phase, or close with a reason.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "dataplane/client_hello.h"
#include "dataplane/host_name.h"
#include "dataplane/relay/relay.h"
#include "dataplane/transport/transport.h"

namespace cvmgate {

enum class Phase : uint8_t { kFree, kHello, kHandshake, kConnect, kRelay, kClosing };
const char* PhaseName(Phase phase);

// The ClientHello as it arrives.
struct HelloState {
  std::unique_ptr<uint8_t[]> buf;  // the peek buffer; or the hello read from the socket, until replayed
  uint32_t cap = 0;
  uint32_t len = 0;      // bytes read (not peeked) into `buf`: they go to the instance or OpenSSL first
  uint8_t peeks = 0;
  bool read = false;     // it arrived in so many pieces that it is read, not peeked
  bool lowat_set = false;
  bool rdhup = false;    // the client already closed its side
  HelloParser parser;    // resumes where the last pass stopped
};

struct Conn {
  uint32_t slot = 0;  // its index in the table: with `gen`, what names its ring operations
  uint32_t gen = 0;
  Phase phase = Phase::kFree;
  Mode mode = Mode::kPassthrough;  // from the decision
  uint32_t inflight = 0;           // ring operations not yet completed
  Transport client;
  Transport instance;
  HelloState hello;
  std::string id;  // the app or instance the name routes to
  uint16_t port = 0;
  std::atomic<int32_t>* app_live = nullptr;  // the app slot this connection holds
  bool proxy_protocol = false;               // the app wants a PROXY v2 header first
  bool connect_timed_out = false;
  uint8_t tries = 0;
  uint64_t tried[16] = {};  // instances tried, by id hash (indexes do not survive a reload)
  sockaddr_storage target{};
  socklen_t target_len = 0;
  Relay relay;
  // For the access log and the time histograms (monotonic clock).
  int64_t accepted_ns = 0;
  int64_t phase_ns = 0;      // when the handshake began, then when the first connect began
  int64_t handshake_us = -1;
  int64_t connect_us = -1;
  sockaddr_in6 peer{};       // the client's address (access log on)
  uint16_t tls_version = 0;  // the handshake's, kept: a move to kTLS frees the SSL (access log on)
  const char* cipher = nullptr;
  std::string sni;           // the server name as sent (access log on)
  int64_t deadline_ms = 0;
  int64_t timer_ms = 0;  // the deadline of this connection's live timer entry, 0 if none
  uint32_t next_free = 0;
};

// What a phase handler decided.
struct Step {
  enum Kind : uint8_t { kStay, kNext, kClose };
  Kind kind = kStay;
  Phase next = Phase::kFree;
  Counter reason = Counter::relay_done;
  static Step Stay() { return {}; }
  static Step To(Phase p) { return {kNext, p, Counter::relay_done}; }
  static Step Close(Counter reason) { return {kClose, Phase::kClosing, reason}; }
};

}  // namespace cvmgate
