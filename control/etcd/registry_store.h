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
// uniqueness visible per key. A thread watches the prefix from the revision last read, and makes
// changes_fd() readable when another node wrote; a watch that fell behind a compaction is simply a
// change (the registry reads the whole prefix again).
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
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
  void Watch();
  void Notify();
  absl::Status Publish(const GatewayNode& self, absl::Duration ttl, EtcdClient& client);
  void KeepAnnounced(GatewayNode self, absl::Duration ttl);

  std::unique_ptr<EtcdClient> client_;   // the control thread's
  std::unique_ptr<EtcdClient> watcher_;  // the watch thread's
  std::unique_ptr<EtcdClient> leaser_;   // the lease thread's
  std::string prefix_;
  std::string name_;
  int64_t sequence_revision_ = 0;             // <prefix>sequence's mod revision as last read or written (0: none)
  std::atomic<int64_t> known_revision_{0};    // every change up to this revision is in this node's copy
  Fd changes_;
  std::mutex mu_;  // guards the two below, which the destructor uses to stop the watch thread
  bool stopping_ = false;
  EtcdWatch* watch_ = nullptr;
  std::thread thread_;
  std::condition_variable stop_cv_;  // wakes the lease thread to stop
  int64_t lease_ = 0;                // the host's lease (guarded by mu_)
  std::thread lease_thread_;
};

}  // namespace cvmgate
