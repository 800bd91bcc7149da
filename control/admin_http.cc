// Admin HTTP server: request parsing, non-blocking accept/read/write, bearer-token check.
#include "control/admin_http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace cvmgate {
namespace {

constexpr size_t kMaxHeaderBytes = 16 * 1024;
constexpr size_t kMaxBodyBytes = 64 * 1024;
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
  return {status, "application/json", nlohmann::json{{"error", message}}.dump() + "\n"};
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
  if (q != std::string::npos) {
    for (absl::string_view kv : absl::StrSplit(target.substr(q + 1), '&', absl::SkipEmpty())) {
      std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      out.query[PercentDecode(p.first)] = PercentDecode(p.second);
    }
  }
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
  if (host.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, host.c_str(), &a->sin6_addr);
    return sizeof(*a);
  }
  auto* a = reinterpret_cast<sockaddr_in*>(&ss);
  a->sin_family = AF_INET;
  a->sin_port = htons(port);
  inet_pton(AF_INET, host.c_str(), &a->sin_addr);
  return sizeof(*a);
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Listen(const AdminAddress& address, std::string token,
                                                                Handler handler) {
  AdminAddress bound = address;
  sockaddr_storage ss;
  socklen_t len = address.ToSockaddr(ss);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int rc;
  if (address.unix_socket) {
    // The runtime directory (e.g. /run/cvmgate) is made when missing, owner-only.
    if (size_t slash = address.path.rfind('/'); slash != std::string::npos && slash > 0) {
      mkdir(address.path.substr(0, slash).c_str(), 0750);
    }
    // A socket file left by a previous run is replaced; anything else is an error.
    struct stat st;
    if (lstat(address.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(address.path.c_str());
    mode_t old = umask(0177);  // the socket is created 0600: only its owner may use the API
    rc = bind(fd, reinterpret_cast<sockaddr*>(&ss), len);
    umask(old);
  } else {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    rc = bind(fd, reinterpret_cast<sockaddr*>(&ss), len);
  }
  if (rc != 0) {
    int e = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("admin API ", address.text, ": bind: ", std::strerror(e)));
  }
  if (!address.unix_socket) {
    // Port 0 picks a free port: report the real one.
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    bool v6 = ss.ss_family == AF_INET6;
    bound.port = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                          : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    bound.text = absl::StrCat("tcp:", v6 ? "[" : "", address.host, v6 ? "]" : "", ":", bound.port);
  }
  if (listen(fd, 64) != 0) {
    int e = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("admin API ", address.text, ": listen: ", std::strerror(e)));
  }
  return std::unique_ptr<AdminServer>(new AdminServer(bound, fd, std::move(token), std::move(handler)));
}

AdminServer::~AdminServer() {
  for (Client& c : clients_) close(c.fd);
  close(listen_fd_);
  if (address_.unix_socket) unlink(address_.path.c_str());
}

void AdminServer::AppendPollFds(std::vector<pollfd>& fds) const {
  if (clients_.size() < kMaxClients) fds.push_back({listen_fd_, POLLIN, 0});
  for (const Client& c : clients_) fds.push_back({c.fd, static_cast<short>(c.out.empty() ? POLLIN : POLLOUT), 0});
}

void AdminServer::Accept(int64_t now_ms) {
  while (clients_.size() < kMaxClients) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    clients_.push_back({fd, now_ms + kClientTimeoutMs, {}, {}, 0});
  }
}

HttpResponse AdminServer::Dispatch(const HttpRequest& req) {
  if (!token_.empty()) {
    auto it = req.headers.find("authorization");
    if (it == req.headers.end() || it->second != "Bearer " + token_) {
      return ErrorResponse(401, "missing or wrong bearer token");
    }
  }
  return handler_(req);
}

bool AdminServer::Serve(Client& c) {
  if (c.out.empty()) {
    char buf[4096];
    for (;;) {
      ssize_t n = read(c.fd, buf, sizeof(buf));
      if (n > 0) {
        c.in.append(buf, n);
        if (c.in.size() > kMaxHeaderBytes + kMaxBodyBytes) break;
        continue;
      }
      if (n == 0) return false;  // the client left before finishing its request
      if (errno == EAGAIN) break;
      return false;
    }
    HttpRequest req;
    auto used = ParseHttpRequest(c.in, kMaxBodyBytes, req);
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
    ssize_t n = write(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off);
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
    if (p.fd == listen_fd_ && (p.revents & POLLIN)) Accept(now_ms);
  }
  for (size_t i = 0; i < clients_.size();) {
    Client& c = clients_[i];
    bool ready = false;
    for (const pollfd& p : fds) ready = ready || (p.fd == c.fd && p.revents != 0);
    bool keep = now_ms < c.deadline_ms;
    if (keep && ready) keep = Serve(c);
    if (keep) {
      ++i;
    } else {
      close(c.fd);
      clients_.erase(clients_.begin() + i);
    }
  }
}

}  // namespace cvmgate
