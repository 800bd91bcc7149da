// TLS load client and backend for the terminate-mode benchmark (cvmgate, HAProxy and nginx terminating TLS).
//
//   tlsload client --connect ADDR:PORT --sni NAME [--up N] [--down N] [--count N] [--conns C]
//   tlsload serve  --listen ADDR:PORT [--tls CERT,KEY]
//
// The wire protocol between the two: the client sends a 16-byte header, the
// upload and download sizes as two big-endian u64, then `up` bytes; the server
// reads the upload and at the same time writes `down` bytes, then closes (with
// a close_notify when it speaks TLS itself). Both payloads follow a
// pseudo-random pattern indexed by stream offset, checked by the receiver, so a
// relay that drops, reorders or duplicates bytes is caught.
//
// The client speaks TLS (OpenSSL, non-blocking, one epoll thread); the server
// speaks plain TCP behind a terminating proxy, or TLS with --tls (the direct
// baseline: no proxy at all). The client runs --count connections, --conns at a
// time; each does a full handshake (with --resume on, resumes the first session
// it got, so all but the first --conns resume), the exchange, and waits
// for the server's close. It prints one JSON line: connections, payload bytes,
// wall seconds, GB/s, connections/s, latency percentiles, CPU seconds, the TLS
// version and suite negotiated. Exit status: 0 ok, 1 errors, 2 timeout, 3 usage.
//
// Build: g++ -std=c++20 -O2 -Wall -Wextra -Werror bench/tlsload.cc -o bench/.build/tlsload -lssl -lcrypto

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kPatternPeriod = 65521;
constexpr size_t kChunk = 256 * 1024;
constexpr int kMaxEvents = 256;
constexpr uint64_t kListenTag = ~0ull;
constexpr uint64_t kSignalTag = ~0ull - 1;

using Clock = std::chrono::steady_clock;

uint8_t PatternByte(size_t i) {
  uint32_t x = static_cast<uint32_t>(i) * 2654435761u;
  return static_cast<uint8_t>((x >> 24) ^ (x >> 11));
}

// The pattern, long enough that any window of kChunk bytes starts inside it.
const std::vector<uint8_t>& Pattern() {
  static const std::vector<uint8_t> p = [] {
    std::vector<uint8_t> v(kChunk + kPatternPeriod);
    for (size_t i = 0; i < v.size(); ++i) v[i] = PatternByte(i % kPatternPeriod);
    return v;
  }();
  return p;
}

const uint8_t* PatternAt(uint64_t offset) { return Pattern().data() + offset % kPatternPeriod; }

double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

[[noreturn]] void Usage(const std::string& msg) {
  std::fprintf(stderr, "tlsload: %s\n", msg.c_str());
  std::fprintf(stderr,
               "usage: tlsload client --connect ADDR:PORT --sni NAME [--up N] [--down N] [--count N]\n"
               "                      [--conns C] [--tls-version 1.2|1.3] [--ciphersuites S] [--ciphers S] [--resume on]\n"
               "                      [--timeout S]\n"
               "       tlsload serve --listen ADDR:PORT [--tls CERT,KEY]\n"
               "sizes accept K, M, G suffixes (powers of 1024)\n");
  std::exit(3);
}

uint64_t ParseSize(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno != 0 || end == s.c_str()) Usage("bad size: " + s);
  std::string suf(end);
  uint64_t mul = 1;
  if (suf == "K" || suf == "KiB") mul = 1ull << 10;
  else if (suf == "M" || suf == "MiB") mul = 1ull << 20;
  else if (suf == "G" || suf == "GiB") mul = 1ull << 30;
  else if (!suf.empty() && suf != "B") Usage("bad size suffix: " + s);
  return static_cast<uint64_t>(v) * mul;
}

sockaddr_in ParseAddr(const std::string& s) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  size_t colon = s.rfind(':');
  if (colon == std::string::npos) Usage("address must be IPv4:PORT: " + s);
  if (inet_pton(AF_INET, s.substr(0, colon).c_str(), &a.sin_addr) != 1) Usage("bad IPv4 address: " + s);
  int port = std::atoi(s.c_str() + colon + 1);
  if (port <= 0 || port > 65535) Usage("bad port: " + s);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

