// A netlink socket (libmnl) that sends one request at a time and reads its whole answer within a deadline.
// The kernel layer owns it: the capability probe and the WireGuard backends in control/ both use it.
#pragma once

#include <libmnl/libmnl.h>
#include <linux/netlink.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/time/time.h>

namespace cvmgate {

// Big enough for any reply datagram: the kernel sizes dump datagrams to the
// largest read buffer it has seen, capped at 32 KiB.
inline constexpr size_t kNlReceiveBuffer = 32768;
// Requests we build (one peer each) stay far below this.
inline constexpr size_t kNlRequestBuffer = 4096;

class NlSocket {
 public:
  // Called for every reply message that is not an ack, error or NLMSG_DONE.
  using OnMessage = std::function<absl::Status(const nlmsghdr*)>;
  // Sees every reply datagram as received (the recorder of test data uses it).
  using OnDatagram = std::function<void(const char* data, size_t len)>;

  // bus: NETLINK_ROUTE or NETLINK_GENERIC. The socket belongs to the calling
  // thread's network namespace for its whole life.
  static absl::StatusOr<NlSocket> Open(int bus, absl::Duration timeout = absl::Seconds(10));

  NlSocket(NlSocket&&) noexcept;
  NlSocket& operator=(NlSocket&&) noexcept;
  ~NlSocket();

  // Sends `request` (its seq and port id are filled in here; a request
  // without NLM_F_DUMP gets NLM_F_ACK) and reads until its ack or the end of
  // its dump. `what` names the operation in errors, e.g. "RTM_NEWLINK wg0".
  absl::Status Transact(nlmsghdr* request, const std::string& what, const OnMessage& on_message = nullptr,
                        const OnDatagram& on_datagram = nullptr);

 private:
  NlSocket(mnl_socket* sock, absl::Duration timeout);

  mnl_socket* sock_ = nullptr;
  absl::Duration timeout_;
  uint32_t portid_ = 0;
  uint32_t seq_ = 0;
  std::unique_ptr<char[]> buf_;
};

// Whether a whole message starts at `nlh` with `left` bytes from there on.
// libmnl's mnl_nlmsg_ok compares the length as an int, so a length of 2^31 or
// more passes it and sends every parser past the end of the buffer.
inline bool NlMessageOk(const nlmsghdr* nlh, size_t left) {
  return left >= sizeof(nlmsghdr) && nlh->nlmsg_len >= sizeof(nlmsghdr) && nlh->nlmsg_len <= left;
}
// The message after `nlh` (which NlMessageOk accepted); `left` shrinks to match.
inline const nlmsghdr* NlNext(const nlmsghdr* nlh, size_t* left) {
  size_t step = std::min<size_t>(MNL_ALIGN(nlh->nlmsg_len), *left);
  *left -= step;
  return reinterpret_cast<const nlmsghdr*>(reinterpret_cast<const char*>(nlh) + step);
}

// The id of a generic-netlink family; NotFound when the kernel has none by that name.
absl::StatusOr<uint16_t> ResolveGenlFamily(NlSocket& genl, const std::string& name);

// Calls fn(const nlattr*) -> absl::Status for each attribute of the message
// after its `offset` bytes of fixed header; stops at the first error. (libmnl's
// mnl_attr_for_each macros do not compile as C++.)
template <typename Fn>
absl::Status ForEachAttr(const nlmsghdr* nlh, size_t offset, Fn fn) {
  const char* tail = static_cast<const char*>(mnl_nlmsg_get_payload_tail(nlh));
  for (auto* attr = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(nlh, offset));
       mnl_attr_ok(attr, static_cast<int>(tail - reinterpret_cast<const char*>(attr))); attr = mnl_attr_next(attr)) {
    absl::Status st = fn(attr);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

// The same over the attributes nested in `nest`.
template <typename Fn>
absl::Status ForEachNested(const nlattr* nest, Fn fn) {
  const char* tail = static_cast<const char*>(mnl_attr_get_payload(nest)) + mnl_attr_get_payload_len(nest);
  for (auto* attr = static_cast<const nlattr*>(mnl_attr_get_payload(nest));
       mnl_attr_ok(attr, static_cast<int>(tail - reinterpret_cast<const char*>(attr))); attr = mnl_attr_next(attr)) {
    absl::Status st = fn(attr);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

// The error text of an NLMSG_ERROR or an NLMSG_DONE carrying one: the
// kernel's extended-ack message when it sent one, else strerror.
std::string NlErrorText(const nlmsghdr* nlh, int error);

}  // namespace cvmgate
