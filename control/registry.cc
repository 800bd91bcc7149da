// CVM registry: validation, idempotent registration, and the versioned JSON state file.
#include "control/registry.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <absl/random/random.h>
#include <absl/strings/ascii.h>
#include <absl/strings/str_cat.h>

#include "control/durable_file.h"
#include "dataplane/host_name.h"
#include "dataplane/log.h"
#include "dataplane/strings.h"
#include <nlohmann/json.hpp>

namespace cvmgate {
namespace {

constexpr int kStateVersion = 1;

absl::StatusOr<std::string> ValidId(std::string_view what, std::string_view raw) {
  std::string id = absl::AsciiStrToLower(AbslView(raw));
  if (!IsValidId(id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        AbslView(what), " '", AbslView(raw.substr(0, 100)),
        "' must be a DNS label: 1-63 of [a-z0-9-], starting and ending with a letter or digit"));
  }
  return id;
}

std::optional<in_addr> Ipv4(const std::string& text) {
  in_addr a{};
  if (inet_pton(AF_INET, text.c_str(), &a) == 1) return a;
  return std::nullopt;
}

absl::Status NamespaceError(std::string_view what) {
  return absl::AlreadyExistsError(
      absl::StrCat(AbslView(what), ": an id names one app or one instance, never both (<id>.<base-domain> must "
                                   "mean one thing)"));
}

// An app's settings as the document holds them, in the app's object (other fields are not settings).
absl::StatusOr<AppSettings> ParseSettings(const std::string& app_id, const nlohmann::json& app) {
  AppSettings s;
  if (app.contains("proxy_protocol")) {
    if (!app["proxy_protocol"].is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat("app '", app_id, "': 'proxy_protocol' must be true or false"));
    }
    s.proxy_protocol = app["proxy_protocol"].get<bool>();
  }
  if (app.contains("max_connections")) {
    const auto& m = app["max_connections"];
    if (!m.is_number_integer() || m.get<int64_t>() < 1 || m.get<int64_t>() > kMaxAppConnectionsLimit) {
      return absl::InvalidArgumentError(absl::StrCat("app '", app_id, "': 'max_connections' must be an integer in [1, ",
                                                     kMaxAppConnectionsLimit, "]"));
    }
    s.max_connections = m.get<int32_t>();
  }
  return s;
}

// One instance of `app_id` as the document holds it, checked on its own: the rules between
// instances (unique ids, keys and tunnel addresses, the namespace) are the registry's.
absl::StatusOr<Registration> ParseInstance(const std::string& app_id, const nlohmann::json& entry) {
  if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_string() || !entry.contains("address") ||
      !entry["address"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("app '", app_id, "': each instance needs string fields 'id' and 'address'"));
  }
  Registration reg;
  reg.app = app_id;
  auto id = ValidId("instance id", entry["id"].get<std::string>());
  if (!id.ok()) return id.status();
  reg.id = *id;
  auto where = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("instance '", reg.id, "': ", why));
  };
  reg.address = entry["address"].get<std::string>();
  if (entry.contains("public_key")) {
    if (!entry["public_key"].is_string()) return where("bad public_key");
    auto key = WgKey::FromBase64(entry["public_key"].get<std::string>());
    if (!key.ok()) return where(key.status().message());
    if (entry.contains("ports")) return where("a CVM serves every port of its own: 'ports' is for static instances");
    reg.key = *key;
    if (auto ip = Ipv4(reg.address)) reg.address = IpText(*ip);
    return reg;
  }
  auto address = CanonicalStaticAddress(reg.address);
  if (!address.ok()) return where(address.status().message());
  reg.address = *address;
  if (!entry.contains("ports") || !entry["ports"].is_string()) {
    return where("a static instance names the ports it serves (\"ports\": \"8080,8443\")");
  }
  auto ports = PortSet::Parse(entry["ports"].get<std::string>());
  if (!ports.ok()) return where(ports.status().message());
  reg.ports = *std::move(ports);
  return reg;
}

