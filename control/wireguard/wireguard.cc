// Picking and preparing a WireGuard backend: probe kernel WireGuard, fall back to wireguard-go.
#include "control/wireguard/wireguard.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/strip.h>
#include <absl/time/clock.h>

#include "control/wireguard/genl.h"
#include "control/wireguard/rtnl.h"
#include "control/wireguard/uapi.h"
#include "dataplane/addresses.h"
#include "dataplane/strings.h"
#include "kernel-config/netlink.h"

extern char** environ;

namespace cvmgate {
namespace {

// wireguard-go daemonizes once its interface and socket exist; starting it
// takes well under a second, so this only bounds a hung start.
constexpr absl::Duration kWireguardGoStart = absl::Seconds(10);

absl::Status CheckBackend(const std::string& backend) {
  if (backend == "auto" || backend == "netlink" || backend == "uapi") return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown WireGuard backend \"", backend, "\": expected auto, netlink or uapi"));
}

// The kernel's rule for interface names (dev_valid_name), which also keeps
// the name safe inside the UAPI socket path.
absl::Status CheckIfname(const std::string& ifname) {
  bool ok = !ifname.empty() && ifname.size() < 16 && ifname != "." && ifname != "..";
  for (char c : ifname) {
    if (c == '/' || c == ':' || c == '\0' || isspace(static_cast<unsigned char>(c))) ok = false;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("bad interface name \"", ifname, "\": 1 to 15 characters, without '/', ':' or spaces"));
}

absl::Status ParseCidr(const std::string& text, in_addr* addr, int* prefix_len) {
  size_t slash = text.find('/');
  std::string ip = text.substr(0, slash);
  if (slash == std::string::npos || inet_pton(AF_INET, ip.c_str(), addr) != 1 ||
      !absl::SimpleAtoi(text.substr(slash + 1), prefix_len) || *prefix_len < 1 || *prefix_len > 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad interface address \"", text, "\": expected IPv4 address/prefix such as 10.0.0.1/8"));
  }
  return absl::OkStatus();
}

std::string UapiPath(const std::string& dir, const std::string& ifname) {
  return absl::StrCat(dir, "/", ifname, ".sock");
}

bool IsSocket(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

// The pid of the process listening on the Unix socket at `path`, or -1.
// wireguard-go in the foreground listens itself, so this is its pid.
pid_t UapiServerPid(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return -1;
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    return cred.pid;
  }
  return -1;
}

