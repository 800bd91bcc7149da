// Unit tests of the connection state machine (dataplane/conn/): every phase, refusals, retries,
// half-close from either side, timeouts and the drain, driven through a fake ring with fake
// transports — no sockets, no kernel, no clock.
#include "dataplane/conn/table.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <string>
#include <vector>

#include "dataplane/addresses.h"
#include "dataplane/tls.h"
#include "dataplane/transport/plain.h"
#include "tests/common/hello_builder.h"
#include "tests/common/test_cert.h"

namespace cvmgate {
namespace {

// --- a fake ring: it records what is asked; the test completes it ------------

struct Submitted {
  Tag tag;
  int fd = -1;  // Recv, Poll, Connect; Splice: -1
  uint8_t* buf = nullptr;
  uint32_t len = 0;
  int flags = 0;
  short events = 0;
  int in = -1, out = -1;  // Splice
  sockaddr_storage addr{};
  bool cancelled = false;
};

class FakeRing : public Ring {
 public:
  void Recv(Tag tag, int fd, uint8_t* buf, uint32_t len, int flags) override {
    Submitted s{tag, fd};
    s.buf = buf;
    s.len = len;
    s.flags = flags;
    ops.push_back(s);
  }
  void Poll(Tag tag, int fd, short events) override {
    Submitted s{tag, fd};
    s.events = events;
    ops.push_back(s);
  }
  void Connect(Tag tag, int fd, const sockaddr_storage* addr, socklen_t) override {
    Submitted s{tag, fd};
    s.addr = *addr;
    ops.push_back(s);
  }
  void Splice(Tag tag, int in, int out, uint32_t len) override {
    Submitted s{tag};
    s.in = in;
    s.out = out;
    s.len = len;
    ops.push_back(s);
  }
  void CancelFd(int fd) override {
    cancels.push_back(fd);
    for (Submitted& s : ops) {
      if (s.fd == fd || s.in == fd || s.out == fd) s.cancelled = true;
    }
  }
  bool Has(Op op) const {
    return std::any_of(ops.begin(), ops.end(), [&](const Submitted& s) { return s.tag.op == op; });
  }
  // The one pending operation of kind `op`, taken off the list.
  Submitted Take(Op op) {
    auto it = std::find_if(ops.begin(), ops.end(), [&](const Submitted& s) { return s.tag.op == op; });
    EXPECT_NE(it, ops.end()) << "no pending op " << int(static_cast<uint8_t>(op));
    if (it == ops.end()) return {};
    Submitted s = *it;
    ops.erase(it);
    return s;
  }

