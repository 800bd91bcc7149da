// Control plane: peer reconciliation, health, snapshot publication and the admin API endpoints.
#include "control/control_plane.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <map>

#include <absl/strings/ascii.h>
#include <absl/strings/str_cat.h>
#include <nlohmann/json.hpp>

#include "control/metrics.h"
#include "dataplane/addresses.h"
#include "dataplane/decide.h"
#include "dataplane/host_name.h"
#include "dataplane/log.h"
#include "dataplane/strings.h"

namespace cvmgate {
namespace {

using nlohmann::json;

// Strings from requests are checked to be UTF-8 before they get here; replacing
// what is not keeps a missed one from ever throwing out of the control loop.
HttpResponse Json(int status, const json& body) {
  return {status, "application/json", body.dump(1, ' ', false, json::error_handler_t::replace) + "\n"};
}

HttpResponse Error(const absl::Status& s) {
  int status = 500;
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument: status = 400; break;
    case absl::StatusCode::kNotFound: status = 404; break;
    case absl::StatusCode::kAlreadyExists: status = 409; break;
    case absl::StatusCode::kResourceExhausted: status = 507; break;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kUnavailable:        // the registry's store (etcd) cannot be reached
    case absl::StatusCode::kDeadlineExceeded:   // or has no quorum
    case absl::StatusCode::kAborted: status = 503; break;
    default: break;
  }
  return Json(status, {{"error", std::string(s.message())}});
}

// The live gateway hosts sharing the registry: what a CVM needs to peer with each.
json GatewaysJson(const Registry& registry) {
  json out = json::array();
  for (const auto& [name, g] : registry.gateways()) {
    out.push_back({{"name", g.name},
                   {"public_key", g.public_key},
                   {"endpoint", g.endpoint},
                   {"tunnel_address", g.tunnel_address}});
  }
  return out;
}

std::string Field(const json& body, const char* name) {
  auto it = body.find(name);
  return it != body.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// This host's addresses, canonical text: what a wildcard listener accepts.
absl::flat_hash_set<std::string> HostAddresses() {
  absl::flat_hash_set<std::string> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr) continue;
    int family = a->ifa_addr->sa_family;
    if (family != AF_INET && family != AF_INET6) continue;
    sockaddr_storage ss{};
    std::memcpy(&ss, a->ifa_addr, family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
    out.insert(IpText(ss));
  }
  freeifaddrs(list);
  return out;
}

sockaddr_storage SockaddrOf(const std::string& address, uint16_t port) {
  return SockaddrFromIp(address, port).value_or(sockaddr_storage{});
}

}  // namespace

bool IsHealthy(const Registration& reg, int64_t last_handshake_sec, absl::Time now, absl::Duration within) {
  if (reg.is_static()) return true;
  if (last_handshake_sec <= 0) return false;
  return now - absl::FromUnixSeconds(last_handshake_sec) < within;
}

ControlPlane::ControlPlane(ControlOptions options, Registry& registry, SnapshotDomain& domain, Tunnel* tunnel,
                           Clock& clock, std::function<std::string()> worker_metrics)
    : options_(std::move(options)),
      registry_(registry),
      domain_(domain),
      tunnel_(tunnel),
      clock_(clock),
      worker_metrics_(std::move(worker_metrics)),
      tickets_rotated_(clock.Now()),
      host_addresses_(HostAddresses()) {
  catch_ups_seen_ = registry_.catch_ups();
  SyncPeers();
}

uint64_t ControlPlane::SyncPeers() {
  if (tunnel_ == nullptr) return 0;
  std::vector<Tunnel::Peer> peers;
  for (const auto& [id, reg] : registry_.instances()) {
    if (!reg.key) continue;
    in_addr ip{};
    inet_pton(AF_INET, reg.address.c_str(), &ip);
    peers.push_back({*reg.key, ip});
  }
  peer_count_ = peers.size();
  tunnel_->Want(std::move(peers), ++peers_gen_);
  return peers_gen_;
}