std::string SslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) return std::strerror(errno);
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}
uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

// One side of the exchange, over TLS (ssl != null) or a plain socket.
struct Stream {
  int fd = -1;
  SSL* ssl = nullptr;
  bool handshaken = false;
  // The last read or the last write (tracked apart, so a read that would block
  // does not hide a write that waits for room) needs the socket writable.
  bool read_wants_write = false;
  bool write_wants_write = false;
  bool want_write() const { return read_wants_write || write_wants_write; }
  bool peer_closed = false;
  std::string error;

  ~Stream() {
    if (ssl) SSL_free(ssl);
    if (fd >= 0) close(fd);
  }
  // >0 bytes, 0 would block, -1 peer closed, -2 error (in `error`).
  ssize_t Read(uint8_t* buf, size_t n) {
    if (!ssl) {
      ssize_t r = recv(fd, buf, n, 0);
      if (r > 0) return r;
      if (r == 0) return -1;
      if (errno == EAGAIN || errno == EINTR) return 0;
      error = std::string("recv: ") + std::strerror(errno);
      return -2;
    }
    int r = SSL_read(ssl, buf, static_cast<int>(std::min<size_t>(n, 1 << 30)));
    if (r > 0) {
      read_wants_write = false;
      return r;
    }
    return Failed(r, read_wants_write);
  }
  ssize_t Write(const uint8_t* buf, size_t n) {
    if (!ssl) {
      ssize_t r = send(fd, buf, n, MSG_NOSIGNAL);
      if (r >= 0) {
        write_wants_write = static_cast<size_t>(r) < n;
        return r;
      }
      if (errno == EAGAIN || errno == EINTR) {
        write_wants_write = true;
        return 0;
      }
      error = std::string("send: ") + std::strerror(errno);
      return -2;
    }
    int r = SSL_write(ssl, buf, static_cast<int>(std::min<size_t>(n, 1 << 30)));
    if (r > 0) {
      write_wants_write = false;
      return r;
    }
    return Failed(r, write_wants_write);
  }
  // true when done, false when it must wait; sets `error` on failure.
  bool Handshake(bool server) {
    if (handshaken || !ssl) return handshaken = true;
    int r = server ? SSL_accept(ssl) : SSL_connect(ssl);
    if (r == 1) return handshaken = true;
    if (Failed(r, read_wants_write) == -2 && error.empty()) error = "handshake failed";
    return false;
  }

 private:
  ssize_t Failed(int r, bool& wants_write) {
    switch (SSL_get_error(ssl, r)) {
      case SSL_ERROR_WANT_READ: wants_write = false; return 0;
      case SSL_ERROR_WANT_WRITE: wants_write = true; return 0;
      case SSL_ERROR_ZERO_RETURN: return -1;  // close_notify, or a bare EOF (SSL_OP_IGNORE_UNEXPECTED_EOF)
      default: error = "TLS: " + SslError(); return -2;
    }
  }
};

uint32_t Interest(const Stream& s) { return EPOLLIN | (s.want_write() ? EPOLLOUT : 0u); }

// ---------------------------------------------------------------------------
// Client.

struct ClientOptions {
  sockaddr_in addr{};
  std::string sni;
  uint64_t up = 0, down = 0;
  uint64_t count = 1;
  uint64_t conns = 1;
  std::string tls_version = "1.3";
  std::string ciphersuites = "TLS_AES_128_GCM_SHA256";
  std::string ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
  double timeout = 120;
  bool resume = false;
};

struct ClientConn {
  Stream s;
  Clock::time_point started;
  uint8_t header[16];
  uint64_t sent = 0;  // header included
  uint64_t received = 0;
};

class Client {
 public:
  explicit Client(ClientOptions o) : o_(std::move(o)) {}