  std::vector<Submitted> ops;
  std::vector<int> cancels;
};

// --- fake transports: a side of the connection as the peer sees it -----------

struct FakeSide {
  std::string inbox;         // what the peer sent, not yet read
  bool peer_closed = false;  // the peer ended its stream (after the inbox)
  std::string outbox;        // what was written toward the peer
  bool write_blocked = false;
  bool shut = false;  // this side was shut for writing (a half-close passed on)
};

FakeSide& SideOf(Transport& t) { return *static_cast<FakeSide*>(t.context()); }

Io FakeRead(Transport& t, uint8_t* buf, uint32_t len) {
  FakeSide& s = SideOf(t);
  if (s.inbox.empty()) return s.peer_closed ? Io::End() : Io::Wait(POLLIN);
  size_t n = std::min<size_t>(len, s.inbox.size());
  std::memcpy(buf, s.inbox.data(), n);
  s.inbox.erase(0, n);
  return Io::Bytes(n);
}
Io FakeWrite(Transport& t, const uint8_t* buf, uint32_t len) {
  FakeSide& s = SideOf(t);
  if (s.write_blocked) return Io::Wait(POLLOUT);
  s.outbox.append(reinterpret_cast<const char*>(buf), len);
  return Io::Bytes(len);
}
Io FakeSpliceIn(Transport& t, int pipe_w, uint32_t len) {
  FakeSide& s = SideOf(t);
  if (s.inbox.empty()) return s.peer_closed ? Io::End() : Io::Wait(POLLIN);
  ssize_t n = write(pipe_w, s.inbox.data(), std::min<size_t>(len, s.inbox.size()));
  if (n <= 0) return Io::Error();
  s.inbox.erase(0, static_cast<size_t>(n));
  return Io::Bytes(static_cast<size_t>(n));
}
Io FakeSpliceOut(Transport& t, int pipe_r, uint32_t len) {
  FakeSide& s = SideOf(t);
  if (s.write_blocked) return Io::Wait(POLLOUT);
  std::string chunk(len, '\0');
  ssize_t n = read(pipe_r, chunk.data(), len);
  if (n <= 0) return Io::Error();
  s.outbox.append(chunk.data(), static_cast<size_t>(n));
  return Io::Bytes(static_cast<size_t>(n));
}
void FakeShutdown(Transport& t) { SideOf(t).shut = true; }

const TransportOps kFakeOps = {"fake",       FakeRead,          FakeWrite,    FakeSpliceIn, PlainSpliceInResult,
                               FakeSpliceOut, PlainSpliceOutResult, FakeShutdown, true,         true};
// A side that cannot splice (as userspace TLS): its directions copy.
const TransportOps kFakeCopyOps = {"fake-copy",       FakeRead,          FakeWrite,    UnsupportedSplice,
                                   UnsupportedResult, UnsupportedSplice, UnsupportedResult, FakeShutdown,
                                   false,             false};

// A side that cannot splice until its first read, then can (as userspace TLS that hands its
// records to kTLS at a threshold).
Io FakeReadThenSplice(Transport& t, uint8_t* buf, uint32_t len) {
  Io io = FakeRead(t, buf, len);
  if (io.status == Io::kBytes) t.set_ops(&kFakeOps);
  return io;
}
const TransportOps kFakeCopyThenSpliceOps = {"fake-copy-then-splice", FakeReadThenSplice, FakeWrite,
                                             UnsupportedSplice,       UnsupportedResult,  UnsupportedSplice,
                                             UnsupportedResult,       FakeShutdown,       false,
                                             false};

// --- the fixture ---------------------------------------------------------------

sockaddr_storage V4(const char* ip, uint16_t port) { return SockaddrFromIp(ip, port).value(); }

std::string HelloFor(const std::string& host) {
  auto bytes = testing::HelloBuilder().Sni(host).Build();
  return std::string(bytes.begin(), bytes.end());
}

class ConnectionTest : public ::testing::Test {
 protected:
  ConnectionTest()
      : dir_(std::filesystem::temp_directory_path() / ("cvmgate-conn-" + std::to_string(getpid()))),
        pipes_(4, 0, counters_),
        buffers_(4),
        relay_(SpliceMode::kInline, pipes_, buffers_, counters_, pipe_bytes_, runq_) {
    std::filesystem::create_directories(dir_);
    options_.base_domains = {"example.test"};
    options_.connect_tries = 2;
    Routes({{"app", "i1", "10.0.0.2", true}, {"app", "i2", "10.0.0.3", true}, {"down", "d1", "10.0.0.4", false},
            {"solo", "s1", "10.0.0.5", true, 1}});
    MakeTable(SpliceMode::kInline);
  }
  ~ConnectionTest() override { std::filesystem::remove_all(dir_); }

