// cvmgate daemon: parses flags, loads routes, starts one worker per core and handles signals.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "control/config.h"
#include "control/routes.h"
#include "control/snapshot.h"
#include "dataplane/counters.h"
#include "dataplane/log.h"
#include "dataplane/strings.h"
#include "dataplane/worker.h"

namespace cvmgate {
namespace {

struct ControlCounters {
  uint64_t reload_ok = 0;
  uint64_t reload_failed = 0;
};

// Raises the soft descriptor limit to the hard one and sizes the connection
// table from it: a relay holds 2 sockets; pipes come from per-worker pools.
uint32_t MaxConnections(const Config& config, int workers) {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  if (config.max_connections > 0) return config.max_connections;
  uint64_t reserve = 64 + uint64_t(workers) * (64 * 2 + 16);  // idle pipe pools, listeners, rings
  uint64_t fds = rl.rlim_cur > reserve + 2 ? rl.rlim_cur - reserve : 2;
  return static_cast<uint32_t>(std::min<uint64_t>(fds / 2, 1u << 22));
}

void PrintCounters(const std::vector<std::unique_ptr<Worker>>& workers, const ControlCounters& control,
                   const SnapshotDomain& domain) {
  std::string out = "cvmgate: counters begin\n";
  for (size_t i = 0; i < kCounterCount; ++i) {
    uint64_t sum = 0;
    for (auto& w : workers) sum += w->counters().Get(static_cast<Counter>(i));
    absl::StrAppend(&out, AbslView(kCounterInfo[i].name), " ", sum, "\n");
  }
  uint64_t live = 0;
  for (auto& w : workers) live += w->live_connections();
  const RouteSnapshot* snap = domain.current();
  absl::StrAppend(&out, "reload_ok ", control.reload_ok, "\n", "reload_failed ", control.reload_failed, "\n",
                  "live_connections ", live, "\n", "apps ", snap->app_count(), "\n", "instances ",
                  snap->instances().size(), "\n", "cvmgate: counters end\n");
  (void)!write(STDERR_FILENO, out.data(), out.size());
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto parsed = ParseFlags(args);
  if (!parsed.ok()) {
    Log(parsed.status().message());
    return 2;
  }
  Config config = *std::move(parsed);
  if (config.help) {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  if (config.version) {
    std::puts("cvmgate 0.1.0");
    return 0;
  }
  int workers = config.workers > 0 ? config.workers : std::max<long>(1, sysconf(_SC_NPROCESSORS_ONLN));
  auto snapshot = RouteSnapshot::FromFile(config.state_file);
  if (!snapshot.ok()) {
    Log(snapshot.status().message());
    return 1;
  }
  Log("routes: ", (*snapshot)->app_count(), " apps, ", (*snapshot)->instances().size(), " instances from ",
      config.state_file);

  // Signals are taken by this thread alone, with sigtimedwait; workers never see them.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGHUP, SIGUSR1, SIGTERM, SIGINT}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // splice to a reset socket raises SIGPIPE; the relay sees EPIPE

  uint32_t max_conns = MaxConnections(config, workers);
  uint32_t per_worker = (max_conns + workers - 1) / workers;
  SnapshotDomain domain(workers, *std::move(snapshot));
  std::vector<std::unique_ptr<Worker>> pool;
  for (int i = 0; i < workers; ++i) {
    pool.push_back(std::make_unique<Worker>(i, config, domain.reader(i), per_worker));
    if (auto s = pool.back()->Init(config.listen); !s.ok()) {
      Log(s.message());
      return 1;
    }
  }
  std::vector<std::thread> threads;
  for (auto& w : pool) threads.emplace_back([&w] { w->Run(); });
  std::vector<std::string> addrs;
  for (auto& l : config.listen) addrs.push_back(l.text);
  Log("ready, listening on ", absl::StrJoin(addrs, " "), " (", workers, " workers, splice-mode ",
      SpliceModeName(config.splice_mode), ", max ", per_worker * workers, " connections, base domains ",
      absl::StrJoin(config.base_domains, " "), ")");

  ControlCounters control;
  for (;;) {
    timespec tick{1, 0};
    int sig = sigtimedwait(&signals, nullptr, &tick);
    domain.Reclaim();
    if (sig == SIGHUP) {
      auto next = RouteSnapshot::FromFile(config.state_file);
      if (next.ok()) {
        Log("reload ok: ", (*next)->app_count(), " apps, ", (*next)->instances().size(), " instances");
        domain.Publish(*std::move(next));
        ++control.reload_ok;
      } else {
        Log("reload failed, keeping the old routes: ", next.status().message());
        ++control.reload_failed;
      }
    } else if (sig == SIGUSR1) {
      PrintCounters(pool, control, domain);
    } else if (sig == SIGTERM || sig == SIGINT) {
      uint64_t live = 0;
      for (auto& w : pool) live += w->live_connections();
      Log("stopping: no new connections; draining ", live, " live for up to ",
          absl::FormatDuration(config.drain_timeout));
      break;
    }
  }
  for (auto& w : pool) w->Stop();
  for (auto& t : threads) t.join();
  PrintCounters(pool, control, domain);
  Log("stopped");
  return 0;
}

}  // namespace
}  // namespace cvmgate

int main(int argc, char** argv) { return cvmgate::Main(argc, argv); }
