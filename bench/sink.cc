// Backend server for cvmgate benchmarks: accepts TCP connections and discards bulk data (sink) or answers requests (rr).
//
// Modes:
//   sink  read and discard everything until EOF, then close.
//   rr    skip the TLS ClientHello (by its record and handshake lengths), read a
//         --req-bytes request, write a --resp-bytes response, close; with --exchanges K,
//         answer K requests on the connection before closing it.
// Prints "ready" on stdout once listening. SIGUSR1 prints a JSON line of
// counters and CPU seconds so far on stdout; SIGTERM or SIGINT prints the final counters and CPU
// seconds as JSON on stderr and exits.
//
// --verify (sink mode) also skips the ClientHello and checks that the payload
// matches the loadgen pattern; --discard trunc throws data away with
// recv(MSG_TRUNC) so the kernel does not copy it to user space.
//
// Build: g++ -std=c++20 -O2 -Wall -Wextra -Werror bench/sink.cc -o bench/.build/sink

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kPatternPeriod = 65521;  // must match loadgen.cc
constexpr size_t kReadBuf = 256 * 1024;
constexpr int kMaxEvents = 256;
constexpr int kReadsPerEvent = 16;  // then let other connections run
constexpr uint64_t kListenTag = ~0ull;
constexpr uint64_t kSignalTag = ~0ull - 1;

uint8_t pattern_byte(size_t i) {
  uint32_t x = static_cast<uint32_t>(i) * 2654435761u;
  return static_cast<uint8_t>((x >> 24) ^ (x >> 11));
}

[[noreturn]] void die_usage(const std::string& msg) {
  std::fprintf(stderr, "sink: %s\n", msg.c_str());
  std::fprintf(stderr,
               "usage: sink sink|rr --listen ADDR:PORT [--discard read|trunc] [--verify]\n"
               "            [--req-bytes N] [--resp-bytes N] [--exchanges K]\n");
  std::exit(3);
}

// Incremental skipper for one ClientHello: TLS handshake records (type 22)
// until the handshake message (type 1, 24-bit length) is complete and the
// record carrying its end is consumed.
class HelloSkipper {
 public:
  enum class State { Running, Done, Error };

  // Consumes bytes from p[0..n); returns how many belong to the hello.
  size_t feed(const uint8_t* p, size_t n) {
    size_t i = 0;
    while (i < n && state_ == State::Running) {
      if (rec_left_ == 0) {
        hdr_[hdr_got_++] = p[i++];
        if (hdr_got_ == 5) {
          hdr_got_ = 0;
          rec_left_ = static_cast<size_t>(hdr_[3]) << 8 | hdr_[4];
          if (hdr_[0] != 0x16 || hdr_[1] != 0x03 || rec_left_ == 0 || rec_left_ > 16384 + 2048) {
            state_ = State::Error;
            error_ = "not a TLS handshake record";
          }
        }
        continue;
      }
      size_t take = std::min(rec_left_, n - i);
      for (size_t j = 0; j < take && hs_hdr_got_ < 4; ++j) hs_hdr_[hs_hdr_got_++] = p[i + j];
      hs_seen_ += take;
      rec_left_ -= take;
      i += take;
      if (hs_hdr_got_ >= 1 && hs_hdr_[0] != 1) {
        state_ = State::Error;
        error_ = "handshake message is not a ClientHello";
        break;
      }
      if (hs_hdr_got_ == 4 && rec_left_ == 0) {
        size_t hs_len = (static_cast<size_t>(hs_hdr_[1]) << 16) | (static_cast<size_t>(hs_hdr_[2]) << 8) | hs_hdr_[3];
        if (hs_seen_ >= 4 + hs_len) state_ = State::Done;
      }
    }
    consumed_ += i;
    return i;
  }
  State state() const { return state_; }
  size_t consumed() const { return consumed_; }
  const char* error() const { return error_; }