absl::StatusOr<GatewayNode> ParseGateway(const std::string& name, const nlohmann::json& g) {
  if (!g.is_object()) return absl::InvalidArgumentError(absl::StrCat("gateway '", name, "' must be an object"));
  auto field = [&](const char* f) { return g.contains(f) && g[f].is_string() ? g[f].get<std::string>() : ""; };
  return GatewayNode{name, field("public_key"), field("endpoint"), field("tunnel_address")};
}

}  // namespace

absl::StatusOr<std::string> CanonicalStaticAddress(std::string_view raw) {
  std::string text(raw.substr(0, INET6_ADDRSTRLEN + 1));
  auto refuse = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", AbslView(raw.substr(0, 100)), "' ", AbslView(why)));
  };
  in_addr v4{};
  in6_addr v6{};
  bool is_v4 = inet_pton(AF_INET, text.c_str(), &v4) == 1;
  if (!is_v4) {
    if (text.size() != raw.size() || inet_pton(AF_INET6, text.c_str(), &v6) != 1) {
      return refuse("is not an IPv4 or IPv6 address");
    }
    // ::ffff:a.b.c.d is a.b.c.d: one address, one spelling, one set of rules.
    if (IN6_IS_ADDR_V4MAPPED(&v6)) {
      std::memcpy(&v4, &v6.s6_addr[12], 4);
      is_v4 = true;
    }
  }
  char out[INET6_ADDRSTRLEN];
  if (is_v4) {
    uint32_t h = ntohl(v4.s_addr);
    if ((h >> 24) == 0) return refuse("is unspecified (0.0.0.0/8 names no host)");
    if ((h >> 28) == 0xe) return refuse("is multicast");
    if (h == 0xffffffff) return refuse("is the broadcast address");
    if ((h >> 28) == 0xf) return refuse("is reserved (240.0.0.0/4)");
    inet_ntop(AF_INET, &v4, out, sizeof(out));
    return std::string(out);
  }
  if (IN6_IS_ADDR_UNSPECIFIED(&v6)) return refuse("is unspecified");
  if (IN6_IS_ADDR_MULTICAST(&v6)) return refuse("is multicast");
  inet_ntop(AF_INET6, &v6, out, sizeof(out));
  return std::string(out);
}

absl::Status Registry::CheckNames(const std::string& app, const std::string& id) const {
  if (auto it = instances_.find(id); it != instances_.end() && it->second.app != app) {
    return absl::AlreadyExistsError(absl::StrCat("instance '", id, "' belongs to app '", it->second.app, "'"));
  }
  if (id == app || IsApp(id)) return NamespaceError(absl::StrCat("instance id '", id, "' is an app's id"));
  if (auto it = instances_.find(app); it != instances_.end()) {
    return NamespaceError(absl::StrCat("app id '", app, "' is the id of an instance of app '", it->second.app, "'"));
  }
  return absl::OkStatus();
}

absl::Status Registry::CheckAddress(const Registration& reg) const {
  auto ip = Ipv4(reg.address);
  bool in_pool = ip && pool_.Contains(*ip);
  if (!reg.is_static() && !in_pool) {
    return absl::InvalidArgumentError(
        absl::StrCat("address ", reg.address, " is not an IPv4 address of the pool ", pool_.cidr()));
  }
  if (!in_pool) return absl::OkStatus();  // a static host outside the tunnel may serve several instances
  absl::Status s = pool_.CanReserve(*ip);
  if (absl::IsAlreadyExists(s)) {
    for (const auto& [other_id, other] : instances_) {
      if (other.address == reg.address) {
        return absl::AlreadyExistsError(absl::StrCat("address ", reg.address, " is already used by instance '",
                                                     other_id, "' (a tunnel address belongs to one instance)"));
      }
    }
  }
  return s;
}

void Registry::Link(const Registration& reg) {
  instances_[reg.id] = reg;
  ++app_sizes_[reg.app];
  if (reg.key) key_owner_[reg.key->ToBase64()] = reg.id;
  if (auto ip = Ipv4(reg.address); ip && pool_.Contains(*ip)) (void)pool_.Reserve(*ip);
}

void Registry::Unlink(const std::string& id) {
  auto it = instances_.find(id);
  if (it == instances_.end()) return;
  Registration reg = std::move(it->second);
  instances_.erase(it);
  if (--app_sizes_[reg.app] == 0) app_sizes_.erase(reg.app);
  if (reg.key) key_owner_.erase(reg.key->ToBase64());
  if (auto ip = Ipv4(reg.address); ip && pool_.Contains(*ip)) pool_.Release(*ip);
}

