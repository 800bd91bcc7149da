// WireGuard supervisor: reads and reconciles the device on its own thread, and restores a dead or deleted
// interface (wireguard-go killed or stuck, kernel link deleted) with backoff.
#include "control/wireguard/supervisor.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include <absl/container/flat_hash_set.h>
#include <absl/strings/str_cat.h>

#include "dataplane/addresses.h"
#include "dataplane/log.h"
#include "kernel-config/netlink.h"

namespace cvmgate {
namespace {

// Each UAPI request has this long: a GetDevice of 10,000 peers takes about
// 40 ms (bench/wg_poll.cc), so only a stuck wireguard-go ever reaches it.
constexpr absl::Duration kUapiTimeout = absl::Seconds(2);
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(500);
constexpr absl::Duration kKillWait = absl::Seconds(5);

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string ExitText(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return "unknown status";
}

class SystemPlatform final : public TunnelPlatform {
 public:
  absl::StatusOr<std::string> Ensure(const std::string& backend, const std::string& ifname,
                                     const std::string& address_cidr) override {
    return EnsureInterface(backend, ifname, address_cidr);
  }
  absl::StatusOr<std::unique_ptr<WireGuard>> Open(const std::string& backend, const std::string& ifname) override {
    return OpenWireGuard(backend, ifname, kDefaultUapiDir, kUapiTimeout);
  }
  absl::StatusOr<bool> LinkExists(const std::string& ifname) override { return cvmgate::LinkExists(ifname); }
  pid_t Daemon(const std::string& ifname) override { return FindWireguardGo(ifname); }
  void Nudge(const in_addr& ip) override {
    // One empty datagram to the discard port: no privilege needed, and the
    // CVM drops it (or answers "port unreachable"), but it has to be encrypted,
    // and that takes a fresh session.
    Fd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(9);
    to.sin_addr = ip;
    (void)sendto(fd.get(), "", 0, 0, reinterpret_cast<sockaddr*>(&to), sizeof(to));
  }
  void Kill(pid_t pid, absl::Duration timeout) override {
    Fd fd = PidfdOpen(pid);
    kill(pid, SIGKILL);  // SIGKILL also ends a stopped process
    if (fd.valid()) {
      pollfd p{fd.get(), POLLIN, 0};
      poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
    }
  }
};

}  // namespace

std::unique_ptr<TunnelPlatform> SystemTunnelPlatform() { return std::make_unique<SystemPlatform>(); }

WireGuardSupervisor::WireGuardSupervisor(Options options, std::unique_ptr<WireGuard> wg,
                                         std::unique_ptr<TunnelPlatform> platform)
    : options_(std::move(options)), platform_(std::move(platform)), wg_(std::move(wg)) {
  backend_ = std::string(wg_->backend());
  view_.backend = backend_;
  WatchDaemon();
}

WireGuardSupervisor::~WireGuardSupervisor() { Stop(); }

absl::Status WireGuardSupervisor::Start(int notify_fd) {
  notify_fd_ = notify_fd;
  wake_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_.valid()) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  // Link events make a deleted interface come back at once, not at the next read.
  if (mnl_socket* s = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC | SOCK_NONBLOCK)) {
    if (mnl_socket_bind(s, RTMGRP_LINK, MNL_SOCKET_AUTOPID) == 0) {
      link_fd_.reset(dup(mnl_socket_get_fd(s)));
    }
    mnl_socket_close(s);
  }
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void WireGuardSupervisor::Stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true);
  uint64_t one = 1;
  (void)!write(wake_fd_.get(), &one, sizeof(one));
  thread_.join();
}

void WireGuardSupervisor::Notify() {
  applied_cv_.notify_all();
  if (notify_fd_ < 0) return;
  uint64_t one = 1;
  (void)!write(notify_fd_, &one, sizeof(one));
}

void WireGuardSupervisor::WatchDaemon() {
  pid_t pid = backend_ == "uapi" ? platform_->Daemon(options_.ifname) : -1;
  if (pid == daemon_) return;
  ForgetDaemon();
  daemon_ = pid;
  daemon_fd_ = pid > 0 ? PidfdOpen(pid) : Fd();
}

