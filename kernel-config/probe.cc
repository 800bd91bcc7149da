// Capability probe: each feature is tried for real on loopback sockets, a small ring and netlink.
#include "kernel-config/probe.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <absl/strings/numbers.h>
#include "kernel-config/netlink.h"
#include <nlohmann/json.hpp>

namespace cvmgate {
namespace {

// A file descriptor closed on scope exit. kernel-config includes nothing from
// the data plane (tools/check-layers holds it to that), so the probe keeps this
// small copy of dataplane/fd.h.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  void reset(int fd) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

// Closes a probe connection with a reset: a normal close would leave a
// TIME_WAIT socket on an ephemeral port, and since the probe's sockets lack
// SO_REUSEADDR, the daemon could then fail to bind that port as a listener.
void Abort(const Fd& fd) {
  if (fd.get() < 0) return;
  linger now{1, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &now, sizeof(now));
}

// A connected loopback TCP pair (blocking), with the listener kept for ring tests.
struct LoopbackPair {
  Fd listener, client, server;
  sockaddr_in addr{};
  std::string error;
  ~LoopbackPair() {
    Abort(client);
    Abort(server);
  }
};

bool Listen(LoopbackPair& p) {
  p.listener.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  p.addr.sin_family = AF_INET;
  p.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(p.addr);
  if (p.listener.get() < 0 || bind(p.listener.get(), reinterpret_cast<sockaddr*>(&p.addr), sizeof(p.addr)) != 0 ||
      listen(p.listener.get(), 8) != 0 ||
      getsockname(p.listener.get(), reinterpret_cast<sockaddr*>(&p.addr), &len) != 0) {
    p.error = absl::StrCat("loopback listener: ", std::strerror(errno));
    return false;
  }
  return true;
}

bool Connect(LoopbackPair& p) {
  if (!Listen(p)) return false;
  p.client.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (p.client.get() < 0 || connect(p.client.get(), reinterpret_cast<sockaddr*>(&p.addr), sizeof(p.addr)) != 0) {
    p.error = absl::StrCat("loopback connect: ", std::strerror(errno));
    return false;
  }
  p.server.reset(accept4(p.listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (p.server.get() < 0) {
    p.error = absl::StrCat("loopback accept: ", std::strerror(errno));
    return false;
  }
  return true;
}

// The next completion within a second, or null.
io_uring_cqe* NextCqe(io_uring& ring) {
  io_uring_cqe* cqe = nullptr;
  __kernel_timespec ts{1, 0};
  if (io_uring_wait_cqe_timeout(&ring, &cqe, &ts) != 0) return nullptr;
  return cqe;
}

// Runs each ring operation the workers use on a loopback connection.
void ProbeRing(ProbeFacts& f) {
  io_uring ring;
  int r = io_uring_queue_init(8, &ring, 0);
  if (r < 0) {
    f.io_uring_error = absl::StrCat("io_uring_setup: ", std::strerror(-r),
                                    r == -EPERM ? " (kernel.io_uring_disabled, or a seccomp filter)" : "");
    return;
  }
  f.io_uring = true;
  for (const char* op : {"accept (multishot)", "connect", "recv MSG_PEEK", "poll", "read", "cancel", "splice"}) {
    f.ring_ops[op] = false;
  }
  LoopbackPair p;
  Fd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!Listen(p) || client.get() < 0) {
    io_uring_queue_exit(&ring);
    return;
  }
  constexpr uint64_t kAccept = 1, kConnect = 2, kPeek = 3, kPoll = 4, kRead = 5, kCancel = 6, kSplice = 7;
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_multishot_accept(sqe, p.listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, kAccept);
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_connect(sqe, client.get(), reinterpret_cast<sockaddr*>(&p.addr), sizeof(p.addr));
  io_uring_sqe_set_data64(sqe, kConnect);
  io_uring_submit(&ring);
  Fd accepted;
  for (int i = 0; i < 2; ++i) {
    io_uring_cqe* cqe = NextCqe(ring);
    if (cqe == nullptr) break;
    if (cqe->user_data == kAccept && cqe->res >= 0) {
      accepted.reset(cqe->res);
      f.ring_ops["accept (multishot)"] = (cqe->flags & IORING_CQE_F_MORE) != 0;
    }
    if (cqe->user_data == kConnect) f.ring_ops["connect"] = cqe->res == 0;
    io_uring_cqe_seen(&ring, cqe);
  }
  if (accepted.get() >= 0) {
    // recv with MSG_PEEK must leave the bytes for the next read.
    char out[] = "probe", in[8] = {};
    (void)!send(client.get(), out, 5, MSG_NOSIGNAL);
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recv(sqe, accepted.get(), in, 5, MSG_PEEK | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, kPeek);
    io_uring_submit(&ring);
    if (io_uring_cqe* cqe = NextCqe(ring)) {
      char again[8] = {};
      f.ring_ops["recv MSG_PEEK"] = cqe->res == 5 && recv(accepted.get(), again, 5, MSG_DONTWAIT) == 5 &&
                                    std::memcmp(again, "probe", 5) == 0;
      io_uring_cqe_seen(&ring, cqe);
    }
    (void)!send(client.get(), out, 1, MSG_NOSIGNAL);
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_poll_add(sqe, accepted.get(), POLLIN);
    io_uring_sqe_set_data64(sqe, kPoll);
    io_uring_submit(&ring);
    if (io_uring_cqe* cqe = NextCqe(ring)) {
      f.ring_ops["poll"] = cqe->res > 0 && (cqe->res & POLLIN);
      io_uring_cqe_seen(&ring, cqe);
    }
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_read(sqe, accepted.get(), in, 1, 0);
    io_uring_sqe_set_data64(sqe, kRead);
    io_uring_submit(&ring);
    if (io_uring_cqe* cqe = NextCqe(ring)) {
      f.ring_ops["read"] = cqe->res == 1;
      io_uring_cqe_seen(&ring, cqe);
    }
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) == 0) {
      Fd pr(pipefd[0]), pw(pipefd[1]);
      (void)!send(client.get(), out, 5, MSG_NOSIGNAL);
      sqe = io_uring_get_sqe(&ring);
      io_uring_prep_splice(sqe, accepted.get(), -1, pw.get(), -1, 5, 0);
      io_uring_sqe_set_data64(sqe, kSplice);
      io_uring_submit(&ring);
      if (io_uring_cqe* cqe = NextCqe(ring)) {
        f.ring_ops["splice"] = cqe->res == 5;
        io_uring_cqe_seen(&ring, cqe);
      }
    }
  }
  // Cancelling the multishot accept by fd ends it with -ECANCELED.
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_cancel_fd(sqe, p.listener.get(), 0);
  io_uring_sqe_set_data64(sqe, kCancel);
  io_uring_submit(&ring);
  bool cancelled = false, accept_ended = false;
  for (int i = 0; i < 2; ++i) {
    io_uring_cqe* cqe = NextCqe(ring);
    if (cqe == nullptr) break;
    if (cqe->user_data == kCancel) cancelled = cqe->res >= 0;
    if (cqe->user_data == kAccept) accept_ended = cqe->res == -ECANCELED;
    io_uring_cqe_seen(&ring, cqe);
  }
  f.ring_ops["cancel"] = cancelled && accept_ended;
  Abort(client);
  Abort(accepted);
  io_uring_queue_exit(&ring);
}

void ProbeSplice(ProbeFacts& f) {
  LoopbackPair p;
  if (!Connect(p)) {
    f.splice_error = p.error;
    return;
  }
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    f.splice_error = absl::StrCat("pipe: ", std::strerror(errno));
    return;
  }
  Fd pr(pipefd[0]), pw(pipefd[1]);
  const char msg[] = "splice-probe";
  (void)!send(p.client.get(), msg, sizeof(msg), MSG_NOSIGNAL);
  ssize_t in = splice(p.server.get(), nullptr, pw.get(), nullptr, sizeof(msg), SPLICE_F_MOVE);
  ssize_t out = in > 0 ? splice(pr.get(), nullptr, p.server.get(), nullptr, static_cast<size_t>(in), SPLICE_F_MOVE) : -1;
  char back[sizeof(msg)] = {};
  if (in != static_cast<ssize_t>(sizeof(msg)) || out != in ||
      recv(p.client.get(), back, sizeof(back), MSG_WAITALL) != static_cast<ssize_t>(sizeof(back)) ||
      std::memcmp(back, msg, sizeof(msg)) != 0) {
    f.splice_error = absl::StrCat("splice on TCP sockets: ", in < 0 || out < 0 ? std::strerror(errno) : "short");
    return;
  }
  f.splice_tcp = true;
}