absl::StatusOr<std::string> FileStore::Read() {
  std::ifstream in(path_, std::ios::binary);
  if (!in && errno != ENOENT) return absl::NotFoundError(absl::StrCat(name_, ": ", std::strerror(errno)));
  if (!in) return std::string(R"({"version": 1})");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status FileStore::Write(std::span<const RegistryChange>, const Registry& after) {
  return WriteFileDurably(path_, after.ToJson());
}

absl::Status Registry::Load() {
  auto read = store_->Read();
  if (!read.ok()) return read.status();
  const std::string& text = *read;
  auto fail = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(store_->name(), ": ", why));
  };
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return fail("not a JSON object");
  if (!doc.contains("version") || doc["version"] != kStateVersion) {
    return fail(absl::StrCat("unsupported or missing version (this cvmgate reads version ", kStateVersion, ")"));
  }
  // Build a registry of the same shape by the same rules; swap it in only when all is well.
  auto pool = IpPool::Create(pool_.cidr(), IpText(pool_.gateway()));
  if (!pool.ok()) return pool.status();
  Registry fresh(*std::move(pool), std::unique_ptr<RegistryStore>());
  // The gateway hosts first: their tunnel addresses are never a CVM's.
  if (doc.contains("gateways")) {
    if (!doc["gateways"].is_object()) return fail("'gateways' must be an object");
    for (auto& [name, g] : doc["gateways"].items()) {
      auto node = ParseGateway(name, g);
      if (!node.ok()) return fail(node.status().message());
      if (auto s = fresh.ReserveGateway(*node); !s.ok()) return fail(s.message());
      fresh.gateways_[name] = *std::move(node);
    }
  }
  if (doc.contains("apps")) {
    if (!doc["apps"].is_object()) return fail("'apps' must be an object");
    for (auto& [raw_app, app] : doc["apps"].items()) {
      auto app_id = ValidId("app id", raw_app);
      if (!app_id.ok()) return fail(app_id.status().message());
      if (fresh.IsApp(*app_id)) return fail(absl::StrCat("app '", *app_id, "' appears twice (ids ignore case)"));
      if (!app.is_object() || (app.contains("instances") && !app["instances"].is_array())) {
        return fail(absl::StrCat("app '", *app_id, "': 'instances' must be an array"));
      }
      auto settings = ParseSettings(*app_id, app);
      if (!settings.ok()) return fail(settings.status().message());
      if (!settings->empty()) fresh.settings_[*app_id] = *settings;
      if (!app.contains("instances")) continue;
      for (auto& entry : app["instances"]) {
        auto reg = ParseInstance(*app_id, entry);
        if (!reg.ok()) return fail(reg.status().message());
        auto where = [&](absl::string_view why) { return fail(absl::StrCat("instance '", reg->id, "': ", why)); };
        if (fresh.instances_.contains(reg->id)) return where("appears twice");
        if (reg->key) {
          if (auto owner = fresh.key_owner_.find(reg->key->ToBase64()); owner != fresh.key_owner_.end()) {
            return where(absl::StrCat("public key used by instance '", owner->second, "' too"));
          }
        }
        if (auto s = fresh.CheckAddress(*reg); !s.ok()) return where(s.message());
        fresh.Link(*reg);
      }
    }
  }
  // The namespace once every app is known: an instance may come before the app it collides with.
  for (const auto& [id, reg] : fresh.instances_) {
    if (auto s = fresh.CheckNames(reg.app, id); !s.ok()) return fail(s.message());
  }
  pool_ = std::move(fresh.pool_);
  instances_ = std::move(fresh.instances_);
  settings_ = std::move(fresh.settings_);
  app_sizes_ = std::move(fresh.app_sizes_);
  key_owner_ = std::move(fresh.key_owner_);
  gateways_ = std::move(fresh.gateways_);
  ++catch_ups_;
  return absl::OkStatus();
}

