// Unit tests of the TLS termination contexts: loading, and clear refusals of bad certificates.
#include "dataplane/tls.h"

#include <gtest/gtest.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "dataplane/transport/transport.h"

#include "tests/common/test_cert.h"

namespace cvmgate {
namespace {

using testing::MakeCert;
using testing::TestCert;

class TlsContextsTest : public ::testing::Test {
 protected:
  TlsContextsTest() : dir_(std::filesystem::temp_directory_path() / ("cvmgate-tls-" + std::to_string(getpid()))) {
    std::filesystem::create_directories(dir_);
    good_ = MakeCert(dir_, "good", -60, 86400);
    other_ = MakeCert(dir_, "other", -60, 86400);
    expired_ = MakeCert(dir_, "expired", -86400, -3600);
  }
  ~TlsContextsTest() override { std::filesystem::remove_all(dir_); }

  std::string LoadError(const TlsCertSpec& spec) {
    auto r = TlsContexts::Load({"example.test", "other.test"}, {spec});
    EXPECT_FALSE(r.ok());
    return r.ok() ? "" : std::string(r.status().message());
  }

  std::filesystem::path dir_;
  TestCert good_, other_, expired_;
};

TEST_F(TlsContextsTest, OneContextPerDomainAndMode) {
  auto tls = TlsContexts::Load({"example.test", "other.test"}, {{"example.test", good_.chain, good_.key}});
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_NE((*tls)->context(0, false), nullptr);
  EXPECT_NE((*tls)->context(0, true), nullptr);
  EXPECT_NE((*tls)->context(0, false), (*tls)->context(0, true)) << "each mode has its own ALPN policy";
  EXPECT_EQ((*tls)->context(1, false), nullptr) << "no certificate for other.test";
  EXPECT_EQ((*tls)->context(7, false), nullptr);
  EXPECT_EQ(SSL_CTX_get_min_proto_version((*tls)->context(0, false)), TLS1_2_VERSION);
}

TEST_F(TlsContextsTest, BadCertificatesAreRefusedWithTheReason) {
  EXPECT_NE(LoadError({"example.test", good_.chain, other_.key}).find("does not match"), std::string::npos);
  EXPECT_NE(LoadError({"example.test", expired_.chain, expired_.key}).find("has expired"), std::string::npos);
  EXPECT_NE(LoadError({"example.test", "/nonexistent.pem", good_.key}).find("cannot load the chain"),
            std::string::npos);
  EXPECT_NE(LoadError({"example.test", good_.chain, "/nonexistent.key"}).find("cannot load the key"),
            std::string::npos);
  EXPECT_NE(LoadError({"elsewhere.test", good_.chain, good_.key}).find("not one of the --base-domain"),
            std::string::npos);
}

TEST_F(TlsContextsTest, PolicyIsAppliedAndBadListsAreRefused) {
  TlsPolicy only13;
  only13.min_version = TLS1_3_VERSION;
  auto tls = TlsContexts::Load({"example.test"}, {{"example.test", good_.chain, good_.key}}, nullptr, only13);
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_EQ(SSL_CTX_get_min_proto_version((*tls)->context(0, false)), TLS1_3_VERSION);
  TlsPolicy bad;
  bad.ciphers = "NO-SUCH-CIPHER";
  auto r = TlsContexts::Load({"example.test"}, {{"example.test", good_.chain, good_.key}}, nullptr, bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--tls-ciphers=NO-SUCH-CIPHER: no usable cipher"), std::string::npos);
  bad = TlsPolicy();
  bad.ciphersuites = "TLS_NOPE";
  r = TlsContexts::Load({"example.test"}, {{"example.test", good_.chain, good_.key}}, nullptr, bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("no usable TLS 1.3 suite"), std::string::npos);
}

// A terminated connection in userspace TLS over a socketpair, its client in OpenSSL here.
struct Terminated {
  Transport server;
  Fd client_fd;
  SSL_CTX* cctx = nullptr;
  SSL* client = nullptr;
  ~Terminated() {
    SSL_free(client);
    SSL_CTX_free(cctx);
  }
};

std::unique_ptr<Terminated> Handshaken(SSL_CTX* ctx, int server_sndbuf) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0) return nullptr;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &server_sndbuf, sizeof(server_sndbuf));
  auto c = std::make_unique<Terminated>();
  c->server = Transport::Plain(Fd(sv[0]));
  c->client_fd = Fd(sv[1]);
  if (!BeginTlsHandshake(c->server, ctx, {})) return nullptr;
  c->cctx = SSL_CTX_new(TLS_client_method());
  c->client = SSL_new(c->cctx);
  SSL_set_fd(c->client, c->client_fd.get());
  SSL_set_tlsext_host_name(c->client, "app-8080.example.test");
  SSL_set_connect_state(c->client);
  for (int i = 0; i < 100; ++i) {
    HandshakeStep step = StepTlsHandshake(c->server);
    if (step.status == HandshakeStep::kFailed) return nullptr;
    if (SSL_do_handshake(c->client) == 1 && step.status == HandshakeStep::kDone) {
      if (FinishTlsHandshake(c->server, {0, 0}).tx) return nullptr;  // userspace asked for
      return c;
    }
  }
  return nullptr;
}

