// Unit tests of the wireguard-go UAPI protocol: get-reply parsing and set-request building.
#include "control/wireguard/uapi.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <string>

namespace cvmgate {
namespace {

// RFC 7748 section 6.1: Alice's private key and the public key it gives.
constexpr char kAlicePrivate[] = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
constexpr char kAlicePublic[] = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
constexpr char kPeer1[] = "1111111111111111111111111111111111111111111111111111111111111111";
constexpr char kPeer2[] = "2222222222222222222222222222222222222222222222222222222222222222";
constexpr char kPeer3[] = "3333333333333333333333333333333333333333333333333333333333333333";

std::string Contains(const absl::Status& st, const std::string& text) {
  std::string msg(st.message());
  return msg.find(text) == std::string::npos ? "\"" + msg + "\" lacks \"" + text + "\"" : "";
}

// The shape of wireguard-go 0.0.20220316's answer, with a key it does not
// send today (future_key) that a newer version might.
const std::string kGetReply = std::string("private_key=") + kAlicePrivate +
                              "\n"
                              "listen_port=51820\n"
                              "fwmark=0\n"
                              "public_key=" +
                              kPeer1 +
                              "\n"
                              "preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n"
                              "protocol_version=1\n"
                              "endpoint=192.0.2.2:51821\n"
                              "last_handshake_time_sec=1764080000\n"
                              "last_handshake_time_nsec=123456789\n"
                              "tx_bytes=1480\n"
                              "rx_bytes=92\n"
                              "persistent_keepalive_interval=0\n"
                              "allowed_ip=10.0.0.2/32\n"
                              "allowed_ip=fd00::2/128\n"
                              "future_key=whatever\n"
                              "public_key=" +
                              kPeer2 +
                              "\n"
                              "protocol_version=1\n"
                              "last_handshake_time_sec=0\n"
                              "last_handshake_time_nsec=0\n"
                              "tx_bytes=0\n"
                              "rx_bytes=0\n"
                              "persistent_keepalive_interval=0\n"
                              "public_key=" +
                              kPeer3 +
                              "\n"
                              "endpoint=[2001:db8::3]:51823\n"
                              "last_handshake_time_sec=0\n"
                              "tx_bytes=18446744073709551615\n"
                              "rx_bytes=0\n"
                              "allowed_ip=10.0.0.3/32\n"
                              "errno=0\n"
                              "\n";

TEST(UapiGetReply, DeviceAndSeveralPeers) {
  auto d = ParseUapiGetReply(kGetReply, "wg0");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->ifname, "wg0");
  EXPECT_TRUE(d->has_private_key);
  EXPECT_EQ(d->public_key.ToHex(), kAlicePublic);  // derived: the reply has no device public key
  EXPECT_EQ(d->listen_port, 51820);
  ASSERT_EQ(d->peers.size(), 3u);

  const WgPeer& p1 = d->peers[0];
  EXPECT_EQ(p1.public_key.ToHex(), kPeer1);
  EXPECT_EQ(p1.endpoint, "192.0.2.2:51821");
  EXPECT_EQ(p1.last_handshake_sec, 1764080000);
  EXPECT_EQ(p1.tx_bytes, 1480u);
  EXPECT_EQ(p1.rx_bytes, 92u);
  EXPECT_EQ(p1.allowed_ips, (std::vector<std::string>{"10.0.0.2/32", "fd00::2/128"}));

  const WgPeer& p2 = d->peers[1];
  EXPECT_EQ(p2.public_key.ToHex(), kPeer2);
  EXPECT_EQ(p2.last_handshake_sec, 0);  // never
  EXPECT_EQ(p2.endpoint, "");
  EXPECT_TRUE(p2.allowed_ips.empty());