absl::Status Registry::ReserveGateway(const GatewayNode& node) {
  auto ip = Ipv4(node.tunnel_address);
  if (!ip || !pool_.Contains(*ip) || ip->s_addr == pool_.gateway().s_addr) return absl::OkStatus();
  if (absl::Status s = pool_.Reserve(*ip); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("gateway '", node.name, "': tunnel address ", node.tunnel_address, ": ", s.message()));
  }
  return absl::OkStatus();
}

void Registry::ReleaseGateway(const GatewayNode& node) {
  auto ip = Ipv4(node.tunnel_address);
  if (ip && pool_.Contains(*ip) && ip->s_addr != pool_.gateway().s_addr) pool_.Release(*ip);
}

absl::StatusOr<bool> Registry::CatchUp() {
  RegistryUpdate update = store_->TakeUpdate();
  if (update.empty()) return false;
  if (!update.resync) {
    absl::Status s = Apply(update);
    if (s.ok()) {
      ++catch_ups_;
      return true;
    }
    Log("registry: ", store_->name(), ": ", s.message(), "; reading it whole");
  }
  if (absl::Status s = Load(); !s.ok()) return s;
  return true;
}

absl::Status Registry::Apply(const RegistryUpdate& update) {
  // Everything is parsed first: a malformed value changes nothing.
  std::vector<std::pair<std::string, std::optional<Registration>>> instances;
  for (const auto& [id, text] : update.instances) {
    if (!text) {
      instances.emplace_back(id, std::nullopt);
      continue;
    }
    nlohmann::json v = nlohmann::json::parse(*text, nullptr, false);
    if (v.is_discarded() || !v.is_object() || !v.contains("app") || !v["app"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("instance '", id, "' is not {\"app\": ..., \"address\": ...}"));
    }
    auto app = ValidId("app id", v["app"].get<std::string>());
    if (!app.ok()) return app.status();
    v.erase("app");
    v["id"] = id;
    auto reg = ParseInstance(*app, v);
    if (!reg.ok()) return reg.status();
    if (reg->id != id) return absl::InvalidArgumentError(absl::StrCat("instance key '", id, "' is not an id"));
    instances.emplace_back(id, *std::move(reg));
  }
  std::vector<std::pair<std::string, AppSettings>> settings;
  for (const auto& [raw_app, text] : update.apps) {
    auto app = ValidId("app id", raw_app);
    if (!app.ok()) return app.status();
    AppSettings parsed;
    if (text) {
      nlohmann::json v = nlohmann::json::parse(*text, nullptr, false);
      if (v.is_discarded() || !v.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat("app '", *app, "': settings are not a JSON object"));
      }
      auto s = ParseSettings(*app, v);
      if (!s.ok()) return s.status();
      parsed = *s;
    }
    settings.emplace_back(*app, parsed);
  }
  std::vector<std::pair<std::string, std::optional<GatewayNode>>> gateways;
  for (const auto& [name, text] : update.gateways) {
    std::optional<GatewayNode> node;
    if (text) {
      auto parsed = ParseGateway(name, nlohmann::json::parse(*text, nullptr, false));
      if (!parsed.ok()) return parsed.status();
      node = *std::move(parsed);
    }
    gateways.emplace_back(name, std::move(node));
  }

  // Then applied: first what goes (the old values of all that changed), then what comes, so a value
  // moving from one key to another within the update finds its place free. What was done is kept
  // to undo it all on a conflict with what is here.
  std::vector<Registration> unlinked;
  std::vector<std::string> linked;
  std::vector<GatewayNode> released;
  std::vector<GatewayNode> reserved;
  std::map<std::string, AppSettings> settings_before;
  auto undo = [&](absl::Status why) {
    for (const std::string& id : linked) Unlink(id);
    for (const GatewayNode& g : reserved) {
      ReleaseGateway(g);
      gateways_.erase(g.name);
    }
    for (const GatewayNode& g : released) {
      (void)ReserveGateway(g);
      gateways_[g.name] = g;
    }
    for (const Registration& reg : unlinked) Link(reg);
    for (const auto& [app, s] : settings_before) {
      if (s.empty()) {
        settings_.erase(app);
      } else {
        settings_[app] = s;
      }
    }
    return why;
  };
  for (const auto& [id, reg] : instances) {
    if (auto it = instances_.find(id); it != instances_.end()) {
      unlinked.push_back(it->second);
      Unlink(id);
    }
  }
  for (const auto& [name, node] : gateways) {
    if (auto it = gateways_.find(name); it != gateways_.end()) {
      released.push_back(it->second);
      ReleaseGateway(it->second);
      gateways_.erase(it);
    }
  }
  for (const auto& [name, node] : gateways) {
    if (!node) continue;
    if (absl::Status s = ReserveGateway(*node); !s.ok()) return undo(s);
    reserved.push_back(*node);
    gateways_[name] = *node;
  }
  for (const auto& [app, s] : settings) {
    settings_before.emplace(app, app_settings(app));
    if (s.empty()) {
      settings_.erase(app);
    } else {
      settings_[app] = s;
    }
  }
  for (const auto& [id, reg] : instances) {
    if (!reg) continue;
    if (reg->key) {
      if (auto owner = key_owner_.find(reg->key->ToBase64()); owner != key_owner_.end()) {
        return undo(absl::AlreadyExistsError(
            absl::StrCat("instance '", id, "': public key used by instance '", owner->second, "' too")));
      }
    }
    if (absl::Status s = CheckAddress(*reg); !s.ok()) {
      return undo(absl::Status(s.code(), absl::StrCat("instance '", id, "': ", s.message())));
    }
    Link(*reg);
    linked.push_back(id);
  }
  // The namespace, where the update touched it.
  for (const std::string& id : linked) {
    if (absl::Status s = CheckNames(instances_.at(id).app, id); !s.ok()) return undo(s);
  }
  for (const auto& [app, s] : settings) {
    if (auto it = instances_.find(app); it != instances_.end() && !s.empty()) {
      return undo(NamespaceError(absl::StrCat("app id '", app, "' is the id of an instance of app '", it->second.app, "'")));
    }
  }
  return absl::OkStatus();
}

