// Daemon configuration: a table-driven flag parser, so --help and parsing never disagree.
#include "control/config.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <functional>
#include <utility>
#include <vector>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_join.h>

#include <toml++/toml.h>

#include "control/args.h"
#include "control/etcd/client.h"
#include "dataplane/addresses.h"
#include "dataplane/host_name.h"
#include "dataplane/strings.h"

namespace cvmgate {
namespace {

struct Flag {
  const char* name;
  const char* arg;  // nullptr: a boolean flag without value
  const char* default_text;
  const char* help;
  std::function<absl::Status(Config&, const std::string&)> set;
  bool repeats = false;  // each value adds one (--listen); a config file gives them as an array
};

// Flags whose every value counts; on the command line they replace the config file's list.
bool Repeats(std::string_view name) { return name == "listen" || name == "base-domain" || name == "tls-cert"; }

absl::Status Bad(const char* flag, const std::string& value, const std::string& want) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value, ": ", want));
}

auto DurationFlag(const char* name, absl::Duration Config::*field) {
  return [name, field](Config& c, const std::string& v) {
    absl::Duration d;
    if (!absl::ParseDuration(v, &d) || d <= absl::ZeroDuration()) {
      return Bad(name, v, "expected a positive duration such as 500ms, 5s or 10m");
    }
    c.*field = d;
    return absl::OkStatus();
  };
}

auto StringFlag(std::string Config::*field) {
  return [field](Config& c, const std::string& v) {
    c.*field = v;
    return absl::OkStatus();
  };
}

template <typename T>
auto IntFlag(const char* name, T Config::*field, int64_t min, int64_t max) {
  return [=](Config& c, const std::string& v) {
    int64_t n;
    if (!absl::SimpleAtoi(v, &n) || n < min || n > max) {
      return Bad(name, v, absl::StrCat("expected a whole number from ", min, " to ", max));
    }
    c.*field = static_cast<T>(n);
    return absl::OkStatus();
  };
}

