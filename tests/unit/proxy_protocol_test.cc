// Unit tests of the PROXY protocol v2 header, byte for byte.
#include "dataplane/proxy_protocol.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <vector>

#include "dataplane/addresses.h"

namespace cvmgate {
namespace {

sockaddr_storage Addr(const char* ip, uint16_t port) { return SockaddrFromIp(ip, port).value(); }

const std::vector<uint8_t> kSig = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

TEST(ProxyV2, Ipv4) {
  uint8_t out[kProxyV2MaxHeader];
  size_t n = BuildProxyV2(Addr("192.0.2.7", 50000), Addr("198.51.100.1", 443), out);
  std::vector<uint8_t> want = kSig;
  want.insert(want.end(), {0x21, 0x11, 0x00, 0x0c, 192, 0, 2, 7, 198, 51, 100, 1, 0xc3, 0x50, 0x01, 0xbb});
  EXPECT_EQ(std::vector<uint8_t>(out, out + n), want);
}

TEST(ProxyV2, Ipv6AndMixedFamilies) {
  uint8_t out[kProxyV2MaxHeader];
  size_t n = BuildProxyV2(Addr("2001:db8::1", 1), Addr("2001:db8::2", 443), out);
  ASSERT_EQ(n, 52u);
  EXPECT_EQ(out[12], 0x21);
  EXPECT_EQ(out[13], 0x21);
  EXPECT_EQ(out[15], 36);
  EXPECT_EQ(out[16], 0x20);
  EXPECT_EQ(out[31], 0x01);
  EXPECT_EQ(out[47], 0x02);
  EXPECT_EQ(out[49], 0x01);
  // A v4 client on a v6 listener is sent as an IPv4-mapped IPv6 address.
  n = BuildProxyV2(Addr("192.0.2.7", 80), Addr("::1", 443), out);
  ASSERT_EQ(n, 52u);
  std::vector<uint8_t> mapped(out + 16, out + 32);
  EXPECT_EQ(mapped, (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7}));
}

}  // namespace
}  // namespace cvmgate
