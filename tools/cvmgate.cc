// cvmgate daemon, the composition root: flags and the kernel probe, the registry and
// WireGuard, one worker per CPU, then control/control_loop.h on the main thread.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/strip.h>
#include <nlohmann/json.hpp>

#include "control/admin_http.h"
#include "control/args.h"
#include "control/config.h"
#include "control/control_loop.h"
#include "control/control_plane.h"
#include "control/durable_file.h"
#include "control/etcd/registry_store.h"
#include "control/handover.h"
#include "control/ip_pool.h"
#include "control/registry.h"
#include "control/wireguard/setup.h"
#include "control/wireguard/supervisor.h"
#include "dataplane/addresses.h"
#include "dataplane/cpus.h"
#include "dataplane/log.h"
#include "dataplane/snapshot.h"
#include "dataplane/tls.h"
#include "dataplane/worker.h"
#include "kernel-config/probe.h"

namespace cvmgate {
namespace {

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
  auto parsed = ParseArgs(args, [](std::string_view name) {
    return name == "json" || name == "help" ? ArgKind::kSwitch
           : name == "wg-interface"         ? ArgKind::kOption
                                            : ArgKind::kUnknown;
  });
  if (!parsed.ok() || !parsed->positional.empty()) {
    std::string why = parsed.ok() ? absl::StrCat("unexpected argument '", parsed->positional[0], "'")
                      : absl::IsNotFound(parsed.status())
                          ? absl::StrCat("unexpected argument '",
                                         absl::StripPrefix(parsed.status().message(), "unknown flag "), "'")
                          : std::string(parsed.status().message());
    Log("probe: ", why, " (see cvmgate probe --help)");
    return 2;
  }
  if (parsed->Has("help")) {
    std::fputs("usage: cvmgate probe [--json] [--wg-interface IF]\n\n"
                 "Tries io_uring and each ring operation cvmgate uses, splice on TCP, kTLS (TLS 1.2/1.3 ciphers,\n"
                 "TX and RX), kernel WireGuard and wireguard-go, nftables, the descriptor limit and the sysctl\n"
                 "profile (kernel-config/sysctl.d; per-interface ones for IF), and says what cvmgate uses for\n"
                 "each. Exit status 1 only when a required feature is missing.\n",
               stdout);
    return 0;
  }
  bool json = parsed->Has("json");
  ProbeFacts facts = ProbeKernel(parsed->Get("wg-interface"));
  ProbeDecisions decisions = Decide(facts);
  std::fputs((json ? ProbeJson(facts, decisions) : ProbeTable(facts, decisions)).c_str(), stdout);
  return decisions.ok() ? 0 : 1;
}

std::string HostName() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

// The registry's store: the state file, locked (in `lock`) so that one daemon owns it, or etcd.
absl::StatusOr<std::unique_ptr<RegistryStore>> OpenRegistryStore(const Config& config, Fd& lock) {
  if (config.etcd_endpoints.empty()) {
    // Before anything is bound or replaced: one state file, one daemon.
    auto state_lock = LockBeside(config.state_file);
    if (!state_lock.ok()) return state_lock.status();
    lock = *std::move(state_lock);
    return std::unique_ptr<RegistryStore>(std::make_unique<FileStore>(config.state_file));
  }
  EtcdOptions o;
  o.endpoints = config.etcd_endpoints;
  o.ca_file = config.registry_ca;
  o.cert_file = config.registry_cert;
  o.key_file = config.registry_key;
  auto store = EtcdStore::Open(o, config.registry_prefix);
  if (!store.ok()) return store.status();
  return std::unique_ptr<RegistryStore>(*std::move(store));
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

// `cvmgate check-config [--config FILE] [flags]`: everything the daemon would read at its start,
// checked without starting it: the flags and the file, the certificates and keys, the access log's
// and the admin token's files. Exit 1 naming the first problem.
int CheckConfigCommand(const std::vector<std::string>& args) {
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::fputs("usage: cvmgate check-config [--config FILE] [flags]\n\n"
               "Reads the flags as the daemon would (the --config file first, then the command line) and\n"
               "checks them, the certificates and their keys, and the files the daemon would open, without\n"
               "starting it. Exit status 0 when it would start, 1 with the reason when not.\n",
               stdout);
    return 0;
  }
  auto config = ParseFlags(args);
  if (!config.ok()) {
    Log("check-config: ", config.status().message());
    return 1;
  }
  if (config->help || config->version) {
    Log("check-config: --help and --version are not settings");
    return 1;
  }
  auto tls = TlsContexts::Load(config->base_domains, config->tls_certs, nullptr, config->tls_policy);
  if (!tls.ok()) {
    Log("check-config: ", tls.status().message());
    return 1;
  }
  if (!config->admin_token_file.empty()) {
    if (auto t = ReadSmallFile(config->admin_token_file); !t.ok() || t->empty()) {
      Log("check-config: --admin-token-file ", config->admin_token_file, ": ",
          t.ok() ? "empty" : t.status().message());
      return 1;
    }
  }
  if (config->access_log.enabled() && config->access_log.target != "stderr") {
    const std::string& path = config->access_log.target;
    std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/') + 1);
    if (access(path.c_str(), W_OK) != 0 && access(dir.c_str(), W_OK) != 0) {
      Log("check-config: --access-log=", path, ": neither the file nor its directory is writable");
      return 1;
    }
  }
  std::printf("cvmgate: configuration ok%s: %zu listeners, base domains %s, %zu certificates\n",
              config->config_file.empty() ? "" : absl::StrCat(" (", config->config_file, ")").c_str(),
              config->listen.size(), absl::StrJoin(config->base_domains, " ").c_str(), config->tls_certs.size());
  return 0;
}

// Whether the inherited admin socket `fd` is bound where `address` says (a changed --admin is bound anew).
bool BoundAt(int fd, const AdminAddress& address) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return false;
  if (ss.ss_family == AF_UNIX) {
    return address.unix_socket && std::string(reinterpret_cast<sockaddr_un&>(ss).sun_path) == address.path;
  }
  return !address.unix_socket && SockaddrPort(ss) == address.port;
}

