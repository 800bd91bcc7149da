// Upgrade without a dropped connection. The running cvmgate starts its successor (the binary now at
// the path it was started from, with the same arguments, so a replaced binary and an edited config
// file both take effect), and hands it every listening socket and the admin API's over a Unix socket
// pair with SCM_RIGHTS, as HAProxy's seamless reload does. Nothing is closed on the way: a SYN that
// arrives meanwhile waits in the same accept queue, whichever process accepts it. Once the
// successor accepts, the old process stops accepting and drains its relays as on SIGTERM; if the
// successor fails before, the old one goes on as if nothing happened.
//
//   old                                   successor (CVMGATE_HANDOVER_FD=n in its environment)
//   spawn ---------------------------->   flags, config file, probe, certificates
//        <--------------------------- take
//   state-file lock released
//   listeners + admin (SCM_RIGHTS) --->   state-file lock, registry, WireGuard, workers on the sockets
//        <--------------------------- ready
//   stop accepting, drain, exit            serves
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/time/time.h>

#include "dataplane/fd.h"

namespace cvmgate {

// The environment variable that names the successor's end of the channel.
inline constexpr char kHandoverEnv[] = "CVMGATE_HANDOVER_FD";

// The old process's side.
class Successor {
 public:
  // Starts `exe` with `argv` (argv[0] included), its end of a new channel named in its environment.
  static absl::StatusOr<Successor> Spawn(const std::string& exe, const std::vector<std::string>& argv);
  Successor(Successor&&) = default;

  // Until the successor asks to take over; an error when it exited first (with its status) or
  // `timeout` passed.
  absl::Status WaitForRequest(absl::Duration timeout);
  // The sockets go: the listeners (any number) and the admin API's (-1: none).
  absl::Status Send(const std::vector<int>& listeners, int admin);
  // Until the successor accepts on them; an error as for WaitForRequest.
  absl::Status WaitReady(absl::Duration timeout);
  // After an error: the successor is killed (if it still runs) and reaped. After success it is left
  // to run (it outlives this process).
  void Abandon();
  pid_t pid() const { return pid_; }

 private:
  Successor(Fd channel, pid_t pid, Fd pidfd) : channel_(std::move(channel)), pid_(pid), pidfd_(std::move(pidfd)) {}
  absl::Status WaitFor(const std::string& message, absl::Duration timeout);
  // Its exit, when it has exited: "exited with status 1" (reaped).
  std::string Ended();

  Fd channel_;
  pid_t pid_ = -1;
  Fd pidfd_;
  bool reaped_ = false;
};

// What the successor receives.
struct Inherited {
  std::vector<Fd> listeners;
  Fd admin;  // invalid: the old process had none to give
};

// The successor's side: asks for the sockets on `channel` and waits for them.
absl::StatusOr<Inherited> RequestTakeover(int channel, absl::Duration timeout);
// The successor accepts on them now: the old process may stop.
absl::Status ReportReady(int channel);

// Tells systemd (Type=notify) `state`, e.g. "READY=1"; nothing when not started by systemd.
void NotifySystemd(const std::string& state);

}  // namespace cvmgate
