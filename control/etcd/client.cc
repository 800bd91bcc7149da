// etcd's v3 API over gRPC (see client.h).
#include "control/etcd/client.h"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <absl/strings/strip.h>

#include "control/durable_file.h"
#include "control/etcd/rpc.grpc.pb.h"
#include "dataplane/strings.h"

namespace cvmgate {
namespace {

namespace pb = etcdserverpb;

absl::Status FromGrpc(const grpc::Status& s, std::string_view what, std::string_view endpoint) {
  // gRPC's codes and absl's are the same numbers (both are google.rpc.Code).
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat("etcd ", AbslView(endpoint), ": ", AbslView(what), ": ", s.error_message()));
}

// A PEM file for etcd's TLS (ReadSmallFile's error prefixed with what it is for).
absl::StatusOr<std::string> ReadPem(const std::string& path, std::string_view what) {
  auto pem = ReadSmallFile(path);
  if (!pem.ok()) return absl::NotFoundError(absl::StrCat("etcd ", AbslView(what), ": ", pem.status().message()));
  return pem;
}

EtcdKeyValue FromPb(const mvccpb::KeyValue& kv) {
  return {kv.key(), kv.value(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease()};
}

void ToPb(const EtcdOp& op, pb::RequestOp* out) {
  switch (op.kind) {
    case EtcdOp::Kind::kPut: {
      pb::PutRequest* put = out->mutable_request_put();
      put->set_key(op.key);
      put->set_value(op.value);
      put->set_lease(op.lease);
      break;
    }
    case EtcdOp::Kind::kDelete:
      out->mutable_request_delete_range()->set_key(op.key);
      break;
    case EtcdOp::Kind::kDeletePrefix: {
      pb::DeleteRangeRequest* del = out->mutable_request_delete_range();
      del->set_key(op.key);
      del->set_range_end(PrefixEnd(op.key));
      break;
    }
    case EtcdOp::Kind::kGet:
      out->mutable_request_range()->set_key(op.key);
      break;
  }
}

void ToPb(const EtcdCompare& c, pb::Compare* out) {
  out->set_key(c.key);
  out->set_result(static_cast<pb::Compare::CompareResult>(c.result));
  switch (c.target) {
    case EtcdCompare::Target::kVersion:
      out->set_target(pb::Compare::VERSION);
      out->set_version(c.revision);
      break;
    case EtcdCompare::Target::kCreate:
      out->set_target(pb::Compare::CREATE);
      out->set_create_revision(c.revision);
      break;
    case EtcdCompare::Target::kMod:
      out->set_target(pb::Compare::MOD);
      out->set_mod_revision(c.revision);
      break;
    case EtcdCompare::Target::kValue:
      out->set_target(pb::Compare::VALUE);
      out->set_value(c.value);
      break;
  }
}

struct Endpoint {
  std::string url;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Watch::Stub> watch;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::unique_ptr<pb::Cluster::Stub> cluster;
};

// The watch's stream is read by a thread of its own, so that Next can wait with a timeout.
class GrpcWatch final : public EtcdWatch {
 public:
  GrpcWatch(pb::Watch::Stub& stub, std::string endpoint, pb::WatchRequest create) : endpoint_(std::move(endpoint)) {
    stream_ = stub.Watch(&ctx_);
    if (!stream_->Write(create)) {
      Fail(absl::UnavailableError(absl::StrCat("etcd ", endpoint_, ": the watch could not be started")));
      return;
    }
    reader_ = std::thread([this] { Read(); });
  }
  ~GrpcWatch() override {
    Cancel();
    if (reader_.joinable()) reader_.join();
  }

  absl::StatusOr<Batch> Next(absl::Duration timeout) override {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] { return !queue_.empty() || !error_.ok(); });
    if (!queue_.empty()) {
      Batch b = std::move(queue_.front());
      queue_.pop_front();
      return b;
    }
    if (!error_.ok()) return error_;
    return Batch{};
  }

  void Cancel() override { ctx_.TryCancel(); }

