// wireguard-go over its UAPI socket (the cross-platform userspace protocol: get=1 / set=1, keys in hex).
#include "control/wireguard/uapi.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

#include "dataplane/addresses.h"
#include "dataplane/fd.h"
#include "dataplane/strings.h"

namespace cvmgate {
namespace {

absl::Status BadLine(int line_no, std::string_view line, absl::string_view why) {
  return absl::InternalError(
      absl::StrCat("wireguard-go's reply, line ", line_no, " \"", AbslView(line.substr(0, 100)), "\": ", why));
}

absl::Status ErrnoReply(std::string_view value) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(AbslView(value), &n)) {
    return absl::InternalError(absl::StrCat("wireguard-go's reply has a malformed errno=", AbslView(value)));
  }
  if (n == 0) return absl::OkStatus();
  // wireguard-go writes negative errno values; accept either sign.
  int err = static_cast<int>(n < 0 ? -n : n);
  std::string text = absl::StrCat("wireguard-go refused the request: errno=", n, " (", strerror(err), ")");
  if (err == EINVAL || err == EPROTO) return absl::InvalidArgumentError(text);
  if (err == EADDRINUSE) return absl::FailedPreconditionError(absl::StrCat(text, ": the listen port is taken"));
  return absl::UnavailableError(text);
}

// Calls fn(line_no, key, value) for each line before the terminating empty
// line; the reply must end with one.
template <typename Fn>
absl::Status ForEachLine(std::string_view reply, Fn fn) {
  if (reply.size() < 2 || reply.substr(reply.size() - 2) != "\n\n") {
    return absl::InternalError("wireguard-go's reply does not end with an empty line (truncated?)");
  }
  reply.remove_suffix(1);
  int line_no = 0;
  while (!reply.empty()) {
    size_t end = reply.find('\n');
    std::string_view line = reply.substr(0, end);
    reply.remove_prefix(end + 1);
    ++line_no;
    if (line.empty()) return BadLine(line_no, line, "an empty line before the end of the reply");
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) return BadLine(line_no, line, "not key=value");
    absl::Status st = fn(line_no, line, line.substr(0, eq), line.substr(eq + 1));
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

template <typename T>
bool ParseNumber(std::string_view text, T* out) {
  return absl::SimpleAtoi(AbslView(text), out);
}

}  // namespace

std::string UapiGetRequest() { return "get=1\n\n"; }

std::string UapiSetPeerRequest(const WgKey& public_key, const in_addr& ip, std::string_view endpoint) {
  return absl::StrCat("set=1\npublic_key=", public_key.ToHex(),
                      endpoint.empty() ? "" : absl::StrCat("\nendpoint=", AbslView(endpoint)),
                      "\nreplace_allowed_ips=true\nallowed_ip=", IpText(ip), "/32\n\n");
}

std::string UapiRemovePeerRequest(const WgKey& public_key) {
  return absl::StrCat("set=1\npublic_key=", public_key.ToHex(), "\nremove=true\n\n");
}

std::string UapiConfigureRequest(const WgKey& private_key, uint16_t listen_port) {
  return absl::StrCat("set=1\nprivate_key=", private_key.ToHex(), "\nlisten_port=", listen_port, "\n\n");
}

