// rtnetlink for WireGuard interfaces (libmnl): link lookup and creation, IPv4 address, link up.
#include "control/wireguard/rtnl.h"

#include <arpa/inet.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>

#include <absl/strings/str_cat.h>

#include "dataplane/addresses.h"

namespace cvmgate {
namespace {

nlmsghdr* PutLinkHeader(char* buf, uint16_t type, uint16_t flags, int index) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = type;
  nlh->nlmsg_flags = NLM_F_REQUEST | flags;
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = index;
  return nlh;
}

}  // namespace

absl::StatusOr<LinkInfo> GetLink(NlSocket& rtnl, const std::string& ifname) {
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  nlmsghdr* nlh = PutLinkHeader(buf, RTM_GETLINK, 0, 0);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, ifname.c_str());
  LinkInfo info;
  bool found = false;
  auto on_message = [&](const nlmsghdr* reply) -> absl::Status {
    if (reply->nlmsg_type != RTM_NEWLINK || mnl_nlmsg_get_payload_len(reply) < sizeof(ifinfomsg)) {
      return absl::OkStatus();
    }
    const auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(reply));
    info.index = ifi->ifi_index;
    info.up = ifi->ifi_flags & IFF_UP;
    found = true;
    return ForEachAttr(reply, sizeof(ifinfomsg), [&](const nlattr* attr) {
      if (mnl_attr_get_type(attr) != IFLA_LINKINFO || mnl_attr_validate(attr, MNL_TYPE_NESTED) < 0) {
        return absl::OkStatus();
      }
      return ForEachNested(attr, [&](const nlattr* sub) {
        if (mnl_attr_get_type(sub) == IFLA_INFO_KIND && mnl_attr_validate(sub, MNL_TYPE_STRING) >= 0) {
          // Not always NUL-terminated: take its length.
          info.kind.assign(static_cast<const char*>(mnl_attr_get_payload(sub)), mnl_attr_get_payload_len(sub));
          while (!info.kind.empty() && info.kind.back() == '\0') info.kind.pop_back();
        }
        return absl::OkStatus();
      });
    });
  };
  absl::Status st = rtnl.Transact(nlh, absl::StrCat("looking up interface ", ifname), on_message);
  if (absl::IsNotFound(st))
    return absl::NotFoundError(absl::StrCat("no interface ", ifname, " in this network namespace"));
  if (!st.ok()) return st;
  if (!found)
    return absl::InternalError(absl::StrCat("looking up interface ", ifname, ": the kernel answered without it"));
  return info;
}

absl::Status CreateWireGuardLink(NlSocket& rtnl, const std::string& ifname) {
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  nlmsghdr* nlh = PutLinkHeader(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 0);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, ifname.c_str());
  nlattr* linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "wireguard");
  mnl_attr_nest_end(nlh, linkinfo);
  return rtnl.Transact(nlh, absl::StrCat("creating kernel WireGuard interface ", ifname));
}

absl::Status AddAddress(NlSocket& rtnl, const LinkInfo& link, const std::string& ifname, const in_addr& addr,
                        int prefix_len) {
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = RTM_NEWADDR;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET;
  ifa->ifa_prefixlen = static_cast<uint8_t>(prefix_len);
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  ifa->ifa_index = static_cast<uint32_t>(link.index);
  mnl_attr_put(nlh, IFA_LOCAL, sizeof(addr), &addr);
  mnl_attr_put(nlh, IFA_ADDRESS, sizeof(addr), &addr);
  absl::Status st = rtnl.Transact(nlh, absl::StrCat("adding address ", IpText(addr), "/", prefix_len, " to ", ifname));
  // EEXIST: the link has this address and prefix already, which is the goal.
  return absl::IsAlreadyExists(st) ? absl::OkStatus() : st;
}

absl::Status SetLinkUp(NlSocket& rtnl, const LinkInfo& link, const std::string& ifname) {
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  nlmsghdr* nlh = PutLinkHeader(buf, RTM_NEWLINK, 0, link.index);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  ifi->ifi_flags = IFF_UP;
  ifi->ifi_change = IFF_UP;
  return rtnl.Transact(nlh, absl::StrCat("setting ", ifname, " up"));
}

}  // namespace cvmgate