 private:
  State state_ = State::Running;
  uint8_t hdr_[5]{};
  size_t hdr_got_ = 0;
  size_t rec_left_ = 0;
  uint8_t hs_hdr_[4]{};
  size_t hs_hdr_got_ = 0;
  size_t hs_seen_ = 0;
  size_t consumed_ = 0;
  const char* error_ = "";
};

struct Options {
  std::string mode;
  sockaddr_in addr{};
  bool trunc = false;
  bool verify = false;
  size_t req_bytes = 1024;
  size_t resp_bytes = 1024;
  uint64_t exchanges = 1;
};

struct Conn {
  int fd = -1;
  HelloSkipper hello;
  bool need_hello = false;
  uint64_t bytes = 0;     // all bytes read, hello included
  uint64_t payload = 0;   // bytes after the hello (rr: of the current request)
  uint64_t answered = 0;  // rr: requests answered on this connection
};

struct Stats {
  uint64_t accepted = 0, closed = 0, bytes = 0, payload = 0, errors = 0, verify_errors = 0, responses = 0;
  uint64_t hellos = 0;
  std::string first_error;
};

uint64_t parse_size(const std::string& s) {
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  std::string suf(end);
  uint64_t mul = 1;
  if (suf == "K" || suf == "k") mul = 1ull << 10;
  else if (suf == "M" || suf == "m") mul = 1ull << 20;
  else if (!suf.empty()) die_usage("bad size: " + s);
  return static_cast<uint64_t>(v) * mul;
}

class Server {
 public:
  explicit Server(const Options& o) : o_(o) {
    rbuf_.resize(kReadBuf);
    if (o_.verify || o_.mode == "rr") {
      expect_.resize(kReadBuf + kPatternPeriod);
      for (size_t i = 0; i < expect_.size(); ++i) expect_[i] = pattern_byte(i % kPatternPeriod);
    }
    resp_.resize(o_.resp_bytes);
    for (size_t i = 0; i < resp_.size(); ++i) resp_[i] = pattern_byte(i % kPatternPeriod);
  }

