// The seamless upgrade's channel (see handover.h).
#include "control/handover.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

#include "dataplane/clock.h"

extern char** environ;

namespace cvmgate {
namespace {

// One SCM_RIGHTS message carries at most this many descriptors (the kernel's SCM_MAX_FD is 253).
constexpr size_t kMaxFds = 250;

absl::Status Errno(const char* what) { return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno))); }

absl::Status SendMessage(int fd, const std::string& text, const std::vector<int>& fds = {}) {
  iovec iov{const_cast<char*>(text.data()), text.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  if (sendmsg(fd, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(text.size())) return Errno("handover: send");
  return absl::OkStatus();
}

// One message, and the descriptors it carried (close-on-exec).
absl::StatusOr<std::string> ReceiveMessage(int fd, std::vector<Fd>* fds) {
  char buf[256];
  iovec iov{buf, sizeof(buf)};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFds));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) return Errno("handover: receive");
  if (n == 0) return absl::UnavailableError("handover: the other process closed the channel");
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int got;
      std::memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (fds != nullptr) fds->emplace_back(got);
      else close(got);
    }
  }
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return absl::DataLossError("handover: a message was cut short");
  return std::string(buf, static_cast<size_t>(n));
}

Fd PidfdOf(pid_t pid) { return Fd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0))); }

}  // namespace

absl::StatusOr<Successor> Successor::Spawn(const std::string& exe, const std::vector<std::string>& argv) {
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) return Errno("handover: socketpair");
  Fd ours(pair[0]);
  Fd theirs(pair[1]);
  // Everything the child needs is made before fork: between fork and exec only async-signal-safe calls.
  std::vector<std::string> env_text;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, kHandoverEnv, sizeof(kHandoverEnv) - 1) != 0) env_text.emplace_back(*e);
  }
  env_text.push_back(absl::StrCat(kHandoverEnv, "=", theirs.get()));
  std::vector<char*> envp;
  for (auto& e : env_text) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (auto& a : args) argp.push_back(a.data());
  argp.push_back(nullptr);
  sigset_t none;
  sigemptyset(&none);
  pid_t pid = fork();
  if (pid < 0) return Errno("handover: fork");
  if (pid == 0) {
    // The child: its end of the channel survives exec; the signals this process blocks for its
    // signalfd are unblocked again (the successor blocks its own).
    int flags = fcntl(pair[1], F_GETFD);
    fcntl(pair[1], F_SETFD, flags & ~FD_CLOEXEC);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &dfl, nullptr);
    execve(exe.c_str(), argp.data(), envp.data());
    _exit(127);
  }
  theirs.reset();
  Fd pidfd = PidfdOf(pid);
  return Successor(std::move(ours), pid, std::move(pidfd));
}

std::string Successor::Ended() {
  int status = 0;
  if (reaped_ || waitpid(pid_, &status, WNOHANG) != pid_) return "";
  reaped_ = true;
  if (WIFEXITED(status)) {
    return WEXITSTATUS(status) == 127 ? absl::StrCat("could not be started (exit 127)")
                                      : absl::StrCat("exited with status ", WEXITSTATUS(status));
  }
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "ended";
}

absl::Status Successor::WaitFor(const std::string& message, absl::Duration timeout) {
  const int64_t deadline = MonotonicMs() + absl::ToInt64Milliseconds(timeout);
  while (true) {
    pollfd fds[2] = {{channel_.get(), POLLIN, 0}, {pidfd_.get(), POLLIN, 0}};
    int64_t left = deadline - MonotonicMs();
    if (left <= 0) {
      return absl::DeadlineExceededError(absl::StrCat("the new process (pid ", pid_, ") did not say '", message,
                                                      "' within ", absl::FormatDuration(timeout)));
    }
    if (poll(fds, pidfd_.valid() ? 2 : 1, static_cast<int>(left)) < 0 && errno != EINTR) return Errno("poll");
    if (fds[0].revents & POLLIN) {
      auto got = ReceiveMessage(channel_.get(), nullptr);
      if (got.ok() && *got == message) return absl::OkStatus();
      if (got.ok()) {
        return absl::InternalError(absl::StrCat("the new process said '", *got, "', not '", message, "'"));
      }
    }
    if (fds[0].revents & (POLLHUP | POLLERR) || fds[1].revents & POLLIN) {
      // It closed the channel or exited: say how it ended (it may take a moment to become a zombie).
      std::string how;
      for (int i = 0; i < 100 && (how = Ended()).empty(); ++i) {
        timespec ms = {0, 10'000'000};
        nanosleep(&ms, nullptr);
      }
      return absl::UnavailableError(absl::StrCat("the new process (pid ", pid_, ") ",
                                                 how.empty() ? "closed the channel" : how,
                                                 " before it took over (its log says why)"));
    }
  }
}

absl::Status Successor::WaitForRequest(absl::Duration timeout) { return WaitFor("take", timeout); }

absl::Status Successor::WaitReady(absl::Duration timeout) { return WaitFor("ready", timeout); }

absl::Status Successor::Send(const std::vector<int>& listeners, int admin) {
  std::vector<int> fds = listeners;
  if (admin >= 0) fds.push_back(admin);
  if (fds.size() > kMaxFds) {
    return absl::ResourceExhaustedError(
        absl::StrCat("handover: ", fds.size(), " sockets, more than one message can carry (", kMaxFds, ")"));
  }
  return SendMessage(channel_.get(), absl::StrCat("sockets ", listeners.size(), " ", admin >= 0 ? 1 : 0), fds);
}

void Successor::Abandon() {
  if (pid_ <= 0 || reaped_) return;
  if (Ended().empty()) {
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    reaped_ = true;
  }
  channel_.reset();
}

absl::StatusOr<Inherited> RequestTakeover(int channel, absl::Duration timeout) {
  if (auto s = SendMessage(channel, "take"); !s.ok()) return s;
  pollfd p{channel, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) <= 0) {
    return absl::DeadlineExceededError("handover: the running process sent no sockets");
  }
  std::vector<Fd> fds;
  auto got = ReceiveMessage(channel, &fds);
  if (!got.ok()) return got.status();
  // "sockets <listeners> <admin 0|1>", the descriptors in that order.
  size_t listeners = 0;
  size_t admin = 0;
  if (got->rfind("sockets ", 0) != 0 || std::sscanf(got->c_str(), "sockets %zu %zu", &listeners, &admin) != 2 ||
      admin > 1 || listeners + admin != fds.size()) {
    return absl::InternalError(absl::StrCat("handover: unexpected message '", *got, "' with ", fds.size(),
                                            " descriptors"));
  }
  Inherited out;
  for (size_t i = 0; i < listeners; ++i) out.listeners.push_back(std::move(fds[i]));
  if (admin == 1) out.admin = std::move(fds[listeners]);
  return out;
}

absl::Status ReportReady(int channel) { return SendMessage(channel, "ready"); }

void NotifySystemd(const std::string& state) {
  const char* path = getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  size_t len = std::strlen(path);
  if (len >= sizeof(addr.sun_path)) return;
  std::memcpy(addr.sun_path, path, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // an abstract socket
  Fd fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
         static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
}

}  // namespace cvmgate
