// Snapshot publication: one writer swaps in immutable route snapshots, workers read them lock-free.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "dataplane/routes.h"

namespace cvmgate {

// Quiescent-state-based reclamation. A worker holds a snapshot pointer only
// between Enter() and Leave(), i.e. while it handles one batch of completions;
// it is "offline" while blocked in the kernel. The publisher frees a replaced
// snapshot once every worker has been offline or entered after the replacement.
// Readers take no lock and make no syscall; all ordering is sequentially
// consistent, which makes the argument short (see Enter()).
class SnapshotDomain {
 public:
  static constexpr uint64_t kOffline = UINT64_MAX;

  class Reader {
   public:
    // Announces that this worker may now hold the current snapshot and returns it.
    // The epoch is stored before the pointer is read: a reader that saw the old
    // epoch may still get the old pointer, and its slot keeps that one alive; a
    // reader that saw the new epoch was ordered after the swap and gets the new one.
    const RouteSnapshot* Enter() {
      slot_->store(domain_->epoch_.load());
      return domain_->current_.load();
    }
    // Announces that this worker holds no snapshot pointer any more.
    void Leave() { slot_->store(kOffline); }

   private:
    friend class SnapshotDomain;
    Reader(SnapshotDomain* d, std::atomic<uint64_t>* slot) : domain_(d), slot_(slot) {}
    SnapshotDomain* domain_;
    std::atomic<uint64_t>* slot_;
  };

  explicit SnapshotDomain(size_t readers, std::unique_ptr<const RouteSnapshot> initial);
  ~SnapshotDomain();
  SnapshotDomain(const SnapshotDomain&) = delete;
  SnapshotDomain& operator=(const SnapshotDomain&) = delete;

  Reader reader(size_t index) { return Reader(this, &slots_[index].epoch); }

  // Writer side (one thread at a time; serialised internally for safety).
  void Publish(std::unique_ptr<const RouteSnapshot> next);
  // Frees the replaced snapshots no reader can still hold; returns how many remain retired.
  size_t Reclaim();
  // The current snapshot, for the writer side (the control thread's own reads).
  const RouteSnapshot* current() const { return current_.load(); }

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> epoch{kOffline};
  };
  struct Retired {
    const RouteSnapshot* snapshot;
    uint64_t epoch;  // readers at or past this epoch cannot hold it
  };

  std::atomic<const RouteSnapshot*> current_;
  std::atomic<uint64_t> epoch_{1};
  std::unique_ptr<Slot[]> slots_;
  size_t slot_count_;
  std::mutex writer_mu_;
  std::vector<Retired> retired_;
};

}  // namespace cvmgate