  int Run() {
    ctx_ = SSL_CTX_new(TLS_client_method());
    int version = o_.tls_version == "1.2" ? TLS1_2_VERSION : TLS1_3_VERSION;
    SSL_CTX_set_min_proto_version(ctx_, version);
    SSL_CTX_set_max_proto_version(ctx_, version);
    if (SSL_CTX_set_ciphersuites(ctx_, o_.ciphersuites.c_str()) != 1 ||
        SSL_CTX_set_cipher_list(ctx_, o_.ciphers.c_str()) != 1) {
      Usage("bad --ciphersuites or --ciphers");
    }
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ctx_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
    SSL_CTX_set_options(ctx_, SSL_OP_IGNORE_UNEXPECTED_EOF);
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    rbuf_.resize(kChunk);
    double cpu0 = CpuSeconds();
    t0_ = Clock::now();
    while (started_ < o_.count && live_.size() < o_.conns) Start();
    std::vector<epoll_event> evs(kMaxEvents);
    while (!live_.empty()) {
      double elapsed = std::chrono::duration<double>(Clock::now() - t0_).count();
      if (elapsed > o_.timeout) {
        Error("timeout with " + std::to_string(live_.size()) + " connections open");
        timed_out_ = true;
        break;
      }
      int n = epoll_wait(ep_, evs.data(), kMaxEvents, 200);
      for (int i = 0; i < n; ++i) {
        int fd = static_cast<int>(evs[static_cast<size_t>(i)].data.u64);
        auto it = live_.find(fd);
        if (it != live_.end()) Drive(fd, *it->second);
      }
    }
    double wall = std::chrono::duration<double>(Clock::now() - t0_).count();
    double cpu = CpuSeconds() - cpu0;
    Report(wall, cpu);
    if (timed_out_) return 2;
    return errors_ == 0 ? 0 : 1;
  }

 private:
  void Error(const std::string& what) {
    ++errors_;
    if (first_error_.empty()) first_error_ = what;
  }

