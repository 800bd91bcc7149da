// The registry kept in etcd (see registry_store.h).
#include "control/etcd/registry_store.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <functional>

#include <absl/strings/str_cat.h>
#include <nlohmann/json.hpp>

#include "control/wireguard/wireguard.h"
#include "dataplane/addresses.h"
#include "dataplane/log.h"
#include "dataplane/strings.h"

namespace cvmgate {
namespace {

using nlohmann::json;

constexpr std::string_view kInstances = "instances/";
constexpr std::string_view kApps = "apps/";
constexpr std::string_view kAddressClaims = "claims/address/";
constexpr std::string_view kKeyClaims = "claims/key/";
constexpr std::string_view kSequence = "sequence";
constexpr std::string_view kNodes = "nodes/";

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// Whether `reg`'s address is one only it may hold: a tunnel address, in the pool.
bool Claims(const Registration& reg, const Registry& registry) {
  std::optional<sockaddr_storage> ip = SockaddrFromIp(reg.address);
  if (!ip || ip->ss_family != AF_INET) return false;
  return registry.pool().Contains(reinterpret_cast<const sockaddr_in*>(&*ip)->sin_addr);
}

std::string InstanceJson(const Registration& reg) {
  json j = {{"app", reg.app}, {"address", reg.address}};
  if (reg.key) j["public_key"] = reg.key->ToBase64();
  if (reg.is_static()) j["ports"] = reg.ports.ToString();
  return j.dump();
}

std::string SettingsJson(const AppSettings& s) {
  json j = json::object();
  if (s.proxy_protocol) j["proxy_protocol"] = *s.proxy_protocol;
  if (s.max_connections) j["max_connections"] = *s.max_connections;
  return j.dump();
}

}  // namespace

absl::StatusOr<std::unique_ptr<EtcdStore>> EtcdStore::Open(const EtcdOptions& options, std::string prefix) {
  if (prefix.empty() || prefix.front() != '/') {
    return absl::InvalidArgumentError(absl::StrCat("--registry-prefix=", prefix, ": must start with /"));
  }
  if (prefix.back() != '/') prefix += '/';
  auto client = EtcdClient::Connect(options);
  if (!client.ok()) return client.status();
  auto watcher = EtcdClient::Connect(options);
  if (!watcher.ok()) return watcher.status();
  auto leaser = EtcdClient::Connect(options);
  if (!leaser.ok()) return leaser.status();
  std::string endpoints;
  for (const std::string& e : options.endpoints) endpoints += (endpoints.empty() ? "" : ",") + e;
  std::string name = absl::StrCat("etcd registry ", endpoints, " ", prefix);
  return std::unique_ptr<EtcdStore>(
      new EtcdStore(*std::move(client), *std::move(watcher), *std::move(leaser), prefix, name));
}

EtcdStore::EtcdStore(std::unique_ptr<EtcdClient> client, std::unique_ptr<EtcdClient> watcher,
                     std::unique_ptr<EtcdClient> leaser, std::string prefix, std::string name)
    : client_(std::move(client)),
      watcher_(std::move(watcher)),
      leaser_(std::move(leaser)),
      prefix_(std::move(prefix)),
      name_(std::move(name)),
      changes_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

EtcdStore::~EtcdStore() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    if (watch_ != nullptr) watch_->Cancel();
  }
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (lease_thread_.joinable()) lease_thread_.join();
  // A host that stops on purpose leaves the cluster at once, not when its lease runs out.
  if (lease_ != 0) (void)leaser_->RevokeLease(lease_);
}

