// Picking and preparing a WireGuard backend: probe kernel WireGuard, fall back to wireguard-go.
#include "control/wireguard/wireguard.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "control/wireguard/genl.h"
#include "control/wireguard/nl.h"
#include "control/wireguard/rtnl.h"
#include "control/wireguard/uapi.h"
#include "dataplane/strings.h"

extern char** environ;

namespace cvmgate {
namespace {

// glibc 2.36's <sys/pidfd.h> lacks extern "C", so its pidfd_open does not link from C++.
int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

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

std::string ReadTail(int fd, size_t max) {
  off_t size = lseek(fd, 0, SEEK_END);
  if (size <= 0) return "";
  off_t from = size > static_cast<off_t>(max) ? size - static_cast<off_t>(max) : 0;
  std::string out(static_cast<size_t>(size - from), '\0');
  ssize_t n = pread(fd, out.data(), out.size(), from);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return std::string(absl::StripAsciiWhitespace(out));
}

// Runs `wireguard-go IFNAME` in the calling thread's network namespace and
// waits for its UAPI socket to answer.
absl::Status StartWireguardGo(const std::string& ifname) {
  const absl::Time deadline = absl::Now() + kWireguardGoStart;
  // Its output goes to a memory file, read back for the error text: a pipe
  // could be inherited by the daemon and never reach EOF.
  int out = memfd_create("wireguard-go-output", MFD_CLOEXEC);
  if (out < 0) return absl::UnavailableError(absl::StrCat("memfd_create: ", strerror(errno)));

  std::vector<std::string> env_text;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view v(*e);
    // LOG_LEVEL would make the daemon keep writing to our memory file;
    // WG_PROCESS_FOREGROUND would keep it from daemonizing.
    if (v.starts_with("LOG_LEVEL=") || v.starts_with("WG_PROCESS_FOREGROUND=") ||
        v.starts_with("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=")) {
      continue;
    }
    env_text.emplace_back(v);
  }
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
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out, 1);
  posix_spawn_file_actions_adddup2(&actions, out, 2);
  pid_t pid = -1;
  int err = posix_spawnp(&pid, "wireguard-go", &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    close(out);
    if (err == ENOENT) {
      return absl::NotFoundError(
          "wireguard-go is not installed (not found in PATH): install it (apt-get install wireguard-go) or use a "
          "kernel with WireGuard");
    }
    return absl::UnavailableError(absl::StrCat("cannot start wireguard-go: ", strerror(err)));
  }

  // The first process exits once the daemon it forks has the interface.
  int pidfd = PidfdOpen(pid);
  bool exited = false;
  if (pidfd >= 0) {
    for (;;) {
      int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      pollfd pfd{pidfd, POLLIN, 0};
      int n = left_ms > 0 ? poll(&pfd, 1, static_cast<int>(left_ms)) : 0;
      if (n < 0 && errno == EINTR) continue;
      exited = n > 0;
      break;
    }
    close(pidfd);
  }
  if (!exited) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::string output = ReadTail(out, 2000);
  close(out);
  if (!exited) {
    return absl::DeadlineExceededError(absl::StrCat("wireguard-go ", ifname, " did not start within ",
                                                    absl::FormatDuration(kWireguardGoStart), "; its output: ", output));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::UnavailableError(absl::StrCat("wireguard-go ", ifname, " failed (",
                                               WIFEXITED(status) ? absl::StrCat("exit status ", WEXITSTATUS(status))
                                                                 : absl::StrCat("signal ", WTERMSIG(status)),
                                               "): ", output));
  }

  const std::string path = UapiPath(kDefaultUapiDir, ifname);
  absl::Status last;
  for (;;) {
    auto probe = OpenUapiWireGuard(ifname, path, absl::Seconds(1));
    if (probe.ok()) return absl::OkStatus();
    last = probe.status();
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::DeadlineExceededError(absl::StrCat("wireguard-go ", ifname,
                                                  " started, but its socket did not answer within ",
                                                  absl::FormatDuration(kWireguardGoStart), ": ", last.message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WireGuard>> OpenWireGuard(const std::string& backend, const std::string& ifname,
                                                         const std::string& uapi_dir) {
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
  auto wg = OpenUapiWireGuard(ifname, UapiPath(uapi_dir, ifname));
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

}  // namespace cvmgate
