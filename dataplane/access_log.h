// The access log: one line per connection, written off the hot path. A worker fills a record when a
// connection closes and pushes it into its own bounded queue (one producer, one consumer, no lock);
// the log thread drains every queue, formats the lines (logfmt or JSON) and writes them in batches.
// A full queue never blocks a worker: the record is dropped and counted (access_log_dropped).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include "dataplane/counters.h"
#include "dataplane/fd.h"
#include "dataplane/host_name.h"
#include "dataplane/options.h"

namespace cvmgate {

// What one line says. Fixed size, no allocation: a worker fills it in place in its queue.
struct AccessRecord {
  int64_t unix_us = 0;           // when the connection closed (wall clock)
  sockaddr_in6 client{};         // AF_INET (as sockaddr_in) or AF_INET6; AF_UNSPEC: unknown
  sockaddr_in6 instance{};       // the instance connected to; AF_UNSPEC: none
  char sni[256] = {};            // as the client sent it (may hold any byte: escaped when written)
  uint16_t sni_len = 0;
  char app[64] = {};             // the app or instance id the name routed to; empty: not routed
  uint8_t app_len = 0;
  bool routed = false;           // the name was decided: `mode` is meaningful
  Mode mode = Mode::kPassthrough;
  uint16_t tls_version = 0;      // terminate: the negotiated version (0x0304 TLS 1.3); 0: none
  const char* cipher = nullptr;  // terminate: OpenSSL's static name of the cipher
  uint64_t bytes_in = 0;         // client to instance
  uint64_t bytes_out = 0;        // instance to client
  int64_t handshake_us = -1;     // TLS handshake at the gateway; -1: none
  int64_t connect_us = -1;       // from the first connect to the instance until one succeeded; -1: none
  int64_t duration_us = 0;       // from accept to close
  Counter reason = Counter::relay_done;
};

// One line of `r`, newline included, appended to `out`. Strings from the client are escaped.
void AppendAccessLine(const AccessRecord& r, AccessLogFormat format, std::string& out);

// A worker's queue: it alone pushes, the log thread alone pops.
class AccessLogQueue {
 public:
  explicit AccessLogQueue(uint32_t capacity);  // rounded up to a power of two
  // The slot to fill, or null when the queue is full (the caller counts the drop).
  AccessRecord* Claim() {
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - head_.load(std::memory_order_acquire) > mask_) return nullptr;
    return &records_[tail & mask_];
  }
  // Publishes the slot Claim() gave.
  void Commit() { tail_.store(tail_.load(std::memory_order_relaxed) + 1, std::memory_order_release); }
  // Log thread: formats what is queued into `out`; returns how many records.
  size_t Drain(AccessLogFormat format, std::string& out, size_t max);
  bool empty() const {
    return head_.load(std::memory_order_acquire) == tail_.load(std::memory_order_acquire);
  }

 private:
  const uint64_t mask_;
  std::unique_ptr<AccessRecord[]> records_;
  alignas(64) std::atomic<uint64_t> head_{0};
  alignas(64) std::atomic<uint64_t> tail_{0};
};

// The log thread and where it writes. Created before the workers, stopped after them (the lines of
// the last connections are written before Stop returns).
class AccessLog {
 public:
  // `target`: "stderr" or a file path (opened for appending, created 0640).
  static absl::StatusOr<std::unique_ptr<AccessLog>> Open(const AccessLogOptions& options, int workers);
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  AccessLogQueue* queue(int worker) { return queues_[worker].get(); }
  // Worker: after it pushed records in a turn; wakes the log thread if it sleeps.
  void Wake() {
    std::atomic_thread_fence(std::memory_order_seq_cst);  // the record's publication before the flag's read
    if (sleeping_.load(std::memory_order_relaxed) && sleeping_.exchange(false)) Signal();
  }
  void Start();
  // Thread-safe: the file is opened anew (logrotate moved it) before the next lines are written.
  void Reopen();
  // Thread-safe: lines from now on go to `target` (opened as by Reopen) in `format` (a re-read config).
  void Reconfigure(const std::string& target, AccessLogFormat format);
  // Writes what is queued, then ends the thread.
  void Stop();

  uint64_t written() const { return written_.load(std::memory_order_relaxed); }
  uint64_t write_errors() const { return write_errors_.load(std::memory_order_relaxed); }
  uint64_t reopens() const { return reopens_.load(std::memory_order_relaxed); }


 private:
  AccessLog(const AccessLogOptions& options, int workers, Fd out, Fd wake);
  void Run();
  void Signal();
  size_t DrainAll();
  void WriteOut();
  absl::Status OpenTarget(Fd& out) const;

  const uint32_t queue_records_;
  mutable std::mutex mu_;
  std::string target_;  // guarded by mu_
  std::atomic<AccessLogFormat> format_;
  std::vector<std::unique_ptr<AccessLogQueue>> queues_;
  Fd out_;
  Fd wake_;  // eventfd
  std::string buf_;
  bool regular_file_ = false;  // a file (writes never wait long), not a pipe or a terminal
  std::thread thread_;
  alignas(64) std::atomic<bool> sleeping_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> reopen_{false};
  std::atomic<uint64_t> written_{0};
  std::atomic<uint64_t> write_errors_{0};
  std::atomic<uint64_t> reopens_{0};
};

}  // namespace cvmgate