bool ControlPlane::IsLocal(const std::string& address) const {
  in_addr v4{};
  // Linux delivers all of 127.0.0.0/8 locally, whatever lo lists.
  if (inet_pton(AF_INET, address.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127) return true;
  return address == "::1" || host_addresses_.contains(address);
}

uint16_t ControlPlane::OwnListenerPort(const std::string& address, const PortSet& ports) const {
  bool local = IsLocal(address);
  for (const sockaddr_storage& l : options_.listeners) {
    uint16_t port = SockaddrPort(l);
    if (ports.Contains(port) && IsOwnListener(SockaddrOf(address, port), local, options_.listeners)) return port;
  }
  return 0;
}

int64_t ControlPlane::LastHandshake(const Registration& reg) const {
  if (!reg.key) return 0;
  auto it = handshakes_.find(reg.key->ToBase64());
  return it == handshakes_.end() ? 0 : it->second;
}

std::vector<RouteEntry> ControlPlane::RouteEntries(absl::Time now, std::vector<bool>* health) const {
  std::vector<RouteEntry> entries;
  entries.reserve(registry_.instances().size());
  for (const auto& [id, reg] : registry_.instances()) {
    bool up = IsHealthy(reg, LastHandshake(reg), now, options_.healthy_within);
    if (health != nullptr) health->push_back(up);
    entries.push_back({reg.app, reg.id, reg.address, up, MaxConnections(reg.app), ProxyProtocol(reg.app), reg.ports,
                       reg.is_static() && IsLocal(reg.address)});
  }
  return entries;
}

absl::Status ControlPlane::Publish() {
  std::vector<bool> health;
  std::vector<RouteEntry> entries = RouteEntries(clock_.Now(), &health);
  // Workers only see a new snapshot when routing really changed.
  if (published_once_ && health == published_health_ && published_version_ == registry_version_) {
    return absl::OkStatus();
  }
  auto snap = RouteSnapshot::Build(entries, &app_counters_, tls_);
  if (!snap.ok()) return snap.status();
  domain_.Publish(*std::move(snap));
  healthy_count_ = std::count(health.begin(), health.end(), true);
  published_health_ = std::move(health);
  published_version_ = registry_version_;
  published_once_ = true;
  ++publishes_;
  return absl::OkStatus();
}

absl::Status ControlPlane::Poll() {
  // An address added to or removed from this host changes which static instances are local.
  if (auto addresses = HostAddresses(); addresses != host_addresses_) {
    host_addresses_ = std::move(addresses);
    ++registry_version_;
  }
  if (clock_.Now() - tickets_rotated_ >= options_.ticket_key_rotation) {
    tickets_.Rotate();
    tickets_rotated_ = clock_.Now();
  }
  ++polls_;
  last_poll_unix_ = absl::ToUnixSeconds(clock_.Now());
  if (tunnel_ != nullptr) {
    // Handshakes the device could not be read for are kept as last seen: they
    // age, so the instances fall out of routing after --healthy-within, not at once.
    tunnel_view_ = tunnel_->Read();
    handshakes_ = tunnel_view_.handshakes;
  }
  return Publish();
}

absl::Status ControlPlane::LoadCertificates() {
  auto tls = TlsContexts::Load(options_.base_domains, options_.tls_certs, &tickets_, options_.tls_policy);
  if (!tls.ok()) return tls.status();
  tls_ = *std::move(tls);
  ++registry_version_;  // routing unchanged, but the snapshot carries the new contexts
  ++certificate_reloads_;
  return Publish();
}

void ControlPlane::SetLiveOptions(std::vector<TlsCertSpec> certs, TlsPolicy policy, int32_t app_max_connections,
                                  bool metrics_per_app) {
  policy.kernel_tls = options_.tls_policy.kernel_tls;
  options_.tls_certs = std::move(certs);
  options_.tls_policy = std::move(policy);
  options_.metrics_per_app = metrics_per_app;
  if (options_.app_max_connections != app_max_connections) {
    options_.app_max_connections = app_max_connections;
    ++registry_version_;  // the next publish carries the new limit
  }
}

absl::Status ControlPlane::Reload() {
  // Validate both before applying either, so a bad certificate keeps the old registry too.
  auto tls = TlsContexts::Load(options_.base_domains, options_.tls_certs, &tickets_, options_.tls_policy);
  if (!tls.ok()) return tls.status();
  if (auto s = registry_.Load(); !s.ok()) return s;
  catch_ups_seen_ = registry_.catch_ups();  // published below
  tls_ = *std::move(tls);
  ++certificate_reloads_;
  ++registry_version_;
  SyncPeers();
  return Poll();
}

absl::Status ControlPlane::RegistryChanged() {
  // Also what a write that had to be redone took in meanwhile.
  if (auto changed = registry_.CatchUp(); !changed.ok()) return changed.status();
  if (registry_.catch_ups() == catch_ups_seen_) return absl::OkStatus();
  catch_ups_seen_ = registry_.catch_ups();
  ++registry_version_;
  SyncPeers();
  return Poll();
}

HttpResponse ControlPlane::ReloadCertificates() {
  if (auto s = LoadCertificates(); !s.ok()) {
    Log("certificate reload failed, keeping the certificates in force: ", s.message());
    return Error(s);
  }
  Log("certificates reloaded (", options_.tls_certs.size(), " base domains)");
  return Json(200, {{"reloaded", options_.tls_certs.size()}});
}

HttpResponse ControlPlane::Handle(const HttpRequest& req) {
  if (req.path == "/v1/register") return req.method == "POST" ? Register(req) : Json(405, {{"error", "use POST"}});
  if (req.path == "/v1/deregister") {
    return req.method == "POST" ? Deregister(req) : Json(405, {{"error", "use POST"}});
  }
  if (req.path == "/v1/list") return req.method == "GET" ? List() : Json(405, {{"error", "use GET"}});
  if (req.path == "/v1/nodes") return req.method == "GET" ? Nodes() : Json(405, {{"error", "use GET"}});
  if (req.path == "/v1/export") {
    return req.method == "GET" ? HttpResponse{200, "application/json", registry_.ToJson()}
                               : Json(405, {{"error", "use GET"}});
  }
  if (req.path == "/v1/import") return req.method == "POST" ? Import(req) : Json(405, {{"error", "use POST"}});
  if (req.path == "/v1/explain") return req.method == "GET" ? Explain(req) : Json(405, {{"error", "use GET"}});
  if (req.path == "/v1/apps") return req.method == "GET" ? Apps() : Json(405, {{"error", "use GET"}});
  if (req.path == "/v1/app-settings") {
    return req.method == "POST" ? SetAppSettings(req) : Json(405, {{"error", "use POST"}});
  }
  if (req.path == "/metrics") return req.method == "GET" ? Metrics() : Json(405, {{"error", "use GET"}});
  if (req.path == "/v1/reload-certificates") {
    return req.method == "POST" ? ReloadCertificates() : Json(405, {{"error", "use POST"}});
  }
  return Json(404, {{"error", absl::StrCat("no endpoint ", req.path,
                                           " (have /v1/register, /v1/deregister, /v1/list, /v1/apps, /v1/app-settings, /v1/explain, "
                                           "/v1/reload-certificates, /metrics)")}});
}

HttpResponse ControlPlane::Register(const HttpRequest& req) {
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) return Error(absl::InvalidArgumentError("the body must be a JSON object"));
  std::string app = Field(body, "app");
  std::string id = Field(body, "instance");
  std::string key = Field(body, "public_key");
  std::string address = Field(body, "address");
  if (app.empty() || id.empty() || key.empty() == address.empty()) {
    return Error(absl::InvalidArgumentError(
        "give 'app', 'instance' and either 'public_key' (a CVM) or 'address' and 'ports' (a static instance)"));
  }
  std::string ports;
  if (auto it = body.find("ports"); it != body.end()) {
    if (!key.empty()) {
      return Error(absl::InvalidArgumentError("a CVM serves every port of its own: 'ports' is for static instances"));
    }
    if (!it->is_string()) return Error(absl::InvalidArgumentError("'ports' must be a string such as \"8080,8443\""));
    ports = it->get<std::string>();
  }
  if (!key.empty() && tunnel_ == nullptr) {
    return Error(absl::FailedPreconditionError("no WireGuard interface is configured (--wg-interface)"));
  }
  if (key.empty()) {
    // The registry checks both again; here they are needed to see whether the instance is the gateway itself.
    auto canonical = CanonicalStaticAddress(address);
    auto port_set = PortSet::Parse(ports);
    if (canonical.ok() && port_set.ok()) {
      if (uint16_t own = OwnListenerPort(*canonical, *port_set)) {
        return Error(absl::AlreadyExistsError(absl::StrCat(
            SockaddrText(SockaddrOf(*canonical, own)), " is this gateway's own listener: a static instance there would "
            "make the gateway connect to itself (serve other ports, or use another address)")));
      }
    }
  }
  auto out = key.empty() ? registry_.RegisterStatic(app, id, address, ports) : registry_.Register(app, id, key);
  if (!out.ok()) return Error(out.status());
  if (out->changed) {
    ++registry_version_;
    Log("registered instance ", out->reg.id, " of app ", out->reg.app, " at ", out->reg.address,
        out->reg.is_static() ? " (static)" : "");
  }
  // The peer is set by the tunnel's supervisor. A CVM dials as soon as it has
  // the reply, so the reply waits (briefly) for the peer to be there; a tunnel
  // being restored answers "pending" and the peer follows once it is back.
  bool peer_set = true;
  if (tunnel_ != nullptr && out->reg.key) {
    uint64_t gen = out->changed ? SyncPeers() : peers_gen_;
    peer_set = tunnel_->WaitApplied(gen, absl::Milliseconds(500));
    tunnel_view_ = tunnel_->Read();
  }
  if (auto s = Publish(); !s.ok()) return Error(s);
  json reply = {{"app", out->reg.app},
                {"instance", out->reg.id},
                {"ip", out->reg.address},
                {"static", out->reg.is_static()},
                {"changed", out->changed},
                {"base_domains", options_.base_domains}};
  if (out->reg.is_static()) reply["ports"] = out->reg.ports.ToString();
  if (!out->reg.is_static()) {
    reply["wireguard_peer"] = peer_set ? "set" : "pending: the tunnel is being restored; the peer is set once it is back";
    reply["gateway_public_key"] = tunnel_view_.public_key;
    reply["gateway_endpoint"] = options_.gateway_endpoint;
    reply["gateway_ip"] = IpText(registry_.pool().gateway());
    // With several gateway hosts the CVM peers with every live one (this one included).
    if (!registry_.gateways().empty()) reply["gateways"] = GatewaysJson(registry_);
  }
  return Json(200, reply);
}

