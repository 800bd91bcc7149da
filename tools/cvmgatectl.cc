// cvmgatectl: the operator's CLI for cvmgate's admin API (register, deregister, list, explain, metrics).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <absl/strings/ascii.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <nlohmann/json.hpp>

#include "control/admin_http.h"
#include "control/args.h"
#include "control/durable_file.h"
#include "dataplane/fd.h"

namespace cvmgate {
namespace {

using nlohmann::json;

struct Verb {
  const char* name;
  const char* usage;
  const char* help;
};

const std::vector<Verb> kVerbs = {
    {"register", "register --app APP --instance ID (--public-key KEY | --address IP --ports LIST)",
     "register a CVM (its WireGuard public key; it gets a /32 and the gateway's peer details) or a static\n"
     "instance (a fixed address, no WireGuard, always healthy) with the ports it serves, e.g. 8080,8443\n"
     "or 9000-9100: names with other ports are refused. App and instance ids share one namespace.\n"
     "Repeating a registration is harmless; a new key for an instance replaces its peer and keeps its\n"
     "address."},
    {"deregister", "deregister --instance ID", "remove an instance, its WireGuard peer and its address"},
    {"list", "list", "every instance with its address, last WireGuard handshake and health"},
    {"apps", "apps", "every app with its connections and settings (overrides marked with *)"},
    {"nodes", "nodes", "the live gateway hosts sharing this registry (--registry etcd:...), with what CVMs\n"
     "peer with: public key, endpoint, tunnel address"},
    {"app-set", "app-set APP [--proxy-protocol on|off|default] [--max-connections N|default]",
     "override the daemon's --proxy-protocol or --app-max-connections for one app; 'default' follows\n"
     "the flag again. Applies to new connections at once; settings are kept in the state file and may\n"
     "be made before the app's first instance registers."},
    {"explain", "explain HOST", "how a TLS connection for HOST would be routed, or why it would be refused"},
    {"metrics", "metrics", "the Prometheus metrics page"},
    {"export", "export", "the whole registry as a state file (JSON) on stdout"},
    {"import", "import FILE",
     "add a state file's apps and instances (with their addresses) to the daemon's registry: how a\n"
     "registry moves from a state file into etcd (--registry etcd:...) and back. Instances already\n"
     "there as in the file are left alone; one that differs stops the import (run it again once fixed)."},
    {"upgrade", "upgrade",
     "replace the running cvmgate by the binary now at its path, with its arguments and its config file\n"
     "read again, without refusing a connection: the new process takes over the listening sockets and\n"
     "the admin API, the old one drains its relays and exits. If the new one fails to start, the old one\n"
     "goes on and this says why (exit 1). `systemctl reload cvmgate` runs this."},
    {"reload-certificates", "reload-certificates",
     "reread every --tls-cert file; live connections keep their certificate, and a bad new one\n"
     "(unreadable, key mismatch, expired) leaves the ones in force and is reported"},
};

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: cvmgatectl [--admin unix:PATH|tcp:127.0.0.1:PORT] [--token-file FILE] [--json] VERB ...\n\n"
               "  --admin       where cvmgate's admin API listens (default: unix:/run/cvmgate/admin.sock)\n"
               "  --token-file  bearer token for a TCP admin API\n"
               "  --json        print the API's JSON instead of a table\n\nverbs:\n");
  for (const Verb& v : kVerbs) std::fprintf(out, "  %-74s\n", v.usage);
  std::fprintf(out, "\n`cvmgatectl VERB --help` describes one verb.\n");
}

struct Reply {
  int status = 0;
  std::string body;
};