std::string Registry::ToJson() const {
  nlohmann::json apps = nlohmann::json::object();
  for (const auto& [id, reg] : instances_) {
    nlohmann::json inst = {{"id", reg.id}, {"address", reg.address}};
    if (reg.key) inst["public_key"] = reg.key->ToBase64();
    if (reg.is_static()) inst["ports"] = reg.ports.ToString();
    apps[reg.app]["instances"].push_back(inst);
  }
  for (const auto& [app, s] : settings_) {
    nlohmann::json& entry = apps[app];
    if (!entry.contains("instances")) entry["instances"] = nlohmann::json::array();
    if (s.proxy_protocol) entry["proxy_protocol"] = *s.proxy_protocol;
    if (s.max_connections) entry["max_connections"] = *s.max_connections;
  }
  nlohmann::json doc = {{"version", kStateVersion}, {"apps", apps}};
  return doc.dump(1) + "\n";
}

absl::Status Registry::Save(std::span<const RegistryChange> changes) { return store_->Write(changes, *this); }

void Registry::BackOff(int attempt) {
  thread_local absl::BitGen rng;
  int64_t cap_us = std::min<int64_t>(int64_t{2000} << std::min(attempt, 6), 100000);  // 4 ms, doubling to 100 ms
  std::this_thread::sleep_for(std::chrono::microseconds(absl::Uniform<int64_t>(rng, 0, cap_us)));
}

absl::StatusOr<Registry::Outcome> Registry::Commit(std::optional<Registration> previous, Registration next) {
  if (previous) Unlink(previous->id);
  absl::Status s = CheckAddress(next);
  if (s.ok()) {
    Link(next);
    if (s = Save({previous, next, std::nullopt, {}}); !s.ok()) {
      Unlink(next.id);
      s = absl::Status(s.code(), absl::StrCat("registration not saved: ", s.message()));
    }
  }
  if (!s.ok()) {
    if (previous) Link(*previous);  // roll back: the caller is told it failed, so memory must match the file
    return s;
  }
  Outcome out;
  out.changed = true;
  if (previous && previous->key && next.key && !(*previous->key == *next.key)) out.replaced_key = previous->key;
  out.reg = std::move(next);
  return out;
}

