// cvmgate daemon: flags, WireGuard and registry setup, one worker per core, and the control loop
// (signals, admin API, health polls) on the main thread.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <absl/strings/ascii.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include "control/admin_http.h"
#include "control/config.h"
#include "control/control_plane.h"
#include "control/durable_file.h"
#include "control/ip_pool.h"
#include "control/registry.h"
#include "dataplane/snapshot.h"
#include "control/wireguard/supervisor.h"
#include "control/wireguard/wireguard.h"
#include "dataplane/counters.h"
#include "dataplane/cpus.h"
#include "dataplane/log.h"
#include "dataplane/strings.h"
#include "dataplane/tls.h"
#include "dataplane/worker.h"
#include "kernel-config/probe.h"

namespace cvmgate {
namespace {

using Workers = std::vector<std::unique_ptr<Worker>>;

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
  return static_cast<uint32_t>(RelayCapacity(rl.rlim_cur, workers));
}

// `cvmgate probe [--json] [--wg-interface IF]`: the capability table; exit 1
// when a required feature is missing.
int ProbeCommand(const std::vector<std::string>& args) {
  bool json = false;
  std::string wg_interface;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--json") {
      json = true;
    } else if (args[i] == "--wg-interface" && i + 1 < args.size()) {
      wg_interface = args[++i];
    } else if (args[i].rfind("--wg-interface=", 0) == 0) {
      wg_interface = args[i].substr(15);
    } else if (args[i] == "--help" || args[i] == "-h") {
      std::fputs("usage: cvmgate probe [--json] [--wg-interface IF]\n\n"
                 "Tries io_uring and each ring operation cvmgate uses, splice on TCP, kTLS (TLS 1.2/1.3 ciphers,\n"
                 "TX and RX), kernel WireGuard and wireguard-go, nftables, the descriptor limit and the sysctl\n"
                 "profile (kernel-config/sysctl.d; per-interface ones for IF), and says what cvmgate uses for\n"
                 "each. Exit status 1 only when a required feature is missing.\n",
                 stdout);
      return 0;
    } else {
      Log("probe: unexpected argument '", args[i], "' (see cvmgate probe --help)");
      return 2;
    }
  }
  ProbeFacts facts = ProbeKernel(wg_interface);
  ProbeDecisions decisions = Decide(facts);
  std::fputs((json ? ProbeJson(facts, decisions) : ProbeTable(facts, decisions)).c_str(), stdout);
  return decisions.ok() ? 0 : 1;
}

// The start-up probe: logs what is not plain sailing and adapts the config to
// this kernel. False when cvmgate cannot run here.
bool ApplyProbe(Config& config) {
  ProbeFacts facts = ProbeKernel(config.wg_interface);
  ProbeDecisions decisions = Decide(facts);
  for (const ProbeLine& l : decisions.lines) {
    if (l.verdict == Verdict::kOk || l.feature.rfind("sysctl ", 0) == 0) continue;
    Log("probe: ", l.feature, ": ", l.found, " -> ", l.choice);
  }
  size_t sysctl_advice = 0;
  for (const ProbeLine& l : decisions.lines) {
    sysctl_advice += l.verdict == Verdict::kAdvice && l.feature.rfind("sysctl ", 0) == 0;
  }
  if (sysctl_advice > 0) Log("probe: ", sysctl_advice, " sysctls differ from the profile (see cvmgate probe)");
  if (!decisions.ok()) return false;
  config.tls_policy.kernel_tls = decisions.ktls;
  if (!decisions.splice && config.splice_mode != SpliceMode::kCopy) config.splice_mode = SpliceMode::kCopy;
  if (!decisions.ring_splice && config.splice_mode == SpliceMode::kUring) config.splice_mode = SpliceMode::kInline;
  const char* relay = config.splice_mode == SpliceMode::kCopy    ? "copy"
                      : config.splice_mode == SpliceMode::kUring ? "uring splice"
                                                                 : "splice";
  Log("probe: kernel ", facts.kernel, "; TLS ", config.tls_policy.offload() ? "kTLS where it can" : "userspace",
      "; relay ", relay, "; WireGuard ", decisions.wireguard.empty() ? "none" : decisions.wireguard);
  return true;
}

uint64_t Sum(const Workers& workers, size_t counter) {
  uint64_t sum = 0;
  for (auto& w : workers) sum += w->counters().Get(static_cast<Counter>(counter));
  return sum;
}

uint64_t Live(const Workers& workers) {
  uint64_t live = 0;
  for (auto& w : workers) live += w->live_connections();
  return live;
}

