// A real etcd cluster for tests: N members on loopback ports picked free, data in a temporary
// directory, members stopped and started by the test. Each member's log is kept beside its data and
// printed when a test fails to bring the cluster up.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "control/etcd/client.h"
#include "dataplane/fd.h"

extern char** environ;

namespace cvmgate::testing {

class EtcdCluster {
 public:
  explicit EtcdCluster(int members) {
    dir_ = std::filesystem::temp_directory_path() /
           ("cvmgate-etcd-" + std::to_string(getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    for (int i = 0; i < members; ++i) members_.push_back({"m" + std::to_string(i), FreePort(), FreePort(), -1});
    for (int i = 0; i < members; ++i) Start(i);
  }
  ~EtcdCluster() {
    for (size_t i = 0; i < members_.size(); ++i) Stop(static_cast<int>(i));
    std::filesystem::remove_all(dir_);
  }
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  std::string ClientUrl(int i) const { return "http://127.0.0.1:" + std::to_string(members_[i].client_port); }
  std::vector<std::string> ClientUrls() const {
    std::vector<std::string> out;
    for (size_t i = 0; i < members_.size(); ++i) out.push_back(ClientUrl(static_cast<int>(i)));
    return out;
  }
  std::string Endpoints() const {
    std::string out;
    for (const std::string& u : ClientUrls()) out += (out.empty() ? "" : ",") + u;
    return out;
  }

  void Start(int i) {
    Member& m = members_[i];
    if (m.pid > 0) return;
    std::string peers;
    for (const Member& p : members_) {
      peers += (peers.empty() ? "" : ",") + p.name + "=http://127.0.0.1:" + std::to_string(p.peer_port);
    }
    std::string client = "http://127.0.0.1:" + std::to_string(m.client_port);
    std::string peer = "http://127.0.0.1:" + std::to_string(m.peer_port);
    std::vector<std::string> args = {"etcd",
                                     "--name=" + m.name,
                                     "--data-dir=" + (dir_ / m.name).string(),
                                     "--listen-client-urls=" + client,
                                     "--advertise-client-urls=" + client,
                                     "--listen-peer-urls=" + peer,
                                     "--initial-advertise-peer-urls=" + peer,
                                     "--initial-cluster=" + peers,
                                     "--initial-cluster-state=new",
                                     "--initial-cluster-token=cvmgate-test",
                                     "--logger=zap",
                                     "--log-outputs=" + (dir_ / (m.name + ".log")).string()};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    if (posix_spawnp(&pid, "etcd", nullptr, nullptr, argv.data(), environ) == 0) m.pid = pid;
  }

  void Stop(int i) {
    Member& m = members_[i];
    if (m.pid <= 0) return;
    kill(m.pid, SIGTERM);
    waitpid(m.pid, nullptr, 0);
    m.pid = -1;
  }

  // Waits (bounded) until every running member answers a linearizable read: the cluster has a
  // leader and each member has joined it. False, with the members' logs on stderr, when it did not.
  bool WaitReady(std::chrono::seconds within = std::chrono::seconds(30)) {
    auto deadline = std::chrono::steady_clock::now() + within;
    for (size_t i = 0; i < members_.size(); ++i) {
      if (members_[i].pid <= 0) continue;
      EtcdOptions o;
      o.endpoints = {ClientUrl(static_cast<int>(i))};
      o.timeout = absl::Seconds(1);
      auto client = EtcdClient::Connect(o);
      if (!client.ok()) return false;
      while (!(*client)->Get("cvmgate-test-ready").ok()) {
        if (std::chrono::steady_clock::now() > deadline) {
          DumpLogs();
          return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // polling a condition, bounded above
      }
    }
    return true;
  }

  void DumpLogs() const {
    for (const Member& m : members_) {
      std::ifstream in(dir_ / (m.name + ".log"));
      std::stringstream ss;
      ss << in.rdbuf();
      std::string log = ss.str();
      fprintf(stderr, "--- etcd %s (last 3000 bytes of its log)\n%s\n", m.name.c_str(),
              log.substr(log.size() > 3000 ? log.size() - 3000 : 0).c_str());
    }
  }

 private:
  struct Member {
    std::string name;
    int client_port;
    int peer_port;
    pid_t pid;
  };

  static int FreePort() {
    Fd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.sin_port);
  }

  static inline int counter_ = 0;
  std::filesystem::path dir_;
  std::vector<Member> members_;
};

// A test suite that shares one 3-member cluster, started before its first test.
class WithEtcdCluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new EtcdCluster(3);
    ASSERT_TRUE(cluster_->WaitReady()) << "the etcd cluster did not come up";
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  static inline EtcdCluster* cluster_ = nullptr;
};

}  // namespace cvmgate::testing