  void MakeTable(SpliceMode mode) {
    table_.reset();
    relay_.~RelayEngine();
    new (&relay_) RelayEngine(mode, pipes_, buffers_, counters_, pipe_bytes_, runq_);
    env_ = std::make_unique<ConnEnv>(ConnEnv{ring_, options_, counters_, relay_, listeners_,
                                             [this](int) { return NewInstance(); }});
    env_->snap = snap_.get();
    env_->now_ms = now_;
    table_ = std::make_unique<Connections>(4, *env_, runq_);
  }
  void Routes(std::vector<RouteEntry> entries, std::shared_ptr<const TlsContexts> tls = nullptr) {
    auto snap = RouteSnapshot::Build(entries, &app_counters_, std::move(tls));
    ASSERT_TRUE(snap.ok()) << snap.status();
    snap_ = *std::move(snap);
    if (env_) env_->snap = snap_.get();
  }
  Transport NewInstance() {
    instances_.emplace_back();
    return Transport::Custom(instance_ops_, Fd(eventfd(0, EFD_NONBLOCK)), &instances_.back());
  }
  // A new client connection; returns its slot's connection.
  const Conn& Accept(const TransportOps* ops = &kFakeOps) {
    EXPECT_TRUE(table_->Accept(Transport::Custom(ops, Fd(eventfd(0, EFD_NONBLOCK)), &client_)));
    return table_->at(0);
  }
  // The pending hello recv completes with the first `n` bytes of `wire` (all of it by default).
  Submitted GiveHello(const std::string& wire, size_t n = std::string::npos) {
    Submitted s = ring_.Take(Op::kHelloRecv);
    size_t give = std::min({n, wire.size(), size_t{s.len}});
    std::memcpy(s.buf, wire.data(), give);
    table_->OnCompletion(s.tag, static_cast<int>(give));
    return s;
  }
  void Complete(Op op, int res) { table_->OnCompletion(ring_.Take(op).tag, res); }
  // Every cancelled operation completes with -ECANCELED.
  void CompleteCancelled() {
    std::vector<Submitted> cancelled;
    for (auto it = ring_.ops.begin(); it != ring_.ops.end();) {
      if (it->cancelled) {
        cancelled.push_back(*it);
        it = ring_.ops.erase(it);
      } else {
        ++it;
      }
    }
    for (const Submitted& s : cancelled) table_->OnCompletion(s.tag, -ECANCELED);
  }
  void Advance(int64_t ms) {
    now_ += ms;
    env_->now_ms = now_;
    table_->RunTimers();
  }
  // Passthrough up to an established relay to the instance that was picked.
  FakeSide& Relaying(const std::string& host = "app-8443s.example.test", const std::string& data = "") {
    client_.inbox = HelloFor(host) + data;
    Accept();
    GiveHello(client_.inbox);
    Complete(Op::kConnect, 0);
    EXPECT_EQ(table_->at(0).phase, Phase::kRelay);
    return instances_.back();
  }
  uint64_t Count(Counter c) const { return counters_.Get(c); }
  // A terminated name (a wildcard certificate in the snapshot), up to its handshake. OpenSSL reads
  // the client's descriptor itself: an empty pipe, whose write end is returned.
  Fd AcceptTerminated() {
    testing::TestCert cert = testing::MakeCert(dir_, "wild", -60, 86400);
    auto tls = TlsContexts::Load(options_.base_domains, {{"example.test", cert.chain, cert.key}});
    EXPECT_TRUE(tls.ok()) << tls.status();
    Routes({{"app", "i1", "10.0.0.2", true}}, *std::move(tls));
    client_.inbox = HelloFor("app-8080.example.test");
    int p[2];
    EXPECT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    EXPECT_TRUE(table_->Accept(Transport::Custom(&kFakeOps, Fd(p[0]), &client_)));
    GiveHello(client_.inbox);
    return Fd(p[1]);
  }