absl::StatusOr<std::string> EtcdStore::Read() {
  auto range = client_->GetPrefix(prefix_);
  if (!range.ok()) return absl::Status(range.status().code(), absl::StrCat(name_, ": ", range.status().message()));
  json apps = json::object();
  json gateways = json::object();
  int64_t sequence = 0;
  for (const EtcdKeyValue& kv : range->kvs) {
    std::string_view key = std::string_view(kv.key).substr(prefix_.size());
    auto bad = [&](std::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(name_, ": key ", kv.key, ": ", AbslView(why)));
    };
    if (key == kSequence) {
      sequence = kv.mod_revision;
    } else if (StartsWith(key, kInstances)) {
      json v = json::parse(kv.value, nullptr, false);
      if (v.is_discarded() || !v.is_object() || !v.contains("app") || !v["app"].is_string()) {
        return bad("not an instance ({\"app\": ..., \"address\": ...})");
      }
      std::string app = v["app"].get<std::string>();
      v.erase("app");
      v["id"] = std::string(key.substr(kInstances.size()));
      apps[app]["instances"].push_back(std::move(v));
    } else if (StartsWith(key, kNodes)) {
      json v = json::parse(kv.value, nullptr, false);
      if (v.is_discarded() || !v.is_object()) return bad("not a gateway host (a JSON object)");
      gateways[std::string(key.substr(kNodes.size()))] = std::move(v);
    } else if (StartsWith(key, kApps)) {
      json v = json::parse(kv.value, nullptr, false);
      if (v.is_discarded() || !v.is_object()) return bad("not an app's settings (a JSON object)");
      json& app = apps[std::string(key.substr(kApps.size()))];
      for (auto& [k, value] : v.items()) app[k] = value;
    }
  }
  sequence_revision_ = sequence;
  read_revision_ = range->revision;
  return json{{"version", 1}, {"apps", apps}, {"gateways", gateways}}.dump();
}

absl::Status EtcdStore::Write(std::span<const RegistryChange> changes, const Registry& after) {
  std::vector<EtcdCompare> conditions = {EtcdCompare::ModifiedAt(prefix_ + std::string(kSequence), sequence_revision_)};
  std::vector<EtcdOp> ops;
  using ClaimOf = std::function<std::optional<std::string>(const std::optional<Registration>&)>;
  ClaimOf address_claim = [&](const std::optional<Registration>& r) -> std::optional<std::string> {
    if (!r || !Claims(*r, after)) return std::nullopt;
    return prefix_ + std::string(kAddressClaims) + r->address;
  };
  ClaimOf key_claim = [&](const std::optional<Registration>& r) -> std::optional<std::string> {
    if (!r || !r->key) return std::nullopt;
    return prefix_ + std::string(kKeyClaims) + r->key->ToBase64();
  };
  for (const RegistryChange& change : changes) {
    if (change.app) {
      std::string key = prefix_ + std::string(kApps) + *change.app;
      ops.push_back(change.settings.empty() ? EtcdOp::Delete(key) : EtcdOp::Put(key, SettingsJson(change.settings)));
    }
    const std::optional<Registration>& before = change.before;
    const std::optional<Registration>& next = change.after;
    if (next) {
      ops.push_back(EtcdOp::Put(prefix_ + std::string(kInstances) + next->id, InstanceJson(*next)));
    } else if (before) {
      ops.push_back(EtcdOp::Delete(prefix_ + std::string(kInstances) + before->id));
    }
    // Claims: released when the instance lets go of them, taken (only if free) when it gains them.
    for (const ClaimOf& claim : {address_claim, key_claim}) {
      std::optional<std::string> held = claim(before);
      std::optional<std::string> wanted = claim(next);
      if (held == wanted) continue;
      if (held) ops.push_back(EtcdOp::Delete(*held));
      if (wanted) {
        conditions.push_back(EtcdCompare::Absent(*wanted));
        ops.push_back(EtcdOp::Put(*wanted, next->id));
      }
    }
  }
  ops.push_back(EtcdOp::Put(prefix_ + std::string(kSequence), ""));
  auto txn = client_->Txn(conditions, ops, {});
  if (!txn.ok()) return absl::Status(txn.status().code(), absl::StrCat(name_, ": ", txn.status().message()));
  if (!txn->succeeded) {
    return absl::AbortedError(absl::StrCat(name_, ": another gateway node changed the registry first"));
  }
  // The sequence held, so no other node wrote since this one's copy was current: with this write
  // it is current up to the transaction's revision.
  sequence_revision_ = txn->revision;
  own_revisions_.insert(txn->revision);
  return absl::OkStatus();
}