// Installs a throwaway key for one cipher; the kernel checks sizes, not keys.
bool SetKtls(int fd, int direction, uint16_t version, const std::string& cipher) {
  union {
    tls12_crypto_info_aes_gcm_128 gcm128;
    tls12_crypto_info_aes_gcm_256 gcm256;
    tls12_crypto_info_chacha20_poly1305 chacha;
  } info;
  std::memset(&info, 0, sizeof(info));
  socklen_t len = 0;
  uint16_t type = 0;
  if (cipher == "AES-128-GCM") {
    type = TLS_CIPHER_AES_GCM_128;
    len = sizeof(info.gcm128);
  } else if (cipher == "AES-256-GCM") {
    type = TLS_CIPHER_AES_GCM_256;
    len = sizeof(info.gcm256);
  } else {
    type = TLS_CIPHER_CHACHA20_POLY1305;
    len = sizeof(info.chacha);
  }
  info.gcm128.info.version = version;
  info.gcm128.info.cipher_type = type;
  return setsockopt(fd, SOL_TLS, direction, &info, len) == 0;
}

void ProbeKtls(ProbeFacts& f) {
  for (const char* version : {"1.2", "1.3"}) {
    for (const char* cipher : {"AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"}) {
      LoopbackPair p;
      if (!Connect(p)) {
        f.ktls_error = p.error;
        return;
      }
      if (setsockopt(p.client.get(), SOL_TCP, TCP_ULP, "tls", 3) != 0) {
        f.ktls_error = absl::StrCat("TCP_ULP \"tls\": ", std::strerror(errno),
                                    errno == ENOENT ? " (no tls module in this kernel)" : "");
        return;
      }
      f.ktls_ulp = true;
      uint16_t v = std::string(version) == "1.2" ? TLS_1_2_VERSION : TLS_1_3_VERSION;
      KtlsCipher k{version, cipher, SetKtls(p.client.get(), TLS_TX, v, cipher),
                   SetKtls(p.client.get(), TLS_RX, v, cipher)};
      f.ktls.push_back(k);
    }
  }
}