  void Start() {
    ++started_;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      Error(std::string("socket: ") + std::strerror(errno));
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<ClientConn>();
    c->s.fd = fd;
    c->started = Clock::now();
    PutU64(c->header, o_.up);
    PutU64(c->header + 8, o_.down);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&o_.addr), sizeof o_.addr) < 0 && errno != EINPROGRESS) {
      Error(std::string("connect: ") + std::strerror(errno));
      return;  // c's destructor closes fd
    }
    c->s.ssl = SSL_new(ctx_);
    SSL_set_fd(c->s.ssl, fd);
    SSL_set_tlsext_host_name(c->s.ssl, o_.sni.c_str());
    if (session_ != nullptr) {
      // Each connection its own copy: one freed without a shutdown marks its session not resumable.
      SSL_SESSION* copy = SSL_SESSION_dup(session_);
      SSL_set_session(c->s.ssl, copy);
      SSL_SESSION_free(copy);
    }
    c->s.read_wants_write = true;  // wait for the connect to finish
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.u64 = static_cast<uint64_t>(fd);
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
    live_[fd] = std::move(c);
  }

  void Finish(int fd, bool ok) {
    auto it = live_.find(fd);
    ClientConn& c = *it->second;
    if (ok) {
      ++done_;
      latencies_.push_back(std::chrono::duration<double>(Clock::now() - c.started).count());
      if (version_.empty()) {
        version_ = SSL_get_version(c.s.ssl);
        suite_ = SSL_CIPHER_get_name(SSL_get_current_cipher(c.s.ssl));
      }
      if (SSL_session_reused(c.s.ssl)) ++resumed_;
      if (o_.resume && session_ == nullptr) {
        // A copy, for the same reason. TLS 1.3: the ticket came before the server's close.
        SSL_SESSION* got = SSL_get0_session(c.s.ssl);
        if (got != nullptr && SSL_SESSION_is_resumable(got)) session_ = SSL_SESSION_dup(got);
      }
    }
    epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
    live_.erase(it);
    if (started_ < o_.count && !timed_out_) Start();
  }

  void Drive(int fd, ClientConn& c) {
    if (!c.s.handshaken) {
      if (!c.s.Handshake(false)) {
        if (!c.s.error.empty()) {
          Error(c.s.error);
          return Finish(fd, false);
        }
        return Rearm(fd, c);
      }
      ++handshakes_;
    }
    uint64_t total_out = 16 + o_.up;
    while (c.sent < total_out) {
      const uint8_t* p = c.sent < 16 ? c.header + c.sent : PatternAt(c.sent - 16);
      size_t n = c.sent < 16 ? 16 - c.sent : std::min<uint64_t>(kChunk, total_out - c.sent);
      ssize_t w = c.s.Write(p, n);
      if (w == 0) break;
      if (w < 0) {
        Error(c.s.error.empty() ? "peer closed during the upload" : c.s.error);
        return Finish(fd, false);
      }
      c.sent += static_cast<uint64_t>(w);
      payload_ += c.sent > 16 ? std::min<uint64_t>(static_cast<uint64_t>(w), c.sent - 16) : 0;
    }
    for (int reads = 0; reads < 16; ++reads) {
      ssize_t r = c.s.Read(rbuf_.data(), rbuf_.size());
      if (r == 0) break;
      if (r == -2) {
        Error(c.s.error);
        return Finish(fd, false);
      }
      if (r == -1) {
        if (c.received != o_.down || c.sent != total_out) {
          Error("server closed after " + std::to_string(c.received) + " of " + std::to_string(o_.down) +
                " download bytes and " + std::to_string(c.sent) + " of " + std::to_string(total_out) + " sent");
          return Finish(fd, false);
        }
        return Finish(fd, true);
      }
      size_t got = static_cast<size_t>(r);
      if (c.received + got > o_.down) {
        Error("more download bytes than asked for");
        return Finish(fd, false);
      }
      if (std::memcmp(rbuf_.data(), PatternAt(c.received), got) != 0) {
        Error("download payload differs from the pattern near offset " + std::to_string(c.received));
        return Finish(fd, false);
      }
      c.received += got;
      payload_ += got;
    }
    Rearm(fd, c);
  }

  void Rearm(int fd, ClientConn& c) {
    epoll_event ev{};
    ev.events = Interest(c.s);
    ev.data.u64 = static_cast<uint64_t>(fd);
    epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &ev);
  }

  void Report(double wall, double cpu) {
    std::sort(latencies_.begin(), latencies_.end());
    auto pct = [&](double p) {
      if (latencies_.empty()) return 0.0;
      size_t i = std::min(latencies_.size() - 1, static_cast<size_t>(p * static_cast<double>(latencies_.size())));
      return latencies_[i] * 1e3;
    };
    std::string err = first_error_;
    for (char& ch : err) {
      if (ch == '"' || ch == '\\' || static_cast<unsigned char>(ch) < 0x20) ch = ' ';
    }
    std::printf(
        "{\"connections\":%" PRIu64 ",\"handshakes\":%" PRIu64 ",\"payload_bytes\":%" PRIu64
        ",\"wall_s\":%.6f,\"gbps\":%.4f,\"conns_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f"
        ",\"cpu_s\":%.3f,\"version\":\"%s\",\"suite\":\"%s\",\"resumed\":%" PRIu64 ",\"errors\":%" PRIu64
        ",\"first_error\":\"%s\"}\n",
        done_, handshakes_, payload_, wall, static_cast<double>(payload_) / 1e9 / wall,
        static_cast<double>(done_) / wall, pct(0.5), pct(0.99), latencies_.empty() ? 0.0 : latencies_.back() * 1e3,
        cpu, version_.c_str(), suite_.c_str(), resumed_, errors_, err.c_str());
  }

  ClientOptions o_;
  SSL_CTX* ctx_ = nullptr;
  int ep_ = -1;
  std::vector<uint8_t> rbuf_;
  std::unordered_map<int, std::unique_ptr<ClientConn>> live_;
  Clock::time_point t0_;
  uint64_t started_ = 0, done_ = 0, handshakes_ = 0, payload_ = 0, errors_ = 0, resumed_ = 0;
  bool timed_out_ = false;
  SSL_SESSION* session_ = nullptr;  // --resume: the session every later connection resumes
  std::string first_error_, version_, suite_;
  std::vector<double> latencies_;
};

// ---------------------------------------------------------------------------
// Server.

struct ServerConn {
  Stream s;
  uint8_t header[16];
  uint64_t header_got = 0;
  uint64_t up = 0, down = 0;
  uint64_t received = 0, sent = 0;
};

