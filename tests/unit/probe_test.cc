// Unit tests of the capability probe's decisions, and that the shipped sysctl profile matches the probe's.
#include "kernel-config/probe.h"

#include <gtest/gtest.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include <absl/strings/ascii.h>
#include <absl/strings/str_replace.h>
#include <nlohmann/json.hpp>

namespace cvmgate {
namespace {

ProbeFacts AllRingOps(ProbeFacts f) {
  f.io_uring = true;
  for (const char* op : {"accept (multishot)", "connect", "recv MSG_PEEK", "poll", "read", "cancel", "splice"}) {
    f.ring_ops[op] = true;
  }
  f.splice_tcp = true;
  f.nofile_soft = 1024;
  f.nofile_hard = 1048576;
  return f;
}

// This development host: no tls module, no kernel WireGuard, wireguard-go installed.
ProbeFacts HostWithoutKtls() {
  ProbeFacts f = AllRingOps({});
  f.kernel = "6.18.0";
  f.ktls_error = "TCP_ULP \"tls\": No such file or directory (no tls module in this kernel)";
  f.wireguard_go = true;
  f.nftables = f.nft_command = true;
  return f;
}

// Debian's stock kernels under kernel-lab.
ProbeFacts StockKernel() {
  ProbeFacts f = AllRingOps({});
  f.kernel = "6.1.0-56-amd64";
  f.ktls_ulp = true;
  for (const char* v : {"1.2", "1.3"}) {
    for (const char* c : {"AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"}) f.ktls.push_back({v, c, true, true});
  }
  f.wireguard_netlink = true;
  f.nftables = f.nft_command = true;
  return f;
}

const ProbeLine* Line(const ProbeDecisions& d, const std::string& feature) {
  for (const ProbeLine& l : d.lines) {
    if (l.feature == feature) return &l;
  }
  return nullptr;
}

TEST(Probe, WithoutKtlsItFallsBackToUserspaceTlsAndWireguardGo) {
  ProbeDecisions d = Decide(HostWithoutKtls());
  EXPECT_TRUE(d.ok());
  EXPECT_FALSE(d.ktls);
  EXPECT_TRUE(d.splice);
  EXPECT_EQ(d.wireguard, "uapi");
  const ProbeLine* ktls = Line(d, "kTLS");
  ASSERT_NE(ktls, nullptr);
  EXPECT_EQ(ktls->verdict, Verdict::kFallback);
  EXPECT_NE(ktls->found.find("no tls module"), std::string::npos) << ktls->found;
  EXPECT_EQ(ktls->choice, "userspace TLS (SSL_read/SSL_write), counted as ktls_fallback_no_kernel_tls");
  EXPECT_EQ(Line(d, "WireGuard")->choice, "wireguard-go over its UAPI socket");
}

TEST(Probe, StockKernelUsesKtlsAndKernelWireguard) {
  ProbeDecisions d = Decide(StockKernel());
  EXPECT_TRUE(d.ok());
  EXPECT_TRUE(d.ktls);
  EXPECT_EQ(d.wireguard, "netlink");
  EXPECT_EQ(Line(d, "kTLS")->verdict, Verdict::kOk);
  EXPECT_EQ(Line(d, "  TLS 1.3 AES-128-GCM")->choice, "kernel TX and RX");
}

TEST(Probe, TxOnlyCiphersAndNoCipherAtAll) {
  ProbeFacts f = StockKernel();
  f.ktls = {{"1.2", "AES-128-GCM", true, false}, {"1.3", "AES-128-GCM", true, false}};
  ProbeDecisions d = Decide(f);
  EXPECT_TRUE(d.ktls) << "TX alone is worth it: the backend-to-client direction splices";
  EXPECT_EQ(Line(d, "  TLS 1.2 AES-128-GCM")->choice, "kernel TX, userspace RX");
  f.ktls = {{"1.3", "CHACHA20-POLY1305", true, true}};
  EXPECT_FALSE(Decide(f).ktls) << "AES-GCM is what clients negotiate; ChaCha alone does not turn kTLS on";
}

TEST(Probe, MissingIoUringOrARingOperationIsFatal) {
  ProbeFacts f = HostWithoutKtls();
  f.io_uring = false;
  f.io_uring_error = "io_uring_setup: Operation not permitted";
  ProbeDecisions d = Decide(f);
  EXPECT_FALSE(d.ok());
  EXPECT_EQ(Line(d, "io_uring")->verdict, Verdict::kMissing);
  EXPECT_NE(ProbeTable(f, d).find("required features are MISSING"), std::string::npos);

  f = HostWithoutKtls();
  f.ring_ops["recv MSG_PEEK"] = false;
  d = Decide(f);
  EXPECT_FALSE(d.ok());
  EXPECT_EQ(Line(d, "  ring: recv MSG_PEEK")->verdict, Verdict::kMissing);
}

TEST(Probe, MissingSpliceFallsBackToCopyAndIsNotFatal) {
  ProbeFacts f = HostWithoutKtls();
  f.splice_tcp = false;
  f.splice_error = "splice on TCP sockets: Invalid argument";
  f.ring_ops["splice"] = false;
  ProbeDecisions d = Decide(f);
  EXPECT_TRUE(d.ok());
  EXPECT_FALSE(d.splice);
  EXPECT_FALSE(d.ring_splice);
  EXPECT_EQ(Line(d, "splice on TCP")->choice, "userspace copy relay");
  EXPECT_EQ(Line(d, "  ring: splice")->choice, "--splice-mode uring runs as inline");
}

TEST(Probe, NoWireguardOrNftablesIsAdviceNotFailure) {
  ProbeFacts f = HostWithoutKtls();
  f.wireguard_go = false;
  f.nft_command = false;
  f.nofile_hard = 20000;
  ProbeDecisions d = Decide(f);
  EXPECT_TRUE(d.ok());
  EXPECT_EQ(d.wireguard, "");
  EXPECT_EQ(Line(d, "WireGuard")->verdict, Verdict::kAdvice);
  EXPECT_EQ(Line(d, "nftables")->choice, "CVM isolation cannot be enforced: install nftables");
  EXPECT_EQ(Line(d, "open files")->verdict, Verdict::kAdvice);
  EXPECT_NE(Line(d, "open files")->choice.find("about 9944 relayed connections"), std::string::npos)
      << Line(d, "open files")->choice;
}

TEST(Probe, SysctlsAreJudgedByTheirRule) {
  ProbeFacts f = HostWithoutKtls();
  auto spec = [](const char* name) {
    for (const SysctlSpec& s : SysctlProfile()) {
      if (s.name == name) return s;
    }
    ADD_FAILURE() << name;
    return SysctlSpec{};
  };
  f.sysctls = {
      {spec("net.core.somaxconn"), "4096"},                     // below: advice
      {spec("net.core.netdev_max_backlog"), "100000"},          // above: fine
      {spec("net.ipv4.ip_local_port_range"), "1024 65535"},     // wider: fine
      {spec("net.ipv4.tcp_rmem"), "4096 131072 6291456"},       // not the profile's cap: advice
      {spec("fs.pipe-user-pages-soft"), "16384"},               // must be 0: advice
      {spec("net.ipv4.tcp_tw_reuse"), "2"},                     // must be 1: advice
      {spec("fs.nr_open"), ""},                                 // unreadable: advice
  };
  ProbeDecisions d = Decide(f);
  EXPECT_TRUE(d.ok()) << "sysctls are advice, never fatal";
  EXPECT_EQ(Line(d, "sysctl net.core.somaxconn")->verdict, Verdict::kAdvice);
  EXPECT_EQ(Line(d, "sysctl net.core.somaxconn")->choice, "profile: 65535 (kernel-config/sysctl.d)");
  EXPECT_EQ(Line(d, "sysctl net.core.netdev_max_backlog")->verdict, Verdict::kOk);
  EXPECT_EQ(Line(d, "sysctl net.ipv4.ip_local_port_range")->verdict, Verdict::kOk);
  EXPECT_EQ(Line(d, "sysctl net.ipv4.tcp_rmem")->verdict, Verdict::kAdvice);
  EXPECT_EQ(Line(d, "sysctl fs.pipe-user-pages-soft")->verdict, Verdict::kAdvice);
  EXPECT_EQ(Line(d, "sysctl net.ipv4.tcp_tw_reuse")->verdict, Verdict::kAdvice);
  EXPECT_EQ(Line(d, "sysctl fs.nr_open")->found, "unreadable");
  auto j = nlohmann::json::parse(ProbeJson(f, d));
  EXPECT_EQ(j["sysctls"]["net.core.somaxconn"]["meets"], false);
  EXPECT_EQ(j["uses"]["wireguard"], "uapi");
  EXPECT_EQ(j["ok"], true);
}

// The probe and the shipped profile must not drift apart.
TEST(Probe, ShippedSysctlProfileMatchesTheProbe) {
  std::ifstream in(std::string(CVMGATE_SOURCE_ROOT) + "/kernel-config/sysctl.d/90-cvmgate.conf");
  ASSERT_TRUE(in);
  std::vector<std::pair<std::string, std::string>> file;
  std::string line;
  std::string previous;
  while (std::getline(in, line)) {
    std::string t(absl::StripAsciiWhitespace(line));
    if (t.empty() || t[0] == '#') {
      previous = t;
      continue;
    }
    EXPECT_EQ(previous.rfind("# ", 0), 0u) << "every setting has a comment line saying why: " << t;
    size_t eq = t.find('=');
    ASSERT_NE(eq, std::string::npos) << t;
    std::string name(absl::StripAsciiWhitespace(t.substr(0, eq)));
    std::string value(absl::StripAsciiWhitespace(t.substr(eq + 1)));
    file.emplace_back(absl::StrReplaceAll(name, {{".wg-cvm.", ".%IF%."}}), value);
    previous.clear();
  }
  ASSERT_EQ(file.size(), SysctlProfile().size());
  for (size_t i = 0; i < file.size(); ++i) {
    EXPECT_EQ(file[i].first, SysctlProfile()[i].name);
    EXPECT_EQ(file[i].second, SysctlProfile()[i].recommended) << file[i].first;
  }
}

// On whatever kernel runs the tests: the probe finishes, and the facts it reports are self-consistent.
TEST(Probe, RealKernelProbeIsConsistent) {
  ProbeFacts f = ProbeKernel("lo");
  EXPECT_FALSE(f.kernel.empty());
  EXPECT_TRUE(f.io_uring) << f.io_uring_error;
  for (const auto& [op, ok] : f.ring_ops) EXPECT_TRUE(ok) << op;
  EXPECT_TRUE(f.splice_tcp) << f.splice_error;
  EXPECT_EQ(f.ktls_ulp, !f.ktls.empty());
  EXPECT_EQ(f.ktls_ulp, f.ktls_error.empty()) << f.ktls_error;
  EXPECT_GT(f.nofile_hard, 0u);
  bool saw_interface_sysctl = false;
  for (const SysctlReading& r : f.sysctls) saw_interface_sysctl |= r.spec.name == "net.ipv4.conf.lo.rp_filter";
  EXPECT_TRUE(saw_interface_sysctl) << "%IF% is replaced by the interface";
  EXPECT_TRUE(Decide(f).ok()) << ProbeTable(f, Decide(f));
}

// Sockets in TIME_WAIT in this network namespace (state 06 in /proc/net/tcp).
int TimeWaitSockets() {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // header
  int n = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string slot, local, remote, state;
    fields >> slot >> local >> remote >> state;
    n += state == "06";
  }
  return n;
}

// The probe runs in the daemon before it binds its listeners: a TIME_WAIT
// socket it left on an ephemeral port would make that port unbindable. In a
// namespace of its own, nothing else makes TCP sockets, so any count is the probe's.
TEST(Probe, LeavesNoTimeWaitSocketsBehind) {
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (unshare(CLONE_NEWNET) != 0) _exit(77);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) != 0) _exit(78);
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) != 0) _exit(78);
    close(fd);
    ProbeKernel("");
    _exit(std::min(TimeWaitSockets(), 50));
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "no permission to create a network namespace (needs root)";
  ASSERT_NE(WEXITSTATUS(status), 78) << "could not bring up lo in the new namespace";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "TIME_WAIT sockets left by the probe";
}

}  // namespace
}  // namespace cvmgate