std::string RandomBytes(size_t n) {
  std::string s(n, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(n));
  return s;
}

// Writes `sent` as the relay writes (64 KiB at a time, the same bytes offered again after a
// "wait") while the client reads at most a record a turn; returns what the client got and counts
// the waits.
std::string Relay(Terminated& c, const std::string& sent, int& waits) {
  std::string got;
  size_t off = 0;
  unsigned char buf[16384];
  for (int i = 0; i < 100000 && got.size() < sent.size(); ++i) {
    if (off < sent.size()) {
      Io io = c.server.Write(reinterpret_cast<const uint8_t*>(sent.data()) + off,
                             static_cast<uint32_t>(std::min<size_t>(65536, sent.size() - off)));
      if (io.status == Io::kBytes) {
        off += io.bytes;
      } else {
        EXPECT_EQ(io.status, Io::kWouldBlock);
        EXPECT_EQ(io.events, POLLOUT);
        ++waits;
      }
    }
    int n = SSL_read(c.client, buf, sizeof(buf));
    if (n > 0) got.append(reinterpret_cast<char*>(buf), static_cast<size_t>(n));
  }
  return got;
}

class TlsTransportTest : public TlsContextsTest {
 protected:
  TlsTransportTest() {
    TlsPolicy userspace;
    userspace.ktls = false;
    auto tls = TlsContexts::Load({"example.test"}, {{"example.test", good_.chain, good_.key}}, nullptr, userspace);
    EXPECT_TRUE(tls.ok()) << tls.status();
    if (tls.ok()) tls_ = *std::move(tls);
  }
  SSL_CTX* ctx() const { return tls_ ? tls_->context(0, false) : nullptr; }
  std::shared_ptr<const TlsContexts> tls_;
};

// The records of each relay write go out together; what the client's socket refuses waits and
// follows in order.
TEST_F(TlsTransportTest, UserspaceRecordsTheSocketRefusesFollowInOrder) {
  auto c = Handshaken(ctx(), 4096);
  ASSERT_NE(c, nullptr);
  std::string sent = RandomBytes(1 << 20);
  int waits = 0;
  std::string got = Relay(*c, sent, waits);
  EXPECT_EQ(got.size(), sent.size());
  EXPECT_TRUE(got == sent) << "bytes differ";
  EXPECT_GT(waits, 0) << "the socket never refused: the test did not test the wait";
}

// A write that fails (the client went away) leaves nothing behind for the worker's next connection.
TEST_F(TlsTransportTest, AFailedWriteLeavesNothingForTheNextConnection) {
  auto gone = Handshaken(ctx(), 4096);
  auto next = Handshaken(ctx(), 1 << 20);
  ASSERT_NE(gone, nullptr);
  ASSERT_NE(next, nullptr);
  gone->client_fd = Fd();  // the client closes
  std::string lost = RandomBytes(65536);
  Io io = gone->server.Write(reinterpret_cast<const uint8_t*>(lost.data()), 65536);
  for (int i = 0; i < 10 && io.status != Io::kError; ++i) {
    io = gone->server.Write(reinterpret_cast<const uint8_t*>(lost.data()), 65536);
  }
  EXPECT_EQ(io.status, Io::kError);
  std::string sent = RandomBytes(200000);
  int waits = 0;
  std::string got = Relay(*next, sent, waits);
  EXPECT_TRUE(got == sent) << "the next connection got " << got.size() << " bytes, not its own";
}

}  // namespace
}  // namespace cvmgate
