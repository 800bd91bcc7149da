// CVM registry: validation, idempotent registration, and the versioned JSON state file.
#include "control/registry.h"

#include <arpa/inet.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "control/durable_file.h"
#include "dataplane/host_name.h"
#include "nlohmann/json.hpp"

namespace cvmgate {
namespace {

constexpr int kStateVersion = 1;

absl::StatusOr<std::string> ValidId(std::string_view what, std::string_view raw) {
  std::string id = absl::AsciiStrToLower(std::string(raw));
  if (!IsValidId(id)) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), " '", std::string(raw), "' must be 1-63 of [a-z0-9-]"));
  }
  return id;
}

bool IsIpLiteral(const std::string& text) {
  in6_addr buf;
  return inet_pton(AF_INET, text.c_str(), &buf) == 1 || inet_pton(AF_INET6, text.c_str(), &buf) == 1;
}

std::optional<in_addr> Ipv4(const std::string& text) {
  in_addr a{};
  if (inet_pton(AF_INET, text.c_str(), &a) == 1) return a;
  return std::nullopt;
}

}  // namespace

absl::Status Registry::Load() {
  std::ifstream in(path_, std::ios::binary);
  if (!in && errno != ENOENT) return absl::NotFoundError(absl::StrCat("state file ", path_, ": ", std::strerror(errno)));
  std::string text = R"({"version": 1})";
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  auto fail = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("state file ", path_, ": ", why));
  };
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return fail("not a JSON object");
  if (!doc.contains("version") || doc["version"] != kStateVersion) {
    return fail(absl::StrCat("unsupported or missing version (this cvmgate reads version ", kStateVersion, ")"));
  }
  // Validate into an empty pool of the same shape; swap in only when all is well.
  auto fresh = IpPool::Create(pool_.cidr(), IpText(pool_.gateway()));
  if (!fresh.ok()) return fresh.status();
  IpPool pool = *std::move(fresh);
  std::map<std::string, Registration> loaded;
  std::map<std::string, AppSettings> settings;
  absl::flat_hash_set<std::string> keys;
  if (doc.contains("apps")) {
    if (!doc["apps"].is_object()) return fail("'apps' must be an object");
    for (auto& [raw_app, app] : doc["apps"].items()) {
      auto app_id = ValidId("app id", raw_app);
      if (!app_id.ok()) return fail(std::string(app_id.status().message()));
      if (!app.is_object() || (app.contains("instances") && !app["instances"].is_array())) {
        return fail(absl::StrCat("app '", *app_id, "': 'instances' must be an array"));
      }
      AppSettings s;
      if (app.contains("proxy_protocol")) {
        if (!app["proxy_protocol"].is_boolean()) {
          return fail(absl::StrCat("app '", *app_id, "': 'proxy_protocol' must be true or false"));
        }
        s.proxy_protocol = app["proxy_protocol"].get<bool>();
      }
      if (app.contains("max_connections")) {
        const auto& m = app["max_connections"];
        if (!m.is_number_integer() || m.get<int64_t>() < 1 || m.get<int64_t>() > kMaxAppConnectionsLimit) {
          return fail(absl::StrCat("app '", *app_id, "': 'max_connections' must be an integer in [1, ",
                                   kMaxAppConnectionsLimit, "]"));
        }
        s.max_connections = m.get<int32_t>();
      }
      if (!s.empty()) settings[*app_id] = s;
      if (!app.contains("instances")) continue;
      for (auto& entry : app["instances"]) {
        if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_string() || !entry.contains("address") ||
            !entry["address"].is_string()) {
          return fail(absl::StrCat("app '", *app_id, "': each instance needs string fields 'id' and 'address'"));
        }
        Registration reg;
        reg.app = *app_id;
        auto id = ValidId("instance id", entry["id"].get<std::string>());
        if (!id.ok()) return fail(std::string(id.status().message()));
        reg.id = *id;
        reg.address = entry["address"].get<std::string>();
        if (loaded.contains(reg.id)) return fail(absl::StrCat("instance id '", reg.id, "' appears twice"));
        if (entry.contains("public_key")) {
          if (!entry["public_key"].is_string()) return fail(absl::StrCat("instance '", reg.id, "': bad public_key"));
          auto key = WgKey::FromBase64(entry["public_key"].get<std::string>());
          if (!key.ok()) return fail(absl::StrCat("instance '", reg.id, "': ", key.status().message()));
          if (!keys.insert(key->ToBase64()).second) {
            return fail(absl::StrCat("instance '", reg.id, "': public key used by another instance"));
          }
          reg.key = *key;
          auto ip = Ipv4(reg.address);
          if (!ip) return fail(absl::StrCat("instance '", reg.id, "': address '", reg.address, "' is not IPv4"));
          if (auto s = pool.Reserve(*ip); !s.ok()) return fail(absl::StrCat("instance '", reg.id, "': ", s.message()));
        } else {
          if (!IsIpLiteral(reg.address)) {
            return fail(absl::StrCat("instance '", reg.id, "': address '", reg.address, "' is not an IP address"));
          }
          if (auto ip = Ipv4(reg.address); ip && pool.Contains(*ip)) {
            if (auto s = pool.Reserve(*ip); !s.ok()) {
              return fail(absl::StrCat("instance '", reg.id, "': ", s.message()));
            }
          }
        }
        loaded.emplace(reg.id, std::move(reg));
      }
    }
  }
  pool_ = std::move(pool);
  instances_ = std::move(loaded);
  settings_ = std::move(settings);
  return absl::OkStatus();
}