int64_t PipeBytes(const Workers& workers) {
  int64_t held = 0;
  for (auto& w : workers) held += w->pipe_bytes();
  return held;
}

struct ReloadCounters {
  uint64_t ok = 0;
  uint64_t failed = 0;
};

void PrintCounters(const Workers& workers, const ReloadCounters& reloads, const SnapshotDomain& domain) {
  std::string out = "cvmgate: counters begin\n";
  for (size_t i = 0; i < kCounterCount; ++i) absl::StrAppend(&out, AbslView(kCounterInfo[i].name), " ", Sum(workers, i), "\n");
  const RouteSnapshot* snap = domain.current();
  absl::StrAppend(&out, "reload_ok ", reloads.ok, "\n", "reload_failed ", reloads.failed, "\n", "live_connections ",
                  Live(workers), "\n", "relay_pipe_bytes ", PipeBytes(workers), "\n", "apps ", snap->app_count(), "\n", "instances ", snap->instances().size(), "\n",
                  "cvmgate: counters end\n");
  (void)!write(STDERR_FILENO, out.data(), out.size());
}

std::string WorkerMetrics(const Workers& workers, const ReloadCounters& reloads) {
  std::string out;
  for (size_t i = 0; i < kCounterCount; ++i) {
    std::string name = absl::StrCat("cvmgate_", AbslView(kCounterInfo[i].name), "_total");
    absl::StrAppend(&out, "# HELP ", name, " ", AbslView(kCounterInfo[i].help), "\n# TYPE ", name, " counter\n", name,
                    " ", Sum(workers, i), "\n");
  }
  absl::StrAppend(&out, "# HELP cvmgate_live_connections connections held now\n# TYPE cvmgate_live_connections gauge\n",
                  "cvmgate_live_connections ", Live(workers), "\n",
                  "# HELP cvmgate_relay_pipe_bytes bytes relays hold in pipes (read from one side, not yet written)\n"
                  "# TYPE cvmgate_relay_pipe_bytes gauge\n",
                  "cvmgate_relay_pipe_bytes ", PipeBytes(workers), "\n",
                  "# HELP cvmgate_reload_ok_total state reloads that took effect\n# TYPE cvmgate_reload_ok_total counter\n",
                  "cvmgate_reload_ok_total ", reloads.ok, "\n",
                  "# HELP cvmgate_reload_failed_total state reloads refused\n# TYPE cvmgate_reload_failed_total counter\n",
                  "cvmgate_reload_failed_total ", reloads.failed, "\n");
  return out;
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(ss.str()));
}

