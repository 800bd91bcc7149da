// Load client for cvmgate benchmarks: opens TCP connections, sends a TLS ClientHello, then bulk data or request/response.
//
// Modes:
//   bulk  each of --conns connections sends the hello, then --bytes of payload,
//         then shutdown(SHUT_WR) and waits for the peer to close.
//   rr    --count connections in total, --conns at a time; each sends the hello
//         plus a --req-bytes request, reads a --resp-bytes response and closes.
//         With --rate R they start on a fixed schedule, R per second (open loop). With
//         --exchanges K each connection makes K request/response exchanges, one after the
//         other, and the latencies reported are those of exchanges 2..K: an open connection's.
//   hold  --conns connections each send the hello and then stay open and idle; once all
//         have, "holding N" is printed on stdout; at --timeout the report follows (exit 0
//         when every connection was still open). For memory per idle relayed connection.
// One JSON line of results goes to stdout. Exit status: 0 ok, 1 connection
// errors, 2 timeout, 3 usage or setup error.
//
// The payload is a fixed pseudo-random pattern indexed by stream offset
// (pattern_byte(k % kPatternPeriod)), so a sink can check it arrived intact.
//
// Build: g++ -std=c++20 -O2 -Wall -Wextra -Werror bench/loadgen.cc -o bench/.build/loadgen

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr size_t kPatternPeriod = 65521;  // prime, so shifted or dropped data shows up
constexpr int kMaxEvents = 256;

uint8_t pattern_byte(size_t i) {
  uint32_t x = static_cast<uint32_t>(i) * 2654435761u;
  return static_cast<uint8_t>((x >> 24) ^ (x >> 11));
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

[[noreturn]] void die_usage(const std::string& msg) {
  std::fprintf(stderr, "loadgen: %s\n", msg.c_str());
  std::fprintf(stderr,
               "usage: loadgen bulk|rr|hold --connect ADDR:PORT [--conns C] [--bytes N]\n"
               "               [--count N] [--sni NAME | --hello FILE] [--timeout S]\n"
               "               [--chunk N] [--req-bytes N] [--resp-bytes N]\n"
               "               [--dump-hello FILE] [--rate CONN_PER_S] [--exchanges K]\n"
               "sizes accept K, M, G suffixes (powers of 1024)\n");
  std::exit(3);
}

uint64_t parse_size(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno != 0 || end == s.c_str()) die_usage("bad size: " + s);
  std::string suf(end);
  uint64_t mul = 1;
  if (suf == "" || suf == "B") mul = 1;
  else if (suf == "K" || suf == "k" || suf == "KiB") mul = 1ull << 10;
  else if (suf == "M" || suf == "m" || suf == "MiB") mul = 1ull << 20;
  else if (suf == "G" || suf == "g" || suf == "GiB") mul = 1ull << 30;
  else die_usage("bad size suffix: " + s);
  return static_cast<uint64_t>(v) * mul;
}

// ---------------------------------------------------------------------------
// ClientHello synthesis.

void put8(std::vector<uint8_t>& b, unsigned v) { b.push_back(static_cast<uint8_t>(v)); }
void put16(std::vector<uint8_t>& b, unsigned v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}
void put24(std::vector<uint8_t>& b, size_t v) {
  b.push_back(static_cast<uint8_t>(v >> 16));
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}
void put_bytes(std::vector<uint8_t>& b, const std::vector<uint8_t>& v) {
  b.insert(b.end(), v.begin(), v.end());
}
void put_ext(std::vector<uint8_t>& b, unsigned type, const std::vector<uint8_t>& body) {
  put16(b, type);
  put16(b, static_cast<unsigned>(body.size()));
  put_bytes(b, body);
}

std::vector<uint8_t> random_bytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& c : v) c = static_cast<uint8_t>(rng());
  return v;
}

