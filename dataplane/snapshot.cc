// Snapshot publication: the writer side of the quiescent-state reclamation.
#include "dataplane/snapshot.h"

#include <algorithm>

namespace cvmgate {

SnapshotDomain::SnapshotDomain(size_t readers, std::unique_ptr<const RouteSnapshot> initial)
    : current_(initial.release()), slots_(new Slot[readers]), slot_count_(readers) {}

SnapshotDomain::~SnapshotDomain() {
  for (auto& r : retired_) delete r.snapshot;
  delete current_.load();
}

void SnapshotDomain::Publish(std::unique_ptr<const RouteSnapshot> next) {
  std::lock_guard lock(writer_mu_);
  const RouteSnapshot* old = current_.exchange(next.release());
  uint64_t epoch = epoch_.fetch_add(1) + 1;
  retired_.push_back({old, epoch});
}

size_t SnapshotDomain::Reclaim() {
  std::lock_guard lock(writer_mu_);
  uint64_t oldest = kOffline;
  for (size_t i = 0; i < slot_count_; ++i) oldest = std::min(oldest, slots_[i].epoch.load());
  auto keep = std::partition(retired_.begin(), retired_.end(),
                             [&](const Retired& r) { return oldest < r.epoch; });
  for (auto it = keep; it != retired_.end(); ++it) delete it->snapshot;
  retired_.erase(keep, retired_.end());
  return retired_.size();
}

}  // namespace cvmgate
