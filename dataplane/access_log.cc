// The access log (see access_log.h).
#include "dataplane/access_log.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <limits.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include <absl/strings/str_cat.h>

#include "dataplane/log.h"

namespace cvmgate {
namespace {

// Lines are written when this much is formatted, or when the queues are empty.
constexpr size_t kWriteBatch = 64 * 1024;
// After a drain that found records, the log thread naps this long: under load, workers find it
// awake (no wake-up write) and each write carries many lines.
constexpr timespec kNap = {0, 5'000'000};

bool IsRegularFile(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

std::string_view TlsVersionName(uint16_t v) {
  switch (v) {
    case 0x0304: return "TLSv1.3";
    case 0x0303: return "TLSv1.2";
    case 0x0302: return "TLSv1.1";
    case 0x0301: return "TLSv1";
    default: return {};
  }
}

void AppendTime(int64_t unix_us, std::string& out) {
  time_t secs = static_cast<time_t>(unix_us / 1'000'000);
  tm t;
  gmtime_r(&secs, &t);
  char buf[40];
  size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &t);
  n += static_cast<size_t>(snprintf(buf + n, sizeof(buf) - n, ".%03dZ", static_cast<int>(unix_us / 1000 % 1000)));
  out.append(buf, n);
}

// "1.2.3.4:5555" or "[::1]:5555"; empty when unknown.
std::string_view Address(const sockaddr_in6& a, char (&buf)[64]) {
  char ip[INET6_ADDRSTRLEN];
  int n = 0;
  if (a.sin6_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(a);
    inet_ntop(AF_INET, &v4.sin_addr, ip, sizeof(ip));
    n = snprintf(buf, sizeof(buf), "%s:%u", ip, ntohs(v4.sin_port));
  } else if (a.sin6_family == AF_INET6) {
    inet_ntop(AF_INET6, &a.sin6_addr, ip, sizeof(ip));
    n = snprintf(buf, sizeof(buf), "[%s]:%u", ip, ntohs(a.sin6_port));
  }
  return {buf, static_cast<size_t>(n > 0 ? n : 0)};
}

// Milliseconds with microsecond digits: 1.234
void AppendMs(int64_t us, std::string& out) {
  char buf[32];
  int n = snprintf(buf, sizeof(buf), "%lld.%03lld", static_cast<long long>(us / 1000),
                   static_cast<long long>(us % 1000));
  out.append(buf, static_cast<size_t>(n));
}

constexpr char kHex[] = "0123456789abcdef";

// `v` in double quotes, with \" and \\, and `byte_escape` and two hex digits for any byte outside
// printable ASCII.
void Quoted(std::string_view v, std::string_view byte_escape, std::string& out) {
  out += '"';
  for (unsigned char ch : v) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < ' ' || ch >= 0x7f) {
      out += byte_escape;
      out += kHex[ch >> 4];
      out += kHex[ch & 15];
    } else {
      out += static_cast<char>(ch);
    }
  }
  out += '"';
}

// logfmt: bare when the value has only printable bytes other than space, = and "; else quoted, with
// \" \\ and \xNN. Missing values are "-" (and a value that is "-" is quoted).
void LogfmtValue(std::string_view v, std::string& out) {
  bool bare = v != "-";
  for (unsigned char ch : v) {
    if (ch <= ' ' || ch >= 0x7f || ch == '=' || ch == '"' || ch == '\\') bare = false;
  }
  if (bare) {
    out += v;
    return;
  }
  Quoted(v, "\\x", out);
}

// JSON string: bytes outside printable ASCII as \u00XX, so any input gives valid JSON.
void JsonString(std::string_view v, std::string& out) { Quoted(v, "\\u00", out); }