absl::StatusOr<Reply> Call(const AdminAddress& admin, const std::string& token, const std::string& method,
                           const std::string& target, const std::string& body, int timeout_s = 10) {
  sockaddr_storage ss;
  socklen_t len = admin.ToSockaddr(ss);
  Fd fd(socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot reach cvmgate at ", admin.text, ": ", std::strerror(errno),
                                               admin.unix_socket ? " (is it running? see --admin)" : ""));
  }
  timeval tv{timeout_s, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  std::string req = absl::StrCat(method, " ", target, " HTTP/1.1\r\nHost: cvmgate\r\nConnection: close\r\n");
  if (!token.empty()) absl::StrAppend(&req, "Authorization: Bearer ", token, "\r\n");
  if (!body.empty()) absl::StrAppend(&req, "Content-Type: application/json\r\n");
  absl::StrAppend(&req, "Content-Length: ", body.size(), "\r\n\r\n", body);
  for (size_t off = 0; off < req.size();) {
    ssize_t n = write(fd.get(), req.data() + off, req.size() - off);
    if (n <= 0) {
      return absl::UnavailableError("the admin API closed the connection");
    }
    off += n;
  }
  std::string in;
  char buf[8192];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n > 0) {
      in.append(buf, n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  fd.reset();
  size_t sp = in.find(' ');
  size_t end = in.find("\r\n\r\n");
  Reply r;
  if (sp == std::string::npos || end == std::string::npos || !absl::SimpleAtoi(in.substr(sp + 1, 3), &r.status)) {
    return absl::UnavailableError("no valid HTTP reply from the admin API (timed out or closed)");
  }
  r.body = in.substr(end + 4);
  return r;
}

std::string Str(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "-";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()));
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    std::puts(line.c_str());
  }
}

std::string Age(const json& inst) {
  auto it = inst.find("last_handshake_age_s");
  if (it == inst.end()) return "static";
  if (it->is_null()) return "never";
  int64_t s = it->get<int64_t>();
  if (s < 120) return absl::StrCat(s, "s ago");
  if (s < 7200) return absl::StrCat(s / 60, "m ago");
  return absl::StrCat(s / 3600, "h ago");
}

