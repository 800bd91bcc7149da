// Capability probe: what this kernel and process offer cvmgate, and what cvmgate does about each gap.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cvmgate {

// One kTLS cipher of one TLS version, as the kernel accepted it on a socket.
struct KtlsCipher {
  std::string version;  // "1.2" or "1.3"
  std::string cipher;   // "AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"
  bool tx = false;
  bool rx = false;
};

// How a sysctl's value is judged against the profile's.
enum class SysctlRule {
  kAtLeast,  // a number at least the recommended one
  kExactly,  // the recommended value (a flag, or 0 = unlimited)
  kRange,    // "LOW HIGH": at least as wide as the recommended range
};

// One setting of kernel-config/sysctl.d/90-cvmgate.conf.
struct SysctlSpec {
  std::string name;         // e.g. "net.core.somaxconn"; "%IF%" stands for the WireGuard interface
  std::string recommended;  // as written in the profile
  SysctlRule rule;
};
// The profile's settings, in its order. tests/unit/probe_test.cc checks that
// the shipped profile says the same.
const std::vector<SysctlSpec>& SysctlProfile();

struct SysctlReading {
  SysctlSpec spec;  // with %IF% replaced
  std::string value;  // whitespace-normalised; empty when unreadable
};

// What was found. ProbeKernel() fills it; tests build it by hand.
struct ProbeFacts {
  std::string kernel;  // uname -r
  bool io_uring = false;
  std::string io_uring_error;
  // The ring operations the data plane uses, each tried for real on a loopback connection:
  // "accept (multishot)", "connect", "recv MSG_PEEK", "poll", "read", "cancel", "splice".
  std::map<std::string, bool> ring_ops;
  bool splice_tcp = false;  // splice(2) socket -> pipe -> socket
  std::string splice_error;
  bool ktls_ulp = false;    // setsockopt TCP_ULP "tls"
  std::string ktls_error;
  std::vector<KtlsCipher> ktls;
  bool wireguard_netlink = false;  // the "wireguard" generic-netlink family
  bool wireguard_go = false;       // wireguard-go in PATH
  bool nftables = false;           // nf_tables answers on netlink
  bool nft_command = false;        // nft in PATH
  uint64_t nofile_soft = 0;
  uint64_t nofile_hard = 0;
  std::vector<SysctlReading> sysctls;
};

// kMissing: required and absent (the probe exits 1, the daemon refuses to start).
enum class Verdict { kOk, kFallback, kAdvice, kMissing };

struct ProbeLine {
  std::string feature;
  std::string found;   // what the kernel or process offers
  std::string choice;  // what cvmgate does with it
  Verdict verdict = Verdict::kOk;
};

struct ProbeDecisions {
  std::vector<ProbeLine> lines;
  bool ktls = false;         // hand record crypto to the kernel (both directions where it can)
  bool splice = false;       // relay with splice; else a userspace copy
  bool ring_splice = false;  // --splice-mode uring can run
  std::string wireguard;     // "netlink", "uapi" or "" (static instances only)
  bool ok() const;           // no kMissing line
};

// Pure: the same facts always give the same decisions.
ProbeDecisions Decide(const ProbeFacts& facts);

// Tries every feature on this kernel (loopback sockets, a small ring, netlink
// requests); takes a few milliseconds and leaves nothing behind. `wg_interface`
// names the interface whose per-interface sysctls are read (may be empty).
ProbeFacts ProbeKernel(const std::string& wg_interface);

std::string ProbeTable(const ProbeFacts& facts, const ProbeDecisions& decisions);
std::string ProbeJson(const ProbeFacts& facts, const ProbeDecisions& decisions);
std::string_view VerdictName(Verdict v);

// Connections a process can relay with `nofile` descriptors and `workers`
// workers: each relay holds 2 sockets; pools, listeners and rings take a reserve.
uint64_t RelayCapacity(uint64_t nofile, int workers);

}  // namespace cvmgate
