// WireGuard supervisor: owns the tunnel interface on a thread of its own, so no WireGuard call can stall the
// control loop, and brings the interface back (recreated, reconfigured) when it dies.
#pragma once

#include <netinet/in.h>
#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/time/time.h>

#include "control/wireguard/wireguard.h"
#include "dataplane/fd.h"

namespace cvmgate {

// What the control plane sees of its tunnel; nothing here blocks.
class Tunnel {
 public:
  struct Peer {
    WgKey key;
    in_addr ip;
  };
  struct View {
    std::string backend;                   // "netlink" or "uapi"
    bool readable = false;                 // the last read of the device succeeded
    absl::Time last_read = absl::InfinitePast();  // the last read that succeeded
    // Last handshake (unix s) of each wanted peer: the newest ever read, so a
    // recreated device (which starts at 0) does not erase what was seen.
    absl::flat_hash_map<std::string, int64_t> handshakes;  // by base64 key
    std::string public_key;                // base64; empty until the device was read
    uint64_t applied = 0;                  // the Want() generation the device holds
    uint64_t reads = 0;
    uint64_t read_failures = 0;
    uint64_t peer_errors = 0;
    uint64_t restores = 0;                 // the interface was recreated and reconfigured
    uint64_t restore_failures = 0;
    uint64_t wireguard_go_kills = 0;       // an unresponsive wireguard-go was killed to be restarted
    double last_restore_seconds = 0;       // how long the last restore took
    double last_read_seconds = 0;          // how long the last read took
  };

  virtual ~Tunnel() = default;
  // The peers the registry wants (every CVM's key and /32), generation `gen`;
  // applied in the background, and again whenever the device lost them.
  virtual void Want(std::vector<Peer> peers, uint64_t gen) = 0;
  // Waits up to `timeout` for generation `gen` to be on the device; false at
  // once when the device cannot be read now.
  virtual bool WaitApplied(uint64_t gen, absl::Duration timeout) = 0;
  virtual View Read() const = 0;
};

// How the supervisor reaches the system; tests give it fakes.
class TunnelPlatform {
 public:
  virtual ~TunnelPlatform() = default;
  // Makes sure the interface exists with its address and is up (creating it,
  // or starting wireguard-go, when it does not); returns the backend that drives it.
  virtual absl::StatusOr<std::string> Ensure(const std::string& backend, const std::string& ifname,
                                             const std::string& address_cidr) = 0;
  virtual absl::StatusOr<std::unique_ptr<WireGuard>> Open(const std::string& backend, const std::string& ifname) = 0;
  virtual absl::StatusOr<bool> LinkExists(const std::string& ifname) = 0;
  // The wireguard-go process serving the interface, or -1.
  virtual pid_t Daemon(const std::string& ifname) = 0;
  // SIGKILL, then wait (up to `timeout`) until it is gone.
  virtual void Kill(pid_t pid, absl::Duration timeout) = 0;
  // Sends one packet into the tunnel toward `ip`: WireGuard then starts a
  // handshake with that peer (at its restored endpoint) by itself.
  virtual void Nudge(const in_addr& ip) = 0;
};
std::unique_ptr<TunnelPlatform> SystemTunnelPlatform();

class WireGuardSupervisor final : public Tunnel {
 public:
  struct Options {
    std::string ifname;
    std::string backend = "auto";  // as configured (--wg-backend): what a recreated interface may be
    std::string address_cidr;      // the gateway's tunnel address, e.g. 10.0.0.1/8
    WgKey private_key;
    uint16_t listen_port = 51820;
    bool keep_unknown_peers = false;
    absl::Duration poll_every = absl::Seconds(10);
    // A wireguard-go that has answered nothing for this long is killed and restarted.
    absl::Duration restart_after = absl::Seconds(10);
    absl::Duration max_backoff = absl::Seconds(30);
  };

  // `wg` is the backend already set up (EnsureInterface, Configure) at start.
  WireGuardSupervisor(Options options, std::unique_ptr<WireGuard> wg, std::unique_ptr<TunnelPlatform> platform);
  ~WireGuardSupervisor() override;

  // Starts the thread; `notify` is written (an eventfd) after every read or
  // restore, so the control loop can publish what changed. Before Start, Step
  // drives the supervisor by hand (tests).
  absl::Status Start(int notify_fd);
  void Stop();

  // One round: read the device (or, when it is broken, try to bring it back)
  // and make its peers match. Returns when to step again.
  absl::Time Step(absl::Time now);

  void Want(std::vector<Peer> peers, uint64_t gen) override;
  bool WaitApplied(uint64_t gen, absl::Duration timeout) override;
  View Read() const override;

 private:
  void Run();
  // Whether a failed read means the interface must be brought back: it is
  // gone, its wireguard-go is gone, or that wireguard-go answered nothing for
  // restart_after (it is killed first).
  bool Broken(absl::Time now);
  absl::Status Restore();
  // Sets missing or wrong peers and removes unknown ones; false if any change failed.
  bool Reconcile(const WgDevice& device, const std::vector<Peer>& wanted);
  void Record(const WgDevice& device, absl::Time now, const std::vector<Peer>& wanted);
  // Follows the wireguard-go serving the interface (uapi), by pidfd.
  void WatchDaemon();
  // Stops following it, reaping it (and logging how it ended) if it was ours and is gone.
  void ForgetDaemon();
  void Notify();

  const Options options_;
  std::unique_ptr<TunnelPlatform> platform_;
  std::unique_ptr<WireGuard> wg_;  // null while the interface is broken and not yet restored
  std::string backend_;

  // Supervisor thread only.
  bool broken_ = false;
  absl::Time failing_since_ = absl::InfinitePast();
  absl::Duration backoff_ = absl::ZeroDuration();
  absl::flat_hash_map<std::string, std::string> endpoints_;  // last endpoint seen per peer
  absl::flat_hash_set<std::string> wanted_before_;  // the peers the last reconcile wanted
  absl::flat_hash_set<std::string> retired_;        // wanted once, not now, still on the device
  pid_t daemon_ = -1;  // wireguard-go of a uapi interface
  Fd daemon_fd_;  // its pidfd: readable when it exits
  Fd link_fd_;    // rtnetlink link events: an interface deleted under us

  mutable std::mutex mu_;
  std::condition_variable applied_cv_;
  std::vector<Peer> wanted_;  // guarded by mu_
  uint64_t wanted_gen_ = 0;    // guarded by mu_
  View view_;                  // guarded by mu_

  std::thread thread_;
  std::atomic<bool> stopping_{false};
  Fd wake_fd_;
  int notify_fd_ = -1;
};

}  // namespace cvmgate