class Server {
 public:
  Server(sockaddr_in addr, SSL_CTX* ctx) : addr_(addr), ctx_(ctx) {}

  int Run() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    lfd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd_, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_) < 0 || listen(lfd_, 4096) < 0) {
      std::fprintf(stderr, "tlsload serve: bind/listen: %s\n", std::strerror(errno));
      return 3;
    }
    sigset_t mask;
    sigemptyset(&mask);
    for (int sig : {SIGTERM, SIGINT, SIGUSR1}) sigaddset(&mask, sig);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    Add(lfd_, kListenTag, EPOLLIN);
    Add(sfd, kSignalTag, EPOLLIN);
    rbuf_.resize(kChunk);
    std::printf("ready\n");
    std::fflush(stdout);
    std::vector<epoll_event> evs(kMaxEvents);
    bool stop = false;
    while (!stop) {
      int n = epoll_wait(ep_, evs.data(), kMaxEvents, 1000);
      for (int i = 0; i < n; ++i) {
        uint64_t tag = evs[static_cast<size_t>(i)].data.u64;
        if (tag == kListenTag) {
          Accept();
        } else if (tag == kSignalTag) {
          signalfd_siginfo si{};
          while (read(sfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
            if (si.ssi_signo == SIGUSR1) {
              std::printf("%s\n", Stats().c_str());
              std::fflush(stdout);
            } else {
              stop = true;
            }
          }
        } else {
          auto it = conns_.find(static_cast<int>(tag));
          if (it != conns_.end()) Drive(it->first, *it->second);
        }
      }
    }
    std::fprintf(stderr, "tlsload serve: %s\n", Stats().c_str());
    return 0;
  }

 private:
  void Add(int fd, uint64_t tag, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
  }

  void Accept() {
    for (int k = 0; k < 256; ++k) {
      int fd = accept4(lfd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto c = std::make_unique<ServerConn>();
      c->s.fd = fd;
      if (ctx_) {
        c->s.ssl = SSL_new(ctx_);
        SSL_set_fd(c->s.ssl, fd);
      }
      ++accepted_;
      Add(fd, static_cast<uint64_t>(fd), EPOLLIN);
      conns_[fd] = std::move(c);
    }
  }

  void Error(const std::string& what) {
    ++errors_;
    if (first_error_.empty()) first_error_ = what;
  }

  void Close(int fd, ServerConn& c, bool ok) {
    if (ok && c.s.ssl) SSL_shutdown(c.s.ssl);  // close_notify; the client's is not awaited
    if (ok) ++done_;
    epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
    conns_.erase(fd);
  }

  void Drive(int fd, ServerConn& c) {
    if (!c.s.Handshake(true)) {
      if (!c.s.error.empty()) {
        Error(c.s.error);
        return Close(fd, c, false);
      }
      return Rearm(fd, c);
    }
    for (int reads = 0; reads < 16; ++reads) {
      bool in_header = c.header_got < 16;
      if (!in_header && c.received == c.up) break;
      size_t want = in_header ? 16 - c.header_got : std::min<uint64_t>(rbuf_.size(), c.up - c.received);
      ssize_t r = c.s.Read(in_header ? c.header + c.header_got : rbuf_.data(), want);
      if (r == 0) break;
      if (r < 0) {
        Error(r == -1 ? "client closed before its upload ended" : c.s.error);
        return Close(fd, c, false);
      }
      size_t got = static_cast<size_t>(r);
      if (in_header) {
        c.header_got += got;
        if (c.header_got == 16) {
          c.up = GetU64(c.header);
          c.down = GetU64(c.header + 8);
        }
        continue;
      }
      if (std::memcmp(rbuf_.data(), PatternAt(c.received), got) != 0) {
        Error("upload payload differs from the pattern near offset " + std::to_string(c.received));
        return Close(fd, c, false);
      }
      c.received += got;
      bytes_ += got;
    }
    if (c.header_got == 16) {
      while (c.sent < c.down) {
        ssize_t w = c.s.Write(PatternAt(c.sent), std::min<uint64_t>(kChunk, c.down - c.sent));
        if (w == 0) break;
        if (w < 0) {
          Error(c.s.error);
          return Close(fd, c, false);
        }
        c.sent += static_cast<uint64_t>(w);
        bytes_ += static_cast<uint64_t>(w);
      }
      if (c.sent == c.down && c.received == c.up) return Close(fd, c, true);
    }
    Rearm(fd, c);
  }

  void Rearm(int fd, ServerConn& c) {
    epoll_event ev{};
    ev.events = Interest(c.s);
    ev.data.u64 = static_cast<uint64_t>(fd);
    epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &ev);
  }

  std::string Stats() {
    for (char& ch : first_error_) {
      if (ch == '"' || ch == '\\' || static_cast<unsigned char>(ch) < 0x20) ch = ' ';
    }
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "{\"accepted\":%" PRIu64 ",\"done\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"errors\":%" PRIu64
                  ",\"cpu_s\":%.3f,\"first_error\":\"%s\"}",
                  accepted_, done_, bytes_, errors_, CpuSeconds(), first_error_.c_str());
    return buf;
  }

  sockaddr_in addr_;
  SSL_CTX* ctx_;
  int ep_ = -1, lfd_ = -1;
  std::vector<uint8_t> rbuf_;
  std::map<int, std::unique_ptr<ServerConn>> conns_;
  uint64_t accepted_ = 0, done_ = 0, bytes_ = 0, errors_ = 0;
  std::string first_error_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Usage("give a mode: client or serve");
  signal(SIGPIPE, SIG_IGN);
  std::string mode = argv[1];
  std::map<std::string, std::string> opts;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || i + 1 >= argc) Usage("expected --flag VALUE at '" + a + "'");
    opts[a.substr(2)] = argv[++i];
  }
  auto take = [&](const char* name, const std::string& fallback) {
    auto it = opts.find(name);
    if (it == opts.end()) return fallback;
    std::string v = it->second;
    opts.erase(it);
    return v;
  };
  if (mode == "client") {
    ClientOptions o;
    std::string connect = take("connect", "");
    o.sni = take("sni", "");
    if (connect.empty() || o.sni.empty()) Usage("client needs --connect and --sni");
    o.addr = ParseAddr(connect);
    o.up = ParseSize(take("up", "0"));
    o.down = ParseSize(take("down", "0"));
    o.count = ParseSize(take("count", "1"));
    o.conns = ParseSize(take("conns", "1"));
    o.tls_version = take("tls-version", o.tls_version);
    o.ciphersuites = take("ciphersuites", o.ciphersuites);
    o.ciphers = take("ciphers", o.ciphers);
    o.timeout = std::atof(take("timeout", "120").c_str());
    std::string resume = take("resume", "off");
    if (resume != "on" && resume != "off") Usage("--resume must be on or off");
    o.resume = resume == "on";
    if (!opts.empty()) Usage("unknown flag --" + opts.begin()->first);
    if (o.tls_version != "1.2" && o.tls_version != "1.3") Usage("--tls-version must be 1.2 or 1.3");
    if (o.count == 0 || o.conns == 0) Usage("--count and --conns must be at least 1");
    return Client(o).Run();
  }
  if (mode == "serve") {
    std::string listen = take("listen", "");
    std::string tls = take("tls", "");
    if (listen.empty()) Usage("serve needs --listen");
    if (!opts.empty()) Usage("unknown flag --" + opts.begin()->first);
    SSL_CTX* ctx = nullptr;
    if (!tls.empty()) {
      size_t comma = tls.find(',');
      if (comma == std::string::npos) Usage("--tls takes CERT,KEY");
      ctx = SSL_CTX_new(TLS_server_method());
      SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
      SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
      SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
      if (SSL_CTX_use_certificate_chain_file(ctx, tls.substr(0, comma).c_str()) != 1 ||
          SSL_CTX_use_PrivateKey_file(ctx, tls.substr(comma + 1).c_str(), SSL_FILETYPE_PEM) != 1) {
        Usage("cannot load --tls " + tls + ": " + SslError());
      }
    }
    return Server(ParseAddr(listen), ctx).Run();
  }
  Usage("unknown mode '" + mode + "'");
}