  int run() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    lfd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ep_ < 0 || lfd_ < 0) return fail("socket");
    int one = 1;
    setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd_, reinterpret_cast<const sockaddr*>(&o_.addr), sizeof o_.addr) < 0) return fail("bind");
    if (listen(lfd_, 4096) < 0) return fail("listen");

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    sfd_ = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd_ < 0) return fail("signalfd");

    add(lfd_, kListenTag, EPOLLIN);
    add(sfd_, kSignalTag, EPOLLIN);

    static const char ready[] = "ready\n";
    if (write(1, ready, sizeof ready - 1) < 0) return fail("write ready");

    std::vector<epoll_event> evs(kMaxEvents);
    while (!stop_) {
      int n = epoll_wait(ep_, evs.data(), kMaxEvents, 1000);
      if (n < 0) {
        if (errno == EINTR) continue;
        return fail("epoll_wait");
      }
      for (int i = 0; i < n && !stop_; ++i) {
        const epoll_event& ev = evs[static_cast<size_t>(i)];
        if (ev.data.u64 == kListenTag) do_accept();
        else if (ev.data.u64 == kSignalTag) do_signal();
        else do_read(static_cast<int>(ev.data.u64));
      }
    }
    final_report();
    return 0;
  }

 private:
  int fail(const char* what) {
    std::fprintf(stderr, "sink: %s: %s\n", what, std::strerror(errno));
    return 3;
  }

  void add(int fd, uint64_t tag, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      std::perror("sink: epoll_ctl");
      std::exit(3);
    }
  }

  void do_accept() {
    for (int k = 0; k < 256; ++k) {
      int fd = accept4(lfd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        if (errno == ECONNABORTED) continue;
        note_error("accept", errno);
        return;
      }
      ++st_.accepted;
      Conn& c = conns_[fd];
      c = Conn{};
      c.fd = fd;
      c.need_hello = o_.verify || o_.mode == "rr";
      add(fd, static_cast<uint64_t>(fd), EPOLLIN | EPOLLRDHUP);
    }
  }

  void note_error(const std::string& what, int err) {
    ++st_.errors;
    if (st_.first_error.empty()) st_.first_error = what + (err ? std::string(": ") + std::strerror(err) : "");
  }

  void close_conn(Conn& c) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    ++st_.closed;
    int fd = c.fd;
    conns_.erase(fd);
  }

  // Checks payload bytes at stream offset c.payload against the loadgen pattern.
  void check(Conn& c, const uint8_t* p, size_t n) {
    if (!o_.verify && o_.mode != "rr") return;
    size_t off = static_cast<size_t>(c.payload % kPatternPeriod);
    if (std::memcmp(p, expect_.data() + off, n) != 0) {
      ++st_.verify_errors;
      if (st_.first_error.empty()) {
        size_t k = 0;
        while (k < n && p[k] == expect_[off + k]) ++k;
        char buf[160];
        std::snprintf(buf, sizeof buf, "payload mismatch at offset %" PRIu64 " (got 0x%02x, want 0x%02x)",
                      c.payload + k, p[k], expect_[off + k]);
        st_.first_error = buf;
      }
    }
  }

  void do_read(int fd) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    Conn& c = it->second;
    for (int iter = 0; iter < kReadsPerEvent; ++iter) {
      bool discard = o_.trunc && !c.need_hello && !o_.verify && o_.mode == "sink";
      size_t want = kReadBuf;
      if (o_.mode == "rr" && !c.need_hello) want = std::max<size_t>(1, o_.req_bytes - std::min<size_t>(o_.req_bytes, c.payload));
      ssize_t n = recv(fd, rbuf_.data(), want, discard ? MSG_TRUNC : 0);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EINTR) continue;
        note_error("recv", errno);
        return close_conn(c);
      }
      if (n == 0) {
        if (o_.mode == "rr") note_error("EOF before full request", 0);
        else if (c.need_hello) note_error("EOF inside ClientHello", 0);
        return close_conn(c);
      }
      size_t got = static_cast<size_t>(n);
      c.bytes += got;
      st_.bytes += got;
      const uint8_t* p = rbuf_.data();
      if (c.need_hello) {
        size_t used = c.hello.feed(p, got);
        p += used;
        got -= used;
        if (c.hello.state() == HelloSkipper::State::Error) {
          note_error(c.hello.error(), 0);
          return close_conn(c);
        }
        if (c.hello.state() == HelloSkipper::State::Done) {
          c.need_hello = false;
          ++st_.hellos;
        }
      }
      if (got > 0) {
        if (o_.mode == "rr" && c.payload + got > o_.req_bytes) {
          note_error("more data than the request size", 0);
          return close_conn(c);
        }
        if (!discard) check(c, p, got);
        c.payload += got;
        st_.payload += got;
      }
      if (o_.mode == "rr" && !c.need_hello && c.payload == o_.req_bytes) return respond(c);
    }
  }

  void respond(Conn& c) {
    size_t off = 0;
    while (off < resp_.size()) {
      ssize_t n = send(c.fd, resp_.data() + off, resp_.size() - off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        // A 1 KiB response always fits the empty send buffer; anything else is an error.
        note_error("send", errno);
        return close_conn(c);
      }
      off += static_cast<size_t>(n);
    }
    ++st_.responses;
    if (++c.answered < o_.exchanges) {
      c.payload = 0;  // the next request, which repeats the pattern from its start
      return;
    }
    close_conn(c);
  }

  void do_signal() {
    signalfd_siginfo si{};
    while (read(sfd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      if (si.ssi_signo == SIGUSR1) {
        std::string line = stats_json(true) + "\n";
        if (write(1, line.data(), line.size()) < 0) note_error("write stats", errno);
      } else {
        stop_ = true;
      }
    }
  }

  std::string stats_json(bool with_cpu) {
    std::string err = st_.first_error;
    for (auto& ch : err)
      if (ch == '"' || ch == '\\') ch = '\'';
    char buf[1024];
    int n = std::snprintf(buf, sizeof buf,
                          "{\"mode\":\"%s\",\"accepted\":%" PRIu64 ",\"closed\":%" PRIu64 ",\"open\":%zu,"
                          "\"bytes\":%" PRIu64 ",\"payload_bytes\":%" PRIu64 ",\"hellos\":%" PRIu64
                          ",\"responses\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"verify_errors\":%" PRIu64
                          ",\"first_error\":\"%s\"",
                          o_.mode.c_str(), st_.accepted, st_.closed, conns_.size(), st_.bytes, st_.payload,
                          st_.hellos, st_.responses, st_.errors, st_.verify_errors, err.c_str());
    std::string s(buf, static_cast<size_t>(std::max(0, n)));
    if (with_cpu) {
      rusage ru{};
      getrusage(RUSAGE_SELF, &ru);
      double user = static_cast<double>(ru.ru_utime.tv_sec) + ru.ru_utime.tv_usec / 1e6;
      double sys = static_cast<double>(ru.ru_stime.tv_sec) + ru.ru_stime.tv_usec / 1e6;
      std::snprintf(buf, sizeof buf, ",\"cpu_s\":%.4f,\"cpu_user_s\":%.4f,\"cpu_sys_s\":%.4f", user + sys, user, sys);
      s += buf;
    }
    return s + "}";
  }

  void final_report() {
    std::string line = "sink: " + stats_json(true) + "\n";
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
  }

  const Options& o_;
  int ep_ = -1, lfd_ = -1, sfd_ = -1;
  bool stop_ = false;
  std::vector<uint8_t> rbuf_, expect_, resp_;
  std::unordered_map<int, Conn> conns_;
  Stats st_;
};