void WireGuardSupervisor::ForgetDaemon() {
  if (daemon_ <= 0) return;
  // It may still be on its way out (its interface goes before it is a zombie):
  // wait for that, then reap it (and tell how it ended) if this process started it.
  if (daemon_fd_.valid()) {
    pollfd p{daemon_fd_.get(), POLLIN, 0};
    poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(kKillWait)));
  }
  int status = 0;
  if (waitpid(daemon_, &status, WNOHANG) == daemon_) {
    Log("wireguard: wireguard-go of ", options_.ifname, " (pid ", daemon_, ") exited (", ExitText(status), ")");
  }
  daemon_fd_.reset();
  daemon_ = -1;
}

void WireGuardSupervisor::Want(std::vector<Peer> peers, uint64_t gen) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    wanted_ = std::move(peers);
    wanted_gen_ = gen;
  }
  if (wake_fd_.valid()) {
    uint64_t one = 1;
    (void)!write(wake_fd_.get(), &one, sizeof(one));
  }
}

bool WireGuardSupervisor::WaitApplied(uint64_t gen, absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  applied_cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout),
                       [&] { return view_.applied >= gen || !view_.readable; });
  return view_.applied >= gen;
}

Tunnel::View WireGuardSupervisor::Read() const {
  std::lock_guard<std::mutex> lock(mu_);
  return view_;
}

void WireGuardSupervisor::Run() {
  absl::Time next = absl::Now();
  while (!stopping_.load()) {
    if (absl::Now() >= next) next = Step(absl::Now());
    int64_t wait_ms = std::clamp<int64_t>(absl::ToInt64Milliseconds(next - absl::Now()), 0, 60000);
    pollfd fds[3] = {{wake_fd_.get(), POLLIN, 0}, {daemon_fd_.get(), POLLIN, 0}, {link_fd_.get(), POLLIN, 0}};
    if (poll(fds, 3, static_cast<int>(wait_ms)) <= 0) continue;
    if (fds[0].revents & POLLIN) {
      uint64_t n;
      (void)!read(wake_fd_.get(), &n, sizeof(n));
      next = absl::Now();  // new peers to set, or stopping
    }
    if (fds[1].revents & POLLIN) {
      Log("wireguard: wireguard-go of ", options_.ifname, " (pid ", daemon_, ") is gone; restarting it");
      ForgetDaemon();
      broken_ = true;
      next = absl::Now();
    }
    if (fds[2].revents & POLLIN) {
      char buf[8192];
      bool deleted = false, overrun = false;
      for (;;) {
        ssize_t len = recv(link_fd_.get(), buf, sizeof(buf), MSG_DONTWAIT);
        if (len < 0 && errno == ENOBUFS) {
          overrun = true;  // events were lost: look for ourselves
          continue;
        }
        if (len <= 0) break;
        size_t left = static_cast<size_t>(len);
        for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buf); NlMessageOk(nlh, left); nlh = NlNext(nlh, &left)) {
          if (nlh->nlmsg_type != RTM_DELLINK) continue;
          (void)ForEachAttr(nlh, sizeof(ifinfomsg), [&](const nlattr* attr) {
            if (mnl_attr_get_type(attr) == IFLA_IFNAME && mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0 &&
                options_.ifname == mnl_attr_get_str(attr)) {
              deleted = true;
            }
            return absl::OkStatus();
          });
        }
      }
      if (deleted || overrun) {
        // The event may be an old one (a link already recreated): only a link
        // missing now counts.
        auto exists = platform_->LinkExists(options_.ifname);
        deleted = exists.ok() && !*exists;
      }
      if (deleted && !broken_) {
        Log("wireguard: interface ", options_.ifname, " was deleted; recreating it");
        broken_ = true;
        next = absl::Now();
      }
    }
  }
}

