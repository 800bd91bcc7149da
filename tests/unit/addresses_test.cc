// Socket addresses: the one parser and formatter the flags, the registry, the
// WireGuard endpoints and the routes share, and the own-listener test.
#include "dataplane/addresses.h"

#include <gtest/gtest.h>

#include <string>

namespace cvmgate {
namespace {

std::string Parsed(const std::string& text) {
  auto ss = ParseSockaddr(text);
  return ss.ok() ? SockaddrText(*ss) : std::string(ss.status().message());
}

TEST(Addresses, ParsesBothFamiliesAndWritesThemBack) {
  EXPECT_EQ(Parsed("192.0.2.1:443"), "192.0.2.1:443");
  EXPECT_EQ(Parsed("[2001:db8::1]:8443"), "[2001:db8::1]:8443");
  EXPECT_EQ(Parsed("0.0.0.0:0"), "0.0.0.0:0");
  EXPECT_EQ(Parsed("[::]:65535"), "[::]:65535");
  auto v6 = ParseSockaddr("[::1]:1");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->ss_family, AF_INET6);
  EXPECT_EQ(SockaddrLen(*v6), sizeof(sockaddr_in6));
  EXPECT_EQ(SockaddrLen(*ParseSockaddr("127.0.0.1:1")), sizeof(sockaddr_in));
}

TEST(Addresses, SaysWhichPartIsWrong) {
  EXPECT_EQ(Parsed("127.0.0.1"), "expected ADDR:PORT");
  EXPECT_EQ(Parsed("[::1]443"), "expected [IPv6]:PORT");
  EXPECT_EQ(Parsed("[::1"), "expected [IPv6]:PORT");
  EXPECT_EQ(Parsed("127.0.0.1:65536"), "the port must be 0-65535");
  EXPECT_EQ(Parsed("127.0.0.1:-1"), "the port must be 0-65535");
  EXPECT_EQ(Parsed("127.0.0.1:"), "the port must be 0-65535");
  EXPECT_EQ(Parsed("host:80"), "the address must be an IPv4 or IPv6 literal");
  EXPECT_EQ(Parsed(":80"), "the address must be an IPv4 or IPv6 literal");
  EXPECT_EQ(Parsed("[192.0.2.1x]:80"), "the address must be an IPv4 or IPv6 literal");
  EXPECT_EQ(Parsed(std::string(200, '1') + ":80"), "the address must be an IPv4 or IPv6 literal");
}

TEST(Addresses, IpLiteralsOnly) {
  EXPECT_EQ(SockaddrText(SockaddrFromIp("10.0.0.2", 8080).value()), "10.0.0.2:8080");
  EXPECT_EQ(IpText(SockaddrFromIp("2001:db8::7").value()), "2001:db8::7");
  EXPECT_FALSE(SockaddrFromIp("10.0.0.2:80"));
  EXPECT_FALSE(SockaddrFromIp("[::1]"));
  EXPECT_FALSE(SockaddrFromIp(""));
  EXPECT_FALSE(SockaddrFromIp("10.0.0.256"));
  in_addr a{};
  a.s_addr = htonl(0x0a000002);
  EXPECT_EQ(IpText(a), "10.0.0.2");
}

TEST(Addresses, PortAndScope) {
  sockaddr_storage ss = SockaddrFromIp("fe80::1", 51820).value();
  EXPECT_EQ(SockaddrPort(ss), 51820);
  SetSockaddrPort(ss, 7);
  EXPECT_EQ(SockaddrPort(ss), 7);
  reinterpret_cast<sockaddr_in6*>(&ss)->sin6_scope_id = 2;
  EXPECT_EQ(SockaddrText(ss), "[fe80::1%2]:7");
}

TEST(Addresses, OwnListener) {
  std::vector<sockaddr_storage> listeners = {SockaddrFromIp("0.0.0.0", 443).value(),
                                             SockaddrFromIp("::1", 8443).value()};
  EXPECT_TRUE(IsOwnListener(SockaddrFromIp("10.1.2.3", 443).value(), true, listeners))
      << "a local address on a wildcard listener's port";
  EXPECT_FALSE(IsOwnListener(SockaddrFromIp("10.1.2.3", 443).value(), false, listeners))
      << "a remote address on that port is an instance";
  EXPECT_FALSE(IsOwnListener(SockaddrFromIp("10.1.2.3", 444).value(), true, listeners));
  EXPECT_TRUE(IsOwnListener(SockaddrFromIp("::1", 8443).value(), false, listeners)) << "the same address and port";
  EXPECT_FALSE(IsOwnListener(SockaddrFromIp("::2", 8443).value(), false, listeners));
}

}  // namespace
}  // namespace cvmgate