// A flag that takes one of a few words, each setting `field` to its value; any other word is
// refused with the list ("expected inline, uring or copy").
template <typename T>
auto ChoiceFlag(const char* name, T Config::*field, std::vector<std::pair<std::string, T>> choices) {
  return [=](Config& c, const std::string& v) {
    std::string want = "expected ";
    for (size_t i = 0; i < choices.size(); ++i) {
      if (choices[i].first == v) {
        c.*field = choices[i].second;
        return absl::OkStatus();
      }
      absl::StrAppend(&want, i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ", choices[i].first);
    }
    return Bad(name, v, want);
  };
}

const std::vector<Flag>& Flags() {
  static const std::vector<Flag> flags = {
      {"listen", "ADDR:PORT", "0.0.0.0:443",
       "address to accept TLS on; repeat for several (IPv6 as [::]:443)",
       [](Config& c, const std::string& v) {
         auto a = ParseListenAddress(v);
         if (!a.ok()) return a.status();
         c.listen.push_back(*a);
         return absl::OkStatus();
       }},
      {"base-domain", "DOMAIN", "(required)",
       "domain whose names <id>[-<port>][s|g].DOMAIN are routed; repeat for several",
       [](Config& c, const std::string& v) {
         auto d = NormalizeBaseDomain(v);
         if (!d.ok()) return d.status();
         c.base_domains.push_back(*d);
         return absl::OkStatus();
       }},
      {"state", "FILE", "/var/lib/cvmgate/state.json",
       "registry of apps and instances (JSON, written crash-safely); reloaded on SIGHUP",
       StringFlag(&Config::state_file)},
      {"wg-pool", "CIDR", "10.0.0.0/8", "IPv4 pool from which each registered CVM gets one /32",
       StringFlag(&Config::wg_pool)},
      {"wg-address", "IP", "10.0.0.1", "the gateway's own tunnel address inside --wg-pool (never allocated)",
       StringFlag(&Config::wg_address)},
      {"registry", "file|etcd:URL,...", "file",
       "where the registry is kept: the --state file (one gateway host), or etcd shared by several "
       "(etcd:http://etcd-1:2379,http://etcd-2:2379; https with --registry-ca)",
       [](Config& c, const std::string& v) {
         if (v == "file") {
           c.etcd_endpoints.clear();
           return absl::OkStatus();
         }
         if (v.rfind("etcd:", 0) != 0) return Bad("registry", v, "expected file or etcd:URL[,URL...]");
         auto endpoints = ParseEtcdEndpoints(v.substr(5));
         if (!endpoints.ok()) return Bad("registry", v, std::string(endpoints.status().message()));
         c.etcd_endpoints = *std::move(endpoints);
         return absl::OkStatus();
       }},
      {"registry-prefix", "PREFIX", "/cvmgate/", "etcd key prefix of this gateway cluster's registry",
       StringFlag(&Config::registry_prefix)},
      {"node-name", "NAME", "(the host name)", "this gateway host's name among those sharing the registry",
       StringFlag(&Config::node_name)},
      {"registry-ca", "FILE", "", "CA certificate that signs the etcd members' (https endpoints)",
       StringFlag(&Config::registry_ca)},
      {"registry-cert", "FILE", "", "client certificate for etcd, with --registry-key",
       StringFlag(&Config::registry_cert)},
      {"registry-key", "FILE", "", "the client certificate's private key", StringFlag(&Config::registry_key)},
      {"admin", "unix:PATH|tcp:127.0.0.1:PORT", "unix:/run/cvmgate/admin.sock",
       "admin API (register, list, explain, metrics); TCP only on loopback and with --admin-token-file",
       StringFlag(&Config::admin)},
      {"admin-token-file", "FILE", "", "bearer token for the TCP admin API (requests without it get 401)",
       StringFlag(&Config::admin_token_file)},
      {"wg-interface", "NAME", "", "WireGuard interface to the CVMs; created when missing (empty: static instances only)",
       StringFlag(&Config::wg_interface)},
      {"wg-backend", "auto|netlink|uapi", "auto", "kernel WireGuard over netlink, or wireguard-go's UAPI socket",
       ChoiceFlag<std::string>("wg-backend", &Config::wg_backend,
                               {{"auto", "auto"}, {"netlink", "netlink"}, {"uapi", "uapi"}})},
      {"wg-private-key-file", "FILE", "",
       "the gateway's WireGuard private key (base64); generated and written 0600 when the file does not exist",
       StringFlag(&Config::wg_private_key_file)},
      {"wg-listen-port", "PORT", "51820", "UDP port of the WireGuard interface",
       IntFlag("wg-listen-port", &Config::wg_listen_port, 1, 65535)},
      {"wg-endpoint", "HOST:PORT", "", "the gateway's WireGuard endpoint as CVMs reach it (returned by register)",
       StringFlag(&Config::wg_endpoint)},
      {"wg-keep-unknown-peers", nullptr, "", "leave WireGuard peers the registry does not know (default: remove them)",
       [](Config& c, const std::string&) {
         c.wg_keep_unknown_peers = true;
         return absl::OkStatus();
       }},
      {"wg-restart-after", "DURATION", "10s",
       "a wireguard-go that has answered nothing for this long is killed and started again (a dead one at once)",
       DurationFlag("wg-restart-after", &Config::wg_restart_after)},
      {"health-poll", "DURATION", "10s", "how often WireGuard handshakes are read",
       DurationFlag("health-poll", &Config::health_poll)},
      {"healthy-within", "DURATION", "5m", "an instance is healthy while its last handshake is younger than this",
       DurationFlag("healthy-within", &Config::healthy_within)},
      {"workers", "N", "online CPUs", "data-plane threads, each with its own io_uring and listeners",
       IntFlag("workers", &Config::workers, 1, 1024)},
      {"cpu-affinity", "auto|off", "auto",
       "auto pins worker N to the Nth CPU this process may run on (in turn when workers outnumber them); "
       "off leaves them to the scheduler",
       ChoiceFlag<bool>("cpu-affinity", &Config::pin_workers, {{"auto", true}, {"off", false}})},
      {"hello-timeout", "DURATION", "5s", "time a client has to send its whole ClientHello",
       DurationFlag("hello-timeout", &Config::hello_timeout)},
      {"handshake-timeout", "DURATION", "5s", "time a terminated client has to finish its TLS handshake",
       DurationFlag("handshake-timeout", &Config::handshake_timeout)},
      {"tls-cert", "DOMAIN=CHAIN,KEY", "",
       "wildcard certificate chain and key (PEM) that terminate TLS for *.DOMAIN; repeat per base domain, and "
       "for one domain once per key type (an ECDSA and an RSA one: the client's signature algorithms choose)",
       [](Config& c, const std::string& v) {
         size_t eq = v.find('=');
         size_t comma = v.find(',', eq == std::string::npos ? 0 : eq);
         if (eq == std::string::npos || comma == std::string::npos || eq == 0 || comma == eq + 1 ||
             comma + 1 == v.size()) {
           return Bad("tls-cert", v, "expected DOMAIN=CHAIN.pem,KEY.pem");
         }
         auto d = NormalizeBaseDomain(v.substr(0, eq));
         if (!d.ok()) return d.status();
         c.tls_certs.push_back({*d, v.substr(eq + 1, comma - eq - 1), v.substr(comma + 1)});
         return absl::OkStatus();
       }},
      {"tls-min-version", "1.2|1.3", "1.2", "oldest TLS version a terminated client may use",
       [](Config& c, const std::string& v) {
         if (v == "1.2") c.tls_policy.min_version = 0x0303;
         else if (v == "1.3") c.tls_policy.min_version = 0x0304;
         else return Bad("tls-min-version", v, "expected 1.2 or 1.3");
         return absl::OkStatus();
       }},
      {"tls-ciphers", "LIST", "ECDHE+AESGCM:ECDHE+CHACHA20", "TLS 1.2 cipher list (OpenSSL syntax), server preference",
       [](Config& c, const std::string& v) {
         c.tls_policy.ciphers = v;
         return absl::OkStatus();
       }},
      {"tls-ciphersuites", "LIST", "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
       "TLS 1.3 cipher suites (OpenSSL syntax)",
       [](Config& c, const std::string& v) {
         c.tls_policy.ciphersuites = v;
         return absl::OkStatus();
       }},
      {"ktls", "auto|off", "auto",
       "kernel TLS offload after the handshake where the kernel has it (userspace TLS otherwise, counted)",
       [](Config& c, const std::string& v) {
         if (v != "auto" && v != "off") return Bad("ktls", v, "expected auto or off");
         c.tls_policy.ktls = v == "auto";
         return absl::OkStatus();
       }},
      {"ktls-after-bytes", "BYTES", "131072",
       "a terminated connection starts in userspace TLS and moves to kTLS once it has relayed this many "
       "bytes (both directions) or reached --ktls-after; 0 moves it at the handshake",
       [](Config& c, const std::string& v) {
         uint64_t n;
         if (!absl::SimpleAtoi(v, &n)) return Bad("ktls-after-bytes", v, "expected a whole number of bytes");
         c.tls_policy.ktls_after.bytes = n;
         return absl::OkStatus();
       }},
      {"ktls-after", "DURATION", "2s",
       "or once it has lived this long (checked when its bytes move)",
       [](Config& c, const std::string& v) {
         absl::Duration d;
         if (!absl::ParseDuration(v, &d) || d <= absl::ZeroDuration()) {
           return Bad("ktls-after", v, "expected a positive duration such as 500ms, 2s or 1m");
         }
         c.tls_policy.ktls_after.ms = absl::ToInt64Milliseconds(d);
         return absl::OkStatus();
       }},
      {"ticket-key-rotation", "DURATION", "1h",
       "session-ticket key lifetime: tickets resume for up to two periods, then need a full handshake",
       DurationFlag("ticket-key-rotation", &Config::ticket_key_rotation)},
      {"proxy-protocol", nullptr, "",
       "send a PROXY protocol v2 header to each instance so it sees the client's address (all modes); "
       "an app may override it (cvmgatectl app-set)",
       [](Config& c, const std::string&) {
         c.proxy_protocol = true;
         return absl::OkStatus();
       }},
      {"hello-max-bytes", "BYTES", "65536", "largest ClientHello accepted, in wire bytes",
       IntFlag("hello-max-bytes", &Config::hello_max_bytes, 512, 1 << 20)},
      {"connect-timeout", "DURATION", "5s", "time to connect to one instance",
       DurationFlag("connect-timeout", &Config::connect_timeout)},
      {"connect-tries", "N", "3", "instances tried before a connection is given up",
       IntFlag("connect-tries", &Config::connect_tries, 1, 16)},
      {"idle-timeout", "DURATION", "10m", "a relay with no bytes either way for this long is closed",
       DurationFlag("idle-timeout", &Config::idle_timeout)},
      {"drain-timeout", "DURATION", "30s", "on SIGTERM, how long live relays may finish",
       DurationFlag("drain-timeout", &Config::drain_timeout)},
      {"splice-mode", "inline|uring|copy", "inline",
       "relay engine: splice inline after an io_uring poll, IORING_OP_SPLICE, or a userspace copy",
       ChoiceFlag<SpliceMode>("splice-mode", &Config::splice_mode,
                              {{"inline", SpliceMode::kInline}, {"uring", SpliceMode::kUring},
                               {"copy", SpliceMode::kCopy}})},
      {"ring-taskrun", "auto|defer|coop|off", "auto",
       "how a worker's io_uring hands it completions: deferred to the worker's own wait (single issuer, Linux "
       "6.1), cooperatively, or interrupting it as they come; auto takes the first the kernel has",
       ChoiceFlag<RingTaskRun>("ring-taskrun", &Config::ring_taskrun,
                               {{"auto", RingTaskRun::kAuto}, {"defer", RingTaskRun::kDefer},
                                {"coop", RingTaskRun::kCoop}, {"off", RingTaskRun::kOff}})},
      {"rebalance", "on|off", "on",
       "with several workers, one holding more connections than another hands new ones to it (SO_REUSEPORT's "
       "hash may put a few long-lived connections on one worker while another idles)",
       ChoiceFlag<bool>("rebalance", &Config::rebalance, {{"on", true}, {"off", false}})},
      {"pipe-size", "BYTES", "1048576",
       "capacity of each relay pipe (F_SETPIPE_SZ); pipes are pooled, so few exist at once; 0 keeps 64 KiB",
       IntFlag("pipe-size", &Config::pipe_size, 0, 1 << 26)},
      {"backend-rcvbuf", "BYTES", "1048576",
       "receive buffer of each connection to an instance (SO_RCVBUF, capped by net.core.rmem_max): what a relay "
       "whose client stopped reading holds from the instance; 0 leaves it to the kernel's autotuning",
       IntFlag("backend-rcvbuf", &Config::backend_rcvbuf, 0, 1 << 28)},
      {"max-connections", "N", "from the fd limit",
       "connections held at once (each relay takes 2 descriptors); past it new ones are refused",
       IntFlag("max-connections", &Config::max_connections, 1, 1 << 24)},
      {"app-max-connections", "N", "2000",
       "connections one app may hold at once; past it new ones are refused; an app may override it "
       "(cvmgatectl app-set)",
       IntFlag("app-max-connections", &Config::app_max_connections, 1, 1 << 24)},
      {"backlog", "N", "4096", "listen backlog of each listening socket",
       IntFlag("backlog", &Config::backlog, 1, 1 << 20)},
      {"config", "FILE", "",
       "TOML file of flags, one key per flag by the same name (listen = [\"0.0.0.0:443\"], hello-timeout = \"5s\", "
       "proxy-protocol = true); flags given on the command line win; SIGHUP reads it again",
       [](Config& c, const std::string& v) {
         c.config_file = v;
         return absl::OkStatus();
       }},
      {"help", nullptr, "", "print this help and exit",
       [](Config& c, const std::string&) {
         c.help = true;
         return absl::OkStatus();
       }},
      {"access-log", "stderr|FILE|off", "off",
       "one line per connection (time, client, SNI, app, instance, mode, TLS, bytes, times, close reason), "
       "written by a thread of its own; a FILE is reopened on SIGUSR2",
       [](Config& c, const std::string& v) {
         if (v.empty()) return Bad("access-log", v, "expected stderr, off or a file path");
         c.access_log.target = v;
         return absl::OkStatus();
       }},
      {"access-log-format", "logfmt|json", "logfmt", "the access log's lines: key=value pairs, or one JSON object",
       [](Config& c, const std::string& v) {
         if (v == "logfmt") c.access_log.format = AccessLogFormat::kLogfmt;
         else if (v == "json") c.access_log.format = AccessLogFormat::kJson;
         else return Bad("access-log-format", v, "expected logfmt or json");
         return absl::OkStatus();
       }},
      {"access-log-queue", "N", "4096",
       "access-log records each worker may hold for the log thread; beyond, they are dropped and counted "
       "(access_log_dropped), never waited for",
       [](Config& c, const std::string& v) {
         int64_t n;
         if (!absl::SimpleAtoi(v, &n) || n < 16 || n > 1 << 20) {
           return Bad("access-log-queue", v, "expected a whole number from 16 to 1048576");
         }
         c.access_log.queue_records = static_cast<uint32_t>(n);
         return absl::OkStatus();
       }},
      {"metrics-per-app", "on|off", "on",
       "/metrics has gauges per app (live connections, instances, healthy instances): one series each per app",
       ChoiceFlag<bool>("metrics-per-app", &Config::metrics_per_app, {{"on", true}, {"off", false}})},
      {"version", nullptr, "", "print the version and exit",
       [](Config& c, const std::string&) {
         c.version = true;
         return absl::OkStatus();
       }},
  };
  return flags;
}

}  // namespace