void PrintHuman(const std::string& verb, const json& j) {
  if (verb == "list") {
    std::vector<std::vector<std::string>> rows = {{"APP", "INSTANCE", "IP", "PORTS", "HANDSHAKE", "HEALTH"}};
    for (const json& i : j["instances"]) {
      rows.push_back({Str(i, "app"), Str(i, "instance"), Str(i, "ip"), i.contains("ports") ? Str(i, "ports") : "all",
                      Age(i), i.value("healthy", false) ? "healthy" : "unhealthy"});
    }
    PrintTable(rows);
    std::printf("%zu instances; healthy = handshake within %s s; WireGuard: %s\n", j["instances"].size(),
                Str(j, "healthy_within_s").c_str(), Str(j, "wireguard").c_str());
    if (j.contains("node")) std::printf("health as gateway host %s sees it\n", Str(j, "node").c_str());
  } else if (verb == "nodes") {
    std::vector<std::vector<std::string>> rows = {{"NODE", "PUBLIC-KEY", "ENDPOINT", "TUNNEL-IP"}};
    for (const json& n : j["nodes"]) {
      rows.push_back({Str(n, "name") + (Str(n, "name") == Str(j, "node") ? " (this one)" : ""),
                      Str(n, "public_key").empty() ? "-" : Str(n, "public_key"),
                      Str(n, "endpoint").empty() ? "-" : Str(n, "endpoint"),
                      Str(n, "tunnel_address").empty() ? "-" : Str(n, "tunnel_address")});
    }
    PrintTable(rows);
    std::printf("%zu gateway hosts\n", j["nodes"].size());
  } else if (verb == "apps") {
    std::vector<std::vector<std::string>> rows = {{"APP", "INSTANCES", "CONNECTIONS", "MAX", "PROXY-PROTOCOL"}};
    for (const json& a : j["apps"]) {
      const json& o = a["overrides"];
      std::string max = Str(a, "max_connections") + (o.contains("max_connections") ? "*" : "");
      std::string pp =
          std::string(a.value("proxy_protocol", false) ? "on" : "off") + (o.contains("proxy_protocol") ? "*" : "");
      rows.push_back({Str(a, "app"), Str(a, "instances"), Str(a, "connections"), max, pp});
    }
    PrintTable(rows);
    const json& d = j["defaults"];
    std::printf("%zu apps; * = the app's override; defaults: max %s, proxy protocol %s\n", j["apps"].size(),
                Str(d, "max_connections").c_str(), d.value("proxy_protocol", false) ? "on" : "off");
  } else if (verb == "app-set") {
    std::printf("app %s%s: max connections %s, proxy protocol %s\n", Str(j, "app").c_str(),
                j.value("changed", false) ? "" : " (unchanged)", Str(j, "max_connections").c_str(),
                j.value("proxy_protocol", false) ? "on" : "off");
  } else if (verb == "explain") {
    std::printf("host:    %s\n", Str(j, "host").c_str());
    if (j.contains("mode")) {
      std::printf("route:   id %s, port %s, mode %s, base domain %s%s\n", Str(j, "id").c_str(), Str(j, "port").c_str(),
                  Str(j, "mode").c_str(), Str(j, "base_domain").c_str(),
                  j.value("pinned", false) ? " (instance id: pinned)" : "");
      std::vector<std::vector<std::string>> rows = {{"  INSTANCE", "ADDRESS", "HEALTH"}};
      for (const json& c : j["candidates"]) {
        rows.push_back({"  " + Str(c, "instance"), Str(c, "address"), c.value("healthy", false) ? "healthy" : "unhealthy"});
      }
      if (rows.size() > 1) PrintTable(rows);
    }
    std::printf("verdict: %s\n", Str(j, "verdict").c_str());
  } else if (verb == "register") {
    std::printf("%s instance %s of app %s at %s%s\n", j.value("changed", false) ? "registered" : "already registered:",
                Str(j, "instance").c_str(), Str(j, "app").c_str(), Str(j, "ip").c_str(),
                j.contains("ports") ? absl::StrCat(", ports ", Str(j, "ports")).c_str() : "");
    if (!j.value("static", false)) {
      std::printf("gateway public key: %s\ngateway endpoint:   %s\ngateway tunnel ip:  %s\n",
                  Str(j, "gateway_public_key").c_str(), Str(j, "gateway_endpoint").c_str(),
                  Str(j, "gateway_ip").c_str());
      // Several gateway hosts: the CVM peers with each (the one above is among them).
      for (const json& g : j.value("gateways", json::array())) {
        std::printf("gateway host %s: public key %s, endpoint %s, tunnel ip %s\n", Str(g, "name").c_str(),
                    Str(g, "public_key").c_str(), Str(g, "endpoint").c_str(), Str(g, "tunnel_address").c_str());
      }
    }
    std::string domains;
    for (const json& d : j["base_domains"]) domains += (domains.empty() ? "" : " ") + d.get<std::string>();
    std::printf("base domains:       %s\n", domains.c_str());
  } else if (verb == "deregister") {
    std::printf("deregistered instance %s of app %s\n", Str(j, "instance").c_str(), Str(j, "app").c_str());
  } else if (verb == "reload-certificates") {
    std::printf("reloaded the certificates of %s base domains\n", Str(j, "reloaded").c_str());
  } else if (verb == "upgrade") {
    std::printf("upgraded: pid %s serves now; pid %s drains its %s connections and exits\n", Str(j, "pid").c_str(),
                Str(j, "old_pid").c_str(), Str(j, "draining").c_str());
  } else if (verb == "import") {
    std::printf("imported: %s instances added, %s already there, %s apps' settings changed\n",
                Str(j, "added").c_str(), Str(j, "unchanged").c_str(), Str(j, "settings").c_str());
  }
}

