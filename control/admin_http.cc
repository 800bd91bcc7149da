// Admin HTTP server: request parsing, non-blocking accept/read/write, bearer-token check.
#include "control/admin_http.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include <absl/strings/ascii.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "dataplane/addresses.h"
#include "dataplane/log.h"

namespace cvmgate {
namespace {

constexpr size_t kMaxHeaderBytes = 16 * 1024;
constexpr size_t kMaxBodyBytes = 64 * 1024;
// An imported registry (cvmgatectl import) is a whole state file: about 120 bytes an instance.
constexpr size_t kMaxImportBytes = 16 * 1024 * 1024;
constexpr std::string_view kImportRequest = "POST /v1/import ";
size_t MaxBodyBytes(const std::string& request) {
  return request.compare(0, kImportRequest.size(), kImportRequest) == 0 ? kMaxImportBytes : kMaxBodyBytes;
}
constexpr size_t kMaxClients = 64;
constexpr int64_t kClientTimeoutMs = 5000;

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && isxdigit(s[i + 1]) && isxdigit(s[i + 2])) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i] == '+' ? ' ' : s[i];
    }
  }
  return out;
}

// RFC 3629: what JSON may carry. Everything a request says is checked with
// this before a handler may echo it back.
bool IsUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto b = static_cast<unsigned char>(s[i]);
    size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xe ? 3 : (b >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? b : b & (0x7f >> n);
    for (size_t k = 1; k < n; ++k) {
      auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3f);
    }
    // No overlong forms, no surrogates, nothing past U+10FFFF.
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return false;
    i += n;
  }
  return true;
}

const char* Reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    default: return "Status";
  }
}

std::string Serialize(const HttpResponse& r) {
  return absl::StrCat("HTTP/1.1 ", r.status, " ", Reason(r.status), "\r\nContent-Type: ", r.content_type,
                      "\r\nContent-Length: ", r.body.size(), "\r\nConnection: close\r\n\r\n", r.body);
}

HttpResponse ErrorResponse(int status, const std::string& message) {
  return {status, "application/json",
          nlohmann::json{{"error", message}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"};
}

std::array<unsigned char, SHA256_DIGEST_LENGTH> Digest(std::string_view s) {
  std::array<unsigned char, SHA256_DIGEST_LENGTH> d;
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d.data());
  return d;
}

}  // namespace

absl::StatusOr<size_t> ParseHttpRequest(const std::string& data, size_t max_body, HttpRequest& out) {
  size_t end = data.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (data.size() > kMaxHeaderBytes) return absl::InvalidArgumentError("request header too large");
    return 0;
  }
  std::vector<std::string> lines = absl::StrSplit(data.substr(0, end), "\r\n");
  std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
  if (first.size() != 3 || first[2].rfind("HTTP/1.", 0) != 0 || first[1].empty() || first[1][0] != '/') {
    return absl::InvalidArgumentError("malformed request line");
  }
  out = HttpRequest();
  out.method = first[0];
  std::string target = first[1];
  size_t q = target.find('?');
  out.path = PercentDecode(target.substr(0, q));
  bool utf8 = IsUtf8(out.path);
  if (q != std::string::npos) {
    for (absl::string_view kv : absl::StrSplit(target.substr(q + 1), '&', absl::SkipEmpty())) {
      std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      std::string key = PercentDecode(p.first), value = PercentDecode(p.second);
      utf8 = utf8 && IsUtf8(key) && IsUtf8(value);
      out.query[key] = value;
    }
  }
  if (!utf8) return absl::InvalidArgumentError("the request target is not UTF-8 once percent-decoded");
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == std::string::npos) return absl::InvalidArgumentError("malformed header line");
    std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
    out.headers[name] = std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  size_t length = 0;
  if (auto it = out.headers.find("content-length"); it != out.headers.end()) {
    if (!absl::SimpleAtoi(it->second, &length)) return absl::InvalidArgumentError("bad Content-Length");
  }
  if (out.headers.contains("transfer-encoding")) return absl::InvalidArgumentError("chunked bodies are not accepted");
  if (length > max_body) return absl::OutOfRangeError("request body too large");
  if (data.size() < end + 4 + length) return 0;
  out.body = data.substr(end + 4, length);
  return end + 4 + length;
}