HttpResponse ControlPlane::Deregister(const HttpRequest& req) {
  json body = json::parse(req.body, nullptr, false);
  std::string id = body.is_object() ? Field(body, "instance") : "";
  if (id.empty()) return Error(absl::InvalidArgumentError("give 'instance'"));
  auto removed = registry_.Deregister(id);
  if (!removed.ok()) return Error(removed.status());
  ++registry_version_;
  Log("deregistered instance ", removed->id, " of app ", removed->app);
  if (removed->key) {
    handshakes_.erase(removed->key->ToBase64());
    SyncPeers();  // the supervisor removes the peer
  }
  if (auto s = Publish(); !s.ok()) return Error(s);
  return Json(200, {{"instance", removed->id}, {"app", removed->app}, {"removed", true}});
}

HttpResponse ControlPlane::List() {
  absl::Time now = clock_.Now();
  json instances = json::array();
  for (const auto& [id, reg] : registry_.instances()) {
    int64_t hs = LastHandshake(reg);
    json i = {{"app", reg.app},
              {"instance", reg.id},
              {"ip", reg.address},
              {"static", reg.is_static()},
              {"healthy", IsHealthy(reg, hs, now, options_.healthy_within)}};
    if (reg.is_static()) i["ports"] = reg.ports.ToString();
    if (reg.key) {
      i["public_key"] = reg.key->ToBase64();
      i["last_handshake"] = hs;
      i["last_handshake_age_s"] = hs > 0 ? json(absl::ToInt64Seconds(now - absl::FromUnixSeconds(hs))) : json(nullptr);
    }
    instances.push_back(i);
  }
  json reply = {{"instances", instances},
                {"healthy_within_s", absl::ToInt64Seconds(options_.healthy_within)},
                {"wireguard", tunnel_ ? tunnel_view_.backend : std::string("none")}};
  // Health is each host's own (its own handshakes): say whose view this is.
  if (!options_.node_name.empty()) reply["node"] = options_.node_name;
  return Json(200, reply);
}

