// Host-name grammar: splits the first label into id, port and mode.
#include "dataplane/host_name.h"

#include <absl/strings/ascii.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

namespace cvmgate {
namespace {

constexpr size_t kMaxLabel = 63;
constexpr size_t kMaxName = 253;

bool IsHostChar(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'; }

// The part after the last '-' is a port/mode suffix when it is `[0-9]*[sg]?` and not empty.
bool IsSuffix(std::string_view s) {
  if (s.empty()) return false;
  size_t digits = s.size();
  if (s.back() == 's' || s.back() == 'g') --digits;
  for (size_t i = 0; i < digits; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  return true;
}

}  // namespace

std::string_view ModeName(Mode mode) {
  switch (mode) {
    case Mode::kTerminate: return "terminate";
    case Mode::kPassthrough: return "passthrough";
    case Mode::kGrpc: return "grpc";
  }
  return "unknown";
}

std::string_view NameStatusName(NameStatus status) {
  switch (status) {
    case NameStatus::kOk: return "ok";
    case NameStatus::kBadName: return "bad_name";
    case NameStatus::kUnknownDomain: return "unknown_domain";
    case NameStatus::kBadPort: return "bad_port";
  }
  return "unknown";
}

bool IsValidId(std::string_view id) {
  if (id.empty() || id.size() > kMaxLabel || id.front() == '-' || id.back() == '-') return false;
  for (char c : id) {
    if (c == '.' || !IsHostChar(c)) return false;
  }
  return true;
}

NameResult ParseHostName(std::string_view raw, const std::vector<std::string>& base_domains) {
  NameResult out;
  if (!raw.empty() && raw.back() == '.') raw.remove_suffix(1);
  if (raw.empty() || raw.size() > kMaxName) return out;
  std::string name = absl::AsciiStrToLower(std::string(raw));
  for (char c : name) {
    if (!IsHostChar(c)) return out;
  }
  // Empty labels ("a..b", a second trailing dot) are not host names.
  if (name.find("..") != std::string::npos || name.back() == '.') return out;
  size_t dot = name.find('.');
  if (dot == std::string::npos) {
    out.status = NameStatus::kUnknownDomain;
    return out;
  }
  std::string_view label(name.data(), dot);
  if (label.size() > kMaxLabel) return out;  // RFC 1035 2.3.4, whatever the id inside it
  std::string_view domain = std::string_view(name).substr(dot + 1);
  size_t index = base_domains.size();
  for (size_t i = 0; i < base_domains.size(); ++i) {
    if (base_domains[i] == domain) {
      index = i;
      break;
    }
  }
  if (index == base_domains.size()) {
    out.status = NameStatus::kUnknownDomain;
    return out;
  }

  std::string_view id = label;
  std::string_view suffix;
  size_t dash = label.rfind('-');
  if (dash != std::string_view::npos && IsSuffix(label.substr(dash + 1))) {
    id = label.substr(0, dash);
    suffix = label.substr(dash + 1);
  }
  if (!IsValidId(id)) return out;

  Mode mode = Mode::kTerminate;
  if (!suffix.empty() && (suffix.back() == 's' || suffix.back() == 'g')) {
    mode = suffix.back() == 's' ? Mode::kPassthrough : Mode::kGrpc;
    suffix.remove_suffix(1);
  }
  uint32_t port = mode == Mode::kPassthrough ? 443 : 80;
  if (!suffix.empty()) {
    // Canonical decimal only: no leading zero, at most 65535.
    if (suffix.size() > 5 || suffix[0] == '0' || !absl::SimpleAtoi(absl::string_view(suffix.data(), suffix.size()), &port) || port < 1 ||
        port > 65535) {
      out.status = NameStatus::kBadPort;
      return out;
    }
  }
  out.status = NameStatus::kOk;
  out.target.id = std::string(id);
  out.target.port = static_cast<uint16_t>(port);
  out.target.mode = mode;
  out.target.base_domain = index;
  return out;
}

absl::StatusOr<std::string> NormalizeBaseDomain(std::string_view domain) {
  if (!domain.empty() && domain.back() == '.') domain.remove_suffix(1);
  std::string d = absl::AsciiStrToLower(std::string(domain));
  bool ok = !d.empty() && d.size() <= kMaxName && d.front() != '.' && d.find("..") == std::string::npos;
  for (char c : d) ok = ok && IsHostChar(c);
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("base domain '", std::string(domain), "' is not a host name (letters, digits, '-' and '.')"));
  }
  return d;
}

}  // namespace cvmgate
