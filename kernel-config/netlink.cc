// A netlink socket (libmnl): one request at a time, every reply read within a deadline, kernel error text kept.
#include "kernel-config/netlink.h"

#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/genetlink.h>
#include <poll.h>

#include <cerrno>
#include <cstring>

#include <absl/strings/str_cat.h>

namespace cvmgate {
namespace {

// Maps an errno to the status code a caller can branch on.
absl::Status StatusFor(int err, const std::string& text) {
  switch (err) {
    case EPERM:
    case EACCES:
      return absl::PermissionDeniedError(absl::StrCat(text, " (needs CAP_NET_ADMIN)"));
    case ENOENT:
    case ENODEV:
      return absl::NotFoundError(text);
    case EEXIST:
      return absl::AlreadyExistsError(text);
    case EOPNOTSUPP:
      return absl::UnimplementedError(text);
    case EINVAL:
      return absl::InvalidArgumentError(text);
    default:
      return absl::UnavailableError(text);
  }
}

absl::Status ErrnoStatus(int err, const std::string& what) {
  return StatusFor(err, absl::StrCat(what, ": ", strerror(err)));
}

int ExtackAttr(const nlattr* attr, void* data) {
  if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG && mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0) {
    *static_cast<const char**>(data) = mnl_attr_get_str(attr);
  }
  return MNL_CB_OK;
}

}  // namespace

std::string NlErrorText(const nlmsghdr* nlh, int error) {
  std::string text = strerror(error < 0 ? -error : error);
  if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS)) return text;
  size_t offset = sizeof(int);  // NLMSG_DONE: the error, then the attributes
  if (nlh->nlmsg_type == NLMSG_ERROR) {
    const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
    offset = sizeof(nlmsgerr);
    if (!(nlh->nlmsg_flags & NLM_F_CAPPED)) offset += err->msg.nlmsg_len - sizeof(nlmsghdr);
  }
  if (mnl_nlmsg_get_payload_len(nlh) <= offset) return text;
  const char* msg = nullptr;
  mnl_attr_parse(nlh, static_cast<unsigned>(offset), ExtackAttr, &msg);
  if (msg != nullptr && *msg != '\0') absl::StrAppend(&text, " (kernel: ", msg, ")");
  return text;
}

NlSocket::NlSocket(mnl_socket* sock, absl::Duration timeout)
    : sock_(sock), timeout_(timeout), portid_(mnl_socket_get_portid(sock)), buf_(new char[kNlReceiveBuffer]) {}

NlSocket::NlSocket(NlSocket&& other) noexcept
    : sock_(other.sock_),
      timeout_(other.timeout_),
      portid_(other.portid_),
      seq_(other.seq_),
      buf_(std::move(other.buf_)) {
  other.sock_ = nullptr;
}

NlSocket& NlSocket::operator=(NlSocket&& other) noexcept {
  if (this != &other) {
    if (sock_ != nullptr) mnl_socket_close(sock_);
    sock_ = other.sock_;
    timeout_ = other.timeout_;
    portid_ = other.portid_;
    seq_ = other.seq_;
    buf_ = std::move(other.buf_);
    other.sock_ = nullptr;
  }
  return *this;
}

NlSocket::~NlSocket() {
  if (sock_ != nullptr) mnl_socket_close(sock_);
}

absl::StatusOr<NlSocket> NlSocket::Open(int bus, absl::Duration timeout) {
  const char* name = bus == NETLINK_GENERIC ? "generic netlink" : "rtnetlink";
  mnl_socket* sock = mnl_socket_open2(bus, SOCK_CLOEXEC);
  if (sock == nullptr) return ErrnoStatus(errno, absl::StrCat("cannot open a ", name, " socket"));
  if (mnl_socket_bind(sock, 0, MNL_SOCKET_AUTOPID) < 0) {
    int err = errno;
    mnl_socket_close(sock);
    return ErrnoStatus(err, absl::StrCat("cannot bind a ", name, " socket"));
  }
  // Best effort: kernels before 4.12 have no extended acks, and the
  // messages are only a nicer error text.
  int one = 1;
  mnl_socket_setsockopt(sock, NETLINK_EXT_ACK, &one, sizeof(one));
  // An error ack would otherwise echo the whole request back.
  mnl_socket_setsockopt(sock, NETLINK_CAP_ACK, &one, sizeof(one));
  return NlSocket(sock, timeout);
}