void ProbeWireGuard(ProbeFacts& f) {
  auto genl = NlSocket::Open(NETLINK_GENERIC, absl::Seconds(2));
  if (genl.ok()) f.wireguard_netlink = ResolveGenlFamily(*genl, "wireguard").ok();
}

// NFT_MSG_GETGEN: answered by any kernel with nf_tables, with or without rules.
void ProbeNftables(ProbeFacts& f) {
  auto nf = NlSocket::Open(NETLINK_NETFILTER, absl::Seconds(2));
  if (!nf.ok()) return;
  char buf[kNlRequestBuffer];
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
  nlh->nlmsg_flags = NLM_F_REQUEST;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = AF_UNSPEC;
  nfg->version = NFNETLINK_V0;
  nfg->res_id = 0;
  f.nftables = nf->Transact(nlh, "NFT_MSG_GETGEN").ok();
}

bool InPath(const std::string& name) {
  const char* path = getenv("PATH");
  std::vector<std::string> dirs = absl::StrSplit(path ? path : "/usr/sbin:/usr/bin:/sbin:/bin", ':', absl::SkipEmpty());
  for (const std::string& dir : dirs) {
    std::string full = absl::StrCat(dir, "/", name);
    if (access(full.c_str(), X_OK) == 0) return true;
  }
  return false;
}