absl::StatusOr<AdminAddress> ParseAdminAddress(const std::string& text) {
  AdminAddress a;
  a.text = text;
  if (text.rfind("unix:", 0) == 0) {
    a.path = text.substr(5);
    if (a.path.empty() || a.path.size() >= sizeof(sockaddr_un::sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat("--admin=", text, ": bad Unix socket path"));
    }
    return a;
  }
  if (text.rfind("tcp:", 0) == 0) {
    std::string rest = text.substr(4);
    size_t colon = rest.rfind(':');
    uint32_t port = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(rest.substr(colon + 1), &port) || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("--admin=", text, ": expected tcp:HOST:PORT"));
    }
    a.unix_socket = false;
    a.host = rest.substr(0, colon);
    if (a.host.size() > 2 && a.host.front() == '[') a.host = a.host.substr(1, a.host.size() - 2);
    a.port = static_cast<uint16_t>(port);
    if (a.host != "127.0.0.1" && a.host != "::1" && a.host != "localhost") {
      return absl::InvalidArgumentError(
          absl::StrCat("--admin=", text, ": the TCP admin API listens on loopback only (127.0.0.1 or [::1])"));
    }
    if (a.host == "localhost") a.host = "127.0.0.1";
    return a;
  }
  return absl::InvalidArgumentError(absl::StrCat("--admin=", text, ": expected unix:PATH or tcp:127.0.0.1:PORT"));
}

socklen_t AdminAddress::ToSockaddr(sockaddr_storage& ss) const {
  ss = {};
  if (unix_socket) {
    auto* a = reinterpret_cast<sockaddr_un*>(&ss);
    a->sun_family = AF_UNIX;
    std::strncpy(a->sun_path, path.c_str(), sizeof(a->sun_path) - 1);
    return sizeof(*a);
  }
  ss = SockaddrFromIp(host, port).value_or(sockaddr_storage{});
  return SockaddrLen(ss);
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Listen(const AdminAddress& address, std::string token,
                                                                Handler handler) {
  AdminAddress bound = address;
  sockaddr_storage ss;
  socklen_t len = address.ToSockaddr(ss);
  Fd fd(socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  int rc;
  if (address.unix_socket) {
    // The runtime directory (e.g. /run/cvmgate) is made when missing, owner-only.
    if (size_t slash = address.path.rfind('/'); slash != std::string::npos && slash > 0) {
      mkdir(address.path.substr(0, slash).c_str(), 0750);
    }
    // A socket file left by a previous run is replaced; one that still answers
    // belongs to a running process and is never taken from it.
    struct stat st;
    if (lstat(address.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      Fd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (connect(probe.get(), reinterpret_cast<sockaddr*>(&ss), len) == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "admin API ", address.text, ": a running process answers on this socket (another cvmgate?): stop it "
            "first, or give this one another --admin"));
      }
      unlink(address.path.c_str());
    }
    mode_t old = umask(0177);  // the socket is created 0600: only its owner may use the API
    rc = bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len);
    umask(old);
  } else {
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    rc = bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len);
  }
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("admin API ", address.text, ": bind: ", std::strerror(errno)));
  }
  if (!address.unix_socket) {
    // Port 0 picks a free port: report the real one.
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    bool v6 = ss.ss_family == AF_INET6;
    bound.port = SockaddrPort(ss);
    bound.text = absl::StrCat("tcp:", v6 ? "[" : "", address.host, v6 ? "]" : "", ":", bound.port);
  }
  if (listen(fd.get(), 64) != 0) {
    return absl::UnavailableError(absl::StrCat("admin API ", address.text, ": listen: ", std::strerror(errno)));
  }
  auto server =
      std::unique_ptr<AdminServer>(new AdminServer(bound, std::move(fd), std::move(token), std::move(handler)));
  struct stat own;
  if (address.unix_socket && stat(address.path.c_str(), &own) == 0) server->socket_file_ = {own.st_dev, own.st_ino};
  return server;
}

std::unique_ptr<AdminServer> AdminServer::Adopt(const AdminAddress& address, Fd fd, std::string token,
                                                Handler handler) {
  AdminAddress bound = address;
  if (!address.unix_socket) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    bound.port = SockaddrPort(ss);
  }
  auto server =
      std::unique_ptr<AdminServer>(new AdminServer(bound, std::move(fd), std::move(token), std::move(handler)));
  struct stat own;
  if (address.unix_socket && stat(address.path.c_str(), &own) == 0) server->socket_file_ = {own.st_dev, own.st_ino};
  return server;
}

bool AdminServer::writing() const {
  for (const Client& c : clients_) {
    if (!c.out.empty()) return true;
  }
  return false;
}