 private:
  void Read() {
    pb::WatchResponse r;
    bool ended = false;  // the server ended the watch, but not the stream: it is cancelled here
    while (!ended && stream_->Read(&r)) {
      if (r.created() && r.canceled() && r.compact_revision() == 0) {
        Fail(absl::FailedPreconditionError(absl::StrCat("etcd ", endpoint_, ": watch refused: ", r.cancel_reason())));
        ended = true;
        break;
      }
      Batch b;
      b.revision = r.header().revision();
      b.compacted = r.compact_revision();
      for (const mvccpb::Event& e : r.events()) {
        b.events.push_back({e.type() == mvccpb::Event::DELETE ? EtcdEvent::Type::kDelete : EtcdEvent::Type::kPut,
                            FromPb(e.kv())});
      }
      ended = r.canceled();
      {
        std::lock_guard lock(mu_);
        queue_.push_back(std::move(b));
      }
      cv_.notify_all();
    }
    if (ended) ctx_.TryCancel();
    grpc::Status s = stream_->Finish();
    Fail(s.ok() ? absl::CancelledError(absl::StrCat("etcd ", endpoint_, ": the watch ended"))
                : FromGrpc(s, "watch", endpoint_));
  }

  void Fail(absl::Status st) {
    {
      std::lock_guard lock(mu_);
      if (error_.ok()) error_ = std::move(st);
    }
    cv_.notify_all();
  }

  std::string endpoint_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>> stream_;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  absl::Status error_;
};

class GrpcEtcdClient final : public EtcdClient {
 public:
  GrpcEtcdClient(std::vector<Endpoint> endpoints, absl::Duration timeout)
      : endpoints_(std::move(endpoints)), timeout_(timeout) {}

  absl::StatusOr<EtcdRange> GetPrefix(std::string_view prefix, int64_t revision) override {
    pb::RangeRequest req;
    req.set_key(std::string(prefix));
    req.set_range_end(PrefixEnd(prefix));
    req.set_revision(revision);
    pb::RangeResponse resp;
    if (auto s = Call("range", [&](Endpoint& e, grpc::ClientContext* c) { return e.kv->Range(c, req, &resp); });
        !s.ok()) {
      return s;
    }
    EtcdRange out;
    out.revision = resp.header().revision();
    out.kvs.reserve(resp.kvs_size());
    for (const mvccpb::KeyValue& kv : resp.kvs()) out.kvs.push_back(FromPb(kv));
    return out;
  }

  absl::StatusOr<std::optional<EtcdKeyValue>> Get(std::string_view key) override {
    pb::RangeRequest req;
    req.set_key(std::string(key));
    pb::RangeResponse resp;
    if (auto s = Call("get", [&](Endpoint& e, grpc::ClientContext* c) { return e.kv->Range(c, req, &resp); });
        !s.ok()) {
      return s;
    }
    if (resp.kvs_size() == 0) return std::optional<EtcdKeyValue>();
    return std::optional<EtcdKeyValue>(FromPb(resp.kvs(0)));
  }

  absl::StatusOr<int64_t> Put(std::string_view key, std::string_view value, int64_t lease) override {
    pb::PutRequest req;
    req.set_key(std::string(key));
    req.set_value(std::string(value));
    req.set_lease(lease);
    pb::PutResponse resp;
    if (auto s = Call("put", [&](Endpoint& e, grpc::ClientContext* c) { return e.kv->Put(c, req, &resp); });
        !s.ok()) {
      return s;
    }
    return resp.header().revision();
  }

  absl::StatusOr<EtcdTxnResult> Txn(const std::vector<EtcdCompare>& conditions, const std::vector<EtcdOp>& success,
                                    const std::vector<EtcdOp>& failure) override {
    pb::TxnRequest req;
    for (const EtcdCompare& c : conditions) ToPb(c, req.add_compare());
    for (const EtcdOp& op : success) ToPb(op, req.add_success());
    for (const EtcdOp& op : failure) ToPb(op, req.add_failure());
    pb::TxnResponse resp;
    if (auto s = Call("transaction", [&](Endpoint& e, grpc::ClientContext* c) { return e.kv->Txn(c, req, &resp); });
        !s.ok()) {
      return s;
    }
    EtcdTxnResult out;
    out.succeeded = resp.succeeded();
    out.revision = resp.header().revision();
    for (const pb::ResponseOp& r : resp.responses()) {
      if (!r.has_response_range()) continue;
      const pb::RangeResponse& range = r.response_range();
      out.gets.push_back(range.kvs_size() > 0 ? std::optional<EtcdKeyValue>(FromPb(range.kvs(0))) : std::nullopt);
    }
    return out;
  }