// The inherited listening sockets spread over `workers`: the k-th socket of an address goes to worker
// k mod workers (a worker may get several of one address; one without any binds its own).
std::vector<std::vector<Fd>> SpreadListeners(std::vector<Fd> listeners, int workers) {
  std::vector<std::vector<Fd>> out(workers);
  std::map<std::string, int> seen;
  for (Fd& fd : listeners) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    int k = seen[SockaddrText(ss)]++;
    out[k % workers].push_back(std::move(fd));
  }
  return out;
}

// The path this binary was started from, read before anything could replace the file there.
std::string OwnPath() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const std::vector<std::string> own_argv(argv, argv + argc);
  const std::string own_path = OwnPath();
  // Started by an upgrade: the running process waits on this channel for us to take its sockets.
  int handover_fd = -1;
  if (const char* v = getenv(kHandoverEnv); v != nullptr) {
    if (!absl::SimpleAtoi(v, &handover_fd) || fcntl(handover_fd, F_GETFD) < 0) handover_fd = -1;
    if (handover_fd >= 0) fcntl(handover_fd, F_SETFD, FD_CLOEXEC);
    unsetenv(kHandoverEnv);
  }
  if (!args.empty() && args[0] == "probe") return ProbeCommand({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "check-config") return CheckConfigCommand({args.begin() + 1, args.end()});
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
  // Signals are taken by this thread alone, before any other thread starts (etcd's gRPC client, the
  // tunnel's supervisor, the workers): each inherits them blocked.
  Workers pool;
  ControlLoop loop(pool, config.health_poll, config.drain_timeout);
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
  // A successor takes the sockets once everything that can be checked before has been.
  Inherited inherited;
  if (handover_fd >= 0) {
    auto tls = TlsContexts::Load(config.base_domains, config.tls_certs, nullptr, config.tls_policy);
    if (!tls.ok()) {
      Log("upgrade: ", tls.status().message());
      return 1;
    }
    auto got = RequestTakeover(handover_fd, absl::Seconds(60));
    if (!got.ok()) {
      Log("upgrade: ", got.status().message());
      return 1;
    }
    inherited = *std::move(got);
    Log("upgrade: took over ", inherited.listeners.size(), " listening sockets",
        inherited.admin.valid() ? " and the admin API's" : "", " from the running process");
  }
  Fd state_lock;
  auto store = OpenRegistryStore(config, state_lock);
  if (!store.ok()) {
    Log(store.status().message());
    return 1;
  }
  EtcdStore* etcd = dynamic_cast<EtcdStore*>(store->get());
  Registry registry(*std::move(ip_pool), *std::move(store));
  if (auto s = registry.Load(); !s.ok()) {
    Log(s.message());
    return 1;
  }
  if (etcd != nullptr) etcd->StartWatching();
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
  // A host sharing its registry announces itself, for the CVMs to peer with every host.
  std::string node_name;
  if (etcd != nullptr) {
    node_name = config.node_name.empty() ? HostName() : config.node_name;
    GatewayNode self{node_name, "", config.wg_endpoint, ""};
    if (wg_setup) {
      auto public_key = PublicKeyFromPrivate(wg_setup->private_key);
      if (!public_key.ok()) {
        Log("wireguard: ", public_key.status().message());
        return 1;
      }
      self.public_key = public_key->ToBase64();
      self.tunnel_address = config.wg_address;
    }
    if (auto s = etcd->Announce(self); !s.ok()) {
      Log(s.message());
      return 1;
    }
    Log("registry: gateway host ", node_name, " announced in ", registry.store().name());
  }

  // The tunnel is kept on a thread of its own: no WireGuard call ever stalls
  // the control loop, and a dead or deleted interface is brought back.
  std::unique_ptr<WireGuardSupervisor> supervisor;
  if (wg_setup) {
    supervisor = std::make_unique<WireGuardSupervisor>(
        SupervisorOptions(config, wg_address_cidr, wg_setup->private_key), std::move(wg_setup->wg),
        SystemTunnelPlatform());
  }

  uint32_t max_conns = MaxConnections(config, workers);
  uint32_t per_worker = (max_conns + workers - 1) / workers;
  auto empty = RouteSnapshot::Build({});
  SnapshotDomain domain(workers, *std::move(empty));
  // Listeners are bound first: the control plane must know them, so that no
  // instance ever routes a connection back into the gateway.
  const WorkerOptions worker_options = WorkerOptionsOf(config);
  std::vector<std::vector<Fd>> inherited_listeners = SpreadListeners(std::move(inherited.listeners), workers);
  for (int i = 0; i < workers; ++i) {
    pool.push_back(std::make_unique<Worker>(i, worker_options, domain.reader(i), per_worker));
    if (auto s = pool.back()->Init(config.listen, std::move(inherited_listeners[i])); !s.ok()) {
      Log(s.message());
      return 1;
    }
  }
  std::vector<Worker*> workers_of_process;
  for (auto& w : pool) workers_of_process.push_back(w.get());
  for (auto& w : pool) w->SetPeers(workers_of_process);
  std::unique_ptr<AccessLog> access_log;
  if (config.access_log.enabled()) {
    auto opened = AccessLog::Open(config.access_log, workers);
    if (!opened.ok()) {
      Log(opened.status().message());
      return 1;
    }
    access_log = *std::move(opened);
    for (auto& w : pool) w->SetAccessLog(access_log.get());
    loop.SetAccessLog(access_log.get());
    access_log->Start();
  }
  RealClock clock;
  ControlOptions options{config.healthy_within, config.base_domains, config.tls_certs, config.tls_policy,
                         config.wg_endpoint,
                         config.wg_keep_unknown_peers, config.app_max_connections, config.ticket_key_rotation,
                         config.proxy_protocol, {}, node_name};
  for (const ListenAddress& l : config.listen) options.listeners.push_back(l.addr);
  options.metrics_per_app = config.metrics_per_app;
  ControlPlane control(options, registry, domain, supervisor.get(), clock,
                       [&loop] { return loop.WorkerMetrics(); });
  if (supervisor) {
    // The first reading, with the registry's peers set, before the first routes.
    supervisor->Step(absl::Now());
    if (auto s = supervisor->Start(loop.tunnel_news()); !s.ok()) {
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
      registry.store().name());

  // SIGHUP: the flags and the config file read again; what can change while running is applied.
  std::vector<std::pair<std::string, std::string>> in_force = config.effective;
  loop.SetConfigReread([&] {
    auto fresh = ParseFlags(args);
    if (!fresh.ok()) {
      Log("config: ", fresh.status().message(), "; the settings in force stay");
      return;
    }
    ConfigChanges changes = CompareConfigs(in_force, fresh->effective);
    // The log thread and the workers' queues exist only when the log was on at the start.
    if (std::find(changes.live.begin(), changes.live.end(), "access-log") != changes.live.end() &&
        (access_log == nullptr) != !fresh->access_log.enabled()) {
      std::erase(changes.live, "access-log");
      changes.restart.push_back("access-log");
    }
    if (changes.empty()) {
      Log("config: unchanged");
      return;
    }
    control.SetLiveOptions(fresh->tls_certs, fresh->tls_policy, fresh->app_max_connections, fresh->metrics_per_app);
    const WorkerOptions timeouts = WorkerOptionsOf(*fresh);
    for (auto& w : pool) w->SetTimeouts(timeouts);
    if (access_log != nullptr && fresh->access_log.enabled()) {
      access_log->Reconfigure(fresh->access_log.target, fresh->access_log.format);
    }
    if (!changes.live.empty()) Log("config: applied ", DescribeChanges(in_force, fresh->effective, changes.live));
    if (!changes.restart.empty()) {
      Log("config: changed, but take effect only at a restart: ",
          DescribeChanges(in_force, fresh->effective, changes.restart));
    }
    in_force = AfterLiveChanges(in_force, fresh->effective, changes);
  });

  // POST /v1/upgrade (cvmgatectl upgrade, systemctl reload): the successor is started and handed
  // every listening socket and the admin API's; this process drains once it accepts.
  AdminServer* admin_server = nullptr;
  auto upgrade = [&]() -> HttpResponse {
    auto failed = [](const absl::Status& s) {
      Log("upgrade failed, this process goes on serving: ", s.message());
      return HttpResponse{500, "application/json", nlohmann::json({{"error", s.message()}}).dump()};
    };
    if (own_path.empty()) return failed(absl::InternalError("the path of this binary is unknown"));
    Log("upgrade: starting ", own_path, " ", absl::StrJoin(args, " "));
    auto successor = Successor::Spawn(own_path, own_argv);
    if (!successor.ok()) return failed(successor.status());
    if (auto s = successor->WaitForRequest(absl::Seconds(60)); !s.ok()) {
      successor->Abandon();
      return failed(s);
    }
    std::vector<int> listeners;
    for (auto& w : pool) {
      for (int fd : w->listener_fds()) listeners.push_back(fd);
    }
    state_lock.reset();  // the successor reads the registry from here on
    absl::Status handed = successor->Send(listeners, admin_server->listen_fd());
    if (handed.ok()) handed = successor->WaitReady(absl::Seconds(60));
    if (!handed.ok()) {
      successor->Abandon();
      if (!config.state_file.empty() && config.etcd_endpoints.empty()) {
        auto relock = LockBeside(config.state_file);
        if (relock.ok()) state_lock = *std::move(relock);
        else Log("upgrade: the state file could not be locked again: ", relock.status().message());
      }
      return failed(handed);
    }
    admin_server->Disown();  // its socket file is the successor's now
    admin_server->StopAccepting();
    loop.RequestStop();
    uint64_t live = 0;
    for (auto& w : pool) live += w->live_connections();
    Log("upgrade: pid ", successor->pid(), " serves now; this process drains ", live, " connections and exits");
    return HttpResponse{200, "application/json",
                        nlohmann::json({{"pid", successor->pid()}, {"old_pid", getpid()}, {"draining", live}}).dump()};
  };
  auto handle = [&](const HttpRequest& r) {
    if (r.path != "/v1/upgrade") return control.Handle(r);
    if (r.method != "POST") return HttpResponse{405, "application/json", R"({"error":"use POST"})"};
    return upgrade();
  };
  absl::StatusOr<std::unique_ptr<AdminServer>> admin;
  if (inherited.admin.valid() && BoundAt(inherited.admin.get(), *admin_address)) {
    admin = AdminServer::Adopt(*admin_address, std::move(inherited.admin), token, handle);
  } else {
    inherited.admin.reset();  // a changed --admin: bound anew (the old path goes with the old process)
    admin = AdminServer::Listen(*admin_address, token, handle);
  }
  if (!admin.ok()) {
    Log(admin.status().message());
    return 1;
  }
  admin_server = admin->get();
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
  for (auto& w : pool) {
    if (w->start_status().ok()) continue;
    Log("worker: ", w->start_status().message());
    for (auto& other : pool) other->Stop();
    for (auto& t : threads) t.join();
    return 1;
  }
  std::vector<std::string> addrs;
  for (auto& l : config.listen) addrs.push_back(l.text);
  Log("admin API on ", (*admin)->address().text);
  std::vector<int> worker_cpus;
  for (int i = 0; i < workers && !cpus.empty(); ++i) worker_cpus.push_back(CpuForWorker(cpus, i));
  Log("ready, listening on ", absl::StrJoin(addrs, " "), " (", workers, " workers ",
      cpus.empty() ? std::string("not pinned") : absl::StrCat("on CPUs ", absl::StrJoin(worker_cpus, ",")),
      ", splice-mode ", SpliceModeName(config.splice_mode), ", ring task work ",
      RingTaskRunName(pool[0]->ring_taskrun()), ", max ", per_worker * workers, " connections, base domains ",
      absl::StrJoin(config.base_domains, " "), ")");

  if (handover_fd >= 0) {
    if (auto s = ReportReady(handover_fd); !s.ok()) Log("upgrade: ", s.message());
    close(handover_fd);
    NotifySystemd(absl::StrCat("MAINPID=", getpid(), "\nREADY=1"));
  } else {
    NotifySystemd("READY=1");
  }
  loop.Run(control, domain, **admin, registry.store().changes_fd());
  // After a handover the successor keeps the tunnel: this process no longer changes it.
  if (admin_server != nullptr && supervisor && loop.stop_requested()) supervisor->Stop();
  for (auto& w : pool) w->Stop();
  for (auto& t : threads) t.join();
  if (access_log) access_log->Stop();  // the last connections' lines are written first
  if (supervisor) supervisor->Stop();
  loop.PrintCounters(domain);
  Log("stopped");
  return 0;
}

}  // namespace
}  // namespace cvmgate

int main(int argc, char** argv) { return cvmgate::Main(argc, argv); }