// One line's fields in order, each written by the format's own rules.
class Line {
 public:
  Line(AccessLogFormat format, std::string& out) : json_(format == AccessLogFormat::kJson), out_(out) {
    if (json_) out_ += '{';
  }
  ~Line() { out_ += json_ ? "}\n" : "\n"; }
  // A string; empty: missing.
  void Text(std::string_view key, std::string_view v) {
    Key(key);
    if (v.empty()) out_ += json_ ? "null" : "-";
    else if (!json_) LogfmtValue(v, out_);
    else JsonString(v, out_);
  }
  void Number(std::string_view key, uint64_t v) {
    Key(key);
    absl::StrAppend(&out_, v);
  }
  // Microseconds written as milliseconds; negative: missing.
  void Ms(std::string_view key, int64_t us) {
    Key(key);
    if (us >= 0) AppendMs(us, out_);
    else out_ += json_ ? "null" : "-";
  }
  void Time(std::string_view key, int64_t unix_us) {
    Key(key);
    if (json_) out_ += '"';
    AppendTime(unix_us, out_);
    if (json_) out_ += '"';
  }

 private:
  void Key(std::string_view key) {
    if (!first_) out_ += json_ ? "," : " ";
    first_ = false;
    if (json_) {
      out_ += '"';
      out_ += key;
      out_ += "\":";
    } else {
      out_ += key;
      out_ += '=';
    }
  }
  const bool json_;
  bool first_ = true;
  std::string& out_;
};

}  // namespace

void AppendAccessLine(const AccessRecord& r, AccessLogFormat format, std::string& out) {
  char client[64];
  char instance[64];
  Line line(format, out);
  line.Time("time", r.unix_us);
  line.Text("client", Address(r.client, client));
  line.Text("sni", std::string_view(r.sni, r.sni_len));
  line.Text("app", std::string_view(r.app, r.app_len));
  line.Text("mode", r.routed ? ModeName(r.mode) : std::string_view());
  line.Text("instance", Address(r.instance, instance));
  line.Text("tls", TlsVersionName(r.tls_version));
  line.Text("cipher", r.cipher != nullptr ? std::string_view(r.cipher) : std::string_view());
  line.Number("bytes_in", r.bytes_in);
  line.Number("bytes_out", r.bytes_out);
  line.Ms("handshake_ms", r.handshake_us);
  line.Ms("connect_ms", r.connect_us);
  line.Ms("duration_ms", r.duration_us);
  line.Text("reason", kCounterInfo[static_cast<size_t>(r.reason)].name);
}

AccessLogQueue::AccessLogQueue(uint32_t capacity)
    : mask_(std::bit_ceil(std::max<uint32_t>(capacity, 2)) - 1), records_(new AccessRecord[mask_ + 1]) {}

size_t AccessLogQueue::Drain(AccessLogFormat format, std::string& out, size_t max) {
  uint64_t head = head_.load(std::memory_order_relaxed);
  const uint64_t tail = tail_.load(std::memory_order_acquire);
  size_t n = 0;
  for (; head != tail && n < max; ++head, ++n) AppendAccessLine(records_[head & mask_], format, out);
  head_.store(head, std::memory_order_release);
  return n;
}

absl::StatusOr<std::unique_ptr<AccessLog>> AccessLog::Open(const AccessLogOptions& options, int workers) {
  Fd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) return absl::InternalError(absl::StrCat("access log: eventfd: ", std::strerror(errno)));
  std::unique_ptr<AccessLog> log(new AccessLog(options, workers, Fd(), std::move(wake)));
  if (auto s = log->OpenTarget(log->out_); !s.ok()) return s;
  log->regular_file_ = IsRegularFile(log->out_.get());
  return log;
}

AccessLog::AccessLog(const AccessLogOptions& options, int workers, Fd out, Fd wake)
    : queue_records_(options.queue_records),
      target_(options.target),
      format_(options.format),
      out_(std::move(out)),
      wake_(std::move(wake)) {
  for (int i = 0; i < workers; ++i) queues_.push_back(std::make_unique<AccessLogQueue>(queue_records_));
}

AccessLog::~AccessLog() { Stop(); }

absl::Status AccessLog::OpenTarget(Fd& out) const {
  std::string target;
  {
    std::lock_guard lock(mu_);
    target = target_;
  }
  if (target == "stderr") {
    out.reset(fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3));
  } else {
    out.reset(open(target.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640));
  }
  if (!out.valid()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--access-log=", target, ": cannot open for appending: ", std::strerror(errno)));
  }
  struct stat st;
  if (fstat(out.get(), &st) == 0 && S_ISDIR(st.st_mode)) {
    out.reset();
    return absl::InvalidArgumentError(absl::StrCat("--access-log=", target, ": is a directory"));
  }
  return absl::OkStatus();
}