// The gateway's private key: read from the file, or generated and written 0600 when it is missing.
absl::StatusOr<WgKey> GatewayKey(const std::string& path) {
  if (access(path.c_str(), F_OK) != 0) {
    auto key = GeneratePrivateKey();
    if (!key.ok()) return key.status();
    if (auto s = WriteFileDurably(path, key->ToBase64() + "\n"); !s.ok()) return s;
    Log("wireguard: generated a private key in ", path);
    return key;
  }
  auto text = ReadSmallFile(path);
  if (!text.ok()) return text.status();
  auto key = WgKey::FromBase64(*text);
  if (!key.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", key.status().message()));
  return key;
}

struct WireGuardSetUp {
  std::unique_ptr<WireGuard> wg;
  std::string backend;
  WgKey private_key;
};

// Makes the interface (or adopts it) and gives it the gateway's key and port;
// from then on its supervisor keeps it so.
absl::StatusOr<WireGuardSetUp> SetUpWireGuard(const Config& config, const std::string& address_cidr) {
  auto backend = EnsureInterface(config.wg_backend, config.wg_interface, address_cidr);
  if (!backend.ok()) return backend.status();
  auto wg = OpenWireGuard(*backend, config.wg_interface, kDefaultUapiDir, absl::Seconds(2));
  if (!wg.ok()) return wg.status();
  auto device = (*wg)->GetDevice();
  if (!device.ok()) return device.status();
  WgKey key;
  if (!config.wg_private_key_file.empty()) {
    auto k = GatewayKey(config.wg_private_key_file);
    if (!k.ok()) return k.status();
    key = *k;
    if (auto s = (*wg)->Configure(key, config.wg_listen_port); !s.ok()) return s;
  } else if (device->has_private_key) {
    key = device->private_key;  // an adopted interface's own: what it is given back if it must be recreated
  } else {
    return absl::FailedPreconditionError(absl::StrCat("interface ", config.wg_interface,
                                                      " has no private key: give --wg-private-key-file"));
  }
  device = (*wg)->GetDevice();
  if (!device.ok()) return device.status();
  Log("wireguard: interface ", config.wg_interface, " via ", (*wg)->backend(), ", public key ",
      device->public_key.ToBase64(), ", port ", device->listen_port, ", ", device->peers.size(), " peers");
  return WireGuardSetUp{*std::move(wg), *backend, key};
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "probe") return ProbeCommand({args.begin() + 1, args.end()});
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
  if (!ApplyProbe(config)) {
    Log("required kernel features are missing (cvmgate probe shows them)");
    return 1;
  }
  int workers = config.workers > 0 ? config.workers : std::max<long>(1, sysconf(_SC_NPROCESSORS_ONLN));
  auto ip_pool = IpPool::Create(config.wg_pool, config.wg_address);
  if (!ip_pool.ok()) {
    Log(ip_pool.status().message());
    return 2;
  }
  auto admin_address = ParseAdminAddress(config.admin);
  if (!admin_address.ok()) {
    Log(admin_address.status().message());
    return 2;
  }
  std::string token;
  if (!config.admin_token_file.empty()) {
    auto t = ReadSmallFile(config.admin_token_file);
    if (!t.ok() || t->empty()) {
      Log("--admin-token-file ", config.admin_token_file, ": ", t.ok() ? "empty" : t.status().message());
      return 2;
    }
    token = *t;
  }
  // Before anything is bound or replaced: one state file, one daemon.
  auto state_lock = LockBeside(config.state_file);
  if (!state_lock.ok()) {
    Log(state_lock.status().message());
    return 1;
  }
  Registry registry(*std::move(ip_pool), config.state_file);
  if (auto s = registry.Load(); !s.ok()) {
    Log(s.message());
    return 1;
  }
  const std::string wg_address_cidr = config.wg_address + config.wg_pool.substr(config.wg_pool.find('/'));
  std::optional<WireGuardSetUp> wg_setup;
  if (!config.wg_interface.empty()) {
    auto w = SetUpWireGuard(config, wg_address_cidr);
    if (!w.ok()) {
      Log("wireguard: ", w.status().message());
      return 1;
    }
    wg_setup = *std::move(w);
  }

  // Signals are taken by this thread alone, through a signalfd; workers never see them.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGHUP, SIGUSR1, SIGTERM, SIGINT}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // splice to a reset socket raises SIGPIPE; the relay sees EPIPE
  int sigfd = signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK);

  // The tunnel is kept on a thread of its own (started with the signals
  // blocked, so they stay this thread's): no WireGuard call ever stalls the
  // control loop, and a dead or deleted interface is brought back.
  int tunnel_news = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  std::unique_ptr<WireGuardSupervisor> supervisor;
  if (wg_setup) {
    WireGuardSupervisor::Options o;
    o.ifname = config.wg_interface;
    o.backend = config.wg_backend;
    o.address_cidr = wg_address_cidr;
    o.private_key = wg_setup->private_key;
    o.listen_port = config.wg_listen_port;
    o.keep_unknown_peers = config.wg_keep_unknown_peers;
    o.poll_every = config.health_poll;
    o.restart_after = config.wg_restart_after;
    supervisor = std::make_unique<WireGuardSupervisor>(o, std::move(wg_setup->wg), SystemTunnelPlatform());
  }

  uint32_t max_conns = MaxConnections(config, workers);
  uint32_t per_worker = (max_conns + workers - 1) / workers;
  auto empty = RouteSnapshot::Build({});
  SnapshotDomain domain(workers, *std::move(empty));
  // Listeners are bound first: the control plane must know them, so that no
  // instance ever routes a connection back into the gateway.
  Workers pool;
  const WorkerOptions worker_options = WorkerOptionsOf(config);
  for (int i = 0; i < workers; ++i) {
    pool.push_back(std::make_unique<Worker>(i, worker_options, domain.reader(i), per_worker));
    if (auto s = pool.back()->Init(config.listen); !s.ok()) {
      Log(s.message());
      return 1;
    }
  }
  ReloadCounters reloads;
  RealClock clock;
  ControlOptions options{config.healthy_within, config.base_domains, config.tls_certs, config.tls_policy,
                         config.wg_endpoint,
                         config.wg_keep_unknown_peers, config.app_max_connections, config.ticket_key_rotation,
                         config.proxy_protocol, {}};
  for (const ListenAddress& l : config.listen) options.listeners.push_back(l.addr);
  ControlPlane control(options, registry, domain, supervisor.get(), clock,
                       [&] { return WorkerMetrics(pool, reloads); });
  if (supervisor) {
    // The first reading, with the registry's peers set, before the first routes.
    supervisor->Step(absl::Now());
    if (auto s = supervisor->Start(tunnel_news); !s.ok()) {
      Log(s.message());
      return 1;
    }
  }
  if (auto s = control.LoadCertificates(); !s.ok()) {
    Log(s.message());
    return 1;
  }
  if (auto s = control.Poll(); !s.ok()) Log(s.message());
  Log("routes: ", domain.current()->app_count(), " apps, ", domain.current()->instances().size(), " instances from ",
      config.state_file);

  auto admin = AdminServer::Listen(*admin_address, token,
                                   [&control](const HttpRequest& r) { return control.Handle(r); });
  if (!admin.ok()) {
    Log(admin.status().message());
    return 1;
  }
  // One worker per CPU: each stays where its ring, connections and pipes are warm.
  const std::vector<int> cpus = config.pin_workers ? AllowedCpus() : std::vector<int>();
  std::vector<std::thread> threads;
  for (int i = 0; i < workers; ++i) {
    threads.emplace_back([&w = pool[i], cpu = CpuForWorker(cpus, i)] {
      if (cpu >= 0) {
        if (auto s = PinThisThread(cpu); !s.ok()) Log("worker: ", s.message(), "; left to the scheduler");
      }
      w->Run();
    });
  }
  for (auto& w : pool) w->WaitStarted();  // ready means: no worker thread holds a capability
  std::vector<std::string> addrs;
  for (auto& l : config.listen) addrs.push_back(l.text);
  Log("admin API on ", (*admin)->address().text);
  std::vector<int> worker_cpus;
  for (int i = 0; i < workers && !cpus.empty(); ++i) worker_cpus.push_back(CpuForWorker(cpus, i));
  Log("ready, listening on ", absl::StrJoin(addrs, " "), " (", workers, " workers ",
      cpus.empty() ? std::string("not pinned") : absl::StrCat("on CPUs ", absl::StrJoin(worker_cpus, ",")),
      ", splice-mode ",
      SpliceModeName(config.splice_mode), ", max ", per_worker * workers, " connections, base domains ",
      absl::StrJoin(config.base_domains, " "), ")");

  const int64_t poll_every_ms = absl::ToInt64Milliseconds(config.health_poll);
  int64_t next_poll = NowMs() + poll_every_ms;
  for (bool running = true; running;) {
    std::vector<pollfd> fds = {{sigfd, POLLIN, 0}, {tunnel_news, POLLIN, 0}};
    (*admin)->AppendPollFds(fds);
    int64_t wait = std::clamp<int64_t>(next_poll - NowMs(), 0, 1000);
    poll(fds.data(), fds.size(), static_cast<int>(wait));
    int64_t now = NowMs();
    domain.Reclaim();
    (*admin)->OnReady(fds, now);
    uint64_t news = 0;
    bool tunnel_read = read(tunnel_news, &news, sizeof(news)) == sizeof(news);
    if (now >= next_poll || tunnel_read) {
      if (auto s = control.Poll(); !s.ok()) Log(s.message());
      if (now >= next_poll) next_poll = now + poll_every_ms;
    }
    signalfd_siginfo si;
    while (read(sigfd, &si, sizeof(si)) == sizeof(si)) {
      if (si.ssi_signo == SIGHUP) {
        if (auto s = control.Reload(); s.ok()) {
          Log("reload ok: ", domain.current()->app_count(), " apps, ", domain.current()->instances().size(),
              " instances");
          ++reloads.ok;
        } else {
          Log("reload failed, keeping the old routes: ", s.message());
          ++reloads.failed;
        }
      } else if (si.ssi_signo == SIGUSR1) {
        PrintCounters(pool, reloads, domain);
      } else {
        Log("stopping: no new connections; draining ", Live(pool), " live for up to ",
            absl::FormatDuration(config.drain_timeout));
        running = false;
      }
    }
  }
  for (auto& w : pool) w->Stop();
  for (auto& t : threads) t.join();
  if (supervisor) supervisor->Stop();
  PrintCounters(pool, reloads, domain);
  Log("stopped");
  return 0;
}

}  // namespace
}  // namespace cvmgate

int main(int argc, char** argv) { return cvmgate::Main(argc, argv); }