HttpResponse ControlPlane::Import(const HttpRequest& req) {
  auto imported = registry_.Import(req.body);
  // Whatever was added before an error stays added: the routes and peers follow it either way.
  ++registry_version_;
  SyncPeers();
  if (auto s = Publish(); !s.ok()) return Error(s);
  if (!imported.ok()) return Error(imported.status());
  Log("imported a registry: ", imported->added, " instances added, ", imported->unchanged, " already here, ",
      imported->settings, " apps' settings changed");
  return Json(200, {{"added", imported->added}, {"unchanged", imported->unchanged}, {"settings", imported->settings}});
}

HttpResponse ControlPlane::Nodes() {
  if (options_.node_name.empty()) {
    return Error(absl::NotFoundError(
        "no gateway cluster: this host keeps its registry in its state file (--registry etcd:... shares one)"));
  }
  return Json(200, {{"node", options_.node_name}, {"nodes", GatewaysJson(registry_)}});
}

HttpResponse ControlPlane::Explain(const HttpRequest& req) {
  auto host = req.query.find("host");
  if (host == req.query.end() || host->second.empty()) {
    return Error(absl::InvalidArgumentError("give the host name as ?host=NAME"));
  }
  // The routes as they stand this instant, decided the way a worker decides.
  absl::Time now = clock_.Now();
  auto snap = RouteSnapshot::Build(RouteEntries(now), &app_counters_, tls_);
  if (!snap.ok()) return Error(snap.status());
  const RouteInputs in{**snap, options_.base_domains, options_.listeners};
  const Decision decision = Decide(host->second, in);
  const NameResult& name = decision.name;
  json out = {{"host", host->second}};
  if (name.status != NameStatus::kOk) {
    out["verdict"] = absl::StrCat("refused: ", std::string(NameStatusName(name.status)),
                                  name.status == NameStatus::kUnknownDomain ? " (not under any --base-domain)" : "");
    out["routable"] = false;
    return Json(200, out);
  }
  out["id"] = name.target.id;
  out["port"] = name.target.port;
  out["mode"] = std::string(ModeName(name.target.mode));
  out["base_domain"] = options_.base_domains[name.target.base_domain];
  json candidates = json::array();
  const auto& all = registry_.instances();
  bool pinned = all.contains(name.target.id);
  const uint16_t port = name.target.port;
  std::string own_listener;
  for (const auto& [id, reg] : all) {
    if (pinned ? id != name.target.id : reg.app != name.target.id) continue;
    bool up = IsHealthy(reg, LastHandshake(reg), now, options_.healthy_within);
    bool serves = !reg.is_static() || reg.ports.Contains(port);
    sockaddr_storage target = SockaddrOf(reg.address, port);
    bool own = serves && reg.is_static() && IsOwnListener(target, IsLocal(reg.address), options_.listeners);
    if (own) own_listener = SockaddrText(target);
    json c = {{"instance", reg.id},
              {"address", SockaddrText(target)},
              {"healthy", up},
              {"static", reg.is_static()},
              {"serves_port", serves && !own}};
    if (reg.is_static()) c["ports"] = reg.ports.ToString();
    candidates.push_back(c);
  }
  out["pinned"] = pinned;
  out["candidates"] = candidates;
  std::string app = pinned ? all.at(name.target.id).app : name.target.id;
  int32_t live = app_counters_.live(app);
  int32_t max = MaxConnections(app);
  out["app_connections"] = live;
  out["app_max_connections"] = max;
  out["proxy_protocol"] = ProxyProtocol(app);
  out["routable"] = false;
  if (decision.refused()) {
    switch (decision.refusal) {
      case Counter::closed_no_certificate:
        out["verdict"] = absl::StrCat("refused: no --tls-cert for ", options_.base_domains[name.target.base_domain],
                                      " to terminate TLS with");
        break;
      case Counter::closed_unknown_app:
        out["verdict"] = absl::StrCat("refused: no app or instance '", name.target.id, "'");
        break;
      case Counter::closed_no_healthy_instance: out["verdict"] = "refused: no healthy instance"; break;
      case Counter::closed_port_not_served:
        out["verdict"] = absl::StrCat("refused: no healthy instance serves port ", port, " (static instances name theirs)");
        break;
      case Counter::closed_own_listener:
        out["verdict"] = absl::StrCat("refused: ", own_listener, " is this gateway's own listener");
        break;
      default: out["verdict"] = absl::StrCat("refused: ", AbslView(kCounterInfo[static_cast<size_t>(decision.refusal)].name)); break;
    }
  } else if (live >= max) {
    out["verdict"] = absl::StrCat("refused: app ", app, " holds ", live, " connections, its limit");
  } else {
    std::string how = decision.verdict == Decision::Verdict::kPassthrough ? "passthrough"
                      : name.target.mode == Mode::kGrpc ? "TLS terminated here (ALPN h2), plaintext"
                                                        : "TLS terminated here (ALPN http/1.1), plaintext";
    out["verdict"] = pinned ? absl::StrCat(how, " to the pinned instance")
                            : absl::StrCat(how, " to one of ", CountUsable(in, decision.found, port),
                                           " healthy instances serving port ", port, ", chosen at random");
    out["routable"] = true;
  }
  return Json(200, out);
}