  absl::StatusOr<std::pair<int64_t, absl::Duration>> GrantLease(absl::Duration ttl) override {
    pb::LeaseGrantRequest req;
    req.set_ttl(std::max<int64_t>(1, absl::ToInt64Seconds(ttl)));
    pb::LeaseGrantResponse resp;
    if (auto s = Call("lease grant",
                      [&](Endpoint& e, grpc::ClientContext* c) { return e.lease->LeaseGrant(c, req, &resp); });
        !s.ok()) {
      return s;
    }
    if (!resp.error().empty()) return absl::UnavailableError(absl::StrCat("etcd: lease grant: ", resp.error()));
    return std::make_pair(resp.id(), absl::Seconds(resp.ttl()));
  }

  absl::Status KeepAlive(int64_t lease) override {
    pb::LeaseKeepAliveResponse resp;
    absl::Status st = Call("lease keep-alive", [&](Endpoint& e, grpc::ClientContext* c) {
      auto stream = e.lease->LeaseKeepAlive(c);
      pb::LeaseKeepAliveRequest req;
      req.set_id(lease);
      if (stream->Write(req) && stream->Read(&resp)) {
        stream->WritesDone();
        c->TryCancel();  // one renewal per call: the stream is not kept
        stream->Finish();
        return grpc::Status::OK;
      }
      return stream->Finish();
    });
    if (!st.ok()) return st;
    // A lease that has expired (or never was) answers TTL 0 on a stream that stays open.
    if (resp.ttl() <= 0) return absl::NotFoundError(absl::StrCat("etcd: lease ", lease, " has expired"));
    return absl::OkStatus();
  }

  absl::Status RevokeLease(int64_t lease) override {
    pb::LeaseRevokeRequest req;
    req.set_id(lease);
    pb::LeaseRevokeResponse resp;
    return Call("lease revoke",
                [&](Endpoint& e, grpc::ClientContext* c) { return e.lease->LeaseRevoke(c, req, &resp); });
  }

  absl::StatusOr<std::unique_ptr<EtcdWatch>> Watch(std::string_view prefix, int64_t start_revision) override {
    pb::WatchRequest req;
    pb::WatchCreateRequest* create = req.mutable_create_request();
    create->set_key(std::string(prefix));
    create->set_range_end(PrefixEnd(prefix));
    create->set_start_revision(start_revision);
    create->set_progress_notify(true);
    // A watch has no deadline; it goes to the endpoint the last call reached, or the next that answers.
    size_t n = 0;
    while (n < endpoints_.size() && !Connected(endpoints_[current_])) {
      current_ = (current_ + 1) % endpoints_.size();
      ++n;
    }
    if (n == endpoints_.size()) return absl::UnavailableError("etcd: watch: no endpoint can be reached");
    Endpoint& e = endpoints_[current_];
    return std::unique_ptr<EtcdWatch>(new GrpcWatch(*e.watch, e.url, req));
  }

  absl::StatusOr<std::vector<EtcdMember>> Members() override {
    pb::MemberListRequest req;
    pb::MemberListResponse resp;
    if (auto s = Call("member list",
                      [&](Endpoint& e, grpc::ClientContext* c) { return e.cluster->MemberList(c, req, &resp); });
        !s.ok()) {
      return s;
    }
    std::vector<EtcdMember> out;
    for (const pb::Member& m : resp.members()) {
      out.push_back({m.id(), m.name(), {m.clienturls().begin(), m.clienturls().end()}});
    }
    return out;
  }

  absl::Status Compact(int64_t revision) override {
    pb::CompactionRequest req;
    req.set_revision(revision);
    req.set_physical(true);
    pb::CompactionResponse resp;
    return Call("compact", [&](Endpoint& e, grpc::ClientContext* c) { return e.kv->Compact(c, req, &resp); });
  }

  std::string endpoint() const override { return endpoints_[current_].url; }

