// A client of etcd's v3 API over gRPC: what the registry needs (ranges, transactions, leases, watches,
// the cluster's members), with every call bounded by a deadline and failing over between endpoints.
//
// Reads are linearizable (etcd's default): without a quorum they fail rather than answer from a
// member that may be behind. A call is retried on the next endpoint only when the one it tried could
// not be reached (UNAVAILABLE before anything was sent); a call that timed out is not repeated, since
// it may have been applied.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <absl/status/statusor.h>
#include <absl/time/time.h>

namespace cvmgate {

struct EtcdOptions {
  // "http://HOST:PORT" or "https://HOST:PORT"; https wants ca_file (and cert_file + key_file for a
  // client certificate).
  std::vector<std::string> endpoints;
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  absl::Duration timeout = absl::Seconds(2);  // each call's deadline
};

// "http://a:2379,https://b:2379" into endpoints; an error names what is wrong.
absl::StatusOr<std::vector<std::string>> ParseEtcdEndpoints(std::string_view text);

struct EtcdKeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;
};

// One condition of a transaction (etcd's Compare, on one key).
struct EtcdCompare {
  enum class Target { kVersion, kCreate, kMod, kValue };
  enum class Result { kEqual, kGreater, kLess, kNotEqual };
  std::string key;
  Target target = Target::kMod;
  Result result = Result::kEqual;
  int64_t revision = 0;  // kVersion, kCreate, kMod
  std::string value;     // kValue

  // The key does not exist (its create revision is 0): "create only if absent".
  static EtcdCompare Absent(std::string key) { return {std::move(key), Target::kCreate, Result::kEqual, 0, {}}; }
  // The key was last modified at `revision` (0: it does not exist).
  static EtcdCompare ModifiedAt(std::string key, int64_t revision) {
    return {std::move(key), Target::kMod, Result::kEqual, revision, {}};
  }
};

// One operation of a transaction.
struct EtcdOp {
  enum class Kind { kPut, kDelete, kDeletePrefix, kGet };
  Kind kind = Kind::kPut;
  std::string key;
  std::string value;
  int64_t lease = 0;

  static EtcdOp Put(std::string key, std::string value, int64_t lease = 0) {
    return {Kind::kPut, std::move(key), std::move(value), lease};
  }
  static EtcdOp Delete(std::string key) { return {Kind::kDelete, std::move(key), {}, 0}; }
  static EtcdOp Get(std::string key) { return {Kind::kGet, std::move(key), {}, 0}; }
};

struct EtcdTxnResult {
  bool succeeded = false;  // the conditions held and the success branch ran
  int64_t revision = 0;    // the store's revision after the transaction
  // For each kGet of the branch that ran, in order: the key's value, if it exists.
  std::vector<std::optional<EtcdKeyValue>> gets;
};

struct EtcdRange {
  std::vector<EtcdKeyValue> kvs;
  int64_t revision = 0;  // the store's revision the range was read at
};

struct EtcdEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  EtcdKeyValue kv;  // kDelete: the key and the deleting revision only
};

struct EtcdMember {
  uint64_t id = 0;
  std::string name;
  std::vector<std::string> client_urls;
};

// A watch of a key prefix, from a revision on; owned by one thread.
class EtcdWatch {
 public:
  virtual ~EtcdWatch() = default;
  struct Batch {
    std::vector<EtcdEvent> events;
    int64_t revision = 0;  // the store's revision this batch brings the reader to
    // The revision asked for was compacted away: the watch ended; read the prefix again and watch
    // from after that read.
    int64_t compacted = 0;
  };
  // The next batch, waiting at most `timeout`: an empty batch on timeout (progress notifications
  // included); an error once the watch is broken (the stream ended, or a member was lost).
  virtual absl::StatusOr<Batch> Next(absl::Duration timeout) = 0;
  // Ends the watch; Next returns an error afterwards. May be called from another thread.
  virtual void Cancel() = 0;
};

class EtcdClient {
 public:
  static absl::StatusOr<std::unique_ptr<EtcdClient>> Connect(const EtcdOptions& options);
  virtual ~EtcdClient() = default;

  virtual absl::StatusOr<EtcdRange> GetPrefix(std::string_view prefix, int64_t revision = 0) = 0;
  virtual absl::StatusOr<std::optional<EtcdKeyValue>> Get(std::string_view key) = 0;
  virtual absl::StatusOr<int64_t> Put(std::string_view key, std::string_view value, int64_t lease = 0) = 0;
  virtual absl::StatusOr<EtcdTxnResult> Txn(const std::vector<EtcdCompare>& conditions,
                                            const std::vector<EtcdOp>& success,
                                            const std::vector<EtcdOp>& failure) = 0;
  // A lease of `ttl` (etcd may raise it to its minimum): its id and the TTL granted.
  virtual absl::StatusOr<std::pair<int64_t, absl::Duration>> GrantLease(absl::Duration ttl) = 0;
  // Renews `lease` for its whole TTL; NotFound once it has expired.
  virtual absl::Status KeepAlive(int64_t lease) = 0;
  virtual absl::Status RevokeLease(int64_t lease) = 0;
  // Watches every key under `prefix` from `start_revision` (inclusive) on.
  virtual absl::StatusOr<std::unique_ptr<EtcdWatch>> Watch(std::string_view prefix, int64_t start_revision) = 0;
  virtual absl::StatusOr<std::vector<EtcdMember>> Members() = 0;
  // Compacts the store's history up to `revision` (used by tests of a watch that falls behind).
  virtual absl::Status Compact(int64_t revision) = 0;
  // The endpoint the last call used.
  virtual std::string endpoint() const = 0;
};

// The end of the key range that holds every key starting with `prefix` (etcd's range_end).
std::string PrefixEnd(std::string_view prefix);

}  // namespace cvmgate