// A minimal TLS 1.3 ClientHello in one handshake record, with SNI = host.
std::vector<uint8_t> make_client_hello(const std::string& host) {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd());

  std::vector<uint8_t> exts;
  {  // server_name (0)
    std::vector<uint8_t> list;
    put8(list, 0);  // host_name
    put16(list, static_cast<unsigned>(host.size()));
    list.insert(list.end(), host.begin(), host.end());
    std::vector<uint8_t> body;
    put16(body, static_cast<unsigned>(list.size()));
    put_bytes(body, list);
    put_ext(exts, 0, body);
  }
  {  // supported_groups (10): x25519, secp256r1, secp384r1
    std::vector<uint8_t> body;
    put16(body, 6);
    put16(body, 0x001d);
    put16(body, 0x0017);
    put16(body, 0x0018);
    put_ext(exts, 10, body);
  }
  {  // signature_algorithms (13)
    const unsigned algs[] = {0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0807};
    std::vector<uint8_t> body;
    put16(body, static_cast<unsigned>(std::size(algs) * 2));
    for (unsigned a : algs) put16(body, a);
    put_ext(exts, 13, body);
  }
  {  // supported_versions (43): TLS 1.3 only
    std::vector<uint8_t> body;
    put8(body, 2);
    put16(body, 0x0304);
    put_ext(exts, 43, body);
  }
  {  // psk_key_exchange_modes (45): psk_dhe_ke
    std::vector<uint8_t> body;
    put8(body, 1);
    put8(body, 1);
    put_ext(exts, 45, body);
  }
  {  // key_share (51): one x25519 share
    std::vector<uint8_t> share = random_bytes(rng, 32);
    std::vector<uint8_t> body;
    put16(body, 2 + 2 + 32);
    put16(body, 0x001d);
    put16(body, 32);
    put_bytes(body, share);
    put_ext(exts, 51, body);
  }

  std::vector<uint8_t> ch;
  put16(ch, 0x0303);                     // legacy_version
  put_bytes(ch, random_bytes(rng, 32));  // random
  put8(ch, 32);                          // legacy_session_id
  put_bytes(ch, random_bytes(rng, 32));
  put16(ch, 6);  // cipher_suites
  put16(ch, 0x1301);
  put16(ch, 0x1302);
  put16(ch, 0x1303);
  put8(ch, 1);  // legacy_compression_methods: null
  put8(ch, 0);
  put16(ch, static_cast<unsigned>(exts.size()));
  put_bytes(ch, exts);

  std::vector<uint8_t> hs;
  put8(hs, 1);  // client_hello
  put24(hs, ch.size());
  put_bytes(hs, ch);

  std::vector<uint8_t> rec;
  put8(rec, 0x16);  // handshake
  put16(rec, 0x0301);
  put16(rec, static_cast<unsigned>(hs.size()));
  put_bytes(rec, hs);
  return rec;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) die_usage("cannot open hello file: " + path);
  std::vector<uint8_t> v((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (v.size() < 9 || v[0] != 0x16) die_usage("hello file does not start with a TLS handshake record: " + path);
  return v;
}

// ---------------------------------------------------------------------------
// Connections.

struct Options {
  std::string mode;
  sockaddr_in addr{};
  bool have_addr = false;
  uint64_t conns = 1;
  uint64_t bytes = 1ull << 30;
  uint64_t count = 1000;
  std::string sni;
  std::string hello_file = "tests/data/hello/openssl_tls13.bin";
  std::string dump_hello;
  double timeout = 60.0;
  size_t chunk = 256 * 1024;
  size_t req_bytes = 1024;
  size_t resp_bytes = 1024;
  double rate = 0;  // rr: connections started per second on a fixed schedule; 0 = as fast as --conns allows
  uint64_t exchanges = 1;  // rr: request/response exchanges per connection
};

enum class Phase { Connecting, Sending, Draining, Done };

struct Conn {
  int fd = -1;
  Phase phase = Phase::Connecting;
  uint64_t hello_sent = 0;   // bytes of the hello (rr: hello + request) written
  uint64_t payload_sent = 0; // bulk payload written
  uint64_t received = 0;     // bytes read from the peer (rr: of the current response)
  uint64_t answered = 0;     // rr: responses read
  Clock::time_point started;
  Clock::time_point asked;   // rr: when the current request went out
};

int open_conn(const sockaddr_in& addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int r = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  if (r < 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

struct Rusage {
  double user = 0, sys = 0;
};

Rusage self_cpu() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  Rusage r;
  r.user = static_cast<double>(ru.ru_utime.tv_sec) + ru.ru_utime.tv_usec / 1e6;
  r.sys = static_cast<double>(ru.ru_stime.tv_sec) + ru.ru_stime.tv_usec / 1e6;
  return r;
}

class Runner {
 public:
  Runner(const Options& o, std::vector<uint8_t> hello) : o_(o), hello_(std::move(hello)) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) {
      std::perror("loadgen: epoll_create1");
      std::exit(3);
    }
    // Pattern buffer long enough that any chunk starting at offset % period is contiguous.
    pattern_.resize(o_.chunk + kPatternPeriod);
    for (size_t i = 0; i < pattern_.size(); ++i) pattern_[i] = pattern_byte(i % kPatternPeriod);
    // rr: the hello and the request go out in one write.
    if (o_.mode == "rr") {
      first_write_ = hello_;
      first_write_.insert(first_write_.end(), pattern_.begin(),
                          pattern_.begin() + static_cast<std::ptrdiff_t>(std::min(o_.req_bytes, pattern_.size())));
      while (first_write_.size() < hello_.size() + o_.req_bytes)
        first_write_.push_back(pattern_byte((first_write_.size() - hello_.size()) % kPatternPeriod));
    } else {
      first_write_ = hello_;
    }
    rbuf_.resize(256 * 1024);
  }

  int run() {
    start_ = Clock::now();
    deadline_ = start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.timeout));
    cpu0_ = self_cpu();
    uint64_t total = o_.mode == "rr" ? o_.count : o_.conns;
    uint64_t window = o_.conns;
    std::vector<epoll_event> evs(kMaxEvents);

    while (done_ + errors_ < total) {
      int pace_ms = 1000;
      if (o_.rate > 0) {
        // Open-loop pacing: connection i is due at start + i / rate. Latency counts from the due
        // time, so a client that falls behind cannot hide the queueing it causes.
        while (active_ < window && launched_ < total) {
          auto due = start_ + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(static_cast<double>(launched_) / o_.rate));
          if (Clock::now() < due) {
            pace_ms = static_cast<int>(std::chrono::duration<double, std::milli>(due - Clock::now()).count()) + 1;
            break;
          }
          launch(due);
        }
      } else {
        while (active_ < window && launched_ < total) launch(Clock::now());
      }
      double left = std::chrono::duration<double>(deadline_ - Clock::now()).count();
      if (left <= 0) {
        timed_out_ = o_.mode != "hold";  // holding until the deadline is the whole point of hold
        break;
      }
      int ms = std::min(static_cast<int>(std::min(left * 1000.0 + 1, 1000.0)), pace_ms);
      int n = epoll_wait(ep_, evs.data(), kMaxEvents, ms);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::perror("loadgen: epoll_wait");
        return 3;
      }
      for (int i = 0; i < n; ++i) handle(static_cast<size_t>(evs[static_cast<size_t>(i)].data.u64), evs[static_cast<size_t>(i)].events);
    }
    wall_ = seconds_since(start_);
    report();
    if (timed_out_) return 2;
    if (errors_ > 0) return 1;
    return 0;
  }

 private:
  void launch(Clock::time_point started) {
    size_t idx;
    if (!free_.empty()) {
      idx = free_.back();
      free_.pop_back();
    } else {
      idx = conns_.size();
      conns_.emplace_back();
    }
    ++launched_;
    Conn& c = conns_[idx];
    c = Conn{};
    c.started = started;
    c.fd = open_conn(o_.addr);
    if (c.fd < 0) {
      note_error("connect", errno);
      free_.push_back(idx);
      return;
    }
    ++active_;
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = idx;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev) < 0) {
      std::perror("loadgen: epoll_ctl");
      std::exit(3);
    }
  }

  void note_error(const char* what, int err) {
    ++errors_;
    if (first_error_.empty()) first_error_ = std::string(what) + ": " + std::strerror(err);
  }

  void finish(size_t idx, bool ok, const char* what = nullptr, int err = 0) {
    Conn& c = conns_[idx];
    if (c.fd >= 0) {
      epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
      close(c.fd);
      c.fd = -1;
    }
    c.phase = Phase::Done;
    --active_;
    if (ok) {
      ++done_;
      if (o_.mode == "rr" && o_.exchanges == 1) {
        lat_us_.push_back(std::chrono::duration<double, std::micro>(Clock::now() - c.started).count());
      }
    } else {
      note_error(what ? what : "error", err);
    }
    payload_total_ += c.payload_sent;
    recv_total_ += c.received;
    free_.push_back(idx);
  }

  void set_events(Conn& c, size_t idx, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = idx;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void handle(size_t idx, uint32_t events) {
    Conn& c = conns_[idx];
    if (c.phase == Phase::Done) return;
    if (c.phase == Phase::Connecting) {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) return finish(idx, false, "connect", err);
      c.phase = Phase::Sending;
    }
    if (c.phase == Phase::Sending) {
      if (!do_send(idx)) return;
      if (c.phase == Phase::Sending) {
        // A peer that closes or resets before we finished sending is an error.
        if (events & (EPOLLERR | EPOLLHUP)) return finish(idx, false, "peer closed while sending", ECONNRESET);
        if (events & EPOLLIN) {
          if (!do_read(idx)) return;
        }
        return;
      }
    }
    if (c.phase == Phase::Draining) do_read(idx);
  }

  // Returns false if the connection was finished.
  bool do_send(size_t idx) {
    Conn& c = conns_[idx];
    for (int iter = 0; iter < 64; ++iter) {
      const uint8_t* p;
      size_t len;
      if (c.hello_sent < first_write_.size()) {
        p = first_write_.data() + c.hello_sent;
        len = first_write_.size() - c.hello_sent;
      } else if (o_.mode == "bulk" && c.payload_sent < o_.bytes) {
        p = pattern_.data() + (c.payload_sent % kPatternPeriod);
        len = static_cast<size_t>(std::min<uint64_t>(o_.chunk, o_.bytes - c.payload_sent));
      } else {
        // Everything written.
        if (o_.mode == "bulk" && shutdown(c.fd, SHUT_WR) < 0) {
          finish(idx, false, "shutdown", errno);
          return false;
        }
        c.phase = Phase::Draining;
        set_events(c, idx, EPOLLIN | EPOLLRDHUP);
        if (o_.mode == "hold" && ++holding_ == o_.conns) {
          std::printf("holding %" PRIu64 "\n", holding_);
          std::fflush(stdout);
        }
        return true;
      }
      ssize_t n = send(c.fd, p, len, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
        if (errno == EINTR) continue;
        finish(idx, false, "send", errno);
        return false;
      }
      if (c.hello_sent < first_write_.size()) c.hello_sent += static_cast<uint64_t>(n);
      else c.payload_sent += static_cast<uint64_t>(n);
    }
    return true;
  }

  // Returns false if the connection was finished.
  bool do_read(size_t idx) {
    Conn& c = conns_[idx];
    for (int iter = 0; iter < 16; ++iter) {
      ssize_t n = recv(c.fd, rbuf_.data(), rbuf_.size(), 0);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
        if (errno == EINTR) continue;
        finish(idx, false, "recv", errno);
        return false;
      }
      if (n == 0) {
        if (o_.mode == "hold") {
          finish(idx, false, "peer closed an idle connection", ECONNRESET);
        } else if (c.phase != Phase::Draining) {
          finish(idx, false, "peer closed before request was sent", ECONNRESET);
        } else if (o_.mode == "rr" && c.received < o_.resp_bytes) {
          finish(idx, false, "short response", EPROTO);
        } else {
          finish(idx, true);
        }
        return false;
      }
      c.received += static_cast<uint64_t>(n);
      if (o_.mode == "rr" && c.phase == Phase::Draining && c.received >= o_.resp_bytes) {
        if (c.received != o_.resp_bytes) {
          finish(idx, false, "response longer than expected", EPROTO);
          return false;
        }
        if (c.answered++ > 0) {
          lat_us_.push_back(std::chrono::duration<double, std::micro>(Clock::now() - c.asked).count());
        }
        if (c.answered == o_.exchanges) {
          finish(idx, true);
          return false;
        }
        // The next request on the same connection: 1 KiB-sized requests fit an empty send buffer.
        c.received = 0;
        c.asked = Clock::now();
        const uint8_t* req = first_write_.data() + hello_.size();
        if (send(c.fd, req, o_.req_bytes, MSG_NOSIGNAL) != static_cast<ssize_t>(o_.req_bytes)) {
          finish(idx, false, "send of a further request", errno);
          return false;
        }
      }
    }
    return true;
  }

  static double percentile(std::vector<double>& v, double q) {
    if (v.empty()) return 0;
    size_t k = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k];
  }

  void report() {
    // Account for connections still open at a timeout.
    for (auto& c : conns_) {
      if (c.phase != Phase::Done && c.fd >= 0) {
        payload_total_ += c.payload_sent;
        recv_total_ += c.received;
      }
    }
    Rusage cpu1 = self_cpu();
    double user = cpu1.user - cpu0_.user, sys = cpu1.sys - cpu0_.sys;
    std::string err = first_error_;
    for (auto& ch : err)
      if (ch == '"' || ch == '\\') ch = '\'';
    char line[1024];
    if (o_.mode == "hold") {
      std::snprintf(line, sizeof line,
                    "{\"mode\":\"hold\",\"conns\":%" PRIu64 ",\"held\":%" PRIu64 ",\"errors\":%" PRIu64
                    ",\"wall_s\":%.6f,\"cpu_s\":%.4f,\"first_error\":\"%s\"}\n",
                    o_.conns, active_, errors_, wall_, user + sys, err.c_str());
    } else if (o_.mode == "bulk") {
      std::snprintf(line, sizeof line,
                    "{\"mode\":\"bulk\",\"conns\":%" PRIu64 ",\"bytes_per_conn\":%" PRIu64
                    ",\"hello_bytes\":%zu,\"payload_bytes\":%" PRIu64 ",\"recv_bytes\":%" PRIu64
                    ",\"completed\":%" PRIu64 ",\"errors\":%" PRIu64
                    ",\"timed_out\":%s,\"wall_s\":%.6f,\"gbps\":%.4f,\"cpu_s\":%.4f,\"cpu_user_s\":%.4f,"
                    "\"cpu_sys_s\":%.4f,\"first_error\":\"%s\"}\n",
                    o_.conns, o_.bytes, hello_.size(), payload_total_, recv_total_, done_, errors_,
                    timed_out_ ? "true" : "false", wall_,
                    wall_ > 0 ? static_cast<double>(payload_total_) / 1e9 / wall_ : 0.0, user + sys, user, sys,
                    err.c_str());
    } else {
      double p50 = percentile(lat_us_, 0.50), p99 = percentile(lat_us_, 0.99);
      double mx = lat_us_.empty() ? 0 : *std::max_element(lat_us_.begin(), lat_us_.end());
      std::snprintf(line, sizeof line,
                    "{\"mode\":\"rr\",\"conns\":%" PRIu64 ",\"count\":%" PRIu64 ",\"completed\":%" PRIu64
                    ",\"errors\":%" PRIu64
                    ",\"timed_out\":%s,\"wall_s\":%.6f,\"conn_per_s\":%.1f,\"lat_p50_us\":%.1f,"
                    "\"lat_p99_us\":%.1f,\"lat_max_us\":%.1f,\"cpu_s\":%.4f,\"cpu_user_s\":%.4f,"
                    "\"cpu_sys_s\":%.4f,\"first_error\":\"%s\"}\n",
                    o_.conns, o_.count, done_, errors_, timed_out_ ? "true" : "false", wall_,
                    wall_ > 0 ? static_cast<double>(done_) / wall_ : 0.0, p50, p99, mx, user + sys, user, sys,
                    err.c_str());
    }
    std::fputs(line, stdout);
    std::fflush(stdout);
  }

  const Options& o_;
  std::vector<uint8_t> hello_;
  std::vector<uint8_t> first_write_;
  std::vector<uint8_t> pattern_;
  std::vector<uint8_t> rbuf_;
  std::vector<Conn> conns_;
  std::vector<size_t> free_;
  std::vector<double> lat_us_;
  int ep_ = -1;
  uint64_t launched_ = 0, active_ = 0, done_ = 0, errors_ = 0, holding_ = 0;
  uint64_t payload_total_ = 0, recv_total_ = 0;
  bool timed_out_ = false;
  std::string first_error_;
  Clock::time_point start_, deadline_;
  Rusage cpu0_;
  double wall_ = 0;
};