std::string ReadSysctl(const std::string& name) {
  std::string path = "/proc/sys/";
  for (char c : name) path += c == '.' ? '/' : c;
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return absl::StrJoin(absl::StrSplit(ss.str(), absl::ByAnyChar(" \t\n"), absl::SkipEmpty()), " ");
}

std::vector<uint64_t> Numbers(const std::string& text) {
  std::vector<uint64_t> out;
  std::vector<std::string> parts = absl::StrSplit(text, ' ', absl::SkipEmpty());
  for (const std::string& part : parts) {
    uint64_t n = 0;
    if (!absl::SimpleAtoi(part, &n)) return {};
    out.push_back(n);
  }
  return out;
}

bool SysctlMeets(const SysctlReading& r) {
  if (r.spec.rule == SysctlRule::kExactly) return r.value == r.spec.recommended;
  std::vector<uint64_t> have = Numbers(r.value), want = Numbers(r.spec.recommended);
  if (have.empty() || have.size() != want.size()) return false;
  if (r.spec.rule == SysctlRule::kRange) return have[0] <= want[0] && have[1] >= want[1];
  for (size_t i = 0; i < have.size(); ++i) {
    if (have[i] < want[i]) return false;
  }
  return true;
}

std::string Mark(bool ok) { return ok ? "yes" : "no"; }

}  // namespace

const std::vector<SysctlSpec>& SysctlProfile() {
  static const std::vector<SysctlSpec> profile = {
      {"net.core.somaxconn", "65535", SysctlRule::kAtLeast},
      {"net.ipv4.tcp_max_syn_backlog", "65535", SysctlRule::kAtLeast},
      {"net.core.netdev_max_backlog", "16384", SysctlRule::kAtLeast},
      {"net.ipv4.ip_local_port_range", "10240 65535", SysctlRule::kRange},
      {"net.ipv4.tcp_tw_reuse", "1", SysctlRule::kExactly},
      {"net.core.rmem_max", "16777216", SysctlRule::kAtLeast},
      {"net.core.wmem_max", "16777216", SysctlRule::kAtLeast},
      {"net.ipv4.tcp_rmem", "4096 131072 4194304", SysctlRule::kExactly},
      {"net.ipv4.tcp_wmem", "4096 65536 4194304", SysctlRule::kExactly},
      {"fs.file-max", "2097152", SysctlRule::kAtLeast},
      {"fs.nr_open", "1048576", SysctlRule::kAtLeast},
      {"fs.pipe-user-pages-soft", "0", SysctlRule::kExactly},
      {"fs.pipe-max-size", "1048576", SysctlRule::kAtLeast},
      {"net.ipv4.conf.%IF%.rp_filter", "1", SysctlRule::kExactly},
      {"net.ipv4.conf.%IF%.forwarding", "0", SysctlRule::kExactly},
  };
  return profile;
}

uint64_t RelayCapacity(uint64_t nofile, int workers) {
  uint64_t reserve = 64 + uint64_t(workers) * (16 * 2 + 16);  // idle pipe pools, listeners, rings
  uint64_t fds = nofile > reserve + 2 ? nofile - reserve : 2;
  return std::min<uint64_t>(fds / 2, 1u << 22);
}

bool ProbeDecisions::ok() const {
  for (const ProbeLine& l : lines) {
    if (l.verdict == Verdict::kMissing) return false;
  }
  return true;
}

std::string_view VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kOk: return "ok";
    case Verdict::kFallback: return "fallback";
    case Verdict::kAdvice: return "advice";
    case Verdict::kMissing: return "MISSING";
  }
  return "?";
}

