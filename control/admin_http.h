// Admin HTTP server: a small HTTP/1.1 server for the control thread, on a Unix socket or localhost TCP.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <absl/status/statusor.h>

#include "dataplane/fd.h"

namespace cvmgate {

struct HttpRequest {
  std::string method;
  std::string path;   // without the query
  std::map<std::string, std::string> query;
  std::map<std::string, std::string> headers;  // names lowercased
  std::string body;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// Parses one request from `data`. Returns the number of bytes it used, 0 when
// more bytes are needed, or an error for a request that cannot be served.
// The path and query are percent-decoded and must then be UTF-8.
absl::StatusOr<size_t> ParseHttpRequest(const std::string& data, size_t max_body, HttpRequest& out);

// Whether an Authorization header carries `Bearer <token>`, compared in constant time.
bool TokenMatches(std::string_view authorization, std::string_view token);

// Where the admin API listens: "unix:/run/cvmgate/admin.sock" (mode 0600) or
// "tcp:127.0.0.1:PORT" / "tcp:[::1]:PORT" (loopback only, bearer token required).
struct AdminAddress {
  bool unix_socket = true;
  std::string path;  // unix
  std::string host;  // tcp
  uint16_t port = 0;
  std::string text;
  // The socket address to bind or connect to (AF_UNIX, AF_INET or AF_INET6).
  socklen_t ToSockaddr(sockaddr_storage& out) const;
};
absl::StatusOr<AdminAddress> ParseAdminAddress(const std::string& text);

// Serves requests one connection at a time per client, never blocking: the
// owner puts pollfds() into its poll() and calls OnReady() after it.
class AdminServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  // `token` empty: no authentication (Unix socket, guarded by its file mode).
  // Otherwise every request needs `Authorization: Bearer <token>` (401 without).
  static absl::StatusOr<std::unique_ptr<AdminServer>> Listen(const AdminAddress& address, std::string token,
                                                              Handler handler);
  // The listening socket of the process this one replaces (bound to `address`), served from now on.
  static std::unique_ptr<AdminServer> Adopt(const AdminAddress& address, Fd fd, std::string token, Handler handler);
  ~AdminServer();

  // Handing over: the listening socket, for the successor; the socket file is no longer this
  // server's to remove.
  int listen_fd() const { return listen_fd_.get(); }
  void Disown() { socket_file_.reset(); }
  // No new clients from now on (the successor serves the socket); answers in progress still go out.
  void StopAccepting() { listen_fd_.reset(); }
  // Answers not yet written out.
  bool writing() const;

  void AppendPollFds(std::vector<pollfd>& fds) const;
  void OnReady(const std::vector<pollfd>& fds, int64_t now_ms);
  const AdminAddress& address() const { return address_; }

 private:
  struct Client {
    Fd fd;
    int64_t deadline_ms;
    std::string in;
    std::string out;
    size_t out_off = 0;
  };
  AdminServer(AdminAddress address, Fd fd, std::string token, Handler handler)
      : address_(std::move(address)), listen_fd_(std::move(fd)), token_(std::move(token)), handler_(std::move(handler)) {}
  void Accept(int64_t now_ms);
  bool Serve(Client& c);  // false: the client is finished (close it)
  HttpResponse Dispatch(const HttpRequest& req);

  AdminAddress address_;
  Fd listen_fd_;
  std::string token_;
  Handler handler_;
  std::vector<Client> clients_;
  std::optional<std::pair<dev_t, ino_t>> socket_file_;  // the Unix socket file this server bound
};

}  // namespace cvmgate