std::string Registry::ToJson() const {
  nlohmann::json apps = nlohmann::json::object();
  for (const auto& [id, reg] : instances_) {
    nlohmann::json inst = {{"id", reg.id}, {"address", reg.address}};
    if (reg.key) inst["public_key"] = reg.key->ToBase64();
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

absl::Status Registry::Save() const { return WriteFileDurably(path_, ToJson()); }

absl::StatusOr<Registry::Outcome> Registry::Commit(Registration reg, std::optional<Registration> previous,
                                                   bool allocated) {
  instances_[reg.id] = reg;
  if (auto s = Save(); !s.ok()) {
    // Roll back: the caller is told it failed, so memory must match the file.
    if (previous) {
      instances_[reg.id] = *previous;
    } else {
      instances_.erase(reg.id);
    }
    if (allocated) {
      if (auto ip = Ipv4(reg.address)) pool_.Release(*ip);
    }
    return absl::Status(s.code(), absl::StrCat("registration not saved: ", s.message()));
  }
  Outcome out;
  out.reg = std::move(reg);
  out.changed = true;
  if (previous && previous->key && out.reg.key && !(*previous->key == *out.reg.key)) out.replaced_key = previous->key;
  return out;
}

absl::StatusOr<Registry::Outcome> Registry::Register(std::string_view raw_app, std::string_view raw_id,
                                                     std::string_view public_key) {
  auto app = ValidId("app id", raw_app);
  if (!app.ok()) return app.status();
  auto id = ValidId("instance id", raw_id);
  if (!id.ok()) return id.status();
  auto key = WgKey::FromBase64(public_key);
  if (!key.ok()) return absl::InvalidArgumentError(absl::StrCat("public key: ", key.status().message()));
  for (const auto& [other_id, other] : instances_) {
    if (other_id != *id && other.key && *other.key == *key) {
      return absl::AlreadyExistsError(absl::StrCat("public key already belongs to instance '", other_id, "'"));
    }
  }
  auto it = instances_.find(*id);
  if (it != instances_.end()) {
    const Registration& old = it->second;
    if (old.app != *app) {
      return absl::AlreadyExistsError(absl::StrCat("instance '", *id, "' belongs to app '", old.app, "'"));
    }
    if (old.is_static()) {
      return absl::AlreadyExistsError(
          absl::StrCat("instance '", *id, "' is registered as static; deregister it first"));
    }
    if (*old.key == *key) return Outcome{old, std::nullopt, false};
    Registration next = old;
    next.key = *key;  // same address: the CVM keeps its /32, the peer is replaced
    return Commit(std::move(next), old, false);
  }
  auto ip = pool_.Allocate();
  if (!ip.ok()) return ip.status();
  Registration reg{*app, *id, *key, IpText(*ip)};
  return Commit(std::move(reg), std::nullopt, true);
}

absl::StatusOr<Registry::Outcome> Registry::RegisterStatic(std::string_view raw_app, std::string_view raw_id,
                                                           std::string_view raw_address) {
  auto app = ValidId("app id", raw_app);
  if (!app.ok()) return app.status();
  auto id = ValidId("instance id", raw_id);
  if (!id.ok()) return id.status();
  std::string address(raw_address);
  if (!IsIpLiteral(address)) {
    return absl::InvalidArgumentError(absl::StrCat("address '", address, "' is not an IPv4 or IPv6 address"));
  }
  auto it = instances_.find(*id);
  if (it != instances_.end()) {
    const Registration& old = it->second;
    if (old.app != *app) {
      return absl::AlreadyExistsError(absl::StrCat("instance '", *id, "' belongs to app '", old.app, "'"));
    }
    if (!old.is_static()) {
      return absl::AlreadyExistsError(
          absl::StrCat("instance '", *id, "' is registered with a WireGuard key; deregister it first"));
    }
    if (old.address == address) return Outcome{old, std::nullopt, false};
  }
  for (const auto& [other_id, other] : instances_) {
    if (other_id != *id && other.address == address) {
      return absl::AlreadyExistsError(absl::StrCat("address ", address, " is already used by instance '", other_id, "'"));
    }
  }
  std::optional<Registration> previous;
  if (it != instances_.end()) previous = it->second;
  bool allocated = false;
  if (auto ip = Ipv4(address); ip && pool_.Contains(*ip)) {
    if (auto s = pool_.Reserve(*ip); !s.ok()) return s;
    allocated = true;
  }
  if (previous) {
    if (auto ip = Ipv4(previous->address); ip && pool_.Contains(*ip)) pool_.Release(*ip);
  }
  auto out = Commit(Registration{*app, *id, std::nullopt, address}, previous, allocated);
  if (!out.ok() && previous) {
    if (auto ip = Ipv4(previous->address); ip && pool_.Contains(*ip)) (void)pool_.Reserve(*ip);
  }
  return out;
}

absl::StatusOr<Registration> Registry::Deregister(std::string_view raw_id) {
  std::string id = absl::AsciiStrToLower(std::string(raw_id));
  auto it = instances_.find(id);
  if (it == instances_.end()) return absl::NotFoundError(absl::StrCat("no instance '", id, "'"));
  Registration removed = it->second;
  instances_.erase(it);
  if (auto s = Save(); !s.ok()) {
    instances_.emplace(id, removed);
    return absl::Status(s.code(), absl::StrCat("deregistration not saved: ", s.message()));
  }
  if (auto ip = Ipv4(removed.address); ip && pool_.Contains(*ip)) pool_.Release(*ip);
  return removed;
}

absl::StatusOr<bool> Registry::SetAppSettings(std::string_view raw_app, const AppSettings& settings) {
  auto app = ValidId("app id", raw_app);
  if (!app.ok()) return app.status();
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
  if (auto s = Save(); !s.ok()) {
    settings_ = std::move(previous);
    return absl::Status(s.code(), absl::StrCat("app settings not saved: ", s.message()));
  }
  return true;
}

const AppSettings& Registry::app_settings(const std::string& app) const {
  static const AppSettings kNone;
  auto it = settings_.find(app);
  return it == settings_.end() ? kNone : it->second;
}

}  // namespace cvmgate