absl::StatusOr<WgDevice> ParseUapiGetReply(std::string_view reply, const std::string& ifname) {
  WgDevice device;
  device.ifname = ifname;
  bool saw_errno = false;
  absl::Status st = ForEachLine(
      reply, [&](int line_no, std::string_view line, std::string_view key, std::string_view value) -> absl::Status {
        if (saw_errno) return BadLine(line_no, line, "a line after errno");
        if (key == "errno") {
          saw_errno = true;
          return ErrnoReply(value);
        }
        if (key == "public_key") {
          auto k = WgKey::FromHex(value);
          if (!k.ok()) return BadLine(line_no, line, k.status().message());
          device.peers.emplace_back().public_key = *k;
          return absl::OkStatus();
        }
        if (device.peers.empty()) {  // the device's own lines
          if (key == "private_key") {
            auto k = WgKey::FromHex(value);
            if (!k.ok()) return BadLine(line_no, line, k.status().message());
            auto pub = PublicKeyFromPrivate(*k);
            if (!pub.ok()) return pub.status();
            device.public_key = *pub;
            device.private_key = *k;
            device.has_private_key = true;
          } else if (key == "listen_port") {
            uint32_t port = 0;
            if (!ParseNumber(value, &port) || port > 65535) return BadLine(line_no, line, "not a port number");
            device.listen_port = static_cast<uint16_t>(port);
          }
          return absl::OkStatus();
        }
        WgPeer& peer = device.peers.back();
        if (key == "endpoint") {
          peer.endpoint = std::string(value);
        } else if (key == "last_handshake_time_sec") {
          if (!ParseNumber(value, &peer.last_handshake_sec) || peer.last_handshake_sec < 0) {
            return BadLine(line_no, line, "not a time in seconds");
          }
        } else if (key == "rx_bytes") {
          if (!ParseNumber(value, &peer.rx_bytes)) return BadLine(line_no, line, "not a byte count");
        } else if (key == "tx_bytes") {
          if (!ParseNumber(value, &peer.tx_bytes)) return BadLine(line_no, line, "not a byte count");
        } else if (key == "allowed_ip") {
          if (value.find('/') == std::string_view::npos) return BadLine(line_no, line, "not an address/prefix");
          peer.allowed_ips.emplace_back(value);
        }
        return absl::OkStatus();
      });
  if (!st.ok()) return st;
  if (!saw_errno) return absl::InternalError("wireguard-go's reply has no errno line (truncated?)");
  return device;
}

absl::Status ParseUapiSetReply(std::string_view reply) {
  bool saw_errno = false;
  absl::Status st = ForEachLine(
      reply, [&](int line_no, std::string_view line, std::string_view key, std::string_view value) -> absl::Status {
        if (key != "errno" || saw_errno) return BadLine(line_no, line, "expected only errno=N after set=1");
        saw_errno = true;
        return ErrnoReply(value);
      });
  if (!st.ok()) return st;
  if (!saw_errno) return absl::InternalError("wireguard-go's reply to set=1 has no errno line");
  return absl::OkStatus();
}

namespace {

absl::Status ConnectError(int err, const std::string& ifname, const std::string& path) {
  std::string text = absl::StrCat("cannot connect to ", path, ": ", strerror(err));
  if (err == ENOENT) {
    return absl::NotFoundError(absl::StrCat(text, ": wireguard-go is not running for ", ifname));
  }
  if (err == ECONNREFUSED) {
    return absl::UnavailableError(absl::StrCat(text, ": wireguard-go for ", ifname, " has exited (a stale socket)"));
  }
  if (err == EACCES) return absl::PermissionDeniedError(absl::StrCat(text, " (the socket is root's)"));
  return absl::UnavailableError(text);
}

// A connected socket, blocking until `deadline` at most.
absl::StatusOr<Fd> Connect(const std::string& ifname, const std::string& path, absl::Time deadline) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("UAPI socket path too long for a unix socket: ", path));
  }
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::UnavailableError(absl::StrCat("cannot create a unix socket: ", strerror(errno)));
  // A full listen backlog makes connect() wait; SO_SNDTIMEO bounds that wait.
  absl::Duration left = std::max(deadline - absl::Now(), absl::Milliseconds(1));
  timeval tv = absl::ToTimeval(left);
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) return ConnectError(errno, ifname, path);
  fcntl(fd.get(), F_SETFL, fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
  return fd;
}

class UapiWireGuard final : public WireGuard {
 public:
  UapiWireGuard(std::string ifname, std::string path, absl::Duration timeout)
      : ifname_(std::move(ifname)), path_(std::move(path)), timeout_(timeout) {}

  std::string_view backend() const override { return "uapi"; }

  absl::StatusOr<WgDevice> GetDevice() override {
    std::string what = absl::StrCat("reading WireGuard device ", ifname_, " from wireguard-go");
    auto reply = Exchange(UapiGetRequest(), what);
    if (!reply.ok()) return reply.status();
    auto device = ParseUapiGetReply(*reply, ifname_);
    if (!device.ok()) return Prefixed(what, device.status());
    return device;
  }