absl::Time WireGuardSupervisor::Step(absl::Time now) {
  std::vector<Peer> wanted;
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wanted = wanted_;
    gen = wanted_gen_;
  }
  auto backoff = [this, now] {
    backoff_ = backoff_ == absl::ZeroDuration() ? kFirstBackoff : std::min(2 * backoff_, options_.max_backoff);
    return now + backoff_;
  };
  if (!broken_ && wg_ != nullptr) {
    auto started = std::chrono::steady_clock::now();
    auto device = wg_->GetDevice();
    double took = SecondsSince(started);
    if (device.ok()) {
      if (failing_since_ != absl::InfinitePast()) Log("wireguard: ", options_.ifname, " answers again");
      failing_since_ = absl::InfinitePast();
      backoff_ = absl::ZeroDuration();
      bool in_step = Reconcile(*device, wanted);
      Record(*device, now, wanted);
      {
        std::lock_guard<std::mutex> lock(mu_);
        view_.last_read_seconds = took;
        if (in_step) view_.applied = std::max(view_.applied, gen);
      }
      Notify();
      return in_step ? now + options_.poll_every : backoff();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      view_.readable = false;
      view_.last_read_seconds = took;
      ++view_.read_failures;
    }
    if (failing_since_ == absl::InfinitePast()) {
      failing_since_ = now;
      Log("wireguard: cannot read ", options_.ifname, ": ", device.status().message());
    }
    broken_ = Broken(now);
    Notify();
    if (!broken_) return backoff();
  }
  auto started = std::chrono::steady_clock::now();
  absl::Status restored = Restore();
  double took = SecondsSince(started);
  if (!restored.ok()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++view_.restore_failures;
    }
    absl::Time next = backoff();
    Log("wireguard: cannot restore ", options_.ifname, " (next try in ", absl::FormatDuration(backoff_),
        "): ", restored.message());
    Notify();
    return next;
  }
  broken_ = false;
  failing_since_ = absl::InfinitePast();
  backoff_ = absl::ZeroDuration();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++view_.restores;
    view_.last_restore_seconds = took;
    view_.applied = std::max(view_.applied, gen);
  }
  Log("wireguard: ", options_.ifname, " restored in ", static_cast<int64_t>(took * 1000), " ms (", backend_,
      "): address, private key, port ", options_.listen_port, " and ", wanted.size(), " peers set");
  Notify();
  return now + options_.poll_every;
}

bool WireGuardSupervisor::Broken(absl::Time now) {
  auto exists = platform_->LinkExists(options_.ifname);
  if (exists.ok() && !*exists) {
    Log("wireguard: interface ", options_.ifname, " is gone");
    return true;
  }
  if (backend_ != "uapi") return false;  // kernel WireGuard: read again (with backoff) while the link is there
  WatchDaemon();
  if (daemon_ <= 0) {
    Log("wireguard: no wireguard-go serves ", options_.ifname);
    return true;
  }
  if (now - failing_since_ < options_.restart_after) return false;
  Log("wireguard: wireguard-go of ", options_.ifname, " (pid ", daemon_, ") answered nothing for ",
      absl::FormatDuration(now - failing_since_), "; killing it to start another");
  platform_->Kill(daemon_, kKillWait);
  ForgetDaemon();
  std::lock_guard<std::mutex> lock(mu_);
  ++view_.wireguard_go_kills;
  return true;
}

