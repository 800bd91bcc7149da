// Test and bench scaffolding: bounded commands, network namespaces, wireguard-go clean-up.
#include "tests/wireguard/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/time/clock.h>

extern char** environ;

namespace cvmgate::testing {
namespace {

// glibc 2.36's <sys/pidfd.h> lacks extern "C", so its pidfd_open does not link from C++.
int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// Waits for a process (not necessarily our child) to end, within `timeout`.
bool WaitGone(pid_t pid, absl::Duration timeout) {
  int fd = PidfdOpen(pid);
  if (fd < 0) return errno == ESRCH;
  pollfd pfd{fd, POLLIN, 0};
  int n;
  do {
    n = poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  } while (n < 0 && errno == EINTR);
  close(fd);
  return n > 0;
}

std::vector<std::string> Cmdline(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/cmdline"), std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  std::string cur;
  for (char c : all) {
    if (c == '\0') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  return args;
}

bool Alive(pid_t pid) { return kill(pid, 0) == 0 || errno == EPERM; }

}  // namespace

absl::StatusOr<std::string> RunCommand(const std::vector<std::string>& argv, absl::Duration timeout) {
  const std::string text = absl::StrJoin(argv, " ");
  int out = memfd_create("command-output", MFD_CLOEXEC);
  if (out < 0) return absl::InternalError(absl::StrCat("memfd_create: ", strerror(errno)));
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out, 1);
  posix_spawn_file_actions_adddup2(&actions, out, 2);
  pid_t pid;
  int err = posix_spawnp(&pid, cargv[0], &actions, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    close(out);
    return absl::NotFoundError(absl::StrCat(text, ": ", strerror(err)));
  }
  bool done = WaitGone(pid, timeout);
  if (!done) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::string output(static_cast<size_t>(std::max<off_t>(lseek(out, 0, SEEK_END), 0)), '\0');
  ssize_t n = pread(out, output.data(), output.size(), 0);
  output.resize(n > 0 ? static_cast<size_t>(n) : 0);
  close(out);
  if (!done) return absl::DeadlineExceededError(absl::StrCat(text, ": killed after ", absl::FormatDuration(timeout)));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(text, ": failed (status ", status, "): ", output));
  }
  return output;
}

bool HaveCommand(const std::string& name) {
  const char* path = getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/sbin:/usr/bin:/sbin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (access(absl::StrCat(dir, "/", name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

absl::StatusOr<Netns> Netns::Create(const std::string& name) {
  auto r = RunCommand({"ip", "netns", "add", name});
  if (!r.ok()) return r.status();
  Netns ns(name);
  if (auto up = RunCommand({"ip", "-n", name, "link", "set", "lo", "up"}); !up.ok()) return up.status();
  return ns;
}

Netns::~Netns() {
  if (!name_.empty()) (void)RunCommand({"ip", "netns", "del", name_});
}

ScopedNetns::ScopedNetns(const std::string& name) {
  saved_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  int fd = open(absl::StrCat("/run/netns/", name).c_str(), O_RDONLY | O_CLOEXEC);
  if (saved_ < 0 || fd < 0) {
    status_ = absl::InternalError(absl::StrCat("cannot open network namespace ", name, ": ", strerror(errno)));
  } else if (setns(fd, CLONE_NEWNET) != 0) {
    status_ = absl::InternalError(absl::StrCat("setns into ", name, ": ", strerror(errno)));
  }
  if (fd >= 0) close(fd);
}

ScopedNetns::~ScopedNetns() {
  if (saved_ >= 0) {
    if (setns(saved_, CLONE_NEWNET) != 0) abort();  // running on in the wrong namespace would corrupt later tests
    close(saved_);
  }
}

std::vector<pid_t> WireguardGoPids(const std::string& ifname) {
  std::vector<pid_t> pids;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return pids;
  while (dirent* e = readdir(proc)) {
    int pid;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    auto args = Cmdline(pid);
    if (args.size() >= 2 && absl::EndsWith(args[0], "wireguard-go") && args.back() == ifname) pids.push_back(pid);
  }
  closedir(proc);
  return pids;
}

void StopWireguardGo(const std::string& ifname, absl::Duration timeout) {
  for (pid_t pid : WireguardGoPids(ifname)) {
    kill(pid, SIGTERM);
    if (!WaitGone(pid, timeout)) {
      kill(pid, SIGKILL);
      WaitGone(pid, timeout);
    }
  }
}

void CleanupStale(const std::string& ns_prefix, const std::string& if_prefix) {
  DIR* proc = opendir("/proc");
  if (proc != nullptr) {
    std::vector<pid_t> stale;
    while (dirent* e = readdir(proc)) {
      int pid, owner;
      if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
      auto args = Cmdline(pid);
      if (args.size() < 2 || !absl::EndsWith(args[0], "wireguard-go")) continue;
      const std::string& name = args.back();
      if (!absl::StartsWith(name, if_prefix) || name.size() < if_prefix.size() + 2) continue;
      if (absl::SimpleAtoi(name.substr(if_prefix.size() + 1), &owner) && !Alive(owner)) stale.push_back(pid);
    }
    closedir(proc);
    for (pid_t pid : stale) {
      kill(pid, SIGKILL);
      WaitGone(pid, absl::Seconds(5));
    }
  }
  DIR* netns = opendir("/run/netns");
  if (netns != nullptr) {
    std::vector<std::string> names;
    while (dirent* e = readdir(netns)) {
      std::string name = e->d_name;
      size_t dash = name.rfind('-');
      int owner;
      if (absl::StartsWith(name, ns_prefix) && dash != std::string::npos &&
          absl::SimpleAtoi(name.substr(dash + 1), &owner) && !Alive(owner)) {
        names.push_back(name);
      }
    }
    closedir(netns);
    for (const auto& name : names) (void)RunCommand({"ip", "netns", "del", name});
  }
}

}  // namespace cvmgate::testing