absl::StatusOr<Registry::Outcome> Registry::RegisterOnce(std::string_view raw_app, std::string_view raw_id,
                                                         std::string_view public_key) {
  auto app = ValidId("app id", raw_app);
  if (!app.ok()) return app.status();
  auto id = ValidId("instance id", raw_id);
  if (!id.ok()) return id.status();
  auto key = WgKey::FromBase64(public_key);
  if (!key.ok()) return absl::InvalidArgumentError(absl::StrCat("public key: ", key.status().message()));
  if (auto s = CheckNames(*app, *id); !s.ok()) return s;
  if (auto owner = key_owner_.find(key->ToBase64()); owner != key_owner_.end() && owner->second != *id) {
    return absl::AlreadyExistsError(absl::StrCat("public key already belongs to instance '", owner->second, "'"));
  }
  auto it = instances_.find(*id);
  if (it != instances_.end()) {
    const Registration& old = it->second;
    if (old.is_static()) {
      return absl::AlreadyExistsError(
          absl::StrCat("instance '", *id, "' is registered as static; deregister it first"));
    }
    if (*old.key == *key) return Outcome{old, std::nullopt, false};
    Registration next = old;
    next.key = *key;  // same address: the CVM keeps its /32, the peer is replaced
    return Commit(old, std::move(next));
  }
  auto ip = pool_.Allocate();
  if (!ip.ok()) return ip.status();
  pool_.Release(*ip);  // Commit takes it, or leaves it free when the registration fails
  return Commit(std::nullopt, Registration{*app, *id, *key, IpText(*ip), {}});
}

absl::StatusOr<Registry::Outcome> Registry::RegisterStaticOnce(std::string_view raw_app, std::string_view raw_id,
                                                               std::string_view raw_address,
                                                               std::string_view raw_ports) {
  auto app = ValidId("app id", raw_app);
  if (!app.ok()) return app.status();
  auto id = ValidId("instance id", raw_id);
  if (!id.ok()) return id.status();
  auto address = CanonicalStaticAddress(raw_address);
  if (!address.ok()) return address.status();
  if (raw_ports.empty()) {
    return absl::InvalidArgumentError("a static instance names the ports it serves (e.g. 8080,8443)");
  }
  auto ports = PortSet::Parse(raw_ports);
  if (!ports.ok()) return ports.status();
  if (auto s = CheckNames(*app, *id); !s.ok()) return s;
  Registration next{*app, *id, std::nullopt, *address, *ports};
  std::optional<Registration> previous;
  if (auto it = instances_.find(*id); it != instances_.end()) {
    const Registration& old = it->second;
    if (!old.is_static()) {
      return absl::AlreadyExistsError(
          absl::StrCat("instance '", *id, "' is registered with a WireGuard key; deregister it first"));
    }
    if (old.address == next.address && old.ports == next.ports) return Outcome{old, std::nullopt, false};
    previous = old;
  }
  return Commit(std::move(previous), std::move(next));
}

absl::StatusOr<Registration> Registry::DeregisterOnce(std::string_view raw_id) {
  std::string id = absl::AsciiStrToLower(AbslView(raw_id));
  auto it = instances_.find(id);
  if (it == instances_.end()) {
    return absl::NotFoundError(absl::StrCat("no instance '", AbslView(raw_id.substr(0, 100)), "'"));
  }
  Registration removed = it->second;
  Unlink(id);
  if (auto s = Save({removed, std::nullopt, std::nullopt, {}}); !s.ok()) {
    Link(removed);
    return absl::Status(s.code(), absl::StrCat("deregistration not saved: ", s.message()));
  }
  return removed;
}