 private:
  // Runs `rpc` on the endpoint that answered last, then on the others while they cannot be reached.
  template <typename Rpc>
  absl::Status Call(std::string_view what, Rpc&& rpc) {
    absl::Status last;
    for (size_t n = 0; n < endpoints_.size(); ++n) {
      size_t i = (current_ + n) % endpoints_.size();
      if (!Connected(endpoints_[i])) {
        last = absl::UnavailableError(
            absl::StrCat("etcd ", endpoints_[i].url, ": ", AbslView(what), ": cannot connect"));
        continue;
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout_));
      grpc::Status s = rpc(endpoints_[i], &ctx);
      if (s.ok()) {
        current_ = i;
        return absl::OkStatus();
      }
      last = FromGrpc(s, what, endpoints_[i].url);
      if (s.error_code() != grpc::StatusCode::UNAVAILABLE) return last;
    }
    return last;
  }

  // Whether `e` has a connection, or gets one soon. Waiting here is also what makes the connection
  // progress: a synchronous gRPC channel moves only while a thread waits on it (or at its 5 s backup
  // poll), so a call that failed fast on a channel in backoff would find it in backoff forever. With
  // several endpoints one gets a second at most, so that a dead member costs a call little.
  bool Connected(Endpoint& e) {
    if (e.channel->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_READY) return true;
    absl::Duration budget = endpoints_.size() > 1 ? std::min(timeout_, absl::Seconds(1)) : timeout_;
    return e.channel->WaitForConnected(absl::ToChronoTime(absl::Now() + budget));
  }

  std::vector<Endpoint> endpoints_;
  absl::Duration timeout_;
  size_t current_ = 0;
};

}  // namespace

std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    unsigned char last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

absl::StatusOr<std::vector<std::string>> ParseEtcdEndpoints(std::string_view text) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(AbslView(text), ',', absl::SkipWhitespace())) {
    absl::string_view url = absl::StripAsciiWhitespace(part);
    absl::string_view rest = url;
    if (!absl::ConsumePrefix(&rest, "http://") && !absl::ConsumePrefix(&rest, "https://")) {
      return absl::InvalidArgumentError(
          absl::StrCat("etcd endpoint '", url, "': expected http://HOST:PORT or https://HOST:PORT"));
    }
    rest = absl::StripSuffix(rest, "/");
    size_t colon = rest.rfind(':');
    if (rest.empty() || colon == absl::string_view::npos || colon + 1 == rest.size() ||
        rest.find('/') != absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("etcd endpoint '", url, "': expected HOST:PORT after the scheme"));
    }
    out.emplace_back(url);
  }
  if (out.empty()) return absl::InvalidArgumentError("no etcd endpoint given");
  return out;
}

absl::StatusOr<std::unique_ptr<EtcdClient>> EtcdClient::Connect(const EtcdOptions& options) {
  if (options.endpoints.empty()) return absl::InvalidArgumentError("no etcd endpoint given");
  std::shared_ptr<grpc::ChannelCredentials> tls;
  for (const std::string& url : options.endpoints) {
    if (url.rfind("https://", 0) != 0 || tls) continue;
    grpc::SslCredentialsOptions ssl;
    if (!options.ca_file.empty()) {
      auto ca = ReadPem(options.ca_file, "CA file");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (options.cert_file.empty() != options.key_file.empty()) {
      return absl::InvalidArgumentError("an etcd client certificate needs both its certificate and its key file");
    }
    if (!options.cert_file.empty()) {
      auto cert = ReadPem(options.cert_file, "certificate file");
      if (!cert.ok()) return cert.status();
      auto key = ReadPem(options.key_file, "key file");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    tls = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  // A dead member is noticed within seconds, even by a watch that waits for events, and one that
  // comes back is tried again soon. A connection attempt gives up after 2 s (gRPC's default is 20 s):
  // a member that is starting accepts TCP connections before it answers HTTP/2, and a connection
  // made then would otherwise hold the channel for 20 s.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 2000);
  // A registry's range is about 100 bytes an instance: gRPC's default 4 MiB cap on an answer would
  // leave a registry past ~40k instances unreadable.
  args.SetMaxReceiveMessageSize(-1);
  std::vector<Endpoint> endpoints;
  for (const std::string& url : options.endpoints) {
    bool secure = url.rfind("https://", 0) == 0;
    std::string target = url.substr(secure ? 8 : 7);
    if (!target.empty() && target.back() == '/') target.pop_back();
    Endpoint e;
    e.url = url;
    e.channel = grpc::CreateCustomChannel(target, secure ? tls : grpc::InsecureChannelCredentials(), args);
    e.kv = pb::KV::NewStub(e.channel);
    e.watch = pb::Watch::NewStub(e.channel);
    e.lease = pb::Lease::NewStub(e.channel);
    e.cluster = pb::Cluster::NewStub(e.channel);
    endpoints.push_back(std::move(e));
  }
  return std::unique_ptr<EtcdClient>(new GrpcEtcdClient(std::move(endpoints), options.timeout));
}

}  // namespace cvmgate