int32_t ControlPlane::MaxConnections(const std::string& app) const {
  return registry_.app_settings(app).max_connections.value_or(options_.app_max_connections);
}

bool ControlPlane::ProxyProtocol(const std::string& app) const {
  return registry_.app_settings(app).proxy_protocol.value_or(options_.proxy_protocol);
}

HttpResponse ControlPlane::Apps() {
  std::map<std::string, size_t> instances;
  for (const auto& [id, reg] : registry_.instances()) ++instances[reg.app];
  for (const auto& [app, settings] : registry_.all_app_settings()) instances.try_emplace(app, 0);
  json apps = json::array();
  for (const auto& [app, count] : instances) {
    const AppSettings& s = registry_.app_settings(app);
    json overrides = json::object();
    if (s.proxy_protocol) overrides["proxy_protocol"] = *s.proxy_protocol;
    if (s.max_connections) overrides["max_connections"] = *s.max_connections;
    apps.push_back({{"app", app},
                    {"instances", count},
                    {"connections", app_counters_.live(app)},
                    {"max_connections", MaxConnections(app)},
                    {"proxy_protocol", ProxyProtocol(app)},
                    {"overrides", overrides}});
  }
  return Json(200, {{"apps", apps},
                    {"defaults", {{"max_connections", options_.app_max_connections},
                                  {"proxy_protocol", options_.proxy_protocol}}}});
}

