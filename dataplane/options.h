// What the data plane is told: where to listen, the TLS material and policy, and each worker's limits
// and timers (durations in milliseconds). The daemon fills these from its flags (control/config.h);
// nothing here knows about flags.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cvmgate {

enum class SpliceMode : uint8_t {
  kInline,  // wait for readiness with io_uring poll, then splice(SPLICE_F_NONBLOCK) inline
  kUring,   // wait for readiness with io_uring poll, then IORING_OP_SPLICE
  kCopy,    // recv/send through a userspace buffer (no splice)
};
std::string_view SpliceModeName(SpliceMode mode);

// How a worker's ring hands it completions (the kernel's "task work").
enum class RingTaskRun : uint8_t {
  kAuto,   // the first of the three below this kernel takes
  kDefer,  // single issuer, deferred to the worker's own wait (IORING_SETUP_DEFER_TASKRUN, Linux 6.1)
  kCoop,   // cooperative: no interrupt of the running worker (IORING_SETUP_COOP_TASKRUN, Linux 5.19)
  kOff,    // the kernel's default: completions interrupt the worker as they come
};
std::string_view RingTaskRunName(RingTaskRun mode);

struct ListenAddress {
  std::string text;
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
};

struct TlsCertSpec {
  std::string domain;  // a base domain
  std::string chain;   // PEM: the certificate, then its chain
  std::string key;     // PEM private key
};

// When a terminated connection moves from userspace TLS to kTLS: once it has relayed `bytes` (both
// directions together) or lived `ms`, whichever comes first, checked as its bytes move. bytes 0:
// at the handshake (OpenSSL installs it).
struct KtlsThreshold {
  uint64_t bytes = 128 * 1024;
  int64_t ms = 2'000;
  bool operator==(const KtlsThreshold&) const = default;
};

// What terminated clients may negotiate (OpenSSL syntax for the lists).
struct TlsPolicy {
  int min_version = 0x0303;  // TLS1_2_VERSION; 0x0304 for TLS 1.3 only
  std::string ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20";  // TLS 1.2
  std::string ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
  bool ktls = true;        // offload record crypto to the kernel where it can (--ktls)
  bool kernel_tls = true;  // the start-up probe found kTLS; false skips even trying
  KtlsThreshold ktls_after;  // --ktls-after-bytes, --ktls-after
  bool offload() const { return ktls && kernel_tls; }
  // Connections start in userspace TLS and move to kTLS at the threshold (else at the handshake).
  bool offload_later() const { return offload() && ktls_after.bytes > 0; }
};

// The access log (access_log.h): where, in which format, and how many records each worker may queue
// before it drops them.
enum class AccessLogFormat : uint8_t { kLogfmt, kJson };
struct AccessLogOptions {
  std::string target = "off";  // "off", "stderr" or a file path
  AccessLogFormat format = AccessLogFormat::kLogfmt;
  uint32_t queue_records = 4096;
  bool enabled() const { return target != "off"; }
  bool operator==(const AccessLogOptions&) const = default;
};

// One worker's settings. The defaults are the daemon's flag defaults (a unit test holds them equal).
struct WorkerOptions {
  std::vector<std::string> base_domains;  // normalised: lowercase, no trailing dot
  int backlog = 4096;
  uint32_t hello_max_bytes = 65536;
  int64_t hello_timeout_ms = 5'000;
  int64_t handshake_timeout_ms = 5'000;
  int64_t connect_timeout_ms = 5'000;
  int connect_tries = 3;
  int64_t idle_timeout_ms = 600'000;
  int64_t drain_timeout_ms = 30'000;
  SpliceMode splice_mode = SpliceMode::kInline;
  RingTaskRun ring_taskrun = RingTaskRun::kAuto;
  bool rebalance = true;  // a worker holding more connections than another hands new ones to it
  uint32_t pipe_size = 1 << 20;       // a fast flow's pipe; 0 keeps 64 KiB
  uint32_t backend_rcvbuf = 1 << 20;  // SO_RCVBUF of connections to instances; 0: the kernel's autotuning
  bool ktls = true;                   // kTLS was asked for (false: counted as ktls_fallback_disabled)
  KtlsThreshold ktls_after;           // kTLS after a threshold; bytes 0: none (at the handshake, or never)
  bool operator==(const WorkerOptions&) const = default;
};

// The timeouts a re-read config file may change while connections run: written by the control
// thread, read by the worker as it sets each deadline.
struct LiveTimeouts {
  explicit LiveTimeouts(const WorkerOptions& o) { Set(o); }
  void Set(const WorkerOptions& o) {
    hello_ms.store(o.hello_timeout_ms, std::memory_order_relaxed);
    handshake_ms.store(o.handshake_timeout_ms, std::memory_order_relaxed);
    connect_ms.store(o.connect_timeout_ms, std::memory_order_relaxed);
    idle_ms.store(o.idle_timeout_ms, std::memory_order_relaxed);
  }
  std::atomic<int64_t> hello_ms;
  std::atomic<int64_t> handshake_ms;
  std::atomic<int64_t> connect_ms;
  std::atomic<int64_t> idle_ms;
};

}  // namespace cvmgate
