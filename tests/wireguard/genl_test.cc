// Unit tests of kernel WireGuard netlink: requests checked attribute by attribute, dumps recorded from real kernels.
#include "control/wireguard/genl.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <libmnl/libmnl.h>
#include <linux/genetlink.h>
#include <linux/wireguard.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <absl/strings/numbers.h>
#include <absl/strings/str_split.h>
#include "kernel-config/netlink.h"

namespace cvmgate {
namespace {

constexpr uint16_t kFamily = 0x1d;  // any id: the kernel picks one at boot

std::vector<const nlattr*> Attrs(const nlmsghdr* nlh) {
  std::vector<const nlattr*> out;
  (void)ForEachAttr(nlh, sizeof(genlmsghdr), [&](const nlattr* a) {
    out.push_back(a);
    return absl::OkStatus();
  });
  return out;
}

std::vector<const nlattr*> Nested(const nlattr* nest) {
  std::vector<const nlattr*> out;
  (void)ForEachNested(nest, [&](const nlattr* a) {
    out.push_back(a);
    return absl::OkStatus();
  });
  return out;
}

std::vector<uint16_t> Types(const std::vector<const nlattr*>& attrs) {
  std::vector<uint16_t> out;
  for (auto* a : attrs) out.push_back(mnl_attr_get_type(a));
  return out;
}

bool IsNestedFlag(const nlattr* a) { return a->nla_type & NLA_F_NESTED; }

std::string Payload(const nlattr* a) {
  return std::string(static_cast<const char*>(mnl_attr_get_payload(a)), mnl_attr_get_payload_len(a));
}

std::string KeyBytes(const WgKey& k) { return std::string(reinterpret_cast<const char*>(k.bytes.data()), 32); }

WgKey Filled(uint8_t value) {
  WgKey k;
  k.bytes.fill(value);
  return k;
}

// The rule record_dumps.py uses for the peers it invents.
WgKey Pattern(uint8_t tag, int i) {
  WgKey k;
  k.bytes.fill(0x5a);
  k.bytes[0] = tag;
  k.bytes[1] = static_cast<uint8_t>(i >> 8);
  k.bytes[2] = static_cast<uint8_t>(i & 255);
  return k;
}

void CheckHeader(const nlmsghdr* nlh, uint8_t cmd, uint16_t flags) {
  EXPECT_EQ(nlh->nlmsg_type, kFamily);
  EXPECT_EQ(nlh->nlmsg_flags, NLM_F_REQUEST | flags);
  EXPECT_LE(nlh->nlmsg_len, kNlRequestBuffer);
  const auto* genl = static_cast<const genlmsghdr*>(mnl_nlmsg_get_payload(nlh));
  EXPECT_EQ(genl->cmd, cmd);
  EXPECT_EQ(genl->version, WG_GENL_VERSION);
}

TEST(WgRequest, SetPeerReplacesAllowedIpsWithOneSlash32) {
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  WgKey peer = Pattern(0x77, 1);
  in_addr ip;
  ASSERT_EQ(inet_pton(AF_INET, "10.1.2.3", &ip), 1);
  const nlmsghdr* nlh = PutWgSetPeer(buf, kFamily, "wg0", peer, ip);
  CheckHeader(nlh, WG_CMD_SET_DEVICE, 0);

  auto top = Attrs(nlh);
  ASSERT_EQ(Types(top), (std::vector<uint16_t>{WGDEVICE_A_IFNAME, WGDEVICE_A_PEERS}));
  EXPECT_EQ(Payload(top[0]), std::string("wg0", 4));  // NUL-terminated
  EXPECT_TRUE(IsNestedFlag(top[1]));

  auto peers = Nested(top[1]);
  ASSERT_EQ(peers.size(), 1u);
  EXPECT_TRUE(IsNestedFlag(peers[0]));
  auto p = Nested(peers[0]);
  ASSERT_EQ(Types(p), (std::vector<uint16_t>{WGPEER_A_PUBLIC_KEY, WGPEER_A_FLAGS, WGPEER_A_ALLOWEDIPS}));
  EXPECT_EQ(Payload(p[0]), KeyBytes(peer));
  ASSERT_EQ(mnl_attr_get_payload_len(p[1]), 4u);
  EXPECT_EQ(mnl_attr_get_u32(p[1]), static_cast<uint32_t>(WGPEER_F_REPLACE_ALLOWEDIPS));
  EXPECT_TRUE(IsNestedFlag(p[2]));

  auto ips = Nested(p[2]);
  ASSERT_EQ(ips.size(), 1u);
  auto one = Nested(ips[0]);
  ASSERT_EQ(Types(one), (std::vector<uint16_t>{WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK}));
  ASSERT_EQ(mnl_attr_get_payload_len(one[0]), 2u);
  EXPECT_EQ(mnl_attr_get_u16(one[0]), AF_INET);
  EXPECT_EQ(Payload(one[1]), std::string(reinterpret_cast<const char*>(&ip), 4));
  ASSERT_EQ(mnl_attr_get_payload_len(one[2]), 1u);
  EXPECT_EQ(mnl_attr_get_u8(one[2]), 32);
}

TEST(WgRequest, RemovePeerSetsRemoveMeOnly) {
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  WgKey peer = Pattern(0x78, 2);
  const nlmsghdr* nlh = PutWgRemovePeer(buf, kFamily, "wg-gateway", peer);
  CheckHeader(nlh, WG_CMD_SET_DEVICE, 0);
  auto top = Attrs(nlh);
  ASSERT_EQ(Types(top), (std::vector<uint16_t>{WGDEVICE_A_IFNAME, WGDEVICE_A_PEERS}));
  EXPECT_EQ(Payload(top[0]), std::string("wg-gateway", 11));
  auto peers = Nested(top[1]);
  ASSERT_EQ(peers.size(), 1u);
  auto p = Nested(peers[0]);
  ASSERT_EQ(Types(p), (std::vector<uint16_t>{WGPEER_A_PUBLIC_KEY, WGPEER_A_FLAGS}));
  EXPECT_EQ(Payload(p[0]), KeyBytes(peer));
  EXPECT_EQ(mnl_attr_get_u32(p[1]), static_cast<uint32_t>(WGPEER_F_REMOVE_ME));
}

TEST(WgRequest, ConfigureSetsPrivateKeyAndPort) {
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  WgKey priv = Filled(0x42);
  const nlmsghdr* nlh = PutWgConfigure(buf, kFamily, "wg0", priv, 51820);
  CheckHeader(nlh, WG_CMD_SET_DEVICE, 0);
  auto top = Attrs(nlh);
  ASSERT_EQ(Types(top), (std::vector<uint16_t>{WGDEVICE_A_IFNAME, WGDEVICE_A_PRIVATE_KEY, WGDEVICE_A_LISTEN_PORT}));
  EXPECT_EQ(Payload(top[1]), KeyBytes(priv));
  ASSERT_EQ(mnl_attr_get_payload_len(top[2]), 2u);
  EXPECT_EQ(mnl_attr_get_u16(top[2]), 51820);  // host order: NLA_U16
}

TEST(WgRequest, GetDeviceIsADumpByName) {
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  const nlmsghdr* nlh = PutWgGetDevice(buf, kFamily, "wg0");
  CheckHeader(nlh, WG_CMD_GET_DEVICE, NLM_F_DUMP);
  EXPECT_EQ(Types(Attrs(nlh)), (std::vector<uint16_t>{WGDEVICE_A_IFNAME}));
}

// ---------------------------------------------------------------------------
// Dumps recorded from Debian's 6.1 kernel by record_dumps.py, each with the
// `wg show IFNAME dump` taken right after it.

std::string ReadFile(const std::string& name) {
  std::ifstream in(std::string(CVMGATE_WG_TEST_DATA) + "/" + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing test data " << name << ": see tests/wireguard/data/README.md";
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct Recording {
  WgDevice device;
  int messages = 0;
  std::string raw;
};

Recording Load(const std::string& name) {
  Recording r;
  r.raw = ReadFile(name + ".nl");
  auto d = ParseWgDump(r.raw.data(), r.raw.size(), &r.messages);
  EXPECT_TRUE(d.ok()) << name << ": " << d.status();
  if (d.ok()) r.device = std::move(*d);
  return r;
}

std::set<std::string> Set(const std::vector<std::string>& v) { return std::set<std::string>(v.begin(), v.end()); }

// Compares the parse with what wireguard-tools printed for the same device.
void ExpectSameAsWgShow(const WgDevice& d, const std::string& wg_text) {
  std::vector<std::string> lines = absl::StrSplit(wg_text, '\n', absl::SkipEmpty());
  ASSERT_FALSE(lines.empty());
  std::vector<std::string> dev = absl::StrSplit(lines[0], '\t');
  ASSERT_EQ(dev.size(), 4u) << lines[0];
  EXPECT_EQ(d.has_private_key, dev[0] != "(none)");
  if (d.has_private_key) {
    EXPECT_EQ(d.public_key.ToBase64(), dev[1]);
  }
  EXPECT_EQ(std::to_string(d.listen_port), dev[2]);
  ASSERT_EQ(d.peers.size(), lines.size() - 1);
  std::map<std::string, std::vector<std::string>> wg_peers;
  for (size_t i = 1; i < lines.size(); ++i) {
    std::vector<std::string> f = absl::StrSplit(lines[i], '\t');
    ASSERT_EQ(f.size(), 8u) << lines[i];
    wg_peers[f[0]] = f;
  }
  for (const WgPeer& p : d.peers) {
    auto it = wg_peers.find(p.public_key.ToBase64());
    ASSERT_NE(it, wg_peers.end()) << p.public_key.ToBase64();
    const auto& f = it->second;
    EXPECT_EQ(p.endpoint.empty() ? "(none)" : p.endpoint, f[2]);
    std::vector<std::string> ips;
    if (f[3] != "(none)") ips = absl::StrSplit(f[3], ',');
    EXPECT_EQ(Set(p.allowed_ips), Set(ips));
    EXPECT_EQ(p.allowed_ips.size(), ips.size()) << "duplicates after merging continued allowed-ips";
    EXPECT_EQ(std::to_string(p.last_handshake_sec), f[4]);
    EXPECT_EQ(std::to_string(p.rx_bytes), f[5]);
    EXPECT_EQ(std::to_string(p.tx_bytes), f[6]);
  }
}

TEST(WgDump, SmallDeviceWithARealHandshake) {
  Recording r = Load("small");
  const WgDevice& d = r.device;
  ExpectSameAsWgShow(d, ReadFile("small.wg.txt"));
  EXPECT_EQ(d.ifname, "wgsmall");
  EXPECT_TRUE(d.has_private_key);
  // The kernel's X25519 and OpenSSL's agree.
  EXPECT_EQ(d.public_key, *PublicKeyFromPrivate(Filled(0x10)));
  EXPECT_EQ(d.listen_port, 51820);
  ASSERT_EQ(d.peers.size(), 3u);

  const WgPeer& real = d.peers[0];
  EXPECT_EQ(real.public_key, *PublicKeyFromPrivate(Filled(0x20)));
  EXPECT_EQ(real.endpoint, "192.0.2.2:51821");
  EXPECT_GT(real.last_handshake_sec, 1700000000);  // a real wall-clock time
  EXPECT_GT(real.rx_bytes, 0u);
  EXPECT_GT(real.tx_bytes, 0u);
  EXPECT_EQ(real.allowed_ips, (std::vector<std::string>{"10.0.0.2/32"}));

  const WgPeer& multi = d.peers[1];
  EXPECT_EQ(multi.public_key, Pattern(0xa2, 0));
  EXPECT_EQ(multi.endpoint, "[2001:db8::3]:51823");
  EXPECT_EQ(multi.last_handshake_sec, 0);
  EXPECT_EQ(Set(multi.allowed_ips), (std::set<std::string>{"10.0.0.3/32", "10.1.0.0/16", "fd00::3/128"}));

  const WgPeer& bare = d.peers[2];
  EXPECT_EQ(bare.public_key, Pattern(0xa3, 0));
  EXPECT_EQ(bare.endpoint, "");
  EXPECT_TRUE(bare.allowed_ips.empty());
}

TEST(WgDump, FreshDeviceHasNoKeyAndNoPeers) {
  Recording r = Load("empty");
  ExpectSameAsWgShow(r.device, ReadFile("empty.wg.txt"));
  EXPECT_EQ(r.device.ifname, "wgempty");
  EXPECT_FALSE(r.device.has_private_key);
  EXPECT_TRUE(r.device.peers.empty());
  EXPECT_EQ(r.messages, 1);
}

TEST(WgDump, ThousandPeersOverSeveralMessages) {
  Recording r = Load("many_peers");
  EXPECT_GT(r.messages, 1);
  ExpectSameAsWgShow(r.device, ReadFile("many_peers.wg.txt"));
  EXPECT_EQ(r.device.public_key, *PublicKeyFromPrivate(Filled(0x30)));
  EXPECT_EQ(r.device.listen_port, 51830);
  ASSERT_EQ(r.device.peers.size(), 1000u);
  std::map<std::string, std::vector<std::string>> by_key;
  for (const auto& p : r.device.peers) by_key[p.public_key.ToHex()] = p.allowed_ips;
  ASSERT_EQ(by_key.size(), 1000u);
  for (int i = 0; i < 1000; ++i) {
    auto it = by_key.find(Pattern(0xc0, i).ToHex());
    ASSERT_NE(it, by_key.end()) << "peer " << i;
    EXPECT_EQ(it->second,
              (std::vector<std::string>{"10.1." + std::to_string(i >> 8) + "." + std::to_string(i & 255) + "/32"}));
  }
}

// Splits a recording into its messages (NLMSG_DONE excluded).
std::vector<const nlmsghdr*> Messages(const std::string& raw) {
  std::vector<const nlmsghdr*> out;
  size_t left = raw.size();
  for (auto* nlh = reinterpret_cast<const nlmsghdr*>(raw.data()); NlMessageOk(nlh, left); nlh = NlNext(nlh, &left)) {
    if (nlh->nlmsg_type >= NLMSG_MIN_TYPE) out.push_back(nlh);
  }
  return out;
}

TEST(WgDump, OnePeersAllowedIpsContinueAcrossMessages) {
  Recording r = Load("many_allowedips");
  ExpectSameAsWgShow(r.device, ReadFile("many_allowedips.wg.txt"));
  ASSERT_EQ(r.device.peers.size(), 2u);
  const WgPeer& big = r.device.peers[0];
  EXPECT_EQ(big.public_key, Pattern(0xd1, 0));
  std::set<std::string> want;
  for (int j = 0; j < 3000; ++j) want.insert("10.2." + std::to_string(j >> 8) + "." + std::to_string(j & 255) + "/32");
  EXPECT_EQ(big.allowed_ips.size(), 3000u);
  EXPECT_EQ(Set(big.allowed_ips), want);
  EXPECT_EQ(r.device.peers[1].public_key, Pattern(0xd2, 0));
  EXPECT_EQ(r.device.peers[1].allowed_ips, (std::vector<std::string>{"10.3.0.1/32"}));

  // The recording really has the big peer in more than one message: each
  // message parsed alone shows it.
  int carrying = 0;
  for (const nlmsghdr* nlh : Messages(r.raw)) {
    WgDumpParser alone;
    ASSERT_TRUE(alone.Add(nlh).ok());
    WgDevice part = alone.Take();
    if (!part.peers.empty() && part.peers[0].public_key == big.public_key) ++carrying;
  }
  EXPECT_GT(carrying, 1);
}

TEST(WgDump, InterruptedDumpIsFlagged) {
  Recording r = Load("many_peers");
  std::string copy = r.raw;
  auto msgs = Messages(copy);
  ASSERT_GT(msgs.size(), 1u);
  const_cast<nlmsghdr*>(msgs[1])->nlmsg_flags |= NLM_F_DUMP_INTR;
  WgDumpParser parser;
  for (const nlmsghdr* nlh : msgs) ASSERT_TRUE(parser.Add(nlh).ok());
  EXPECT_TRUE(parser.interrupted());
}

TEST(WgDump, TruncatedRecordingsAreErrors) {
  Recording r = Load("many_peers");
  auto msgs = Messages(r.raw);
  ASSERT_GT(msgs.size(), 1u);
  // Everything but NLMSG_DONE: the dump is not over.
  size_t without_done = reinterpret_cast<const char*>(msgs.back()) - r.raw.data() + msgs.back()->nlmsg_len;
  auto cut = ParseWgDump(r.raw.data(), without_done);
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(std::string(cut.status().message()).find("ends before NLMSG_DONE"), std::string::npos);
  // Cut inside a message.
  EXPECT_FALSE(ParseWgDump(r.raw.data(), msgs[0]->nlmsg_len / 2).ok());
}

// Lengths of 2^31 and more pass libmnl's signed check. Past the `len` bytes
// the parser is given sits a malformed attribute: a parser that reads beyond
// its buffer reports that attribute; a correct one never sees it.
TEST(WgDump, LengthsThatDoNotFitAreErrorsNotReads) {
  constexpr size_t kGiven = 32;
  for (uint32_t len : {0x80000000u, 0x80000010u, 0xfffffff0u, 33u}) {
    alignas(nlmsghdr) char buf[64] = {};
    auto* nlh = reinterpret_cast<nlmsghdr*>(buf);
    nlh->nlmsg_len = len;
    nlh->nlmsg_type = kFamily;
    reinterpret_cast<genlmsghdr*>(buf + sizeof(nlmsghdr))->cmd = WG_CMD_GET_DEVICE;
    auto* filler = reinterpret_cast<nlattr*>(buf + sizeof(nlmsghdr) + sizeof(genlmsghdr));
    filler->nla_len = kGiven - sizeof(nlmsghdr) - sizeof(genlmsghdr);  // an ignored attribute up to byte 32
    auto* outside = reinterpret_cast<nlattr*>(buf + kGiven);
    outside->nla_len = sizeof(nlattr) + 1;  // a one-byte listen port
    outside->nla_type = WGDEVICE_A_LISTEN_PORT;
    auto d = ParseWgDump(buf, kGiven);
    ASSERT_FALSE(d.ok()) << len;
    EXPECT_EQ(std::string(d.status().message()).find("listen port"), std::string::npos)
        << "read past the buffer with nlmsg_len " << len << ": " << d.status();
  }
  // An error message too short for its nlmsgerr.
  alignas(nlmsghdr) char buf[32] = {};
  auto* nlh = reinterpret_cast<nlmsghdr*>(buf);
  nlh->nlmsg_len = sizeof(nlmsghdr) + 2;
  nlh->nlmsg_type = NLMSG_ERROR;
  auto d = ParseWgDump(buf, nlh->nlmsg_len);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("truncated error"), std::string::npos) << d.status();
}

TEST(WgDump, MalformedPeerIsAnError) {
  // A peer whose public key is 31 bytes.
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = kFamily;
  nlh->nlmsg_flags = NLM_F_MULTI;
  auto* genl = static_cast<genlmsghdr*>(mnl_nlmsg_put_extra_header(nlh, sizeof(genlmsghdr)));
  genl->cmd = WG_CMD_GET_DEVICE;
  nlattr* peers = mnl_attr_nest_start(nlh, WGDEVICE_A_PEERS);
  nlattr* peer = mnl_attr_nest_start(nlh, 0);
  char key[31] = {};
  mnl_attr_put(nlh, WGPEER_A_PUBLIC_KEY, sizeof(key), key);
  mnl_attr_nest_end(nlh, peer);
  mnl_attr_nest_end(nlh, peers);
  WgDumpParser parser;
  absl::Status st = parser.Add(nlh);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("peer #1 has a malformed public key"), std::string::npos) << st;
}

}  // namespace
}  // namespace cvmgate
