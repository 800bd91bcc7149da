// Kernel WireGuard over generic netlink (WG_CMD_GET_DEVICE / WG_CMD_SET_DEVICE, linux/wireguard.h).
#include "control/wireguard/genl.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/genetlink.h>
#include <linux/time_types.h>
#include <linux/wireguard.h>
#include <sys/socket.h>

#include <cstring>

#include <absl/strings/str_cat.h>

#include "dataplane/addresses.h"
#include "kernel-config/netlink.h"

namespace cvmgate {
namespace {

nlmsghdr* PutWgHeader(char* buf, uint16_t family, uint8_t cmd, uint16_t flags, const std::string& ifname) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = family;
  nlh->nlmsg_flags = NLM_F_REQUEST | flags;
  auto* genl = static_cast<genlmsghdr*>(mnl_nlmsg_put_extra_header(nlh, sizeof(genlmsghdr)));
  genl->cmd = cmd;
  genl->version = WG_GENL_VERSION;
  mnl_attr_put_strz(nlh, WGDEVICE_A_IFNAME, ifname.c_str());
  return nlh;
}

// Peers and allowed-ips are lists of nests; the kernel ignores the nests' own
// types, and wireguard-tools writes 0.
nlattr* StartPeer(nlmsghdr* nlh, const WgKey& public_key, uint32_t flags) {
  nlattr* peer = mnl_attr_nest_start(nlh, 0);
  mnl_attr_put(nlh, WGPEER_A_PUBLIC_KEY, public_key.bytes.size(), public_key.bytes.data());
  mnl_attr_put_u32(nlh, WGPEER_A_FLAGS, flags);
  return peer;
}

std::string FormatEndpoint(const nlattr* attr) {
  size_t len = mnl_attr_get_payload_len(attr);
  if (len != sizeof(sockaddr_in) && len != sizeof(sockaddr_in6)) return "";
  sockaddr_storage ss{};
  memcpy(&ss, mnl_attr_get_payload(attr), len);
  if (ss.ss_family != (len == sizeof(sockaddr_in) ? AF_INET : AF_INET6)) return "";
  return SockaddrText(ss);
}

absl::Status Malformed(size_t peer_index, const char* what) {
  return absl::InternalError(absl::StrCat("kernel WireGuard dump: peer #", peer_index + 1, " has a malformed ", what,
                                          " attribute (kernel and linux/wireguard.h disagree?)"));
}

absl::Status ParseAllowedIp(const nlattr* nest, size_t peer_index, std::vector<std::string>* out) {
  int family = -1, cidr = -1;
  const nlattr* addr = nullptr;
  absl::Status st = ForEachNested(nest, [&](const nlattr* attr) {
    switch (mnl_attr_get_type(attr)) {
      case WGALLOWEDIP_A_FAMILY:
        if (mnl_attr_validate(attr, MNL_TYPE_U16) < 0) return Malformed(peer_index, "allowed-ip family");
        family = mnl_attr_get_u16(attr);
        break;
      case WGALLOWEDIP_A_IPADDR:
        addr = attr;
        break;
      case WGALLOWEDIP_A_CIDR_MASK:
        if (mnl_attr_validate(attr, MNL_TYPE_U8) < 0) return Malformed(peer_index, "allowed-ip mask");
        cidr = mnl_attr_get_u8(attr);
        break;
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  size_t want = family == AF_INET ? sizeof(in_addr) : family == AF_INET6 ? sizeof(in6_addr) : 0;
  if (want == 0 || addr == nullptr || mnl_attr_get_payload_len(addr) != want || cidr < 0 ||
      cidr > (family == AF_INET ? 32 : 128)) {
    return Malformed(peer_index, "allowed-ip");
  }
  char text[INET6_ADDRSTRLEN];
  if (!inet_ntop(family, mnl_attr_get_payload(addr), text, sizeof(text))) return Malformed(peer_index, "allowed-ip");
  out->push_back(absl::StrCat(text, "/", cidr));
  return absl::OkStatus();
}

absl::Status ParsePeer(const nlattr* nest, size_t peer_index, WgPeer* peer, bool* has_key) {
  return ForEachNested(nest, [&](const nlattr* attr) -> absl::Status {
    switch (mnl_attr_get_type(attr)) {
      case WGPEER_A_PUBLIC_KEY:
        if (mnl_attr_get_payload_len(attr) != WG_KEY_LEN) return Malformed(peer_index, "public key");
        memcpy(peer->public_key.bytes.data(), mnl_attr_get_payload(attr), WG_KEY_LEN);
        *has_key = true;
        break;
      case WGPEER_A_LAST_HANDSHAKE_TIME: {
        __kernel_timespec ts;
        if (mnl_attr_get_payload_len(attr) != sizeof(ts)) return Malformed(peer_index, "last-handshake time");
        memcpy(&ts, mnl_attr_get_payload(attr), sizeof(ts));
        peer->last_handshake_sec = ts.tv_sec;
        break;
      }
      case WGPEER_A_ENDPOINT:
        peer->endpoint = FormatEndpoint(attr);
        break;
      case WGPEER_A_RX_BYTES:
        if (mnl_attr_validate(attr, MNL_TYPE_U64) < 0) return Malformed(peer_index, "rx bytes");
        peer->rx_bytes = mnl_attr_get_u64(attr);
        break;
      case WGPEER_A_TX_BYTES:
        if (mnl_attr_validate(attr, MNL_TYPE_U64) < 0) return Malformed(peer_index, "tx bytes");
        peer->tx_bytes = mnl_attr_get_u64(attr);
        break;
      case WGPEER_A_ALLOWEDIPS:
        return ForEachNested(attr,
                             [&](const nlattr* ip) { return ParseAllowedIp(ip, peer_index, &peer->allowed_ips); });
    }
    return absl::OkStatus();
  });
}

}  // namespace

nlmsghdr* PutWgGetDevice(char* buf, uint16_t family, const std::string& ifname) {
  return PutWgHeader(buf, family, WG_CMD_GET_DEVICE, NLM_F_DUMP, ifname);
}

nlmsghdr* PutWgSetPeer(char* buf, uint16_t family, const std::string& ifname, const WgKey& public_key,
                       const in_addr& ip, const sockaddr_storage* endpoint) {
  nlmsghdr* nlh = PutWgHeader(buf, family, WG_CMD_SET_DEVICE, 0, ifname);
  nlattr* peers = mnl_attr_nest_start(nlh, WGDEVICE_A_PEERS);
  nlattr* peer = StartPeer(nlh, public_key, WGPEER_F_REPLACE_ALLOWEDIPS);
  if (endpoint != nullptr) {
    mnl_attr_put(nlh, WGPEER_A_ENDPOINT,
                 endpoint->ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in), endpoint);
  }
  nlattr* ips = mnl_attr_nest_start(nlh, WGPEER_A_ALLOWEDIPS);
  nlattr* one = mnl_attr_nest_start(nlh, 0);
  mnl_attr_put_u16(nlh, WGALLOWEDIP_A_FAMILY, AF_INET);
  mnl_attr_put(nlh, WGALLOWEDIP_A_IPADDR, sizeof(ip), &ip);
  mnl_attr_put_u8(nlh, WGALLOWEDIP_A_CIDR_MASK, 32);
  mnl_attr_nest_end(nlh, one);
  mnl_attr_nest_end(nlh, ips);
  mnl_attr_nest_end(nlh, peer);
  mnl_attr_nest_end(nlh, peers);
  return nlh;
}

nlmsghdr* PutWgRemovePeer(char* buf, uint16_t family, const std::string& ifname, const WgKey& public_key) {
  nlmsghdr* nlh = PutWgHeader(buf, family, WG_CMD_SET_DEVICE, 0, ifname);
  nlattr* peers = mnl_attr_nest_start(nlh, WGDEVICE_A_PEERS);
  nlattr* peer = StartPeer(nlh, public_key, WGPEER_F_REMOVE_ME);
  mnl_attr_nest_end(nlh, peer);
  mnl_attr_nest_end(nlh, peers);
  return nlh;
}

nlmsghdr* PutWgConfigure(char* buf, uint16_t family, const std::string& ifname, const WgKey& private_key,
                         uint16_t listen_port) {
  nlmsghdr* nlh = PutWgHeader(buf, family, WG_CMD_SET_DEVICE, 0, ifname);
  mnl_attr_put(nlh, WGDEVICE_A_PRIVATE_KEY, private_key.bytes.size(), private_key.bytes.data());
  mnl_attr_put_u16(nlh, WGDEVICE_A_LISTEN_PORT, listen_port);
  return nlh;
}

absl::Status WgDumpParser::Add(const nlmsghdr* nlh) {
  if (mnl_nlmsg_get_payload_len(nlh) < sizeof(genlmsghdr)) {
    return absl::InternalError("kernel WireGuard dump: a message too short for its generic-netlink header");
  }
  const auto* genl = static_cast<const genlmsghdr*>(mnl_nlmsg_get_payload(nlh));
  if (genl->cmd != WG_CMD_GET_DEVICE) {
    return absl::InternalError(absl::StrCat("kernel WireGuard dump: unexpected command ", genl->cmd, " in the answer"));
  }
  if (nlh->nlmsg_flags & NLM_F_DUMP_INTR) interrupted_ = true;
  ++messages_;
  return ForEachAttr(nlh, sizeof(genlmsghdr), [this](const nlattr* attr) -> absl::Status {
    switch (mnl_attr_get_type(attr)) {
      case WGDEVICE_A_IFNAME:
        if (mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) < 0) {
          return absl::InternalError("kernel WireGuard dump: malformed interface name");
        }
        device_.ifname = mnl_attr_get_str(attr);
        break;
      case WGDEVICE_A_PRIVATE_KEY:
        device_.has_private_key = mnl_attr_get_payload_len(attr) == WG_KEY_LEN;
        if (device_.has_private_key) memcpy(device_.private_key.bytes.data(), mnl_attr_get_payload(attr), WG_KEY_LEN);
        break;
      case WGDEVICE_A_PUBLIC_KEY:
        if (mnl_attr_get_payload_len(attr) != WG_KEY_LEN) {
          return absl::InternalError("kernel WireGuard dump: malformed device public key");
        }
        memcpy(device_.public_key.bytes.data(), mnl_attr_get_payload(attr), WG_KEY_LEN);
        break;
      case WGDEVICE_A_LISTEN_PORT:
        if (mnl_attr_validate(attr, MNL_TYPE_U16) < 0) {
          return absl::InternalError("kernel WireGuard dump: malformed listen port");
        }
        device_.listen_port = mnl_attr_get_u16(attr);
        break;
      case WGDEVICE_A_PEERS:
        return ForEachNested(attr, [this](const nlattr* nest) -> absl::Status {
          WgPeer peer;
          bool has_key = false;
          size_t index = device_.peers.size();
          absl::Status st = ParsePeer(nest, index, &peer, &has_key);
          if (!st.ok()) return st;
          if (!has_key) {
            return absl::InternalError(absl::StrCat("kernel WireGuard dump: peer #", index + 1, " has no public key"));
          }
          // Public keys are unique on a device, so a repeat can only be the
          // continuation of the last peer's allowed-ips.
          if (!device_.peers.empty() && device_.peers.back().public_key == peer.public_key) {
            auto& ips = device_.peers.back().allowed_ips;
            ips.insert(ips.end(), peer.allowed_ips.begin(), peer.allowed_ips.end());
            return absl::OkStatus();
          }
          device_.peers.push_back(std::move(peer));
          return absl::OkStatus();
        });
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<WgDevice> ParseWgDump(const char* data, size_t len, int* messages) {
  WgDumpParser parser;
  size_t left = len;
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(data);
  bool done = false;
  for (; NlMessageOk(nlh, left); nlh = NlNext(nlh, &left)) {
    if (nlh->nlmsg_type == NLMSG_DONE) {
      done = true;
      break;
    }
    if (nlh->nlmsg_type == NLMSG_ERROR) {
      if (mnl_nlmsg_get_payload_len(nlh) < sizeof(nlmsgerr)) {
        return absl::InternalError("kernel WireGuard dump: a truncated error message");
      }
      int error = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh))->error;
      return absl::InternalError(absl::StrCat("kernel WireGuard dump: error ", NlErrorText(nlh, error)));
    }
    if (nlh->nlmsg_type < NLMSG_MIN_TYPE) continue;
    absl::Status st = parser.Add(nlh);
    if (!st.ok()) return st;
  }
  if (!done) return absl::InvalidArgumentError("kernel WireGuard dump: ends before NLMSG_DONE (truncated recording?)");
  if (messages != nullptr) *messages = parser.messages();
  return parser.Take();
}

namespace {

class NetlinkWireGuard final : public WireGuard {
 public:
  NetlinkWireGuard(NlSocket sock, uint16_t family, std::string ifname)
      : sock_(std::move(sock)), family_(family), ifname_(std::move(ifname)) {}

  std::string_view backend() const override { return "netlink"; }

  absl::StatusOr<WgDevice> GetDevice() override {
    // A dump interrupted by a concurrent change is asked for again; a few
    // tries, since peers change only when the control plane says so.
    constexpr int kTries = 5;
    for (int i = 0; i < kTries; ++i) {
      WgDumpParser parser;
      alignas(nlmsghdr) char buf[kNlRequestBuffer];
      absl::Status st =
          sock_.Transact(PutWgGetDevice(buf, family_, ifname_), absl::StrCat("reading WireGuard device ", ifname_),
                         [&parser](const nlmsghdr* nlh) { return parser.Add(nlh); });
      if (!st.ok()) return st;
      if (!parser.interrupted()) return parser.Take();
    }
    return absl::AbortedError(absl::StrCat("reading WireGuard device ", ifname_, ": it changed during each of ", kTries,
                                           " dumps in a row; try again"));
  }

  using WireGuard::SetPeer;
  absl::Status SetPeer(const WgKey& public_key, const in_addr& ip, std::string_view endpoint) override {
    alignas(nlmsghdr) char buf[kNlRequestBuffer];
    std::optional<sockaddr_storage> where = endpoint.empty() ? std::nullopt : ParseEndpoint(endpoint);
    return sock_.Transact(
        PutWgSetPeer(buf, family_, ifname_, public_key, ip, where ? &*where : nullptr),
        absl::StrCat("setting peer ", public_key.ToBase64(), " (allowed-ips ", IpText(ip), "/32) on ", ifname_));
  }

  absl::Status RemovePeer(const WgKey& public_key) override {
    alignas(nlmsghdr) char buf[kNlRequestBuffer];
    return sock_.Transact(PutWgRemovePeer(buf, family_, ifname_, public_key),
                          absl::StrCat("removing peer ", public_key.ToBase64(), " from ", ifname_));
  }

  absl::Status Configure(const WgKey& private_key, uint16_t listen_port) override {
    alignas(nlmsghdr) char buf[kNlRequestBuffer];
    return sock_.Transact(PutWgConfigure(buf, family_, ifname_, private_key, listen_port),
                          absl::StrCat("setting the private key and listen port ", listen_port, " of ", ifname_));
  }

 private:
  NlSocket sock_;
  uint16_t family_;
  std::string ifname_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<WireGuard>> OpenNetlinkWireGuard(const std::string& ifname) {
  auto sock = NlSocket::Open(NETLINK_GENERIC);
  if (!sock.ok()) return sock.status();
  auto family = ResolveGenlFamily(*sock, WG_GENL_NAME);
  if (absl::IsNotFound(family.status())) {
    return absl::NotFoundError(
        "the kernel has no WireGuard (no generic-netlink family \"wireguard\": built without CONFIG_WIREGUARD, or "
        "the module is not loaded)");
  }
  if (!family.ok()) return family.status();
  return std::unique_ptr<WireGuard>(new NetlinkWireGuard(std::move(*sock), *family, ifname));
}

}  // namespace cvmgate