// A field set to a value overrides the flag, set to null follows the flag
// again, and left out stays as it is.
HttpResponse ControlPlane::SetAppSettings(const HttpRequest& req) {
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    return Error(absl::InvalidArgumentError("the body must be a JSON object"));
  }
  std::string raw_app = Field(body, "app");
  if (raw_app.empty()) return Error(absl::InvalidArgumentError("give 'app'"));
  std::string id = absl::AsciiStrToLower(raw_app);
  for (const auto& [name, value] : body.items()) {
    if (name != "app" && name != "proxy_protocol" && name != "max_connections") {
      return Error(absl::InvalidArgumentError(
          absl::StrCat("unknown field '", name, "' (have app, proxy_protocol, max_connections)")));
    }
  }
  AppSettings next = registry_.app_settings(id);
  if (auto it = body.find("proxy_protocol"); it != body.end()) {
    if (it->is_null()) {
      next.proxy_protocol.reset();
    } else if (it->is_boolean()) {
      next.proxy_protocol = it->get<bool>();
    } else {
      return Error(
          absl::InvalidArgumentError("'proxy_protocol' must be true, false or null (the --proxy-protocol flag)"));
    }
  }
  if (auto it = body.find("max_connections"); it != body.end()) {
    if (it->is_null()) {
      next.max_connections.reset();
    } else if (it->is_number_integer() && it->get<int64_t>() >= 1 && it->get<int64_t>() <= kMaxAppConnectionsLimit) {
      next.max_connections = it->get<int32_t>();
    } else {
      return Error(absl::InvalidArgumentError(absl::StrCat("'max_connections' must be an integer in [1, ",
                                                           kMaxAppConnectionsLimit, "] or null (--app-max-connections)")));
    }
  }
  auto changed = registry_.SetAppSettings(raw_app, next);  // validates the id as typed
  if (!changed.ok()) return Error(changed.status());
  if (*changed) {
    ++registry_version_;
    Log("app ", id, ": max_connections ", MaxConnections(id), ", proxy_protocol ", ProxyProtocol(id) ? "on" : "off");
  }
  if (auto s = Publish(); !s.ok()) return Error(s);
  return Json(200, {{"app", id},
                    {"changed", *changed},
                    {"max_connections", MaxConnections(id)},
                    {"proxy_protocol", ProxyProtocol(id)}});
}