RegistryUpdate EtcdStore::TakeUpdate() {
  std::vector<EtcdEvent> events;
  RegistryUpdate update;
  {
    std::lock_guard lock(mu_);
    events.swap(events_);
    update.resync = std::exchange(resync_, false);
  }
  if (update.resync) return update;  // Read follows, and passes what the watch brought meanwhile
  int64_t last = 0;
  for (const EtcdEvent& e : events) {
    const int64_t revision = e.kv.mod_revision;
    last = std::max(last, revision);
    // In this node's copy already: read, or written by this node.
    if (revision <= read_revision_ || own_revisions_.contains(revision)) continue;
    std::string_view key = std::string_view(e.kv.key).substr(prefix_.size());
    std::optional<std::string> value;
    if (e.type == EtcdEvent::Type::kPut) value = e.kv.value;
    if (key == kSequence) {
      if (value) sequence_revision_ = revision;
    } else if (StartsWith(key, kInstances)) {
      update.instances[std::string(key.substr(kInstances.size()))] = std::move(value);
    } else if (StartsWith(key, kApps)) {
      update.apps[std::string(key.substr(kApps.size()))] = std::move(value);
    } else if (StartsWith(key, kNodes)) {
      update.gateways[std::string(key.substr(kNodes.size()))] = std::move(value);
    }
  }
  // The watch is past these (a revision's events come together, so `last` may still be coming).
  own_revisions_.erase(own_revisions_.begin(), own_revisions_.lower_bound(last));
  return update;
}

void EtcdStore::StartWatching() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this, from = read_revision_ + 1] { Watch(from); });
}

void EtcdStore::Notify() {
  uint64_t one = 1;
  (void)!write(changes_.get(), &one, sizeof(one));
}