  std::filesystem::path dir_;
  FakeRing ring_;
  WorkerOptions options_;
  WorkerCounters counters_;
  std::atomic<int64_t> pipe_bytes_{0};
  PipePool pipes_;
  BufferPool buffers_;
  std::vector<Runnable> runq_;
  RelayEngine relay_;
  AppCounters app_counters_;
  std::unique_ptr<const RouteSnapshot> snap_;
  std::vector<sockaddr_storage> listeners_ = {V4("0.0.0.0", 443)};
  std::unique_ptr<ConnEnv> env_;
  std::unique_ptr<Connections> table_;
  int64_t now_ = 1'000'000;
  FakeSide client_;
  std::deque<FakeSide> instances_;
  const TransportOps* instance_ops_ = &kFakeOps;
};

// --- the phases -------------------------------------------------------------------

TEST_F(ConnectionTest, PassthroughPeeksTheHelloConnectsAndRelaysBothWays) {
  client_.inbox = HelloFor("app-8443s.example.test") + "ping";
  const Conn& c = Accept();
  EXPECT_EQ(c.phase, Phase::kHello);
  Submitted recv = GiveHello(client_.inbox);
  EXPECT_EQ(recv.flags, MSG_PEEK) << "the hello stays in the socket";
  EXPECT_EQ(c.phase, Phase::kConnect);
  Submitted connect = ring_.Take(Op::kConnect);
  std::string target = SockaddrText(connect.addr);
  EXPECT_TRUE(target == "10.0.0.2:8443" || target == "10.0.0.3:8443") << target;
  table_->OnCompletion(connect.tag, 0);
  ASSERT_EQ(c.phase, Phase::kRelay);
  FakeSide& instance = instances_.back();
  EXPECT_EQ(instance.outbox, HelloFor("app-8443s.example.test") + "ping") << "the raw stream, hello first";
  EXPECT_EQ(Count(Counter::routed_passthrough), 1u);
  EXPECT_EQ(Count(Counter::relay_splice), 1u);

  instance.inbox = "pong";
  Complete(Op::kRelayPoll1, POLLIN);
  EXPECT_EQ(client_.outbox, "pong");
  EXPECT_EQ(Count(Counter::bytes_backend_to_client), 4u);
}

TEST_F(ConnectionTest, HalfCloseFromTheClientLetsTheInstanceFinish) {
  FakeSide& instance = Relaying();
  client_.peer_closed = true;
  Complete(Op::kRelayPoll0, POLLIN);
  EXPECT_TRUE(instance.shut) << "the client's end is passed on";
  EXPECT_EQ(table_->at(0).phase, Phase::kRelay) << "the other direction still flows";
  instance.inbox = "late answer";
  Complete(Op::kRelayPoll1, POLLIN);
  EXPECT_EQ(client_.outbox, "late answer");
  instance.peer_closed = true;
  Complete(Op::kRelayPoll1, POLLIN);
  EXPECT_TRUE(client_.shut);
  EXPECT_EQ(table_->at(0).phase, Phase::kFree);
  EXPECT_EQ(Count(Counter::relay_done), 1u);
  EXPECT_EQ(table_->live(), 0u);
}

TEST_F(ConnectionTest, HalfCloseFromTheInstanceLetsTheClientFinish) {
  FakeSide& instance = Relaying();
  instance.peer_closed = true;
  Complete(Op::kRelayPoll1, POLLIN);
  EXPECT_TRUE(client_.shut);
  client_.inbox = "more";
  Complete(Op::kRelayPoll0, POLLIN);
  EXPECT_EQ(instance.outbox.substr(instance.outbox.size() - 4), "more");
  client_.peer_closed = true;
  Complete(Op::kRelayPoll0, POLLIN);
  EXPECT_EQ(table_->at(0).phase, Phase::kFree);
  EXPECT_EQ(Count(Counter::relay_done), 1u);
}

TEST_F(ConnectionTest, EachRefusalClosesWithItsCounterAndFreesTheSlot) {
  struct Case {
    std::string wire;
    Counter counter;
  };
  std::vector<Case> cases = {
      {HelloFor("nope-8443s.example.test"), Counter::closed_unknown_app},
      {HelloFor("down-8443s.example.test"), Counter::closed_no_healthy_instance},
      {HelloFor("app-8443s.other.test"), Counter::closed_unknown_domain},
      {HelloFor("app-8443.example.test"), Counter::closed_no_certificate},
      {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Counter::closed_not_tls},
  };
  for (const Case& k : cases) {
    Accept();
    GiveHello(k.wire);
    EXPECT_EQ(Count(k.counter), 1u) << kCounterInfo[static_cast<size_t>(k.counter)].name;
    EXPECT_EQ(table_->at(0).phase, Phase::kFree);
    EXPECT_FALSE(ring_.Has(Op::kConnect));
  }
  EXPECT_EQ(table_->live(), 0u);
}

TEST_F(ConnectionTest, AHelloInPiecesWaitsThenIsReadAndReplayedFirst) {
  const std::string hello = HelloFor("app-8443s.example.test");
  const Conn& c = Accept();
  // Four peeks that each see a little more of the hello; each wait polls for the rest.
  for (size_t have = 5; have <= 20; have += 5) {
    Submitted peek = GiveHello(hello, have);
    EXPECT_EQ(peek.flags, MSG_PEEK);
    ASSERT_EQ(c.phase, Phase::kHello);
    Submitted poll = ring_.Take(Op::kHelloPoll);
    EXPECT_EQ(poll.events, POLLIN | POLLRDHUP);
    table_->OnCompletion(poll.tag, POLLIN);
  }
  EXPECT_EQ(Count(Counter::hello_read_not_peeked), 1u);
  // Read now, from the first byte: the socket gives all of it and the bytes leave the socket.
  Submitted read = GiveHello(hello);
  EXPECT_EQ(read.flags, 0);
  ASSERT_EQ(c.phase, Phase::kConnect);
  client_.inbox = "after";  // what the client sent after its hello
  Complete(Op::kConnect, 0);
  EXPECT_EQ(instances_.back().outbox, hello + "after") << "the read hello goes first";
}

TEST_F(ConnectionTest, AClientThatClosesDuringItsHelloIsCounted) {
  Accept();
  GiveHello(HelloFor("app-8443s.example.test"), 5);
  Submitted poll = ring_.Take(Op::kHelloPoll);
  table_->OnCompletion(poll.tag, POLLIN | POLLRDHUP);
  GiveHello(HelloFor("app-8443s.example.test"), 9);
  EXPECT_EQ(Count(Counter::closed_hello_peer_closed), 1u);
  EXPECT_EQ(table_->at(0).phase, Phase::kFree);
}

TEST_F(ConnectionTest, AFailedConnectTriesAnotherInstanceThenGivesUp) {
  client_.inbox = HelloFor("app-8443s.example.test");
  const Conn& c = Accept();
  GiveHello(client_.inbox);
  Submitted first = ring_.Take(Op::kConnect);
  table_->OnCompletion(first.tag, -ECONNREFUSED);
  EXPECT_EQ(c.phase, Phase::kConnect);
  Submitted second = ring_.Take(Op::kConnect);
  EXPECT_NE(SockaddrText(first.addr), SockaddrText(second.addr)) << "an instance already tried is not tried again";
  table_->OnCompletion(second.tag, -ECONNREFUSED);
  EXPECT_EQ(Count(Counter::connect_failed), 2u);
  EXPECT_EQ(Count(Counter::closed_connect_failed), 1u) << "--connect-tries 2";
  EXPECT_EQ(c.phase, Phase::kFree);
}

TEST_F(ConnectionTest, AConnectThatTimesOutIsCancelledAndRetried) {
  client_.inbox = HelloFor("app-8443s.example.test");
  const Conn& c = Accept();
  GiveHello(client_.inbox);
  Advance(options_.connect_timeout_ms);
  ASSERT_EQ(ring_.cancels.size(), 1u);
  CompleteCancelled();
  EXPECT_EQ(Count(Counter::connect_timeout), 1u);
  EXPECT_EQ(c.phase, Phase::kConnect);
  Complete(Op::kConnect, 0);
  EXPECT_EQ(c.phase, Phase::kRelay);
}

TEST_F(ConnectionTest, TheAppLimitRefusesTheConnectionOverIt) {
  client_.inbox = HelloFor("solo-80s.example.test");
  EXPECT_TRUE(table_->Accept(Transport::Custom(&kFakeOps, Fd(eventfd(0, EFD_NONBLOCK)), &client_)));
  GiveHello(client_.inbox);
  FakeSide second;
  second.inbox = client_.inbox;
  EXPECT_TRUE(table_->Accept(Transport::Custom(&kFakeOps, Fd(eventfd(0, EFD_NONBLOCK)), &second)));
  GiveHello(second.inbox);
  EXPECT_EQ(Count(Counter::closed_app_limit), 1u);
  EXPECT_EQ(app_counters_.live("solo"), 1);
  Complete(Op::kConnect, 0);
  table_->CloseAll(Counter::closed_drain_timeout);
  CompleteCancelled();
  EXPECT_EQ(app_counters_.live("solo"), 0) << "the slot goes back when the connection ends";
}

TEST_F(ConnectionTest, TimeoutsByPhase) {
  Accept();
  Advance(options_.hello_timeout_ms);
  EXPECT_EQ(Count(Counter::closed_hello_timeout), 1u);
  EXPECT_EQ(table_->at(0).phase, Phase::kClosing) << "its recv is still in flight";
  CompleteCancelled();
  EXPECT_EQ(table_->at(0).phase, Phase::kFree);

  Relaying();
  Advance(options_.idle_timeout_ms - 1);
  EXPECT_EQ(Count(Counter::closed_idle_timeout), 0u);
  Advance(1);
  EXPECT_EQ(Count(Counter::closed_idle_timeout), 1u);
  CompleteCancelled();
  EXPECT_EQ(table_->live(), 0u);
}

TEST_F(ConnectionTest, TrafficKeepsARelayFromItsIdleTimeout) {
  FakeSide& instance = Relaying();
  Advance(options_.idle_timeout_ms - 10);
  instance.inbox = "x";
  Complete(Op::kRelayPoll1, POLLIN);
  Advance(20);
  EXPECT_EQ(Count(Counter::closed_idle_timeout), 0u);
  EXPECT_EQ(table_->at(0).phase, Phase::kRelay);
  Advance(options_.idle_timeout_ms);
  EXPECT_EQ(Count(Counter::closed_idle_timeout), 1u);
}

TEST_F(ConnectionTest, AWriterThatWouldBlockWaitsForItsReader) {
  FakeSide& instance = Relaying();
  client_.write_blocked = true;
  instance.inbox = "held";
  Complete(Op::kRelayPoll1, POLLIN);
  Submitted wait = ring_.Take(Op::kRelayPoll1);
  EXPECT_EQ(wait.events, POLLOUT);
  EXPECT_EQ(wait.fd, table_->at(0).client.fd());
  EXPECT_GT(pipe_bytes_.load(), 0) << "the bytes wait in the pipe";
  client_.write_blocked = false;
  table_->OnCompletion(wait.tag, POLLOUT);
  EXPECT_EQ(client_.outbox, "held");
  EXPECT_EQ(pipe_bytes_.load(), 0);
}

TEST_F(ConnectionTest, ASideThatCannotSpliceIsCopied) {
  instance_ops_ = &kFakeCopyOps;
  FakeSide& instance = Relaying("app-8443s.example.test", "up");
  EXPECT_EQ(Count(Counter::relay_copy), 1u);
  EXPECT_EQ(instance.outbox, HelloFor("app-8443s.example.test") + "up");
  instance.inbox = "down";
  Complete(Op::kRelayPoll1, POLLIN);
  EXPECT_EQ(client_.outbox, "down");
}

TEST_F(ConnectionTest, ACopiedDirectionSplicesOnceBothItsSidesCan) {
  instance_ops_ = &kFakeCopyThenSpliceOps;
  FakeSide& instance = Relaying("app-8443s.example.test", "up");
  EXPECT_EQ(Count(Counter::relay_copy), 1u);
  // The instance's read that makes it able to splice is copied out; the next ones splice.
  instance.inbox = "down";
  Complete(Op::kRelayPoll1, POLLIN);
  EXPECT_EQ(client_.outbox, "down");
  EXPECT_EQ(Count(Counter::relay_spliced_after_ktls), 1u);
  // The other direction was waiting in copy mode: it moves to splice on its next turn.
  client_.inbox = "more";
  Complete(Op::kRelayPoll0, POLLIN);
  EXPECT_EQ(instance.outbox, HelloFor("app-8443s.example.test") + "upmore");
  EXPECT_EQ(Count(Counter::relay_spliced_after_ktls), 2u);
  instance.inbox = "again";
  Complete(Op::kRelayPoll1, POLLIN);
  EXPECT_EQ(client_.outbox, "downagain");
  EXPECT_EQ(Count(Counter::splice_fallback_copy), 0u);
}

TEST_F(ConnectionTest, RingSpliceModeMovesBytesWithRingOperations) {
  MakeTable(SpliceMode::kUring);
  client_.inbox = HelloFor("app-8443s.example.test");
  Accept();
  GiveHello(client_.inbox);
  Complete(Op::kConnect, 0);
  FakeSide& instance = instances_.back();
  // The client's hello: a splice into the pipe, then one out of it, each run by the "kernel" here.
  Submitted in = ring_.Take(Op::kSpliceIn0);
  ssize_t n = write(in.out, client_.inbox.data(), client_.inbox.size());
  client_.inbox.clear();
  table_->OnCompletion(in.tag, static_cast<int>(n));
  Submitted out = ring_.Take(Op::kSpliceOut0);
  std::string moved(out.len, '\0');
  ASSERT_EQ(read(out.in, moved.data(), out.len), static_cast<ssize_t>(out.len));
  table_->OnCompletion(out.tag, static_cast<int>(out.len));
  EXPECT_EQ(moved, HelloFor("app-8443s.example.test"));
  EXPECT_EQ(Count(Counter::bytes_client_to_backend), moved.size());
  // The instance ends its stream: the splice returns 0 and the client's side is shut.
  table_->OnCompletion(ring_.Take(Op::kSpliceIn1).tag, 0);
  EXPECT_TRUE(client_.shut);
  (void)instance;
}

TEST_F(ConnectionTest, TheDrainCutClosesEveryConnectionOnceItsOperationsEnd) {
  Relaying();
  FakeSide other;
  other.inbox = HelloFor("app-8443s.example.test");
  ASSERT_TRUE(table_->Accept(Transport::Custom(&kFakeOps, Fd(eventfd(0, EFD_NONBLOCK)), &other)));
  EXPECT_EQ(table_->live(), 2u);
  env_->draining = true;
  table_->CloseAll(Counter::closed_drain_timeout);
  EXPECT_EQ(Count(Counter::closed_drain_timeout), 2u);
  EXPECT_EQ(table_->live(), 2u) << "slots wait for their cancelled operations";
  CompleteCancelled();
  EXPECT_EQ(table_->live(), 0u);
  EXPECT_TRUE(ring_.ops.empty());
}

TEST_F(ConnectionTest, AConnectFailureDuringTheDrainIsNotRetried) {
  client_.inbox = HelloFor("app-8443s.example.test");
  Accept();
  GiveHello(client_.inbox);
  env_->draining = true;
  Complete(Op::kConnect, -ECONNREFUSED);
  EXPECT_EQ(Count(Counter::closed_connect_failed), 1u);
  EXPECT_FALSE(ring_.Has(Op::kConnect));
}

TEST_F(ConnectionTest, ALateCompletionForAFreedSlotIsIgnored) {
  Accept();
  Submitted recv = ring_.Take(Op::kHelloRecv);
  table_->OnCompletion(recv.tag, 0);  // the client closed at once
  EXPECT_EQ(table_->at(0).phase, Phase::kFree);
  const uint64_t closed = Count(Counter::closed_hello_peer_closed);
  table_->OnCompletion(recv.tag, 5);  // the same operation again: stale generation
  EXPECT_EQ(Count(Counter::closed_hello_peer_closed), closed);
  EXPECT_EQ(table_->at(0).phase, Phase::kFree);
}

TEST_F(ConnectionTest, EveryTakenSlotIsCountedAndAFullTableRefuses) {
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(table_->Accept(Transport::Custom(&kFakeOps, Fd(eventfd(0, EFD_NONBLOCK)), &client_)));
  }
  EXPECT_FALSE(table_->Accept(Transport::Custom(&kFakeOps, Fd(eventfd(0, EFD_NONBLOCK)), &client_)));
  EXPECT_EQ(Count(Counter::closed_overload), 1u);
  EXPECT_EQ(table_->live(), 4u);
}

// Terminated names go through the handshake phase: its deadline and its failure.
TEST_F(ConnectionTest, ATerminatedNameWaitsInTheHandshakeUntilItsDeadline) {
  Fd writer = AcceptTerminated();
  const Conn& c = table_->at(0);
  ASSERT_EQ(c.phase, Phase::kHandshake) << Count(Counter::closed_tls_handshake_failed);
  EXPECT_EQ(c.mode, Mode::kTerminate);
  Submitted wait = ring_.Take(Op::kTlsPoll);
  EXPECT_EQ(wait.events, POLLIN);
  ring_.ops.push_back(wait);
  Advance(options_.handshake_timeout_ms);
  EXPECT_EQ(Count(Counter::closed_tls_handshake_timeout), 1u);
  CompleteCancelled();
  EXPECT_EQ(c.phase, Phase::kFree);
  EXPECT_FALSE(ring_.Has(Op::kConnect));
}

TEST_F(ConnectionTest, AClientThatSpeaksNoTlsAfterItsHelloFailsTheHandshake) {
  Fd writer = AcceptTerminated();
  ASSERT_EQ(table_->at(0).phase, Phase::kHandshake);
  ASSERT_EQ(write(writer.get(), "GET / HTTP/1.1\r\n\r\n", 18), 18);
  Complete(Op::kTlsPoll, POLLIN);
  EXPECT_EQ(Count(Counter::closed_tls_handshake_failed), 1u);
  EXPECT_EQ(table_->at(0).phase, Phase::kFree);
  EXPECT_EQ(app_counters_.live("app"), 0);
}

}  // namespace
}  // namespace cvmgate
