// Daemon configuration: the command-line flags of `cvmgate`, with their defaults.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <absl/status/statusor.h>
#include <absl/time/time.h>
#include "dataplane/options.h"

namespace cvmgate {

struct Config {
  std::vector<ListenAddress> listen;
  std::vector<std::string> base_domains;
  std::string state_file = "/var/lib/cvmgate/state.json";
  // Where the registry is kept: the state file, or etcd for several gateway hosts.
  std::vector<std::string> etcd_endpoints;  // --registry etcd:URL,...; empty: --registry file
  std::string registry_prefix = "/cvmgate/";
  std::string node_name;  // this host in the cluster (--node-name; empty: the host name)
  std::string registry_ca;
  std::string registry_cert;
  std::string registry_key;
  std::string wg_pool = "10.0.0.0/8";    // CVM tunnel addresses are allocated from here
  std::string wg_address = "10.0.0.1";   // the gateway's own tunnel address, never allocated
  std::string admin = "unix:/run/cvmgate/admin.sock";
  std::string admin_token_file;  // required for a tcp: admin address
  std::string wg_interface;      // empty: no WireGuard (static instances only)
  std::string wg_backend = "auto";
  std::string wg_private_key_file;
  uint16_t wg_listen_port = 51820;
  std::string wg_endpoint;  // host:port CVMs dial, returned by register
  bool wg_keep_unknown_peers = false;
  absl::Duration wg_restart_after = absl::Seconds(10);
  absl::Duration health_poll = absl::Seconds(10);
  absl::Duration healthy_within = absl::Minutes(5);
  int workers = 0;  // 0: one per online CPU
  bool pin_workers = true;  // --cpu-affinity=auto: worker N on the Nth allowed CPU
  absl::Duration hello_timeout = absl::Seconds(5);
  absl::Duration handshake_timeout = absl::Seconds(5);
  std::vector<TlsCertSpec> tls_certs;
  TlsPolicy tls_policy;
  bool proxy_protocol = false;  // send a PROXY v2 header to instances
  absl::Duration ticket_key_rotation = absl::Hours(1);
  uint32_t hello_max_bytes = 65536;
  absl::Duration connect_timeout = absl::Seconds(5);
  int connect_tries = 3;
  absl::Duration idle_timeout = absl::Minutes(10);
  absl::Duration drain_timeout = absl::Seconds(30);
  SpliceMode splice_mode = SpliceMode::kInline;
  RingTaskRun ring_taskrun = RingTaskRun::kAuto;
  bool rebalance = true;
  uint32_t pipe_size = 1 << 20;
  uint32_t backend_rcvbuf = 1 << 20;  // SO_RCVBUF of connections to instances; 0: the kernel's autotuning
  uint32_t max_connections = 0;  // per process; 0: derived from the descriptor limit
  int32_t app_max_connections = 2000;
  int backlog = 4096;
  AccessLogOptions access_log;
  bool metrics_per_app = true;
  std::string config_file;  // --config
  // Every flag as it took effect, the file's first, in order (what a reload compares).
  std::vector<std::pair<std::string, std::string>> effective;
  bool help = false;
  bool version = false;
};

// Parses argv (without argv[0]), after the --config file when one is named. Errors name the flag and
// say what it takes (and the file and line for the file's).
absl::StatusOr<Config> ParseFlags(const std::vector<std::string>& args);

// The flags a TOML config file gives, as (name, value) in the file's order: a key per flag by the
// same name; a string, a whole number, true/false, or a list of these for a flag that repeats.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadConfigFile(const std::string& path);

// The --help text: every flag with its default.
std::string Usage();

absl::StatusOr<ListenAddress> ParseListenAddress(const std::string& text);

// What a re-read config changes, flag by flag (by name, in --help order), split into what applies
// while running (certificates, TLS policy, limits, timeouts, log settings) and what needs a restart.
struct ConfigChanges {
  std::vector<std::string> live;
  std::vector<std::string> restart;
  bool empty() const { return live.empty() && restart.empty(); }
};
ConfigChanges CompareConfigs(const std::vector<std::pair<std::string, std::string>>& in_force,
                             const std::vector<std::pair<std::string, std::string>>& fresh);
// "hello-timeout 5s -> 2s" for each of `names` (a flag not given: "(default)").
std::string DescribeChanges(const std::vector<std::pair<std::string, std::string>>& in_force,
                            const std::vector<std::pair<std::string, std::string>>& fresh,
                            const std::vector<std::string>& names);
// `fresh` where it changed a live flag, `in_force` for the rest: what is in force after applying.
std::vector<std::pair<std::string, std::string>> AfterLiveChanges(
    const std::vector<std::pair<std::string, std::string>>& in_force,
    const std::vector<std::pair<std::string, std::string>>& fresh, const ConfigChanges& changes);

// What each data-plane worker is told, from the flags.
WorkerOptions WorkerOptionsOf(const Config& config);

}  // namespace cvmgate