absl::StatusOr<bool> Registry::SetAppSettingsOnce(std::string_view raw_app, const AppSettings& settings) {
  auto app = ValidId("app id", raw_app);
  if (!app.ok()) return app.status();
  if (auto it = instances_.find(*app); it != instances_.end()) {
    return NamespaceError(absl::StrCat("app id '", *app, "' is the id of an instance of app '", it->second.app, "'"));
  }
  if (settings.max_connections &&
      (*settings.max_connections < 1 || *settings.max_connections > kMaxAppConnectionsLimit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_connections must be in [1, ", kMaxAppConnectionsLimit, "], not ", *settings.max_connections));
  }
  if (app_settings(*app) == settings) return false;
  std::map<std::string, AppSettings> previous = settings_;
  if (settings.empty()) {
    settings_.erase(*app);
  } else {
    settings_[*app] = settings;
  }
  if (auto s = Save({std::nullopt, std::nullopt, *app, settings}); !s.ok()) {
    settings_ = std::move(previous);
    return absl::Status(s.code(), absl::StrCat("app settings not saved: ", s.message()));
  }
  return true;
}

namespace {

// A document to check by the registry's rules, never written.
class DocumentStore final : public RegistryStore {
 public:
  explicit DocumentStore(std::string text) : text_(std::move(text)) {}
  const std::string& name() const override { return name_; }
  absl::StatusOr<std::string> Read() override { return text_; }
  absl::Status Write(std::span<const RegistryChange>, const Registry&) override {
    return absl::InternalError("an imported document is not written");
  }

 private:
  std::string text_;
  std::string name_ = "imported registry";
};

}  // namespace

absl::StatusOr<bool> Registry::ImportBatchOnce(std::span<const Registration> batch, Imported& out) {
  std::vector<RegistryChange> changes;
  size_t unchanged = 0;
  absl::Status s;
  for (const Registration& reg : batch) {
    if (auto it = instances_.find(reg.id); it != instances_.end()) {
      const Registration& here = it->second;
      if (here.app == reg.app && here.address == reg.address && here.key == reg.key && here.ports == reg.ports) {
        ++unchanged;
        continue;
      }
      s = absl::AlreadyExistsError(absl::StrCat("instance '", reg.id, "' is registered here otherwise (app ",
                                                here.app, ", address ", here.address, "): deregister it first"));
      break;
    }
    if (s = CheckNames(reg.app, reg.id); !s.ok()) break;
    if (reg.key) {
      if (auto owner = key_owner_.find(reg.key->ToBase64()); owner != key_owner_.end()) {
        s = absl::AlreadyExistsError(absl::StrCat("instance '", reg.id, "': public key already belongs to instance '",
                                                  owner->second, "'"));
        break;
      }
    }
    if (s = CheckAddress(reg); !s.ok()) {
      s = absl::Status(s.code(), absl::StrCat("instance '", reg.id, "': ", s.message()));
      break;
    }
    Link(reg);
    changes.push_back({std::nullopt, reg, std::nullopt, {}});
  }
  if (s.ok() && !changes.empty()) s = Save(changes);
  if (!s.ok()) {
    for (const RegistryChange& c : changes) Unlink(c.after->id);  // nothing of a failed batch stays
    return s;
  }
  out.added += changes.size();
  out.unchanged += unchanged;
  return true;
}

absl::StatusOr<Registry::Imported> Registry::Import(const std::string& document) {
  auto pool = IpPool::Create(pool_.cidr(), IpText(pool_.gateway()));
  if (!pool.ok()) return pool.status();
  Registry incoming(*std::move(pool), std::make_unique<DocumentStore>(document));
  if (absl::Status s = incoming.Load(); !s.ok()) return s;
  Imported out;
  for (const auto& [app, settings] : incoming.settings_) {
    auto changed = SetAppSettings(app, settings);
    if (!changed.ok()) return changed.status();
    out.settings += *changed;
  }
  // In batches as large as one write of the store may be: a batch is added whole or not at all.
  std::vector<Registration> all;
  for (const auto& [id, reg] : incoming.instances_) all.push_back(reg);
  const size_t per_write = std::max<size_t>(1, store_->max_changes());
  for (size_t i = 0; i < all.size(); i += per_write) {
    std::span<const Registration> batch(all.data() + i, std::min(per_write, all.size() - i));
    if (auto done = Retried([&] { return ImportBatchOnce(batch, out); }); !done.ok()) {
      const absl::Status& s = done.status();
      return absl::Status(s.code(), absl::StrCat(s.message(), " (", out.added, " instances were added)"));
    }
  }
  return out;
}

const AppSettings& Registry::app_settings(const std::string& app) const {
  static const AppSettings kNone;
  auto it = settings_.find(app);
  return it == settings_.end() ? kNone : it->second;
}

}  // namespace cvmgate