  using WireGuard::SetPeer;
  absl::Status SetPeer(const WgKey& public_key, const in_addr& ip, std::string_view endpoint) override {
    return Set(UapiSetPeerRequest(public_key, ip, endpoint),
               absl::StrCat("setting peer ", public_key.ToBase64(), " (allowed-ips ", IpText(ip), "/32) on ", ifname_));
  }

  absl::Status RemovePeer(const WgKey& public_key) override {
    return Set(UapiRemovePeerRequest(public_key),
               absl::StrCat("removing peer ", public_key.ToBase64(), " from ", ifname_));
  }

  absl::Status Configure(const WgKey& private_key, uint16_t listen_port) override {
    return Set(UapiConfigureRequest(private_key, listen_port),
               absl::StrCat("setting the private key and listen port ", listen_port, " of ", ifname_));
  }

 private:
  static absl::Status Prefixed(const std::string& what, const absl::Status& st) {
    return absl::Status(st.code(), absl::StrCat(what, ": ", st.message()));
  }

  absl::Status Set(const std::string& request, const std::string& what) {
    auto reply = Exchange(request, what);
    if (!reply.ok()) return reply.status();
    absl::Status st = ParseUapiSetReply(*reply);
    return st.ok() ? st : Prefixed(what, st);
  }

  // One connection per request: wireguard-go serves each on its own, and a
  // restarted daemon is picked up without reconnect logic.
  absl::StatusOr<std::string> Exchange(const std::string& request, const std::string& what) {
    const absl::Time deadline = absl::Now() + timeout_;
    auto fd_or = Connect(ifname_, path_, deadline);
    if (!fd_or.ok()) return Prefixed(what, fd_or.status());
    Fd fd = *std::move(fd_or);
    auto wait = [&](short events) -> absl::Status {
      for (;;) {
        int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
        pollfd pfd{fd.get(), events, 0};
        int n = left_ms > 0 ? poll(&pfd, 1, static_cast<int>(left_ms)) : 0;
        if (n > 0) return absl::OkStatus();
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return absl::UnavailableError(absl::StrCat(what, ": poll: ", strerror(errno)));
        return absl::DeadlineExceededError(
            absl::StrCat(what, ": wireguard-go at ", path_, " did not answer within ", absl::FormatDuration(timeout_)));
      }
    };
    for (size_t sent = 0; sent < request.size();) {
      ssize_t n = send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n >= 0) {
        sent += static_cast<size_t>(n);
        continue;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN)
        return absl::UnavailableError(absl::StrCat(what, ": writing to ", path_, ": ", strerror(errno)));
      absl::Status st = wait(POLLOUT);
      if (!st.ok()) return st;
    }
    std::string reply;
    char buf[65536];
    while (reply.size() < 2 || reply.compare(reply.size() - 2, 2, "\n\n") != 0) {
      ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
      if (n > 0) {
        reply.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) {
        return absl::UnavailableError(
            absl::StrCat(what, ": wireguard-go closed the connection before its reply ended"));
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN)
        return absl::UnavailableError(absl::StrCat(what, ": reading from ", path_, ": ", strerror(errno)));
      absl::Status st = wait(POLLIN);
      if (!st.ok()) return st;
    }
    return reply;
  }

  std::string ifname_;
  std::string path_;
  absl::Duration timeout_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<WireGuard>> OpenUapiWireGuard(const std::string& ifname, const std::string& socket_path,
                                                             absl::Duration timeout) {
  struct stat st;
  if (stat(socket_path.c_str(), &st) != 0) return ConnectError(errno, ifname, socket_path);
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(socket_path, " is not a socket, so not wireguard-go's UAPI"));
  }
  if (auto fd = Connect(ifname, socket_path, absl::Now() + timeout); !fd.ok()) return fd.status();
  return std::unique_ptr<WireGuard>(new UapiWireGuard(ifname, socket_path, timeout));
}

}  // namespace cvmgate
