// Unit tests of the ClientHello parser: real captured hellos, splits, and a table of broken inputs.
#include "dataplane/client_hello.h"

#include <gtest/gtest.h>

#include "tests/common/hello_builder.h"

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace cvmgate {
namespace {

using Bytes = std::vector<uint8_t>;
using testing::HelloBuilder;
constexpr size_t kCap = 65536;

Bytes ReadHello(const std::string& name) {
  std::ifstream in(std::string(CVMGATE_TEST_DATA) + "/hello/" + name, std::ios::binary);
  EXPECT_TRUE(in) << name;
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

HelloResult Parse(const Bytes& b, size_t cap = kCap) { return ParseClientHello(b, cap); }

TEST(ClientHello, RealHellosFromOpensslCurlAndPython) {
  for (const char* name : {"openssl_tls12.bin", "openssl_tls13.bin", "curl.bin", "python.bin", "python_2k.bin",
                           "python_20k.bin"}) {
    Bytes hello = ReadHello(name);
    ASSERT_FALSE(hello.empty()) << name;
    HelloResult r = Parse(hello);
    EXPECT_EQ(r.status, HelloStatus::kOk) << name << ": " << HelloStatusName(r.status);
    EXPECT_EQ(r.sni, "app-8443s.example.test") << name;
    EXPECT_EQ(r.wire_bytes, hello.size()) << name;
  }
}

TEST(ClientHello, PythonOffersItsAlpnList) {
  HelloResult r = Parse(ReadHello("python_2k.bin"));
  ASSERT_EQ(r.status, HelloStatus::kOk);
  ASSERT_EQ(r.alpn.size(), 171u);
  EXPECT_EQ(r.alpn.front(), "proto-000");
}

TEST(ClientHello, NoServerNameIsNoSni) {
  EXPECT_EQ(Parse(ReadHello("no_sni.bin")).status, HelloStatus::kNoSni);
}

// Every prefix of a real hello asks for more, never past the hello's end (a
// client sends nothing more until the server answers), and always makes progress.
TEST(ClientHello, EveryPrefixNeedsMoreAndNeverAsksPastTheHello) {
  for (const char* name : {"openssl_tls13.bin", "python_2k.bin", "python_20k.bin"}) {
    Bytes hello = ReadHello(name);
    for (size_t n = 0; n < hello.size(); ++n) {
      Bytes prefix(hello.begin(), hello.begin() + n);
      HelloResult r = Parse(prefix);
      ASSERT_EQ(r.status, HelloStatus::kNeedMore) << name << " at " << n;
      ASSERT_GT(r.need, n) << name << " at " << n;
      ASSERT_LE(r.need, hello.size()) << name << " at " << n;
    }
  }
}

TEST(ClientHello, TwentyKilobyteHelloSpansTwoRecordsAndAsksForTheRestAtOnce) {
  Bytes hello = ReadHello("python_20k.bin");
  HelloResult first = Parse(Bytes(hello.begin(), hello.begin() + 5));
  EXPECT_EQ(first.need, 5u + 16384u);
  // The handshake header says how long the hello is: the rest can come in one record.
  HelloResult second = Parse(Bytes(hello.begin(), hello.begin() + 5 + 16384));
  EXPECT_EQ(second.need, hello.size());
  HelloResult third = Parse(Bytes(hello.begin(), hello.begin() + 5 + 16384 + 5));
  EXPECT_EQ(third.need, hello.size());
}

TEST(ClientHello, HelloFragmentedIntoSmallRecords) {
  HelloBuilder b;
  b.Sni("x-1s.example.test").Padding(1500);
  b.record_size = 100;
  Bytes wire = b.Build();
  HelloResult r = Parse(wire);
  ASSERT_EQ(r.status, HelloStatus::kOk) << HelloStatusName(r.status);
  EXPECT_EQ(r.sni, "x-1s.example.test");
}

// The worker's loop: wait until `need` bytes are there, peek them all, feed the
// same parser. A hello cut into 1-byte records takes a logarithmic number of
// rounds, not one per record, and ends as the one-shot parse does.
size_t RoundsToParse(const Bytes& wire, HelloResult* result) {
  HelloParser parser(kCap);
  size_t have = 1;
  for (size_t rounds = 1;; ++rounds) {
    HelloResult r = parser.Feed(std::span(wire.data(), std::min(have, wire.size())));
    if (r.status != HelloStatus::kNeedMore) {
      *result = r;
      return rounds;
    }
    EXPECT_GT(r.need, have);
    EXPECT_LE(r.need, wire.size()) << "asked past the hello's end";
    if (r.need <= have || r.need > wire.size()) return SIZE_MAX;
    have = r.need;
  }
}

TEST(ClientHello, TinyRecordsTakeFewRoundsAndParseAsOneRecordDoes) {
  HelloBuilder b;
  b.Sni("app-443s.example.test").Padding(10800);
  b.record_size = 1;
  Bytes tiny = b.Build();
  ASSERT_LE(tiny.size(), kCap);
  ASSERT_GT(tiny.size(), 60000u);
  HelloResult r;
  size_t rounds = RoundsToParse(tiny, &r);
  ASSERT_EQ(r.status, HelloStatus::kOk) << HelloStatusName(r.status);
  EXPECT_EQ(r.sni, "app-443s.example.test");
  EXPECT_EQ(r.wire_bytes, tiny.size());
  EXPECT_LE(rounds, 80u) << "one peek per record would be " << tiny.size() / 6;
  b.record_size = kMaxTlsRecordPayload;
  HelloResult one;
  EXPECT_LE(RoundsToParse(b.Build(), &one), 3u);
  EXPECT_EQ(one.sni, r.sni);
}

// 1-byte records are checked and gathered sixteen or eight at a time where the
// CPU can: a bad header anywhere, whatever its place in such a block, is found,
// and the bytes gathered are the hello's own.
TEST(ClientHello, TinyRecordsAreCheckedWhereverABlockStarts) {
  HelloBuilder b;
  b.Sni("app-443s.example.test").Alpn({"h2", "http/1.1"}).Padding(300);
  b.record_size = 1;
  Bytes wire = b.Build();
  // Any minor version is allowed: vary it, and the result stays the same.
  for (size_t r = 0; r * 6 < wire.size(); r += 3) wire[r * 6 + 2] = static_cast<uint8_t>(r % 4);
  HelloResult good;
  ASSERT_LE(RoundsToParse(wire, &good), 80u);
  ASSERT_EQ(good.status, HelloStatus::kOk) << HelloStatusName(good.status);
  EXPECT_EQ(good.sni, "app-443s.example.test");
  EXPECT_EQ(good.alpn, (std::vector<std::string>{"h2", "http/1.1"}));
  for (size_t record = 5; record < 60; ++record) {
    for (size_t byte : {0, 1, 3, 4}) {
      Bytes bad = wire;
      bad[record * 6 + byte] ^= 0x40;
      HelloResult r = Parse(bad);
      EXPECT_NE(r.status, HelloStatus::kOk) << "record " << record << " byte " << byte;
    }
  }
}

TEST(ClientHello, FeedingInAnyIncrementsGivesTheOneShotResult) {
  for (const char* name : {"openssl_tls13.bin", "python_2k.bin", "python_20k.bin"}) {
    Bytes hello = ReadHello(name);
    HelloResult whole = Parse(hello);
    for (size_t step : {1u, 7u, 100u, 5000u}) {
      HelloParser parser(kCap);
      HelloResult r;
      for (size_t n = step;; n += step) {
        r = parser.Feed(std::span(hello.data(), std::min(n, hello.size())));
        if (r.status != HelloStatus::kNeedMore || n >= hello.size()) break;
      }
      EXPECT_EQ(r.status, whole.status) << name << " step " << step;
      EXPECT_EQ(r.sni, whole.sni) << name << " step " << step;
      EXPECT_EQ(r.alpn, whole.alpn) << name << " step " << step;
      EXPECT_EQ(r.wire_bytes, whole.wire_bytes) << name << " step " << step;
    }
  }
  // Broken input is found whatever the increments.
  HelloBuilder b;
  b.Sni("x.example.test");
  b.record_size = 3;
  Bytes wire = b.Build();
  wire[5 + 3] = 23;  // the second record is application data
  HelloParser parser(kCap);
  HelloResult r;
  for (size_t n = 1; n <= wire.size(); ++n) {
    r = parser.Feed(std::span(wire.data(), n));
    if (r.status != HelloStatus::kNeedMore) break;
  }
  EXPECT_EQ(r.status, HelloStatus::kMalformed) << HelloStatusName(r.status);
}

TEST(ClientHello, LargerThanTheCapIsRefusedFromItsHeader) {
  Bytes hello = ReadHello("python_20k.bin");
  // Only the first record's headers are visible: the handshake length already says "too large".
  HelloResult r = Parse(Bytes(hello.begin(), hello.begin() + 9), 16384);
  EXPECT_EQ(r.status, HelloStatus::kTooLarge);
  EXPECT_EQ(Parse(hello, hello.size()).status, HelloStatus::kOk);
  EXPECT_EQ(Parse(hello, hello.size() - 1).status, HelloStatus::kTooLarge);
}

TEST(ClientHello, SslV2AndNonTlsBytes) {
  EXPECT_EQ(Parse(Bytes{0x80, 0x2e, 0x01, 0x00, 0x02}).status, HelloStatus::kSslV2);
  EXPECT_EQ(Parse(Bytes{0x80}).status, HelloStatus::kNeedMore);
  std::string get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  EXPECT_EQ(Parse(Bytes(get.begin(), get.end())).status, HelloStatus::kNotTls);
  EXPECT_EQ(Parse(Bytes{'S', 'S', 'H', '-'}).status, HelloStatus::kNotTls);
  EXPECT_EQ(Parse(Bytes{23, 3, 3, 0, 5, 1, 2, 3, 4, 5}).status, HelloStatus::kNotTls);  // application data
  EXPECT_EQ(Parse(Bytes{22, 2, 0, 0, 5}).status, HelloStatus::kNotTls);                 // record version 2.x
}

struct BrokenCase {
  const char* what;
  Bytes bytes;
  HelloStatus want;
};

TEST(ClientHello, TableOfTruncatedAndGarbageInputs) {
  Bytes good = HelloBuilder().Sni("app-443s.example.test").Build();
  auto mutate = [&](size_t at, uint8_t value) {
    Bytes b = good;
    b[at] = value;
    return b;
  };
  // Offsets in `good`: 0-4 record header, 5 handshake type, 6-8 length, 9-10 version,
  // 11-42 random, 43 session id length, 44-45 cipher suites length, 48 compression length.
  Bytes extra = good;
  extra[4] += 1;  // the record claims one byte more than the hello uses
  extra.push_back(0);
  Bytes two_snis;
  {
    HelloBuilder b;
    b.Sni("a.example.test").Sni("b.example.test");
    two_snis = b.Build();
  }
  Bytes no_extensions;
  {
    HelloBuilder b;
    Bytes body = b.Body();
    body.resize(body.size() - 2);  // drop the (empty) extensions length
    no_extensions = {22, 3, 1, 0, uint8_t(body.size() + 4), 1, 0, 0, uint8_t(body.size())};
    no_extensions.insert(no_extensions.end(), body.begin(), body.end());
  }
  Bytes bad_sni_len = good;
  bad_sni_len[good.size() - 21 - 2] = 0xff;  // the host name length: past the extension
  Bytes empty_alpn = HelloBuilder().Sni("a.example.test").Alpn({""}).Build();
  Bytes nul_record = {22, 3, 1, 0, 0};
  Bytes huge_record = {22, 3, 1, 0x40, 0x01};
  Bytes interleaved = good;
  interleaved.resize(20);
  interleaved[4] = 15;  // a short first record...
  interleaved.insert(interleaved.end(), {23, 3, 3, 0, 1, 0});  // ...then application data

  std::vector<BrokenCase> cases = {
      {"not a client hello (server hello)", mutate(5, 2), HelloStatus::kNotClientHello},
      {"session id longer than 32", mutate(43, 33), HelloStatus::kMalformed},
      {"cipher suites length odd", mutate(45, 3), HelloStatus::kMalformed},
      {"cipher suites length past the end", mutate(44, 0xff), HelloStatus::kMalformed},
      {"handshake length shorter than the record", mutate(8, good[8] - 1), HelloStatus::kMalformed},
      {"trailing bytes after the hello in its record", extra, HelloStatus::kMalformed},
      {"two host names", two_snis, HelloStatus::kMalformed},
      {"no extensions", no_extensions, HelloStatus::kNoSni},
      {"host name length past the extension", bad_sni_len, HelloStatus::kMalformed},
      {"empty ALPN protocol", empty_alpn, HelloStatus::kMalformed},
      {"zero-length record", nul_record, HelloStatus::kMalformed},
      {"record over 2^14", huge_record, HelloStatus::kMalformed},
      {"another record type mid-hello", interleaved, HelloStatus::kMalformed},
  };
  for (const auto& c : cases) {
    HelloResult r = Parse(c.bytes);
    EXPECT_EQ(r.status, c.want) << c.what << ": got " << HelloStatusName(r.status);
    EXPECT_TRUE(r.sni.empty()) << c.what;
  }
  EXPECT_EQ(Parse(good).status, HelloStatus::kOk);
}

TEST(ClientHello, DuplicateExtensionIsMalformed) {
  Bytes b = HelloBuilder().Sni("a.example.test").Padding(4).Padding(4).Build();
  EXPECT_EQ(Parse(b).status, HelloStatus::kMalformed);
}

}  // namespace
}  // namespace cvmgate