  const WgPeer& p3 = d->peers[2];
  EXPECT_EQ(p3.endpoint, "[2001:db8::3]:51823");
  EXPECT_EQ(p3.tx_bytes, UINT64_MAX);
  EXPECT_EQ(p3.allowed_ips, (std::vector<std::string>{"10.0.0.3/32"}));
}

TEST(UapiGetReply, DeviceWithoutKeyOrPeers) {
  auto d = ParseUapiGetReply("listen_port=0\nerrno=0\n\n", "wg1");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->has_private_key);
  EXPECT_EQ(d->public_key, WgKey{});
  EXPECT_TRUE(d->peers.empty());
}

TEST(UapiGetReply, ErrnoReplyIsAnError) {
  auto d = ParseUapiGetReply("errno=-5\n\n", "wg0");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(Contains(d.status(), "wireguard-go refused the request: errno=-5 (Input/output error)"), "");
  auto inval = ParseUapiGetReply("errno=22\n\n", "wg0");
  ASSERT_FALSE(inval.ok());
  EXPECT_EQ(inval.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UapiGetReply, MalformedRepliesSayWhere) {
  struct Case {
    std::string reply;
    std::string message;
  };
  std::vector<Case> cases = {
      {"listen_port=1\nerrno=0\n", "does not end with an empty line"},
      {"listen_port=1\n\n", "no errno line"},
      {"listen_port=70000\nerrno=0\n\n", "line 1 \"listen_port=70000\": not a port number"},
      {"private_key=abc\nerrno=0\n\n", "line 1"},
      {"public_key=" + std::string(kPeer1) + "\nlast_handshake_time_sec=soon\nerrno=0\n\n",
       "line 2 \"last_handshake_time_sec=soon\": not a time in seconds"},
      {"public_key=" + std::string(kPeer1) + "\nrx_bytes=-1\nerrno=0\n\n", "not a byte count"},
      {"public_key=" + std::string(kPeer1) + "\nallowed_ip=10.0.0.1\nerrno=0\n\n", "not an address/prefix"},
      {"listen_port\nerrno=0\n\n", "not key=value"},
      {"listen_port=1\n\nerrno=0\n\n", "an empty line before the end"},
      {"errno=0\nlisten_port=1\n\n", "a line after errno"},
      {"errno=zero\n\n", "malformed errno=zero"},
  };
  for (const auto& c : cases) {
    auto d = ParseUapiGetReply(c.reply, "wg0");
    ASSERT_FALSE(d.ok()) << c.reply;
    EXPECT_EQ(Contains(d.status(), c.message), "") << c.reply;
  }
}

TEST(UapiSetReply, OkAndErrors) {
  EXPECT_TRUE(ParseUapiSetReply("errno=0\n\n").ok());
  absl::Status in_use = ParseUapiSetReply("errno=-98\n\n");
  EXPECT_EQ(in_use.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Contains(in_use, "the listen port is taken"), "");
  EXPECT_FALSE(ParseUapiSetReply("").ok());
  EXPECT_FALSE(ParseUapiSetReply("errno=0\n").ok());
  EXPECT_FALSE(ParseUapiSetReply("listen_port=1\nerrno=0\n\n").ok());
}

TEST(UapiRequests, ExactText) {
  WgKey peer = *WgKey::FromHex(kPeer1);
  WgKey priv = *WgKey::FromHex(kAlicePrivate);
  in_addr ip;
  ASSERT_EQ(inet_pton(AF_INET, "10.0.0.2", &ip), 1);
  EXPECT_EQ(UapiGetRequest(), "get=1\n\n");
  EXPECT_EQ(UapiSetPeerRequest(peer, ip),
            std::string("set=1\npublic_key=") + kPeer1 + "\nreplace_allowed_ips=true\nallowed_ip=10.0.0.2/32\n\n");
  EXPECT_EQ(UapiRemovePeerRequest(peer), std::string("set=1\npublic_key=") + kPeer1 + "\nremove=true\n\n");
  EXPECT_EQ(UapiConfigureRequest(priv, 51820),
            std::string("set=1\nprivate_key=") + kAlicePrivate + "\nlisten_port=51820\n\n");
}

}  // namespace
}  // namespace cvmgate
