// Test and bench scaffolding: commands with a deadline, throwaway network namespaces, wireguard-go clean-up.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/time/time.h>

namespace cvmgate::testing {

// Runs argv (PATH lookup), returns its stdout and stderr together; an error
// when it fails or outlives `timeout` (it is killed then).
absl::StatusOr<std::string> RunCommand(const std::vector<std::string>& argv,
                                       absl::Duration timeout = absl::Seconds(20));

bool HaveCommand(const std::string& name);

// A network namespace made with `ip netns add`, deleted with the object.
class Netns {
 public:
  static absl::StatusOr<Netns> Create(const std::string& name);
  Netns(Netns&& other) noexcept : name_(std::move(other.name_)) { other.name_.clear(); }
  Netns& operator=(Netns&&) = delete;
  ~Netns();
  const std::string& name() const { return name_; }

 private:
  explicit Netns(std::string name) : name_(std::move(name)) {}
  std::string name_;
};

// Moves the calling thread into a namespace until destroyed. Sockets and
// child processes created meanwhile belong to that namespace for good.
class ScopedNetns {
 public:
  explicit ScopedNetns(const std::string& name);
  ScopedNetns(const ScopedNetns&) = delete;
  ScopedNetns& operator=(const ScopedNetns&) = delete;
  ~ScopedNetns();
  const absl::Status& status() const { return status_; }

 private:
  int saved_ = -1;
  absl::Status status_;
};

// Pids of the `wireguard-go IFNAME` daemons.
std::vector<pid_t> WireguardGoPids(const std::string& ifname);
// Stops them (SIGTERM, then SIGKILL) and waits for them to be gone, within `timeout`.
void StopWireguardGo(const std::string& ifname, absl::Duration timeout = absl::Seconds(5));

// Removes what an earlier run that died left behind: namespaces named
// <ns_prefix><anything>-<pid> and wireguard-go daemons of interfaces named
// <if_prefix><one letter><pid>, for pids no longer alive.
void CleanupStale(const std::string& ns_prefix, const std::string& if_prefix);

}  // namespace cvmgate::testing