absl::Status NlSocket::Transact(nlmsghdr* request, const std::string& what, const OnMessage& on_message,
                                const OnDatagram& on_datagram) {
  // NLM_F_DUMP is two bits that NEW requests reuse (NLM_F_EXCL is one of
  // them), so a dump is only both bits set.
  const bool dump = (request->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;
  if (!dump) request->nlmsg_flags |= NLM_F_ACK;
  request->nlmsg_seq = ++seq_;
  request->nlmsg_pid = 0;
  if (mnl_socket_sendto(sock_, request, request->nlmsg_len) < 0) return ErrnoStatus(errno, what);

  const absl::Time deadline = absl::Now() + timeout_;
  absl::Status result;  // the first failure; reading goes on to the end so the socket stays in step
  for (;;) {
    int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    pollfd pfd{mnl_socket_get_fd(sock_), POLLIN, 0};
    int ready = left_ms > 0 ? poll(&pfd, 1, static_cast<int>(left_ms)) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return ErrnoStatus(errno, absl::StrCat(what, ": poll"));
    if (ready == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": no complete answer from the kernel within ", absl::FormatDuration(timeout_)));
    }
    ssize_t len = mnl_socket_recvfrom(sock_, buf_.get(), kNlReceiveBuffer);
    if (len < 0 && errno == EINTR) continue;
    if (len < 0) {
      // ENOBUFS: the kernel dropped part of the answer; ENOSPC: a datagram
      // did not fit. Either way the rest of this answer is lost.
      return ErrnoStatus(errno, absl::StrCat(what, ": reading the answer"));
    }
    if (on_datagram) on_datagram(buf_.get(), static_cast<size_t>(len));
    size_t left = static_cast<size_t>(len);
    bool finished = false;
    for (const nlmsghdr* nlh = reinterpret_cast<const nlmsghdr*>(buf_.get()); NlMessageOk(nlh, left);
         nlh = NlNext(nlh, &left)) {
      // A late answer to an earlier request that timed out.
      if (nlh->nlmsg_seq != seq_) continue;
      switch (nlh->nlmsg_type) {
        case NLMSG_NOOP:
          break;
        case NLMSG_ERROR: {
          if (mnl_nlmsg_get_payload_len(nlh) < sizeof(nlmsgerr)) {
            return absl::InternalError(absl::StrCat(what, ": truncated error message from the kernel"));
          }
          int error = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh))->error;
          if (error != 0 && result.ok()) {
            result = StatusFor(-error, absl::StrCat(what, ": ", NlErrorText(nlh, error)));
          }
          finished = true;
          break;
        }
        case NLMSG_DONE: {
          if (mnl_nlmsg_get_payload_len(nlh) >= sizeof(int)) {
            int error = *static_cast<const int*>(mnl_nlmsg_get_payload(nlh));
            if (error < 0 && result.ok()) {
              result = StatusFor(-error, absl::StrCat(what, ": ", NlErrorText(nlh, error)));
            }
          }
          finished = true;
          break;
        }
        case NLMSG_OVERRUN:
          if (result.ok()) result = absl::UnavailableError(absl::StrCat(what, ": the kernel reported an overrun"));
          finished = true;
          break;
        default:
          if (on_message && result.ok()) result = on_message(nlh);
          break;
      }
      if (finished) break;
    }
    if (finished) return result;
  }
}

absl::StatusOr<uint16_t> ResolveGenlFamily(NlSocket& genl, const std::string& name) {
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = GENL_ID_CTRL;
  nlh->nlmsg_flags = NLM_F_REQUEST;
  auto* genl_hdr = static_cast<genlmsghdr*>(mnl_nlmsg_put_extra_header(nlh, sizeof(genlmsghdr)));
  genl_hdr->cmd = CTRL_CMD_GETFAMILY;
  genl_hdr->version = 1;
  mnl_attr_put_strz(nlh, CTRL_ATTR_FAMILY_NAME, name.c_str());

  int id = -1;
  auto on_message = [&id](const nlmsghdr* reply) {
    return ForEachAttr(reply, sizeof(genlmsghdr), [&id](const nlattr* attr) {
      if (mnl_attr_get_type(attr) == CTRL_ATTR_FAMILY_ID && mnl_attr_validate(attr, MNL_TYPE_U16) >= 0) {
        id = mnl_attr_get_u16(attr);
      }
      return absl::OkStatus();
    });
  };
  absl::Status st = genl.Transact(nlh, absl::StrCat("resolving the generic-netlink family \"", name, "\""), on_message);
  if (!st.ok()) return st;
  if (id < 0) {
    return absl::InternalError(
        absl::StrCat("the kernel answered for generic-netlink family \"", name, "\" without its id"));
  }
  return static_cast<uint16_t>(id);
}

}  // namespace cvmgate
