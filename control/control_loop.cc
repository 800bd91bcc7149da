// The control loop (see control_loop.h).
#include "control/control_loop.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>

#include <absl/strings/str_cat.h>

#include "control/metrics.h"
#include "dataplane/clock.h"
#include "dataplane/counters.h"
#include "dataplane/log.h"
#include "dataplane/strings.h"

namespace cvmgate {

ControlLoop::ControlLoop(const Workers& workers, absl::Duration health_poll, absl::Duration drain_timeout)
    : workers_(workers), health_poll_(health_poll), drain_timeout_(drain_timeout) {
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGHUP, SIGUSR1, SIGUSR2, SIGTERM, SIGINT}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  signals_.reset(signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  tunnel_news_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
}

uint64_t ControlLoop::Sum(size_t counter) const {
  uint64_t sum = 0;
  for (auto& w : workers_) sum += w->counters().Get(static_cast<Counter>(counter));
  return sum;
}

uint64_t ControlLoop::Live() const {
  uint64_t live = 0;
  for (auto& w : workers_) live += w->live_connections();
  return live;
}

int64_t ControlLoop::PipeBytes() const {
  int64_t held = 0;
  for (auto& w : workers_) held += w->pipe_bytes();
  return held;
}

std::string ControlLoop::WorkerMetrics() const {
  MetricsText m;
  for (size_t i = 0; i < kCounterCount; ++i) {
    m.Counter(absl::StrCat(AbslView(kCounterInfo[i].name), "_total"), kCounterInfo[i].help, Sum(i));
  }
  // The same closures again as one family, told apart by their reason (the counter's name less
  // closed_; relay_done is "done"), as dashboards group them.
  std::vector<std::pair<std::string, uint64_t>> reasons;
  for (size_t i = 0; i < kCounterCount; ++i) {
    std::string_view name = kCounterInfo[i].name;
    if (name.starts_with("closed_")) reasons.emplace_back(name.substr(7), Sum(i));
    if (name == "relay_done") reasons.emplace_back("done", Sum(i));
  }
  m.CounterPerLabel("connections_closed_total", "connections closed, by reason", "reason", reasons);
  for (size_t h = 0; h < kHistogramCount; ++h) {
    const HistogramInfo& info = kHistogramInfo[h];
    std::vector<uint64_t> counts(info.buckets + 1, 0);
    uint64_t sum_us = 0;
    for (auto& w : workers_) {
      for (size_t b = 0; b <= info.buckets; ++b) counts[b] += w->histograms().count(static_cast<Histogram>(h), b);
      sum_us += w->histograms().sum_us(static_cast<Histogram>(h));
    }
    m.Histogram(info.name, info.help, std::span<const int64_t>(info.upper_us.data(), info.buckets), counts, sum_us);
  }
  if (access_log_ != nullptr) {
    m.Counter("access_log_written_total", "access-log lines written", access_log_->written());
    m.Counter("access_log_write_errors_total", "access-log writes that failed (their lines are lost)",
              access_log_->write_errors());
    m.Counter("access_log_reopens_total", "times the access log was reopened (SIGUSR2)", access_log_->reopens());
  }
  m.Gauge("live_connections", "connections held now", Live());
  std::vector<int64_t> per_worker;
  for (auto& w : workers_) per_worker.push_back(w->live_connections());
  m.GaugePerIndex("worker_live_connections", "connections each worker holds now", "worker", per_worker);
  m.Gauge("relay_pipe_bytes", "bytes relays hold in pipes (read from one side, not yet written)", PipeBytes());
  m.Counter("reload_ok_total", "state reloads that took effect", reloads_ok_);
  m.Counter("reload_failed_total", "state reloads refused", reloads_failed_);
  return m.Take();
}

void ControlLoop::PrintCounters(const SnapshotDomain& domain) const {
  std::string out = "cvmgate: counters begin\n";
  for (size_t i = 0; i < kCounterCount; ++i) absl::StrAppend(&out, AbslView(kCounterInfo[i].name), " ", Sum(i), "\n");
  const RouteSnapshot* snap = domain.current();
  absl::StrAppend(&out, "reload_ok ", reloads_ok_, "\n", "reload_failed ", reloads_failed_, "\n", "live_connections ",
                  Live(), "\n", "relay_pipe_bytes ", PipeBytes(), "\n", "apps ", snap->app_count(), "\n",
                  "instances ", snap->instances().size(), "\n", "cvmgate: counters end\n");
  (void)!write(STDERR_FILENO, out.data(), out.size());
}

void ControlLoop::Run(ControlPlane& control, SnapshotDomain& domain, AdminServer& admin, int registry_changes) {
  const int64_t poll_every_ms = absl::ToInt64Milliseconds(health_poll_);
  int64_t next_poll = MonotonicMs() + poll_every_ms;
  int64_t stop_by = 0;  // after a handover: the last answers are written until then
  for (bool running = true; running;) {
    if (stop_requested_.load()) {
      if (stop_by == 0) stop_by = MonotonicMs() + 2000;
      if (!admin.writing() || MonotonicMs() >= stop_by) {
        Log("stopping: handed over to the new process; draining ", Live(), " live for up to ",
            absl::FormatDuration(drain_timeout_));
        break;
      }
    }
    std::vector<pollfd> fds = {
        {signals_.get(), POLLIN, 0}, {tunnel_news_.get(), POLLIN, 0}, {registry_changes, POLLIN, 0}};
    admin.AppendPollFds(fds);
    int64_t wait = std::clamp<int64_t>(next_poll - MonotonicMs(), 0, stop_requested_.load() ? 20 : 1000);
    poll(fds.data(), fds.size(), static_cast<int>(wait));
    int64_t now = MonotonicMs();
    domain.Reclaim();
    admin.OnReady(fds, now);
    uint64_t news = 0;
    bool tunnel_read = read(tunnel_news_.get(), &news, sizeof(news)) == sizeof(news);
    if (registry_changes >= 0 && read(registry_changes, &news, sizeof(news)) == sizeof(news)) {
      if (auto s = control.RegistryChanged(); !s.ok()) Log("registry: ", s.message(), "; the routes in force stay");
    }
    if (now >= next_poll || tunnel_read) {
      if (auto s = control.Poll(); !s.ok()) Log(s.message());
      if (now >= next_poll) next_poll = now + poll_every_ms;
    }
    signalfd_siginfo si;
    while (read(signals_.get(), &si, sizeof(si)) == sizeof(si)) {
      if (si.ssi_signo == SIGHUP) {
        if (reread_config_) reread_config_();
        if (auto s = control.Reload(); s.ok()) {
          Log("reload ok: ", domain.current()->app_count(), " apps, ", domain.current()->instances().size(),
              " instances");
          ++reloads_ok_;
        } else {
          Log("reload failed, keeping the old routes: ", s.message());
          ++reloads_failed_;
        }
      } else if (si.ssi_signo == SIGUSR1) {
        PrintCounters(domain);
      } else if (si.ssi_signo == SIGUSR2) {
        if (access_log_ != nullptr) access_log_->Reopen();
      } else {
        Log("stopping: no new connections; draining ", Live(), " live for up to ",
            absl::FormatDuration(drain_timeout_));
        running = false;
      }
    }
  }
}

}  // namespace cvmgate