// Runs `wireguard-go IFNAME` in the calling thread's network namespace, in
// the foreground as cvmgate's child, and waits for its UAPI socket to answer.
// A child, unlike a daemon that detaches, is watched and restarted when it
// dies; in its own session it outlives cvmgate, so a restarted cvmgate adopts
// it with every tunnel up. Its output (errors only, unless LOG_LEVEL says
// otherwise) goes to cvmgate's stderr.
absl::Status StartWireguardGo(const std::string& ifname) {
  const absl::Time deadline = absl::Now() + kWireguardGoStart;
  std::vector<std::string> env_text;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view v(*e);
    if (v.starts_with("WG_PROCESS_FOREGROUND=") || v.starts_with("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=")) {
      continue;
    }
    env_text.emplace_back(v);
  }
  env_text.emplace_back("WG_PROCESS_FOREGROUND=1");
  // wireguard-go refuses to start when it believes the kernel has WireGuard,
  // which it judges by the kernel version alone.
  env_text.emplace_back("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1");
  std::vector<char*> envp;
  for (auto& e : env_text) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string arg0 = "wireguard-go", arg1 = ifname;
  char* argv[] = {arg0.data(), arg1.data(), nullptr};

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  // The caller's thread blocks the daemon's signals (they are read from a
  // signalfd) and the daemon ignores SIGPIPE: the child gets neither.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGCHLD}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID);
  pid_t pid = -1;
  int err = posix_spawnp(&pid, "wireguard-go", &actions, &attr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (err != 0) {
    if (err == ENOENT) {
      return absl::NotFoundError(
          "wireguard-go is not installed (not found in PATH): install it (apt-get install wireguard-go) or use a "
          "kernel with WireGuard");
    }
    return absl::UnavailableError(absl::StrCat("cannot start wireguard-go: ", strerror(err)));
  }

  const std::string path = UapiPath(kDefaultUapiDir, ifname);
  Fd pidfd = PidfdOpen(pid);
  absl::Status last;
  for (;;) {
    pollfd pfd{pidfd.get(), POLLIN, 0};
    if (pidfd.valid() && poll(&pfd, 1, 0) > 0) {
      int status = 0;
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return absl::UnavailableError(absl::StrCat(
          "wireguard-go ", ifname, " exited (",
          WIFEXITED(status) ? absl::StrCat("status ", WEXITSTATUS(status)) : absl::StrCat("signal ", WTERMSIG(status)),
          ") before its socket answered; its output is in cvmgate's log just above"));
    }
    // The socket's path is not namespaced: only an answer from this child counts.
    pid_t server = UapiServerPid(path);
    if (server == pid) return absl::OkStatus();
    last = server < 0 ? absl::UnavailableError(absl::StrCat("nothing answers at ", path))
                      : absl::FailedPreconditionError(absl::StrCat(path, " is served by another process (pid ", server,
                                                                   "): another wireguard-go with this name?"));
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  kill(pid, SIGKILL);
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  return absl::DeadlineExceededError(absl::StrCat("wireguard-go ", ifname, " started, but its socket did not answer within ",
                                                  absl::FormatDuration(kWireguardGoStart), ": ", last.message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WireGuard>> OpenWireGuard(const std::string& backend, const std::string& ifname,
                                                         const std::string& uapi_dir, absl::Duration uapi_timeout) {
  if (absl::Status st = CheckBackend(backend); !st.ok()) return st;
  if (absl::Status st = CheckIfname(ifname); !st.ok()) return st;
  absl::Status netlink_failure;
  if (backend != "uapi") {
    auto wg = OpenNetlinkWireGuard(ifname);
    if (wg.ok()) {
      auto rtnl = NlSocket::Open(NETLINK_ROUTE);
      if (!rtnl.ok()) return rtnl.status();
      auto link = GetLink(*rtnl, ifname);
      if (link.ok() && link->kind == "wireguard") return wg;
      netlink_failure =
          link.ok()
              ? absl::FailedPreconditionError(absl::StrCat(ifname, " is a ", link->kind.empty() ? "plain" : link->kind,
                                                           " link, not a kernel WireGuard one"))
              : link.status();
    } else {
      netlink_failure = wg.status();
    }
    if (backend == "netlink") {
      return absl::Status(netlink_failure.code(),
                          absl::StrCat("WireGuard backend netlink for ", ifname, ": ", netlink_failure.message()));
    }
  }
  auto wg = OpenUapiWireGuard(ifname, UapiPath(uapi_dir, ifname), uapi_timeout);
  if (wg.ok() || backend == "uapi") return wg;
  return absl::Status(wg.status().code(), absl::StrCat("no WireGuard backend for ", ifname, ": netlink: ",
                                                       netlink_failure.message(), "; uapi: ", wg.status().message()));
}

absl::StatusOr<std::string> EnsureInterface(const std::string& backend, const std::string& ifname,
                                            const std::string& address_cidr) {
  if (absl::Status st = CheckBackend(backend); !st.ok()) return st;
  if (absl::Status st = CheckIfname(ifname); !st.ok()) return st;
  in_addr addr;
  int prefix_len = 0;
  if (absl::Status st = ParseCidr(address_cidr, &addr, &prefix_len); !st.ok()) return st;
  auto rtnl = NlSocket::Open(NETLINK_ROUTE);
  if (!rtnl.ok()) return rtnl.status();
  const std::string uapi_path = UapiPath(kDefaultUapiDir, ifname);

  auto link = GetLink(*rtnl, ifname);
  if (link.ok()) {
    std::string driven_by;
    if (link->kind == "wireguard") {
      driven_by = "netlink";
    } else if (IsSocket(uapi_path)) {
      driven_by = "uapi";
    } else {
      return absl::FailedPreconditionError(absl::StrCat(
          "interface ", ifname, " exists but is neither a kernel WireGuard link (",
          link->kind.empty() ? std::string("it has no link kind") : absl::StrCat("its kind is ", link->kind),
          ") nor wireguard-go's (no socket at ", uapi_path, "): delete it or pick another name"));
    }
    if (backend != "auto" && backend != driven_by) {
      return absl::FailedPreconditionError(
          absl::StrCat("interface ", ifname, " exists and is ",
                       driven_by == "netlink" ? "a kernel WireGuard link" : "wireguard-go's", ": the ", backend,
                       " backend cannot drive it"));
    }
    if (absl::Status st = AddAddress(*rtnl, *link, ifname, addr, prefix_len); !st.ok()) return st;
    return driven_by;
  }
  if (!absl::IsNotFound(link.status())) return link.status();

  std::string created;
  absl::Status kernel_failure;
  if (backend != "uapi") {
    kernel_failure = CreateWireGuardLink(*rtnl, ifname);
    if (kernel_failure.ok()) {
      created = "netlink";
    } else if (backend == "netlink") {
      if (absl::IsUnimplemented(kernel_failure)) {
        return absl::UnimplementedError(absl::StrCat(
            kernel_failure.message(), ": this kernel has no WireGuard; use the uapi backend (wireguard-go)"));
      }
      return kernel_failure;
    }
  }
  if (created.empty()) {
    absl::Status st = StartWireguardGo(ifname);
    if (!st.ok()) {
      if (backend == "uapi") return st;
      return absl::Status(st.code(), absl::StrCat("cannot create ", ifname, ": kernel WireGuard: ",
                                                  kernel_failure.message(), "; wireguard-go: ", st.message()));
    }
    created = "uapi";
  }
  link = GetLink(*rtnl, ifname);
  if (!link.ok()) return link.status();
  if (absl::Status st = AddAddress(*rtnl, *link, ifname, addr, prefix_len); !st.ok()) return st;
  if (absl::Status st = SetLinkUp(*rtnl, *link, ifname); !st.ok()) return st;
  return created;
}

std::optional<sockaddr_storage> ParseEndpoint(std::string_view text) {
  // A scope ("[fe80::1%2]:51820") is dropped: the kernel reports one only for link-local.
  std::string plain(text);
  if (size_t pct = plain.find('%'), close = plain.find(']'); pct != std::string::npos && close != std::string::npos &&
                                                                 pct < close) {
    plain.erase(pct, close - pct);
  }
  absl::StatusOr<sockaddr_storage> ss = ParseSockaddr(plain);
  if (!ss.ok() || SockaddrPort(*ss) == 0) return std::nullopt;
  return *ss;
}

absl::StatusOr<bool> LinkExists(const std::string& ifname) {
  auto rtnl = NlSocket::Open(NETLINK_ROUTE);
  if (!rtnl.ok()) return rtnl.status();
  auto link = GetLink(*rtnl, ifname);
  if (link.ok()) return true;
  if (absl::IsNotFound(link.status())) return false;
  return link.status();
}

// glibc 2.36's <sys/pidfd.h> lacks extern "C", so its pidfd_open does not link from C++.
Fd PidfdOpen(pid_t pid) { return Fd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0))); }

pid_t FindWireguardGo(const std::string& ifname) {
  struct stat own;
  if (stat("/proc/thread-self/ns/net", &own) != 0) return -1;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return -1;
  pid_t found = -1;
  while (dirent* e = readdir(proc)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid <= 0) continue;
    std::string base = absl::StrCat("/proc/", pid);
    Fd fd(open((base + "/cmdline").c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) continue;
    char buf[512];
    ssize_t n = read(fd.get(), buf, sizeof(buf) - 1);
    if (n <= 0) continue;  // a kernel thread, or a zombie
    // argv is NUL-separated: wireguard-go [-f|--foreground] IFNAME
    std::vector<std::string_view> argv;
    for (std::string_view rest(buf, static_cast<size_t>(n)); !rest.empty();) {
      size_t nul = rest.find('\0');
      argv.push_back(rest.substr(0, nul));
      rest.remove_prefix(nul == std::string_view::npos ? rest.size() : nul + 1);
    }
    std::string_view prog = argv[0].substr(argv[0].rfind('/') == std::string_view::npos ? 0 : argv[0].rfind('/') + 1);
    if (prog != "wireguard-go" || argv.back() != ifname) continue;
    struct stat ns;
    if (stat((base + "/ns/net").c_str(), &ns) != 0 || ns.st_ino != own.st_ino || ns.st_dev != own.st_dev) continue;
    found = pid;
    break;
  }
  closedir(proc);
  return found;
}

}  // namespace cvmgate