namespace {

bool IsLive(std::string_view name) {
  static constexpr std::string_view kLive[] = {
      "tls-cert",     "tls-min-version", "tls-ciphers",       "tls-ciphersuites", "app-max-connections",
      "hello-timeout", "handshake-timeout", "connect-timeout", "idle-timeout",     "access-log",
      "access-log-format", "metrics-per-app"};
  return std::find(std::begin(kLive), std::end(kLive), name) != std::end(kLive);
}

std::vector<std::string> ValuesOf(const std::vector<std::pair<std::string, std::string>>& options,
                                  std::string_view name) {
  std::vector<std::string> out;
  for (const auto& [n, v] : options) {
    if (n == name) out.push_back(v);
  }
  // A flag that does not repeat: the last value is the one in force.
  if (!Repeats(name) && out.size() > 1) out.erase(out.begin(), out.end() - 1);
  return out;
}

}  // namespace

ConfigChanges CompareConfigs(const std::vector<std::pair<std::string, std::string>>& in_force,
                             const std::vector<std::pair<std::string, std::string>>& fresh) {
  ConfigChanges out;
  for (const Flag& f : Flags()) {
    if (ValuesOf(in_force, f.name) == ValuesOf(fresh, f.name)) continue;
    (IsLive(f.name) ? out.live : out.restart).push_back(f.name);
  }
  return out;
}