HttpResponse ControlPlane::Metrics() {
  MetricsText m;
  if (worker_metrics_) m.Append(worker_metrics_());
  auto gauge = [&m](const char* name, const char* help, auto value) { m.Gauge(name, help, value); };
  auto counter = [&m](const char* name, const char* help, uint64_t value) { m.Counter(name, help, value); };
  const Tunnel::View& t = tunnel_view_;
  gauge("instances", "registered instances", registry_.instances().size());
  gauge("healthy_instances", "instances routable now", healthy_count_);
  gauge("wireguard_peers", "WireGuard peers the registry wants", peer_count_);
  gauge("health_poll_last_timestamp_seconds", "unix time of the last health poll", last_poll_unix_);
  counter("health_polls_total", "health polls run", polls_);
  if (tunnel_ != nullptr) {
    gauge("wireguard_readable", "1 while the last read of the WireGuard device succeeded", t.readable);
    gauge("wireguard_last_read_age_seconds", "time since the WireGuard device was last read",
          t.last_read == absl::InfinitePast() ? -1 : absl::ToDoubleSeconds(clock_.Now() - t.last_read));
    gauge("wireguard_read_duration_seconds", "duration of the last read of the WireGuard device", t.last_read_seconds);
    counter("wireguard_reads_total", "reads of the WireGuard device that succeeded", t.reads);
    counter("wireguard_read_failures_total", "reads of the WireGuard device that failed", t.read_failures);
    counter("wireguard_peer_errors_total", "peer changes the WireGuard backend refused", t.peer_errors);
    counter("wireguard_restores_total", "times the WireGuard interface was recreated and reconfigured", t.restores);
    counter("wireguard_restore_failures_total", "tries to restore the WireGuard interface that failed",
            t.restore_failures);
    counter("wireguard_go_kills_total", "unresponsive wireguard-go processes killed to start another",
            t.wireguard_go_kills);
    gauge("wireguard_last_restore_seconds", "duration of the last restore of the WireGuard interface",
          t.last_restore_seconds);
  }
  if (options_.metrics_per_app) {
    // One series per app and gauge: --metrics-per-app off keeps a registry of many apps out of Prometheus.
    std::map<std::string, std::pair<int64_t, int64_t>> apps;  // app -> (instances, healthy)
    for (const RouteEntry& e : RouteEntries(clock_.Now(), nullptr)) {
      auto& [instances, healthy] = apps[e.app];
      ++instances;
      healthy += e.healthy;
    }
    std::vector<std::pair<std::string, int64_t>> live, instances, healthy;
    for (const auto& [app, n] : apps) {
      live.emplace_back(app, app_counters_.live(app));
      instances.emplace_back(app, n.first);
      healthy.emplace_back(app, n.second);
    }
    m.GaugePerLabel("app_live_connections", "connections each app holds now (on this host)", "app", live);
    m.GaugePerLabel("app_instances", "instances registered per app", "app", instances);
    m.GaugePerLabel("app_healthy_instances", "instances routable now per app", "app", healthy);
  }
  counter("snapshot_publishes_total", "route snapshots published", publishes_);
  counter("certificate_loads_total", "times the --tls-cert files were loaded", certificate_reloads_);
  counter("ticket_key_rotations_total", "session-ticket keys made", tickets_.rotations());
  return {200, "text/plain; version=0.0.4", m.Take()};
}

}  // namespace cvmgate