absl::Status WireGuardSupervisor::Restore() {
  wg_.reset();
  // What is left of a broken wireguard-go goes first: its interface goes with it.
  WatchDaemon();
  if (daemon_ > 0) platform_->Kill(daemon_, kKillWait);
  ForgetDaemon();
  auto backend = platform_->Ensure(options_.backend, options_.ifname, options_.address_cidr);
  if (!backend.ok()) return backend.status();
  auto wg = platform_->Open(*backend, options_.ifname);
  if (!wg.ok()) return wg.status();
  if (auto s = (*wg)->Configure(options_.private_key, options_.listen_port); !s.ok()) return s;
  std::vector<Peer> wanted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wanted = wanted_;
  }
  // Each peer with its last endpoint: the gateway can then start a handshake
  // itself, and a CVM is reachable again before it speaks.
  for (const Peer& p : wanted) {
    auto endpoint = endpoints_.find(p.key.ToBase64());
    if (auto s = (*wg)->SetPeer(p.key, p.ip, endpoint == endpoints_.end() ? "" : endpoint->second); !s.ok()) {
      return s;
    }
  }
  auto device = (*wg)->GetDevice();
  if (!device.ok()) return device.status();
  // The sessions died with the old interface. The peers' handshakes from
  // before still count for health (they age as usual), and a packet toward
  // each CVM makes the gateway start its new handshake now, not when the CVM's
  // own timers would, so health rests on fresh handshakes within a round trip.
  for (const Peer& p : wanted) platform_->Nudge(p.ip);
  wg_ = *std::move(wg);
  backend_ = *backend;
  WatchDaemon();
  Record(*device, absl::Now(), wanted);
  std::lock_guard<std::mutex> lock(mu_);
  view_.backend = backend_;
  return absl::OkStatus();
}

bool WireGuardSupervisor::Reconcile(const WgDevice& device, const std::vector<Peer>& wanted) {
  absl::flat_hash_map<std::string, const WgPeer*> present;
  for (const WgPeer& p : device.peers) present[p.public_key.ToBase64()] = &p;
  bool ok = true;
  uint64_t errors = 0;
  absl::flat_hash_set<std::string> keep;
  for (const Peer& want : wanted) {
    std::string key = want.key.ToBase64();
    keep.insert(key);
    std::string ip = IpText(want.ip);
    auto it = present.find(key);
    if (it != present.end() && it->second->allowed_ips == std::vector<std::string>{absl::StrCat(ip, "/32")}) continue;
    auto endpoint = endpoints_.find(key);
    if (auto s = wg_->SetPeer(want.key, want.ip, endpoint == endpoints_.end() ? "" : endpoint->second); !s.ok()) {
      ok = false;
      ++errors;
      Log("wireguard: cannot set peer ", key, ": ", s.message());
    }
  }
  // A peer this process wanted and wants no more goes, even with
  // --wg-keep-unknown-peers (which keeps only peers it never set).
  for (const std::string& key : wanted_before_) {
    if (!keep.contains(key)) retired_.insert(key);
  }
  for (const auto& [key, peer] : present) {
    if (keep.contains(key) || (options_.keep_unknown_peers && !retired_.contains(key))) continue;
    if (auto s = wg_->RemovePeer(peer->public_key); !s.ok()) {
      ok = false;
      ++errors;
      Log("wireguard: cannot remove peer ", key, ": ", s.message());
      continue;
    }
    retired_.erase(key);
  }
  absl::erase_if(retired_, [&](const std::string& key) { return !present.contains(key) || keep.contains(key); });
  wanted_before_ = std::move(keep);
  std::lock_guard<std::mutex> lock(mu_);
  view_.peer_errors += errors;
  return ok;
}

void WireGuardSupervisor::Record(const WgDevice& device, absl::Time now, const std::vector<Peer>& wanted) {
  absl::flat_hash_map<std::string, int64_t> read;
  for (const WgPeer& p : device.peers) {
    std::string key = p.public_key.ToBase64();
    read[key] = p.last_handshake_sec;
    if (!p.endpoint.empty()) endpoints_[key] = p.endpoint;
  }
  std::lock_guard<std::mutex> lock(mu_);
  absl::flat_hash_map<std::string, int64_t> handshakes;
  for (const Peer& p : wanted) {
    std::string key = p.key.ToBase64();
    int64_t seen = 0;
    if (auto it = read.find(key); it != read.end()) seen = it->second;
    if (auto it = view_.handshakes.find(key); it != view_.handshakes.end()) seen = std::max(seen, it->second);
    handshakes[key] = seen;
  }
  view_.handshakes = std::move(handshakes);
  view_.readable = true;
  view_.last_read = now;
  ++view_.reads;
  if (device.has_private_key) view_.public_key = device.public_key.ToBase64();
}

}  // namespace cvmgate
