// The daemon's main thread once the workers run: signals, the admin API and the
// health timer share one poll(); the workers never see a signal.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <absl/time/time.h>

#include "control/admin_http.h"
#include "control/control_plane.h"
#include "dataplane/access_log.h"
#include "dataplane/fd.h"
#include "dataplane/snapshot.h"
#include "dataplane/worker.h"

namespace cvmgate {

using Workers = std::vector<std::unique_ptr<Worker>>;

class ControlLoop {
 public:
  // Takes SIGHUP, SIGUSR1, SIGUSR2, SIGTERM and SIGINT for the calling thread, through a
  // signalfd, and ignores SIGPIPE (a splice to a reset socket then fails with
  // EPIPE). Threads started afterwards inherit the blocked set, so make this
  // before the tunnel's thread and the workers start.
  ControlLoop(const Workers& workers, absl::Duration health_poll, absl::Duration drain_timeout);
  // SIGUSR2 reopens its file (after logrotate moved it); its counts go into WorkerMetrics.
  void SetAccessLog(AccessLog* log) { access_log_ = log; }
  // SIGHUP runs `reread` first (the config file read again and what can change applied), then
  // reloads the state file and the certificates.
  void SetConfigReread(std::function<void()> reread) { reread_config_ = std::move(reread); }

  // The eventfd the tunnel's supervisor writes when its view changed: health is then polled at once.
  int tunnel_news() const { return tunnel_news_.get(); }
  // The workers' counters and gauges and the reload counts, for the admin API's /metrics.
  std::string WorkerMetrics() const;
  // Until SIGTERM or SIGINT: SIGHUP reloads the state file, SIGUSR1 prints the
  // counters, SIGUSR2 reopens the access log, the admin API answers, and health is polled every health_poll.
  // A registry kept in etcd also makes `registry_changes` readable when another node wrote: it is
  // read again and the routes published (the routes in force stay while it cannot be read).
  void Run(ControlPlane& control, SnapshotDomain& domain, AdminServer& admin, int registry_changes = -1);
  // Thread-safe: Run() returns as on SIGTERM, once the admin API's answers are written (an upgrade
  // handed everything to the successor).
  void RequestStop() { stop_requested_.store(true); }
  bool stop_requested() const { return stop_requested_.load(); }
  // The counters on stderr, between "cvmgate: counters begin" and "cvmgate: counters end".
  void PrintCounters(const SnapshotDomain& domain) const;

 private:
  uint64_t Sum(size_t counter) const;
  uint64_t Live() const;
  int64_t PipeBytes() const;

  const Workers& workers_;
  const absl::Duration health_poll_;
  const absl::Duration drain_timeout_;
  Fd signals_;
  Fd tunnel_news_;
  AccessLog* access_log_ = nullptr;
  std::function<void()> reread_config_;
  std::atomic<bool> stop_requested_{false};
  uint64_t reloads_ok_ = 0;
  uint64_t reloads_failed_ = 0;
};

}  // namespace cvmgate