void EtcdStore::Watch(int64_t from) {
  for (;;) {
    auto watch = watcher_->Watch(prefix_, from);
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      watch_ = watch.ok() ? watch->get() : nullptr;
    }
    while (watch.ok()) {
      auto batch = (*watch)->Next(absl::Seconds(5));
      if (!batch.ok()) {
        std::lock_guard lock(mu_);
        if (!stopping_) Log("registry: watch of ", name_, " broken (", batch.status().message(), "); watching again");
        break;
      }
      if (batch->compacted > 0) {
        // The history since `from` is gone: the registry reads the whole prefix again, and the watch
        // goes on from the oldest revision etcd still has (the read passes what it brings first).
        from = batch->compacted;
        {
          std::lock_guard lock(mu_);
          events_.clear();
          resync_ = true;
        }
        Notify();
        break;
      }
      if (batch->events.empty()) continue;
      from = std::max(from, batch->events.back().kv.mod_revision + 1);
      {
        std::lock_guard lock(mu_);
        for (EtcdEvent& e : batch->events) events_.push_back(std::move(e));
      }
      Notify();
    }
    {
      std::lock_guard lock(mu_);
      watch_ = nullptr;
      if (stopping_) return;
    }
    // The watch broke (etcd out of reach, or it lost a member): it resumes from the revision after
    // the last one it saw, so nothing is missed; should that be compacted by then, see above.
    if (!watch.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

absl::Status EtcdStore::Publish(const GatewayNode& self, absl::Duration ttl, EtcdClient& client) {
  auto lease = client.GrantLease(ttl);
  if (!lease.ok()) return absl::Status(lease.status().code(), absl::StrCat(name_, ": ", lease.status().message()));
  const std::string node_key = prefix_ + std::string(kNodes) + self.name;
  const std::string holder = "node:" + self.name;
  std::vector<EtcdCompare> free = {EtcdCompare::Absent(node_key)};
  std::vector<EtcdOp> ops = {EtcdOp::Put(node_key,
                                         json{{"public_key", self.public_key},
                                              {"endpoint", self.endpoint},
                                              {"tunnel_address", self.tunnel_address}}
                                             .dump(),
                                         lease->first),
                             EtcdOp::Put(prefix_ + std::string(kSequence), "")};
  std::string claim;
  if (!self.tunnel_address.empty()) {
    claim = prefix_ + std::string(kAddressClaims) + self.tunnel_address;
    free.push_back(EtcdCompare::Absent(claim));
    ops.push_back(EtcdOp::Put(claim, holder, lease->first));
  }
  auto txn = client.Txn(free, ops, {EtcdOp::Get(node_key), EtcdOp::Get(claim.empty() ? node_key : claim)});
  if (!txn.ok()) return absl::Status(txn.status().code(), absl::StrCat(name_, ": ", txn.status().message()));
  if (!txn->succeeded) {
    (void)client.RevokeLease(lease->first);
    if (txn->gets.size() == 2 && txn->gets[0]) {
      return absl::AlreadyExistsError(absl::StrCat(name_, ": a gateway host named '", self.name,
                                                   "' is live already (another --node-name, or wait for its "
                                                   "lease to lapse)"));
    }
    std::string who = txn->gets.size() == 2 && txn->gets[1] ? txn->gets[1]->value : "?";
    return absl::AlreadyExistsError(
        absl::StrCat(name_, ": tunnel address ", self.tunnel_address, " is held by ", who));
  }
  std::lock_guard lock(mu_);
  lease_ = lease->first;
  return absl::OkStatus();
}

absl::Status EtcdStore::Announce(const GatewayNode& self, absl::Duration ttl) {
  if (self.name.empty() || self.name.size() > 253 ||
      self.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") !=
          std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("--node-name=", self.name,
                                                   ": 1-253 letters, digits, '.', '-' or '_' (it is an etcd key)"));
  }
  absl::Status s = Publish(self, ttl, *client_);
  if (absl::IsAlreadyExists(s)) {
    // This host, restarted before its last lease ran out, is the same host (same WireGuard key and
    // address): it ends that lease and takes its place. A host without a key has no such proof.
    auto live = client_->Get(prefix_ + std::string(kNodes) + self.name);
    if (live.ok() && live->has_value()) {
      json v = json::parse((*live)->value, nullptr, false);
      if (!v.is_discarded() && !self.public_key.empty() && v.value("public_key", "") == self.public_key &&
          v.value("tunnel_address", "") == self.tunnel_address && (*live)->lease != 0) {
        (void)client_->RevokeLease((*live)->lease);
        s = Publish(self, ttl, *client_);
      }
    }
  }
  if (!s.ok()) return s;
  lease_thread_ = std::thread([this, self, ttl] { KeepAnnounced(self, ttl); });
  return absl::OkStatus();
}

void EtcdStore::KeepAnnounced(GatewayNode self, absl::Duration ttl) {
  std::unique_lock lock(mu_);
  while (!stop_cv_.wait_for(lock, absl::ToChronoMilliseconds(ttl / 3), [&] { return stopping_; })) {
    int64_t lease = lease_;
    lock.unlock();
    absl::Status s = leaser_->KeepAlive(lease);
    if (absl::IsNotFound(s)) {
      // The lease lapsed (etcd was out of reach longer than its TTL): this host comes back.
      Log("registry: this gateway host's lease lapsed; announcing it again");
      s = Publish(self, ttl, *leaser_);
    }
    if (!s.ok()) Log("registry: keeping this gateway host announced: ", s.message());
    lock.lock();
  }
}

}  // namespace cvmgate
