// The registry kept in etcd, for several gateway hosts: one key per fact under a prefix.
//
//   <prefix>instances/<id>         {"app": A, "address": IP, "public_key": K} or {..., "ports": "8080"}
//   <prefix>apps/<app>             {"proxy_protocol": true, "max_connections": 100} (apps with settings)
//   <prefix>claims/address/<ip>    the instance holding a tunnel address: created only if absent
//   <prefix>claims/key/<key>       the instance holding a WireGuard public key: created only if absent
//   <prefix>sequence               rewritten by every write
//   <prefix>nodes/<name>           a live gateway host {"public_key", "endpoint", "tunnel_address"},
//                                  under the host's lease, as is its claim on its tunnel address
//
// Every write is one transaction that commits only if <prefix>sequence is as this node last saw it,
// so the registry's rules (registry.h), checked against this node's copy, hold for the cluster: a
// node that is behind gets Aborted, reads again and redoes its change. The claims make the same
// uniqueness visible per key. A thread watches the prefix from the revision last read, keeps the
// events, and makes changes_fd() readable; TakeUpdate hands the registry what other nodes changed
// (its own writes, already in its copy, left out). A watch that breaks (etcd out of reach) resumes
// from the last revision it saw; one that fell behind a compaction asks for a full read.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "control/etcd/client.h"
#include "control/registry.h"
#include "dataplane/fd.h"

namespace cvmgate {

class EtcdStore final : public RegistryStore {
 public:
  static absl::StatusOr<std::unique_ptr<EtcdStore>> Open(const EtcdOptions& options, std::string prefix);
  ~EtcdStore() override;

  const std::string& name() const override { return name_; }
  absl::StatusOr<std::string> Read() override;
  absl::Status Write(std::span<const RegistryChange> changes, const Registry& after) override;
  // etcd takes 128 operations in a transaction: a change is up to three (instance, two claims).
  size_t max_changes() const override { return 40; }
  int changes_fd() const override { return changes_.get(); }
  RegistryUpdate TakeUpdate() override;

  // Starts the watch thread (from the revision the last Read saw).
  void StartWatching();
  // Publishes this gateway host under a lease of `ttl`, kept alive by a thread of its own (and
  // published again if it lapsed, after a partition): when the host dies, it and its tunnel
  // address's claim go with the lease. AlreadyExists when another host holds the address or name.
  absl::Status Announce(const GatewayNode& self, absl::Duration ttl = absl::Seconds(10));
  const std::string& prefix() const { return prefix_; }

 private:
  EtcdStore(std::unique_ptr<EtcdClient> client, std::unique_ptr<EtcdClient> watcher,
            std::unique_ptr<EtcdClient> leaser, std::string prefix, std::string name);
  void Watch(int64_t from);
  void Notify();
  absl::Status Publish(const GatewayNode& self, absl::Duration ttl, EtcdClient& client);
  void KeepAnnounced(GatewayNode self, absl::Duration ttl);

  std::unique_ptr<EtcdClient> client_;   // the control thread's
  std::unique_ptr<EtcdClient> watcher_;  // the watch thread's
  std::unique_ptr<EtcdClient> leaser_;   // the lease thread's
  std::string prefix_;
  std::string name_;
  // The control thread's: <prefix>sequence's mod revision as last read, written or taken in (0: none);
  // the revision of the last Read; the revisions of this node's writes the watch has not passed yet.
  int64_t sequence_revision_ = 0;
  int64_t read_revision_ = 0;
  std::set<int64_t> own_revisions_;
  Fd changes_;
  std::mutex mu_;  // guards the four below; the destructor stops the watch thread through the first two
  bool stopping_ = false;
  EtcdWatch* watch_ = nullptr;
  std::vector<EtcdEvent> events_;  // what the watch saw, for TakeUpdate
  bool resync_ = false;            // the watch lost history: the next update is a full read
  std::thread thread_;
  std::condition_variable stop_cv_;  // wakes the lease thread to stop
  int64_t lease_ = 0;                // the host's lease (guarded by mu_)
  std::thread lease_thread_;
};

}  // namespace cvmgate