std::string DescribeChanges(const std::vector<std::pair<std::string, std::string>>& in_force,
                            const std::vector<std::pair<std::string, std::string>>& fresh,
                            const std::vector<std::string>& names) {
  auto text = [](const std::vector<std::string>& values) {
    return values.empty() ? std::string("(default)") : absl::StrJoin(values, " ");
  };
  std::vector<std::string> out;
  for (const std::string& name : names) {
    out.push_back(absl::StrCat(name, " ", text(ValuesOf(in_force, name)), " -> ", text(ValuesOf(fresh, name))));
  }
  return absl::StrJoin(out, ", ");
}

std::vector<std::pair<std::string, std::string>> AfterLiveChanges(
    const std::vector<std::pair<std::string, std::string>>& in_force,
    const std::vector<std::pair<std::string, std::string>>& fresh, const ConfigChanges& changes) {
  auto live = [&](const std::string& name) {
    return std::find(changes.live.begin(), changes.live.end(), name) != changes.live.end();
  };
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& o : in_force) {
    if (!live(o.first)) out.push_back(o);
  }
  for (const auto& o : fresh) {
    if (live(o.first)) out.push_back(o);
  }
  return out;
}

WorkerOptions WorkerOptionsOf(const Config& config) {
  auto ms = [](absl::Duration d) { return absl::ToInt64Milliseconds(d); };
  WorkerOptions o;
  o.base_domains = config.base_domains;
  o.backlog = config.backlog;
  o.hello_max_bytes = config.hello_max_bytes;
  o.hello_timeout_ms = ms(config.hello_timeout);
  o.handshake_timeout_ms = ms(config.handshake_timeout);
  o.connect_timeout_ms = ms(config.connect_timeout);
  o.connect_tries = config.connect_tries;
  o.idle_timeout_ms = ms(config.idle_timeout);
  o.drain_timeout_ms = ms(config.drain_timeout);
  o.splice_mode = config.splice_mode;
  o.ring_taskrun = config.ring_taskrun;
  o.rebalance = config.rebalance;
  o.pipe_size = config.pipe_size;
  o.backend_rcvbuf = config.backend_rcvbuf;
  o.ktls = config.tls_policy.ktls;
  if (config.tls_policy.offload_later()) o.ktls_after = config.tls_policy.ktls_after;
  else o.ktls_after.bytes = 0;
  return o;
}