Options parse_args(int argc, char** argv) {
  Options o;
  if (argc < 2) die_usage("missing mode");
  o.mode = argv[1];
  if (o.mode != "bulk" && o.mode != "rr" && o.mode != "hold") die_usage("mode must be bulk, rr or hold");
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die_usage("missing value for " + a);
      return argv[++i];
    };
    if (a == "--connect") {
      std::string v = val();
      auto colon = v.rfind(':');
      if (colon == std::string::npos) die_usage("--connect wants ADDR:PORT");
      std::string host = v.substr(0, colon);
      int port = std::atoi(v.substr(colon + 1).c_str());
      if (port <= 0 || port > 65535) die_usage("bad port in " + v);
      o.addr.sin_family = AF_INET;
      o.addr.sin_port = htons(static_cast<uint16_t>(port));
      if (inet_pton(AF_INET, host.c_str(), &o.addr.sin_addr) != 1) die_usage("bad IPv4 address: " + host);
      o.have_addr = true;
    } else if (a == "--conns") {
      o.conns = parse_size(val());
    } else if (a == "--bytes") {
      o.bytes = parse_size(val());
    } else if (a == "--count") {
      o.count = parse_size(val());
    } else if (a == "--sni") {
      o.sni = val();
    } else if (a == "--hello") {
      o.hello_file = val();
    } else if (a == "--dump-hello") {
      o.dump_hello = val();
    } else if (a == "--timeout") {
      o.timeout = std::atof(val().c_str());
    } else if (a == "--chunk") {
      o.chunk = static_cast<size_t>(parse_size(val()));
    } else if (a == "--req-bytes") {
      o.req_bytes = static_cast<size_t>(parse_size(val()));
    } else if (a == "--resp-bytes") {
      o.resp_bytes = static_cast<size_t>(parse_size(val()));
    } else if (a == "--exchanges") {
      o.exchanges = parse_size(val());
      if (o.exchanges == 0) die_usage("--exchanges must be > 0");
    } else if (a == "--rate") {
      o.rate = std::atof(val().c_str());
      if (o.rate <= 0) die_usage("--rate must be > 0");
    } else {
      die_usage("unknown option " + a);
    }
  }
  if (!o.have_addr && o.dump_hello.empty()) die_usage("--connect is required");
  if (o.conns == 0 || o.conns > 100000) die_usage("--conns must be 1..100000");
  if (o.count == 0) die_usage("--count must be > 0");
  if (o.timeout <= 0) die_usage("--timeout must be > 0");
  if (o.chunk == 0 || o.chunk > (64u << 20)) die_usage("--chunk must be 1..64M");
  if (o.sni.size() > 253) die_usage("--sni name too long");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_args(argc, argv);
  std::vector<uint8_t> hello = o.sni.empty() ? read_file(o.hello_file) : make_client_hello(o.sni);
  if (!o.dump_hello.empty()) {
    std::ofstream f(o.dump_hello, std::ios::binary);
    f.write(reinterpret_cast<const char*>(hello.data()), static_cast<std::streamsize>(hello.size()));
    if (!f) {
      std::fprintf(stderr, "loadgen: cannot write %s\n", o.dump_hello.c_str());
      return 3;
    }
    if (!o.have_addr) return 0;
  }
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  Runner r(o, std::move(hello));
  return r.run();
}