void AccessLog::Start() { thread_ = std::thread([this] { Run(); }); }

void AccessLog::Signal() {
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof(one));
}

void AccessLog::Reopen() {
  reopen_.store(true);
  Signal();
}

void AccessLog::Reconfigure(const std::string& target, AccessLogFormat format) {
  {
    std::lock_guard lock(mu_);
    target_ = target;
  }
  format_.store(format);
  Reopen();
}

void AccessLog::Stop() {
  if (!thread_.joinable()) return;
  stop_.store(true);
  Signal();
  thread_.join();
}

size_t AccessLog::DrainAll() {
  size_t n = 0;
  for (auto& q : queues_) {
    // Bounded per queue and pass, so a batch stays near kWriteBatch and one busy worker cannot
    // keep the others' lines waiting.
    n += q->Drain(format_.load(std::memory_order_relaxed), buf_, 256);
    if (buf_.size() >= kWriteBatch) WriteOut();
  }
  return n;
}

void AccessLog::WriteOut() {
  size_t off = 0;
  uint64_t lines = 0;
  for (char ch : buf_) lines += ch == '\n';
  int stalled_ms = 0;
  while (off < buf_.size()) {
    // A pipe or terminal may not be read: wait for room in steps, so that a stop is not held
    // forever, and write no more than the room POLLOUT promises (a pipe's page).
    size_t chunk = buf_.size() - off;
    if (!regular_file_) {
      pollfd p{out_.get(), POLLOUT, 0};
      if (poll(&p, 1, 100) == 0) {
        stalled_ms += 100;
        if (stop_.load() && stalled_ms >= 2000) {
          write_errors_.fetch_add(1, std::memory_order_relaxed);  // nobody reads: given up at the stop
          buf_.clear();
          return;
        }
        continue;
      }
      chunk = std::min<size_t>(chunk, PIPE_BUF);
    }
    ssize_t w = write(out_.get(), buf_.data() + off, chunk);
    if (w > 0) {
      off += static_cast<size_t>(w);
      stalled_ms = 0;
    } else if (w < 0 && (errno == EINTR || errno == EAGAIN)) {
      continue;
    } else {
      // A full disk or a closed pipe: the batch is lost, counted; the next one tries again.
      write_errors_.fetch_add(1, std::memory_order_relaxed);
      buf_.clear();
      return;
    }
  }
  written_.fetch_add(lines, std::memory_order_relaxed);
  buf_.clear();
}

void AccessLog::Run() {
  while (true) {
    if (reopen_.exchange(false)) {
      if (!buf_.empty()) WriteOut();
      Fd fresh;
      if (auto s = OpenTarget(fresh); s.ok()) {
        out_ = std::move(fresh);
        regular_file_ = IsRegularFile(out_.get());
        reopens_.fetch_add(1, std::memory_order_relaxed);
      } else {
        Log(s.message(), "; still writing to the file opened before");
      }
    }
    size_t n = DrainAll();
    if (!buf_.empty()) WriteOut();
    if (n > 0) {
      if (!stop_.load() && std::ranges::all_of(queues_, [](auto& q) { return q->empty(); })) nanosleep(&kNap, nullptr);
      continue;
    }
    if (stop_.load()) return;  // the workers stopped before: nothing more comes
    // Going to sleep: a worker that pushes from now on sees the flag and wakes this thread. The
    // queues are looked at once more after the flag is set, so no record waits for the timeout.
    sleeping_.store(true, std::memory_order_seq_cst);
    bool pending = false;
    for (auto& q : queues_) pending = pending || !q->empty();
    if (!pending && !stop_.load() && !reopen_.load()) {
      pollfd p{wake_.get(), POLLIN, 0};
      poll(&p, 1, 1000);
    }
    sleeping_.store(false);
    uint64_t drained;
    (void)!read(wake_.get(), &drained, sizeof(drained));
  }
}

}  // namespace cvmgate