Options parse_args(int argc, char** argv) {
  Options o;
  if (argc < 2) die_usage("missing mode");
  o.mode = argv[1];
  if (o.mode != "sink" && o.mode != "rr") die_usage("mode must be sink or rr");
  bool have_addr = false;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die_usage("missing value for " + a);
      return argv[++i];
    };
    if (a == "--listen") {
      std::string v = val();
      auto colon = v.rfind(':');
      if (colon == std::string::npos) die_usage("--listen wants ADDR:PORT");
      int port = std::atoi(v.substr(colon + 1).c_str());
      if (port <= 0 || port > 65535) die_usage("bad port in " + v);
      o.addr.sin_family = AF_INET;
      o.addr.sin_port = htons(static_cast<uint16_t>(port));
      if (inet_pton(AF_INET, v.substr(0, colon).c_str(), &o.addr.sin_addr) != 1) die_usage("bad IPv4 address in " + v);
      have_addr = true;
    } else if (a == "--discard") {
      std::string v = val();
      if (v == "trunc") o.trunc = true;
      else if (v != "read") die_usage("--discard wants read or trunc");
    } else if (a == "--verify") {
      o.verify = true;
    } else if (a == "--req-bytes") {
      o.req_bytes = static_cast<size_t>(parse_size(val()));
    } else if (a == "--resp-bytes") {
      o.resp_bytes = static_cast<size_t>(parse_size(val()));
    } else if (a == "--exchanges") {
      o.exchanges = parse_size(val());
      if (o.exchanges == 0) die_usage("--exchanges must be > 0");
    } else {
      die_usage("unknown option " + a);
    }
  }
  if (!have_addr) die_usage("--listen is required");
  if (o.mode == "rr" && (o.req_bytes == 0 || o.req_bytes > kReadBuf)) die_usage("--req-bytes must be 1..256K");
  if (o.resp_bytes > (1u << 20)) die_usage("--resp-bytes must be <= 1M");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_args(argc, argv);
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  Server s(o);
  return s.run();
}