int Main(int argc, char** argv) {
  const std::vector<std::string> words(argv + 1, argv + argc);
  // Before the verb: where the daemon is and how to print.
  auto global = ParseArgs(
      words,
      [](std::string_view name) {
        return name == "json" || name == "help" ? ArgKind::kSwitch
               : name == "admin" || name == "token-file" ? ArgKind::kOption
                                                          : ArgKind::kUnknown;
      },
      /*stop_at_positional=*/true);
  if (!global.ok()) {
    std::fprintf(stderr, "cvmgatectl: %s\n", std::string(global.status().message()).c_str());
    Usage(stderr);
    return 2;
  }
  if (global->Has("help")) {
    Usage(stdout);
    return 0;
  }
  if (global->positional.empty()) {
    Usage(stderr);
    return 2;
  }
  const std::string admin_text = global->Get("admin", "unix:/run/cvmgate/admin.sock");
  const std::string token_file = global->Get("token-file");
  const std::string verb = global->positional[0];
  const Verb* v = nullptr;
  for (const Verb& k : kVerbs) v = verb == k.name ? &k : v;
  if (v == nullptr) {
    std::fprintf(stderr, "cvmgatectl: unknown verb '%s'\n", verb.c_str());
    Usage(stderr);
    return 2;
  }
  // After it: the verb's own options (each takes a value) and words.
  auto local = ParseArgs(std::span(global->positional).subspan(1), [](std::string_view name) {
    return name == "json" || name == "help" ? ArgKind::kSwitch : ArgKind::kOption;
  });
  if (!local.ok()) {
    std::fprintf(stderr, "cvmgatectl %s: %s\n", verb.c_str(), std::string(local.status().message()).c_str());
    return 2;
  }
  if (local->Has("help")) {
    std::printf("usage: cvmgatectl %s\n\n%s\n", v->usage, v->help);
    return 0;
  }
  const bool as_json = global->Has("json") || local->Has("json");
  std::map<std::string, std::string> opts;
  for (const auto& [name, value] : local->options) {
    if (name != "json") opts[name] = value;
  }
  std::vector<std::string> positional = local->positional;
  auto usage_error = [&](const std::string& why) {
    std::fprintf(stderr, "cvmgatectl %s: %s\nusage: cvmgatectl %s\n", verb.c_str(), why.c_str(), v->usage);
    return 2;
  };
  auto admin = ParseAdminAddress(admin_text);
  if (!admin.ok()) return usage_error(std::string(admin.status().message()));
  std::string token;
  if (!token_file.empty()) {
    auto t = ReadSmallFile(token_file);
    if (!t.ok() || t->empty()) return usage_error("cannot read a token from " + token_file);
    token = *t;
  }
  std::string method = "GET";
  std::string target;
  json body;
  std::vector<std::string> allowed;
  if (verb == "register") {
    allowed = {"app", "instance", "public-key", "address", "ports"};
    if (!opts.contains("app") || !opts.contains("instance") || opts.contains("public-key") == opts.contains("address")) {
      return usage_error("give --app, --instance and one of --public-key or --address");
    }
    if (opts.contains("address") && !opts.contains("ports")) {
      return usage_error("a static instance (--address) names the ports it serves: give --ports, e.g. 8080,8443");
    }
    method = "POST";
    target = "/v1/register";
    body = {{"app", opts["app"]}, {"instance", opts["instance"]}};
    if (opts.contains("public-key")) body["public_key"] = opts["public-key"];
    if (opts.contains("address")) body["address"] = opts["address"];
    if (opts.contains("ports")) body["ports"] = opts["ports"];
  } else if (verb == "deregister") {
    allowed = {"instance"};
    if (!opts.contains("instance")) return usage_error("give --instance");
    method = "POST";
    target = "/v1/deregister";
    body = {{"instance", opts["instance"]}};
  } else if (verb == "list") {
    target = "/v1/list";
  } else if (verb == "nodes") {
    target = "/v1/nodes";
  } else if (verb == "apps") {
    target = "/v1/apps";
  } else if (verb == "app-set") {
    allowed = {"proxy-protocol", "max-connections"};
    if (positional.size() != 1) return usage_error("give exactly one app id");
    if (opts.empty()) return usage_error("give --proxy-protocol or --max-connections");
    body = {{"app", positional[0]}};
    positional.clear();
    if (opts.contains("proxy-protocol")) {
      const std::string& pp = opts["proxy-protocol"];
      if (pp == "on") body["proxy_protocol"] = true;
      else if (pp == "off") body["proxy_protocol"] = false;
      else if (pp == "default") body["proxy_protocol"] = nullptr;
      else return usage_error("--proxy-protocol takes on, off or default, not '" + pp + "'");
    }
    if (opts.contains("max-connections")) {
      const std::string& m = opts["max-connections"];
      int64_t n = 0;
      if (m == "default") {
        body["max_connections"] = nullptr;
      } else if (absl::SimpleAtoi(m, &n)) {
        body["max_connections"] = n;  // the daemon checks the range
      } else {
        return usage_error("--max-connections takes a number or default, not '" + m + "'");
      }
    }
    method = "POST";
    target = "/v1/app-settings";
  } else if (verb == "explain") {
    if (positional.size() != 1) return usage_error("give exactly one host name");
    std::string host;
    for (char c : positional[0]) {
      if (isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') {
        host += c;
      } else {
        host += absl::StrFormat("%%%02X", static_cast<unsigned char>(c));
      }
    }
    target = "/v1/explain?host=" + host;
    positional.clear();
  } else if (verb == "metrics") {
    target = "/metrics";
  } else if (verb == "export") {
    target = "/v1/export";
  } else if (verb == "import") {
    if (positional.size() != 1) return usage_error("give the state file to import");
    auto text = ReadSmallFile(positional[0]);
    if (!text.ok()) return usage_error(std::string(text.status().message()));
    body = json::parse(*text, nullptr, false);
    if (body.is_discarded()) return usage_error(positional[0] + " is not JSON");
    positional.clear();
    method = "POST";
    target = "/v1/import";
  } else if (verb == "reload-certificates") {
    method = "POST";
    target = "/v1/reload-certificates";
  } else if (verb == "upgrade") {
    method = "POST";
    target = "/v1/upgrade";
  }
  for (const auto& [k, val] : opts) {
    if (std::find(allowed.begin(), allowed.end(), k) == allowed.end()) return usage_error("unknown option --" + k);
  }
  if (!positional.empty()) return usage_error("unexpected argument '" + positional[0] + "'");
  // Arguments that are not UTF-8 travel as U+FFFD: the daemon then names what it refuses.
  // An upgrade waits for the new process to start (each of its two steps is bounded by the daemon).
  auto reply = Call(*admin, token, method, target,
                    body.is_null() ? "" : body.dump(-1, ' ', false, json::error_handler_t::replace),
                    verb == "upgrade" ? 150 : 10);
  if (!reply.ok()) {
    std::fprintf(stderr, "cvmgatectl: %s\n", std::string(reply.status().message()).c_str());
    return 1;
  }
  if ((verb == "metrics" || verb == "export") && reply->status == 200) {
    std::fputs(reply->body.c_str(), stdout);
    return 0;
  }
  json j = json::parse(reply->body, nullptr, false);
  if (reply->status != 200) {
    std::string message = !j.is_discarded() && j.contains("error") ? Str(j, "error") : reply->body;
    std::fprintf(stderr, "cvmgatectl %s: %s (HTTP %d)\n", verb.c_str(), message.c_str(), reply->status);
    return 1;
  }
  if (as_json || j.is_discarded()) {
    std::fputs(reply->body.c_str(), stdout);
  } else {
    PrintHuman(verb, j);
  }
  return 0;
}

}  // namespace
}  // namespace cvmgate

int main(int argc, char** argv) { return cvmgate::Main(argc, argv); }
