// The access log's lines and its queue: what an operator's log tools read, whatever the client sent.
#include "dataplane/access_log.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace cvmgate {
namespace {

AccessRecord Record(std::string_view sni) {
  AccessRecord r;
  r.unix_us = 1'764'645'000'123'456;  // 2025-12-02T03:10:00.123Z
  auto& client = reinterpret_cast<sockaddr_in&>(r.client);
  client.sin_family = AF_INET;
  client.sin_port = htons(40000);
  inet_pton(AF_INET, "192.0.2.7", &client.sin_addr);
  r.instance.sin6_family = AF_INET6;
  r.instance.sin6_port = htons(8080);
  inet_pton(AF_INET6, "fd00::5", &r.instance.sin6_addr);
  std::memcpy(r.sni, sni.data(), sni.size());
  r.sni_len = static_cast<uint16_t>(sni.size());
  std::memcpy(r.app, "web", 3);
  r.app_len = 3;
  r.routed = true;
  r.mode = Mode::kTerminate;
  r.tls_version = 0x0304;
  r.cipher = "TLS_AES_128_GCM_SHA256";
  r.bytes_in = 12;
  r.bytes_out = 3456;
  r.handshake_us = 1234;
  r.connect_us = 56;
  r.duration_us = 7'000'001;
  r.reason = Counter::relay_done;
  return r;
}

TEST(AccessLog, LogfmtLine) {
  std::string out;
  AppendAccessLine(Record("web-8080.example.test"), AccessLogFormat::kLogfmt, out);
  EXPECT_EQ(out,
            "time=2025-12-02T03:10:00.123Z client=192.0.2.7:40000 sni=web-8080.example.test app=web mode=terminate "
            "instance=[fd00::5]:8080 tls=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256 bytes_in=12 bytes_out=3456 "
            "handshake_ms=1.234 connect_ms=0.056 duration_ms=7000.001 reason=relay_done\n");
}

TEST(AccessLog, JsonLineWithNullsForWhatIsMissing) {
  AccessRecord r = Record("nosuch.example.test");
  r.routed = false;
  r.app_len = 0;
  r.instance = {};
  r.tls_version = 0;
  r.cipher = nullptr;
  r.handshake_us = r.connect_us = -1;
  r.reason = Counter::closed_unknown_app;
  std::string out;
  AppendAccessLine(r, AccessLogFormat::kJson, out);
  EXPECT_EQ(out,
            "{\"time\":\"2025-12-02T03:10:00.123Z\",\"client\":\"192.0.2.7:40000\",\"sni\":\"nosuch.example.test\","
            "\"app\":null,\"mode\":null,\"instance\":null,\"tls\":null,\"cipher\":null,\"bytes_in\":12,"
            "\"bytes_out\":3456,\"handshake_ms\":null,\"connect_ms\":null,\"duration_ms\":7000.001,"
            "\"reason\":\"closed_unknown_app\"}\n");
  out.clear();
  AppendAccessLine(r, AccessLogFormat::kLogfmt, out);
  EXPECT_NE(out.find(" app=- mode=- instance=- tls=- cipher=- "), std::string::npos) << out;
  EXPECT_NE(out.find(" handshake_ms=- connect_ms=- "), std::string::npos) << out;
}

// A refused name may hold any byte: a line stays one line, and its fields stay apart.
TEST(AccessLog, HostileServerNamesAreEscaped) {
  const std::string sni = std::string("a b=\"c\\\n\x01\xff", 10);
  std::string out;
  AppendAccessLine(Record(sni), AccessLogFormat::kLogfmt, out);
  EXPECT_NE(out.find(" sni=\"a b=\\\"c\\\\\\x0a\\x01\\xff\" app=web "), std::string::npos) << out;
  out.clear();
  AppendAccessLine(Record(sni), AccessLogFormat::kJson, out);
  EXPECT_NE(out.find("\"sni\":\"a b=\\\"c\\\\\\u000a\\u0001\\u00ff\",\"app\""), std::string::npos) << out;
  out.clear();
  AppendAccessLine(Record("-"), AccessLogFormat::kLogfmt, out);
  EXPECT_NE(out.find(" sni=\"-\" "), std::string::npos) << out;  // not "missing"
}

TEST(AccessLog, AFullQueueRefusesInsteadOfWaiting) {
  AccessLogQueue q(4);
  for (int i = 0; i < 4; ++i) {
    AccessRecord* r = q.Claim();
    ASSERT_NE(r, nullptr) << i;
    *r = Record("web.example.test");
    r->bytes_in = static_cast<uint64_t>(i);
    q.Commit();
  }
  EXPECT_EQ(q.Claim(), nullptr);
  std::string out;
  EXPECT_EQ(q.Drain(AccessLogFormat::kLogfmt, out, 3), 3u);
  EXPECT_NE(q.Claim(), nullptr);  // room again
  EXPECT_EQ(q.Drain(AccessLogFormat::kLogfmt, out, 100), 1u);
  EXPECT_TRUE(q.empty());
  EXPECT_NE(out.find("bytes_in=3 "), std::string::npos);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 4);
}

}  // namespace
}  // namespace cvmgate