ProbeDecisions Decide(const ProbeFacts& f) {
  ProbeDecisions d;
  auto add = [&](std::string feature, std::string found, std::string choice, Verdict v) {
    d.lines.push_back({std::move(feature), std::move(found), std::move(choice), v});
  };
  add("kernel", f.kernel, "", Verdict::kOk);
  if (!f.io_uring) {
    add("io_uring", f.io_uring_error.empty() ? "absent" : f.io_uring_error, "none: the data plane needs io_uring",
        Verdict::kMissing);
  } else {
    add("io_uring", "yes", "one ring per worker", Verdict::kOk);
    for (const auto& [op, ok] : f.ring_ops) {
      if (op == "splice") continue;
      add(absl::StrCat("  ring: ", op), Mark(ok), ok ? "used" : "none: required by the data plane",
          ok ? Verdict::kOk : Verdict::kMissing);
    }
  }
  auto ring_splice = f.ring_ops.find("splice");
  d.ring_splice = f.io_uring && ring_splice != f.ring_ops.end() && ring_splice->second;
  d.splice = f.splice_tcp;
  if (f.splice_tcp) {
    add("splice on TCP", "yes", "relay with splice (--splice-mode inline)", Verdict::kOk);
  } else {
    add("splice on TCP", f.splice_error.empty() ? "no" : f.splice_error, "userspace copy relay", Verdict::kFallback);
  }
  if (f.io_uring) {
    add("  ring: splice", Mark(d.ring_splice),
        d.ring_splice ? "available to --splice-mode uring" : "--splice-mode uring runs as inline",
        d.ring_splice ? Verdict::kOk : Verdict::kFallback);
  }
  bool tx12 = false, rx12 = false, tx13 = false, rx13 = false;
  for (const KtlsCipher& k : f.ktls) {
    if (k.cipher != "AES-128-GCM" && k.cipher != "AES-256-GCM") continue;  // what clients mostly negotiate
    (k.version == "1.2" ? tx12 : tx13) |= k.tx;
    (k.version == "1.2" ? rx12 : rx13) |= k.rx;
  }
  d.ktls = f.ktls_ulp && (tx12 || tx13);
  if (!f.ktls_ulp) {
    add("kTLS", f.ktls_error.empty() ? "no" : f.ktls_error,
        "userspace TLS (SSL_read/SSL_write), counted as ktls_fallback_no_kernel_tls", Verdict::kFallback);
  } else {
    add("kTLS", "yes (TCP_ULP tls)",
        d.ktls ? "record crypto in the kernel where the cipher allows, spliced" : "userspace TLS: no cipher accepted",
        d.ktls ? Verdict::kOk : Verdict::kFallback);
    for (const KtlsCipher& k : f.ktls) {
      bool both = k.tx && k.rx;
      std::string choice = both ? "kernel TX and RX"
                           : k.tx ? "kernel TX, userspace RX"
                                  : "userspace TLS for this cipher";
      add(absl::StrCat("  TLS ", k.version, " ", k.cipher), absl::StrCat("TX ", Mark(k.tx), ", RX ", Mark(k.rx)),
          choice, both ? Verdict::kOk : Verdict::kFallback);
    }
  }
  if (f.wireguard_netlink) {
    d.wireguard = "netlink";
    add("WireGuard", "kernel (generic netlink family \"wireguard\")", "kernel WireGuard over netlink", Verdict::kOk);
  } else if (f.wireguard_go) {
    d.wireguard = "uapi";
    add("WireGuard", "no kernel family; wireguard-go in PATH", "wireguard-go over its UAPI socket",
        Verdict::kFallback);
  } else {
    add("WireGuard", "neither kernel WireGuard nor wireguard-go", "static instances only (no --wg-interface)",
        Verdict::kAdvice);
  }
  if (f.nftables && f.nft_command) {
    add("nftables", "yes (nf_tables, nft)", "CVM isolation ruleset can be applied", Verdict::kOk);
  } else {
    add("nftables", absl::StrCat("nf_tables ", Mark(f.nftables), ", nft command ", Mark(f.nft_command)),
        "CVM isolation cannot be enforced: install nftables", Verdict::kAdvice);
  }
  uint64_t capacity = RelayCapacity(f.nofile_hard, 1);
  add("open files", absl::StrCat("soft ", f.nofile_soft, ", hard ", f.nofile_hard),
      absl::StrCat("raised to ", f.nofile_hard, ": about ", capacity, " relayed connections",
                   f.nofile_hard < 65536 ? "; LimitNOFILE=1048576 (the systemd unit) allows more" : ""),
      f.nofile_hard < 65536 ? Verdict::kAdvice : Verdict::kOk);
  for (const SysctlReading& r : f.sysctls) {
    bool meets = SysctlMeets(r);
    add(absl::StrCat("sysctl ", r.spec.name), r.value.empty() ? "unreadable" : r.value,
        meets ? "as the profile" : absl::StrCat("profile: ", r.spec.recommended, " (kernel-config/sysctl.d)"),
        meets ? Verdict::kOk : Verdict::kAdvice);
  }
  return d;
}

