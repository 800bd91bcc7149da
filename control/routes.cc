// Route snapshot: parsing and validating the versioned state file.
#include "control/routes.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "dataplane/host_name.h"
#include "dataplane/strings.h"
#include "nlohmann/json.hpp"

namespace cvmgate {
namespace {

constexpr int kStateVersion = 1;

absl::Status ParseAddress(const std::string& text, Instance& inst) {
  std::memset(&inst.addr, 0, sizeof(inst.addr));
  auto* v4 = reinterpret_cast<sockaddr_in*>(&inst.addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&inst.addr);
  if (inet_pton(AF_INET, text.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    inst.addr_len = sizeof(sockaddr_in);
    return absl::OkStatus();
  }
  if (inet_pton(AF_INET6, text.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    inst.addr_len = sizeof(sockaddr_in6);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("instance '", inst.id, "': address '", text, "' is not an IPv4 or IPv6 address"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<const RouteSnapshot>> RouteSnapshot::FromJson(std::string_view text) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!doc.is_object()) return absl::InvalidArgumentError("the top level must be a JSON object");
  auto version = doc.find("version");
  if (version == doc.end() || !version->is_number_integer()) {
    return absl::InvalidArgumentError("missing integer field 'version'");
  }
  if (*version != kStateVersion) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported state version ", version->dump(),
                                                   " (this cvmgate reads version ", kStateVersion, ")"));
  }
  auto snap = std::unique_ptr<RouteSnapshot>(new RouteSnapshot());
  auto apps = doc.find("apps");
  if (apps == doc.end()) return std::unique_ptr<const RouteSnapshot>(std::move(snap));
  if (!apps->is_object()) return absl::InvalidArgumentError("'apps' must be an object of app id to app");
  for (auto& [raw_app, app] : apps->items()) {
    std::string app_id = absl::AsciiStrToLower(raw_app);
    if (!IsValidId(app_id)) {
      return absl::InvalidArgumentError(absl::StrCat("app id '", raw_app, "' is not 1-63 of [a-z0-9-]"));
    }
    if (snap->apps_.contains(app_id)) {
      return absl::InvalidArgumentError(absl::StrCat("app id '", app_id, "' appears twice"));
    }
    auto& members = snap->apps_[app_id];
    auto instances = app.is_object() ? app.find("instances") : app.end();
    if (instances == app.end() || !instances->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat("app '", app_id, "': 'instances' must be an array"));
    }
    for (auto& entry : *instances) {
      if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_string() ||
          !entry.contains("address") || !entry["address"].is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("app '", app_id, "': each instance needs string fields 'id' and 'address'"));
      }
      Instance inst;
      inst.id = absl::AsciiStrToLower(entry["id"].get<std::string>());
      inst.app = app_id;
      inst.address = entry["address"].get<std::string>();
      if (!IsValidId(inst.id)) {
        return absl::InvalidArgumentError(absl::StrCat("instance id '", inst.id, "' is not 1-63 of [a-z0-9-]"));
      }
      if (snap->by_instance_id_.contains(inst.id)) {
        return absl::InvalidArgumentError(absl::StrCat("instance id '", inst.id, "' appears twice"));
      }
      if (auto s = ParseAddress(inst.address, inst); !s.ok()) return s;
      uint32_t index = static_cast<uint32_t>(snap->instances_.size());
      snap->by_instance_id_[inst.id] = index;
      members.push_back(index);
      snap->instances_.push_back(std::move(inst));
    }
  }
  snap->self_index_.resize(snap->instances_.size());
  for (uint32_t i = 0; i < snap->self_index_.size(); ++i) snap->self_index_[i] = i;
  return std::unique_ptr<const RouteSnapshot>(std::move(snap));
}

absl::StatusOr<std::unique_ptr<const RouteSnapshot>> RouteSnapshot::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return FromJson(R"({"version": 1})");
    return absl::NotFoundError(absl::StrCat("state file ", path, ": ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("state file ", path, ": read error"));
  auto snap = FromJson(text.str());
  if (!snap.ok()) {
    return absl::Status(snap.status().code(), absl::StrCat("state file ", path, ": ", snap.status().message()));
  }
  return snap;
}

std::span<const uint32_t> RouteSnapshot::Candidates(std::string_view id) const {
  if (auto it = by_instance_id_.find(AbslView(id)); it != by_instance_id_.end()) {
    return std::span(self_index_).subspan(it->second, 1);
  }
  if (auto it = apps_.find(AbslView(id)); it != apps_.end()) return it->second;
  return {};
}

}  // namespace cvmgate
