// Data-plane counters: one list, per-worker storage written by its worker only, summed on read.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>

namespace cvmgate {

// Every drop, fallback and error has a name here; the order is the print order.
#define CVMGATE_WORKER_COUNTERS(X)                                                        \
  X(accepted, "connections accepted")                                                     \
  X(accept_errors, "accept completions that failed (e.g. EMFILE)")                        \
  X(handed_off, "accepted connections handed to a worker holding fewer (--rebalance)")   \
  X(adopted, "connections taken from a worker holding more (--rebalance)")               \
  X(routed_passthrough, "connections relayed in passthrough mode")                        \
  X(routed_terminate, "connections whose TLS ended here, relayed as plaintext")           \
  X(routed_grpc, "g (gRPC, ALPN h2) connections whose TLS ended here")                    \
  X(closed_no_certificate, "default or g names under a domain without --tls-cert")        \
  X(closed_tls_handshake_failed, "TLS handshakes the client failed or aborted")           \
  X(closed_tls_handshake_timeout, "TLS handshakes not done within --handshake-timeout")   \
  X(relay_tls_userspace, "terminated relays encrypting in userspace (no kTLS TX)")       \
  X(ktls_tx, "terminated relays whose client-bound crypto runs in kernel TLS (spliced)")   \
  X(ktls_rx, "terminated relays whose client-side decryption runs in kernel TLS")          \
  X(ktls_fallback_no_kernel_tls, "kTLS not engaged: the kernel has no TLS (userspace TLS)") \
  X(ktls_fallback_tls13_rx, "TLS 1.3 RX could not be handed to the kernel (decrypted in userspace)") \
  X(closed_tls_alert, "kTLS relays closed by an alert from the client")                   \
  X(closed_tls_keyupdate, "kTLS relays closed on a TLS 1.3 KeyUpdate (the kernel cannot rekey)") \
  X(ktls_fallback_disabled, "kTLS not tried: --ktls off")                                  \
  X(ktls_later, "terminated relays started in userspace TLS, to move to kTLS at the threshold") \
  X(ktls_later_bytes, "relays moved to kTLS both ways on reaching --ktls-after-bytes")    \
  X(ktls_later_time, "relays moved to kTLS both ways on reaching --ktls-after")           \
  X(ktls_later_rx_only, "relays moved to kTLS for the client's records only (TLS_TX refused)") \
  X(ktls_later_failed, "relays that reached the threshold but stayed in userspace TLS")   \
  X(relay_spliced_after_ktls, "relay directions that went from copy to splice when kTLS took over") \
  X(closed_overload, "connections refused: --max-connections reached")                    \
  X(closed_hello_timeout, "no complete ClientHello within --hello-timeout")               \
  X(hello_read_not_peeked, "ClientHellos cut into so many pieces that they were read, then replayed") \
  X(closed_hello_peer_closed, "the client closed or reset before its ClientHello ended")   \
  X(closed_not_tls, "the first bytes are not a TLS handshake record")                     \
  X(closed_sslv2, "an SSLv2 ClientHello")                                                 \
  X(closed_hello_malformed, "a ClientHello with lengths or fields that do not add up")    \
  X(closed_not_client_hello, "a handshake record that is not a ClientHello")              \
  X(closed_no_sni, "a ClientHello without a server name")                                 \
  X(closed_hello_too_large, "a ClientHello over --hello-max-bytes")                       \
  X(closed_bad_name, "a server name outside the host-name grammar")                       \
  X(closed_bad_port, "a port suffix outside 1-65535")                                     \
  X(closed_unknown_domain, "a server name under no --base-domain")                        \
  X(closed_unknown_app, "no app or instance with that id")                                \
  X(closed_no_healthy_instance, "the app or pinned instance has no healthy instance")     \
  X(closed_app_limit, "the app already holds --app-max-connections connections")         \
  X(closed_port_not_served, "no static instance of the app or pinned instance serves that port") \
  X(closed_own_listener, "the only instances for that port are this gateway's own listeners") \
  X(connect_attempts, "connects started toward instances")                                \
  X(connect_failed, "connects that failed (each try counts)")                             \
  X(connect_timeout, "connects that hit --connect-timeout (each try counts)")             \
  X(closed_connect_failed, "connections closed after every try to connect failed")        \
  X(closed_idle_timeout, "relays closed after --idle-timeout without traffic")            \
  X(closed_relay_error, "relays closed on a socket error (reset, broken pipe)")           \
  X(closed_proxy_header_failed, "the PROXY v2 header could not be sent to the instance")  \
  X(closed_drain_timeout, "relays cut when --drain-timeout ran out")                      \
  X(relay_done, "relays that ended normally (both directions finished)")                  \
  X(relay_splice, "relays that moved their bytes with splice")                            \
  X(relay_copy, "relays that moved their bytes through a userspace buffer")               \
  X(splice_fallback_copy, "relay directions switched to copy because splice was refused") \
  X(pipe_create_failed, "pipes that could not be created (direction fell back to copy)")  \
  X(pipe_resize_failed, "pipes left at the default size: F_SETPIPE_SZ refused (fs.pipe-*)") \
  X(bytes_client_to_backend, "bytes relayed from clients to instances")                   \
  X(bytes_backend_to_client, "bytes relayed from instances to clients")                   \
  X(access_log_dropped, "access-log records dropped: the worker's queue to the log thread was full")

enum class Counter : uint16_t {
#define CVMGATE_COUNTER_ENUM(name, help) name,
  CVMGATE_WORKER_COUNTERS(CVMGATE_COUNTER_ENUM)
#undef CVMGATE_COUNTER_ENUM
      kCount
};

inline constexpr size_t kCounterCount = static_cast<size_t>(Counter::kCount);

struct CounterInfo {
  std::string_view name;
  std::string_view help;
};

inline constexpr std::array<CounterInfo, kCounterCount> kCounterInfo = {{
#define CVMGATE_COUNTER_INFO(name, help) {#name, help},
    CVMGATE_WORKER_COUNTERS(CVMGATE_COUNTER_INFO)
#undef CVMGATE_COUNTER_INFO
}};

// Written by one worker (plain load+store, no locked instruction); any thread may read.
class WorkerCounters {
 public:
  void Add(Counter c, uint64_t n = 1) {
    auto& v = values_[static_cast<size_t>(c)];
    v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  uint64_t Get(Counter c) const { return values_[static_cast<size_t>(c)].load(std::memory_order_relaxed); }

 private:
  std::array<std::atomic<uint64_t>, kCounterCount> values_{};
};

// Distributions of times, per worker as the counters: a count per bucket (not cumulative; summed
// and accumulated on read) and the sum, in microseconds.
enum class Histogram : uint8_t { kConnect, kHandshake, kDuration, kCount };
inline constexpr size_t kHistogramCount = static_cast<size_t>(Histogram::kCount);
inline constexpr size_t kMaxBuckets = 16;

struct HistogramInfo {
  std::string_view name;  // the metric's, without cvmgate_
  std::string_view help;
  std::array<int64_t, kMaxBuckets> upper_us;  // ascending; unused entries are 0 (+Inf follows the last)
  size_t buckets;
};

inline constexpr std::array<HistogramInfo, kHistogramCount> kHistogramInfo = {{
    {"connect_seconds", "time from the first connect to an instance until one succeeded",
     {100, 250, 500, 1'000, 2'500, 5'000, 10'000, 25'000, 50'000, 100'000, 250'000, 500'000, 1'000'000, 2'500'000,
      5'000'000, 10'000'000},
     16},
    {"handshake_seconds", "TLS handshakes at the gateway (terminate, g), from the ClientHello to done",
     {100, 250, 500, 1'000, 2'500, 5'000, 10'000, 25'000, 50'000, 100'000, 250'000, 500'000, 1'000'000, 2'500'000,
      5'000'000, 10'000'000},
     16},
    {"connection_duration_seconds", "connections from accept to close, refused ones included",
     {1'000, 10'000, 100'000, 500'000, 1'000'000, 5'000'000, 10'000'000, 30'000'000, 60'000'000, 300'000'000,
      900'000'000, 3'600'000'000, 86'400'000'000},
     13},
}};

class WorkerHistograms {
 public:
  void Observe(Histogram h, int64_t us) {
    const HistogramInfo& info = kHistogramInfo[static_cast<size_t>(h)];
    size_t b = 0;
    while (b < info.buckets && us > info.upper_us[b]) ++b;
    Bump(counts_[static_cast<size_t>(h)][b], 1);
    Bump(sum_us_[static_cast<size_t>(h)], static_cast<uint64_t>(us));
  }
  // Bucket `b` (info.buckets: above the last bound).
  uint64_t count(Histogram h, size_t b) const {
    return counts_[static_cast<size_t>(h)][b].load(std::memory_order_relaxed);
  }
  uint64_t sum_us(Histogram h) const { return sum_us_[static_cast<size_t>(h)].load(std::memory_order_relaxed); }

 private:
  static void Bump(std::atomic<uint64_t>& v, uint64_t n) {
    v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  std::array<std::array<std::atomic<uint64_t>, kMaxBuckets + 1>, kHistogramCount> counts_{};
  std::array<std::atomic<uint64_t>, kHistogramCount> sum_us_{};
};

}  // namespace cvmgate