ProbeFacts ProbeKernel(const std::string& wg_interface) {
  ProbeFacts f;
  utsname u{};
  if (uname(&u) == 0) f.kernel = u.release;
  ProbeRing(f);
  ProbeSplice(f);
  ProbeKtls(f);
  ProbeWireGuard(f);
  f.wireguard_go = InPath("wireguard-go");
  ProbeNftables(f);
  f.nft_command = InPath("nft");
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  f.nofile_soft = rl.rlim_cur;
  f.nofile_hard = rl.rlim_max;
  for (SysctlSpec spec : SysctlProfile()) {
    size_t at = spec.name.find("%IF%");
    if (at != std::string::npos) {
      if (wg_interface.empty()) continue;
      spec.name.replace(at, 4, wg_interface);
    }
    f.sysctls.push_back({spec, ReadSysctl(spec.name)});
  }
  return f;
}

std::string ProbeTable(const ProbeFacts&, const ProbeDecisions& d) {
  size_t w0 = 7, w1 = 5;
  for (const ProbeLine& l : d.lines) {
    w0 = std::max(w0, l.feature.size());
    w1 = std::max(w1, l.found.size());
  }
  auto row = [&](const std::string& a, const std::string& b, const std::string& c, std::string_view v) {
    return absl::StrCat(a, std::string(w0 + 2 - a.size(), ' '), b, std::string(w1 + 2 - b.size(), ' '),
                        std::string(v), std::string(10 - v.size(), ' '), c, "\n");
  };
  std::string out = row("FEATURE", "FOUND", "CVMGATE USES", "VERDICT");
  for (const ProbeLine& l : d.lines) out += row(l.feature, l.found, l.choice, VerdictName(l.verdict));
  absl::StrAppend(&out, d.ok() ? "\nall required features present\n"
                               : "\nrequired features are MISSING: cvmgate cannot run here\n");
  return out;
}

std::string ProbeJson(const ProbeFacts& f, const ProbeDecisions& d) {
  nlohmann::json lines = nlohmann::json::array();
  for (const ProbeLine& l : d.lines) {
    lines.push_back({{"feature", l.feature}, {"found", l.found}, {"choice", l.choice},
                     {"verdict", std::string(VerdictName(l.verdict))}});
  }
  nlohmann::json ktls = nlohmann::json::array();
  for (const KtlsCipher& k : f.ktls) {
    ktls.push_back({{"version", k.version}, {"cipher", k.cipher}, {"tx", k.tx}, {"rx", k.rx}});
  }
  nlohmann::json sysctls = nlohmann::json::object();
  for (const SysctlReading& r : f.sysctls) {
    sysctls[r.spec.name] = {{"value", r.value}, {"profile", r.spec.recommended}, {"meets", SysctlMeets(r)}};
  }
  nlohmann::json out = {
      {"ok", d.ok()},
      {"kernel", f.kernel},
      {"io_uring", f.io_uring},
      {"ring_ops", f.ring_ops},
      {"splice_tcp", f.splice_tcp},
      {"ktls_ulp", f.ktls_ulp},
      {"ktls", ktls},
      {"wireguard_netlink", f.wireguard_netlink},
      {"wireguard_go", f.wireguard_go},
      {"nftables", f.nftables},
      {"nft_command", f.nft_command},
      {"nofile", {{"soft", f.nofile_soft}, {"hard", f.nofile_hard}}},
      {"sysctls", sysctls},
      {"uses", {{"ktls", d.ktls}, {"splice", d.splice}, {"ring_splice", d.ring_splice}, {"wireguard", d.wireguard}}},
      {"lines", lines},
  };
  return out.dump(1) + "\n";
}

}  // namespace cvmgate