AdminServer::~AdminServer() {
  // Only our own socket file: another process may have bound the path since.
  struct stat st;
  if (address_.unix_socket && stat(address_.path.c_str(), &st) == 0 && socket_file_ &&
      socket_file_->first == st.st_dev && socket_file_->second == st.st_ino) {
    unlink(address_.path.c_str());
  }
}

void AdminServer::AppendPollFds(std::vector<pollfd>& fds) const {
  fds.push_back({listen_fd_.get(), POLLIN, 0});
  for (const Client& c : clients_) fds.push_back({c.fd.get(), static_cast<short>(c.out.empty() ? POLLIN : POLLOUT), 0});
}

void AdminServer::Accept(int64_t now_ms) {
  for (;;) {
    Fd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) return;
    if (clients_.size() >= kMaxClients) {
      // Full: the oldest connection still waiting for its request makes room,
      // so idle connections cannot keep an operator out until they time out.
      auto oldest = clients_.end();
      for (auto it = clients_.begin(); it != clients_.end(); ++it) {
        if (it->out.empty() && (oldest == clients_.end() || it->deadline_ms < oldest->deadline_ms)) oldest = it;
      }
      if (oldest == clients_.end()) continue;  // every slot is writing a reply, which ends soon: fd closes
      clients_.erase(oldest);
    }
    clients_.push_back({std::move(fd), now_ms + kClientTimeoutMs, {}, {}, 0});
  }
}

bool TokenMatches(std::string_view authorization, std::string_view token) {
  // Digests first, so neither the token's bytes nor its length shape the time taken.
  auto given = Digest(authorization);
  auto wanted = Digest(absl::StrCat("Bearer ", absl::string_view(token.data(), token.size())));
  return CRYPTO_memcmp(given.data(), wanted.data(), given.size()) == 0;
}

HttpResponse AdminServer::Dispatch(const HttpRequest& req) {
  if (!token_.empty()) {
    auto it = req.headers.find("authorization");
    if (it == req.headers.end() || !TokenMatches(it->second, token_)) {
      return ErrorResponse(401, "missing or wrong bearer token");
    }
  }
  // Handlers answer bad input with a 4xx themselves; this only keeps a bug in
  // one from ending the process and every relay with it.
  try {
    return handler_(req);
  } catch (const std::exception& e) {
    Log("admin API: ", req.method, " ", req.path, " failed: ", e.what());
    return ErrorResponse(500, absl::StrCat("internal error: ", e.what()));
  }
}

bool AdminServer::Serve(Client& c) {
  if (c.out.empty()) {
    char buf[4096];
    for (;;) {
      ssize_t n = read(c.fd.get(), buf, sizeof(buf));
      if (n > 0) {
        c.in.append(buf, n);
        if (c.in.size() > kMaxHeaderBytes + MaxBodyBytes(c.in)) break;
        continue;
      }
      if (n == 0) return false;  // the client left before finishing its request
      if (errno == EAGAIN) break;
      return false;
    }
    HttpRequest req;
    auto used = ParseHttpRequest(c.in, MaxBodyBytes(c.in), req);
    if (!used.ok()) {
      int status = used.status().code() == absl::StatusCode::kOutOfRange ? 413 : 400;
      c.out = Serialize(ErrorResponse(status, std::string(used.status().message())));
    } else if (*used == 0) {
      return true;  // wait for the rest
    } else {
      c.out = Serialize(Dispatch(req));
    }
  }
  while (c.out_off < c.out.size()) {
    ssize_t n = write(c.fd.get(), c.out.data() + c.out_off, c.out.size() - c.out_off);
    if (n > 0) {
      c.out_off += n;
      continue;
    }
    return n < 0 && errno == EAGAIN;
  }
  return false;  // response written: Connection: close
}

void AdminServer::OnReady(const std::vector<pollfd>& fds, int64_t now_ms) {
  for (const pollfd& p : fds) {
    if (p.fd == listen_fd_.get() && (p.revents & POLLIN)) Accept(now_ms);
  }
  for (size_t i = 0; i < clients_.size();) {
    Client& c = clients_[i];
    bool ready = false;
    for (const pollfd& p : fds) ready = ready || (p.fd == c.fd.get() && p.revents != 0);
    bool keep = now_ms < c.deadline_ms;
    if (keep && ready) keep = Serve(c);
    if (keep) {
      ++i;
    } else {
      clients_.erase(clients_.begin() + i);
    }
  }
}

}  // namespace cvmgate