absl::StatusOr<ListenAddress> ParseListenAddress(const std::string& text) {
  // ":443" listens on every IPv4 address, as nginx's "listen 443".
  auto addr = ParseSockaddr(!text.empty() && text[0] == ':' ? "0.0.0.0" + text : text);
  if (!addr.ok()) return Bad("listen", text, std::string(addr.status().message()));
  ListenAddress out;
  out.text = text;
  out.addr = *addr;
  out.addr_len = SockaddrLen(*addr);
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadConfigFile(const std::string& path) {
  toml::table table;
  try {
    table = toml::parse_file(path);  // Debian's toml++ reports errors as exceptions
  } catch (const toml::parse_error& e) {
    if (!e.source().begin) return absl::InvalidArgumentError(absl::StrCat(path, ": ", AbslView(e.description())));
    return absl::InvalidArgumentError(absl::StrCat(path, ":", e.source().begin.line, ":", e.source().begin.column,
                                                   ": ", AbslView(e.description())));
  }
  std::vector<std::pair<std::string, std::string>> out;
  // Keys in the order the file gives them: where a flag's effect depends on order, the file says it.
  std::vector<std::pair<std::string_view, const toml::node*>> keys;
  for (const auto& [key, node] : table) keys.emplace_back(key.str(), &node);
  std::sort(keys.begin(), keys.end(), [](const auto& a, const auto& b) {
    const auto& x = a.second->source().begin;
    const auto& y = b.second->source().begin;
    return x.line != y.line ? x.line < y.line : x.column < y.column;
  });
  for (const auto& entry : keys) {
    const std::string_view key = entry.first;  // not a structured binding: lambdas below capture it
    const toml::node* node = entry.second;
    auto where = [&] { return absl::StrCat(path, ":", node->source().begin.line, ": ", AbslView(key)); };
    const Flag* flag = nullptr;
    for (const Flag& f : Flags()) {
      if (key == f.name) flag = &f;
    }
    if (flag == nullptr || key == "config" || key == "help" || key == "version") {
      return absl::InvalidArgumentError(absl::StrCat(where(), ": no such flag (see cvmgate --help)"));
    }
    // One value as the flag's text: a string as it is, a whole number, true/false (a switch is given
    // by true; for an on|off flag, true is on).
    auto text = [&](const toml::node& v) -> absl::StatusOr<std::optional<std::string>> {
      if (auto s = v.as_string()) return std::optional<std::string>(s->get());
      if (auto i = v.as_integer()) return std::optional<std::string>(absl::StrCat(i->get()));
      if (auto b = v.as_boolean()) {
        if (flag->arg == nullptr) return b->get() ? std::optional<std::string>("") : std::nullopt;
        return std::optional<std::string>(b->get() ? "on" : "off");
      }
      return absl::InvalidArgumentError(
          absl::StrCat(where(), ": expected a string, a whole number or true/false (", flag->arg ? flag->arg : "",
                       ")"));
    };
    if (const toml::array* list = node->as_array()) {
      if (!Repeats(key)) {
        return absl::InvalidArgumentError(absl::StrCat(where(), ": takes one value, not a list"));
      }
      for (const toml::node& v : *list) {
        auto t = text(v);
        if (!t.ok()) return t.status();
        if (*t) out.emplace_back(std::string(key), **t);
      }
      continue;
    }
    auto t = text(*node);
    if (!t.ok()) return t.status();
    if (*t) out.emplace_back(std::string(key), **t);
  }
  return out;
}

absl::StatusOr<Config> ParseFlags(const std::vector<std::string>& args) {
  auto find = [](std::string_view name) -> const Flag* {
    for (const Flag& f : Flags()) {
      if (name == f.name) return &f;
    }
    return nullptr;
  };
  auto parsed = ParseArgs(args, [&](std::string_view name) {
    const Flag* f = find(name);
    return f == nullptr ? ArgKind::kUnknown : f->arg == nullptr ? ArgKind::kSwitch : ArgKind::kOption;
  });
  if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat(parsed.status().message(), " (see --help)"));
  if (!parsed->positional.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", parsed->positional[0], "' (see --help)"));
  }
  // The file's flags first, then the command line's: a later value wins, and a repeating flag given
  // on the command line replaces the file's list.
  std::vector<std::pair<std::string, std::string>> options;
  std::string file = parsed->Get("config");
  if (!file.empty()) {
    auto from_file = ReadConfigFile(file);
    if (!from_file.ok()) return from_file.status();
    for (auto& [name, value] : *from_file) {
      if (Repeats(name) && parsed->Has(name)) continue;
      options.emplace_back(std::move(name), std::move(value));
    }
  }
  options.insert(options.end(), parsed->options.begin(), parsed->options.end());
  Config c;
  bool listen_given = false;
  for (const auto& [name, value] : options) {
    if (name == "listen") listen_given = true;
    if (auto s = find(name)->set(c, value); !s.ok()) {
      return file.empty() || parsed->Has(name)
                 ? s
                 : absl::InvalidArgumentError(absl::StrCat(file, ": ", s.message()));
    }
  }
  c.effective = std::move(options);
  if (c.help || c.version) return c;
  if (!listen_given) {
    auto a = ParseListenAddress("0.0.0.0:443");
    c.listen.push_back(*a);
  }
  if (c.base_domains.empty()) {
    return absl::InvalidArgumentError("at least one --base-domain is required (see --help)");
  }
  if (c.registry_cert.empty() != c.registry_key.empty()) {
    return absl::InvalidArgumentError("--registry-cert and --registry-key go together");
  }
  if (c.registry_prefix.empty() || c.registry_prefix[0] != '/') {
    return absl::InvalidArgumentError("--registry-prefix=" + c.registry_prefix + ": must start with /");
  }
  if (c.admin.rfind("tcp:", 0) == 0 && c.admin_token_file.empty()) {
    return absl::InvalidArgumentError("--admin=" + c.admin + " needs --admin-token-file (a TCP admin API is never open)");
  }
  return c;
}

std::string Usage() {
  std::string out =
      "usage: cvmgate --base-domain DOMAIN [flags]\n\n"
      "Ingress gateway for confidential VMs: routes TLS connections on their SNI,\n"
      "<id>[-<port>][s|g].<base-domain>, to the instances of the app <id>.\n\n"
      "flags:\n";
  for (const Flag& f : Flags()) {
    std::string left = absl::StrCat("  --", f.name, f.arg ? absl::StrCat(" ", f.arg) : "");
    absl::StrAppendFormat(&out, "%-40s %s", left, f.help);
    if (*f.default_text) absl::StrAppend(&out, " (default: ", f.default_text, ")");
    out += "\n";
  }
  out +=
      "\nsignals: SIGHUP reads --config again (applies what can change while running) and reloads the\n"
      "registry and the certificates; SIGUSR1 prints the counters;\n"
      "SIGUSR2 reopens the access log;\n"
      "SIGTERM/SIGINT stop accepting and drain live relays for up to --drain-timeout, then exit.\n";
  return out;
}

}  // namespace cvmgate
