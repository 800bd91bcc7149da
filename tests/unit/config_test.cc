// Unit tests of the command-line flags: defaults, repeatable flags and clear errors.
#include "control/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

namespace cvmgate {
namespace {

TEST(Config, DefaultsAndRepeatableFlags) {
  auto c = ParseFlags({"--base-domain", "Example.test.", "--base-domain=gw.example.org", "--listen",
                       "127.0.0.1:8443", "--listen=[::1]:8443", "--idle-timeout=90s"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->base_domains, (std::vector<std::string>{"example.test", "gw.example.org"}));
  ASSERT_EQ(c->listen.size(), 2u);
  EXPECT_EQ(c->listen[1].addr.ss_family, AF_INET6);
  EXPECT_EQ(c->idle_timeout, absl::Seconds(90));
  EXPECT_EQ(c->hello_timeout, absl::Seconds(5));
  EXPECT_EQ(c->hello_max_bytes, 65536u);
  EXPECT_EQ(c->connect_tries, 3);
  EXPECT_EQ(c->splice_mode, SpliceMode::kInline);
}

// A worker built without flags (a test, a tool) behaves like the daemon with its defaults.
TEST(Config, WorkerOptionsDefaultsAreTheFlagDefaults) {
  auto c = ParseFlags({"--base-domain=example.test"});
  ASSERT_TRUE(c.ok()) << c.status();
  WorkerOptions expected;
  expected.base_domains = {"example.test"};
  EXPECT_EQ(WorkerOptionsOf(*c), expected);
}

TEST(Config, WorkerOptionsCarryTheFlags) {
  auto c = ParseFlags({"--base-domain=example.test", "--hello-timeout=250ms", "--handshake-timeout=2s",
                       "--connect-timeout=1500ms", "--idle-timeout=90s", "--drain-timeout=1m", "--connect-tries=5",
                       "--hello-max-bytes=4096", "--backlog=64", "--splice-mode=uring", "--pipe-size=0",
                       "--backend-rcvbuf=0", "--ktls=off", "--ring-taskrun=coop", "--rebalance=off"});
  ASSERT_TRUE(c.ok()) << c.status();
  WorkerOptions o = WorkerOptionsOf(*c);
  EXPECT_EQ(o.hello_timeout_ms, 250);
  EXPECT_EQ(o.handshake_timeout_ms, 2000);
  EXPECT_EQ(o.connect_timeout_ms, 1500);
  EXPECT_EQ(o.idle_timeout_ms, 90'000);
  EXPECT_EQ(o.drain_timeout_ms, 60'000);
  EXPECT_EQ(o.connect_tries, 5);
  EXPECT_EQ(o.hello_max_bytes, 4096u);
  EXPECT_EQ(o.backlog, 64);
  EXPECT_EQ(o.splice_mode, SpliceMode::kUring);
  EXPECT_EQ(o.pipe_size, 0u);
  EXPECT_EQ(o.backend_rcvbuf, 0u);
  EXPECT_FALSE(o.ktls);
  EXPECT_EQ(o.ring_taskrun, RingTaskRun::kCoop);
  EXPECT_FALSE(o.rebalance);
}

// kTLS after a threshold only where the kernel has kTLS and it is asked for; 0 bytes: at the
// handshake.
TEST(Config, KtlsThresholdReachesTheWorkersOnlyWhereKtlsIsUsed) {
  auto c = ParseFlags({"--base-domain=example.test", "--ktls-after-bytes=65536", "--ktls-after=750ms"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(WorkerOptionsOf(*c).ktls_after, (KtlsThreshold{65536, 750}));
  EXPECT_TRUE(c->tls_policy.offload_later());
  c->tls_policy.kernel_tls = false;  // the probe found no kTLS
  EXPECT_EQ(WorkerOptionsOf(*c).ktls_after.bytes, 0u);
  auto off = ParseFlags({"--base-domain=example.test", "--ktls=off"});
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(WorkerOptionsOf(*off).ktls_after.bytes, 0u);
  auto now = ParseFlags({"--base-domain=example.test", "--ktls-after-bytes=0"});
  ASSERT_TRUE(now.ok());
  EXPECT_FALSE(now->tls_policy.offload_later());
  EXPECT_TRUE(now->tls_policy.offload());
  EXPECT_EQ(WorkerOptionsOf(*now).ktls_after.bytes, 0u);
}

TEST(Config, RegistryIsTheFileOrEtcd) {
  auto file = ParseFlags({"--base-domain=x.test"});
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE(file->etcd_endpoints.empty()) << "the state file by default";
  auto etcd = ParseFlags({"--base-domain=x.test", "--registry=etcd:http://10.0.0.1:2379,https://e2:2379",
                          "--registry-prefix=/gw-eu/"});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  EXPECT_EQ(etcd->etcd_endpoints, (std::vector<std::string>{"http://10.0.0.1:2379", "https://e2:2379"}));
  EXPECT_EQ(etcd->registry_prefix, "/gw-eu/");
}

TEST(Config, ListenDefaultsTo443) {
  auto c = ParseFlags({"--base-domain=example.test"});
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c->listen.size(), 1u);
  EXPECT_EQ(c->listen[0].text, "0.0.0.0:443");
}

TEST(Config, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    const char* message;
  };
  std::vector<Case> cases = {
      {{}, "--base-domain is required"},
      {{"--base-domain=x.test", "--bogus"}, "unknown flag --bogus"},
      {{"--base-domain=x.test", "--workers=0"}, "--workers=0: expected a whole number from 1"},
      {{"--base-domain=x.test", "--hello-timeout=soon"}, "--hello-timeout=soon: expected a positive duration"},
      {{"--base-domain=x.test", "--listen=127.0.0.1"}, "--listen=127.0.0.1: expected ADDR:PORT"},
      {{"--base-domain=x.test", "--listen=host:80"}, "IPv4 or IPv6 literal"},
      {{"--base-domain=x.test", "--listen=1.2.3.4:70000"}, "the port must be"},
      {{"--base-domain=x.test", "--splice-mode=fast"}, "expected inline, uring or copy"},
      {{"--base-domain=x.test", "--ring-taskrun=sqpoll"}, "expected auto, defer, coop or off"},
      {{"--base-domain=x.test", "--rebalance=yes"}, "expected on or off"},
      {{"--base-domain=x.test", "--ktls-after-bytes=64k"}, "--ktls-after-bytes=64k: expected a whole number of bytes"},
      {{"--base-domain=x.test", "--ktls-after=0"}, "--ktls-after=0: expected a positive duration"},
      {{"--base-domain=bad_domain"}, "is not a host name"},
      {{"--base-domain"}, "--base-domain needs a value"},
      {{"--base-domain=x.test", "stray"}, "unexpected argument 'stray'"},
      {{"--base-domain=x.test", "--registry=consul"}, "--registry=consul: expected file or etcd:URL[,URL...]"},
      {{"--base-domain=x.test", "--registry=etcd:10.0.0.1:2379"}, "expected http://HOST:PORT or https://HOST:PORT"},
      {{"--base-domain=x.test", "--registry-cert=c.pem"}, "--registry-cert and --registry-key go together"},
      {{"--base-domain=x.test", "--registry-prefix=cvmgate"}, "--registry-prefix=cvmgate: must start with /"},
  };
  for (const auto& c : cases) {
    auto r = ParseFlags(c.args);
    ASSERT_FALSE(r.ok()) << c.message;
    EXPECT_NE(r.status().message().find(c.message), std::string::npos) << r.status().message();
  }
}

TEST(Config, UsageListsEveryFlagWithItsDefault) {
  std::string u = Usage();
  for (const char* f : {"--listen", "--base-domain", "--state", "--workers", "--hello-timeout", "--hello-max-bytes",
                        "--connect-timeout", "--connect-tries", "--idle-timeout", "--drain-timeout", "--splice-mode",
                        "--ring-taskrun", "--rebalance", "--max-connections", "--backlog", "--ktls-after-bytes",
                        "--ktls-after"}) {
    EXPECT_NE(u.find(f), std::string::npos) << f;
  }
  EXPECT_NE(u.find("(default: 10m)"), std::string::npos);
}


// A TOML file named by --config: a key per flag, flags on the command line winning.
class ConfigFile : public ::testing::Test {
 protected:
  std::string Write(const std::string& text) {
    char path[] = "/tmp/cvmgate-config-test-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    std::ofstream(path) << text;
    paths_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const auto& p : paths_) unlink(p.c_str());
  }
  std::vector<std::string> paths_;
};

TEST_F(ConfigFile, EveryKindOfValue) {
  std::string f = Write(
      "# the gateway\n"
      "listen = [\"127.0.0.1:8443\", \"[::1]:8443\"]\n"
      "base-domain = \"example.test\"\n"
      "hello-timeout = \"250ms\"\n"
      "workers = 3\n"
      "proxy-protocol = true\n"
      "metrics-per-app = false\n"
      "access-log-format = \"json\"\n");
  auto c = ParseFlags({"--config", f});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->listen.size(), 2u);
  EXPECT_EQ(c->listen[1].addr.ss_family, AF_INET6);
  EXPECT_EQ(c->base_domains, std::vector<std::string>{"example.test"});
  EXPECT_EQ(c->hello_timeout, absl::Milliseconds(250));
  EXPECT_EQ(c->workers, 3);
  EXPECT_TRUE(c->proxy_protocol);
  EXPECT_FALSE(c->metrics_per_app);
  EXPECT_EQ(c->access_log.format, AccessLogFormat::kJson);
  EXPECT_EQ(c->config_file, f);
}

TEST_F(ConfigFile, TheCommandLineWins) {
  std::string f = Write("listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nbase-domain = \"a.test\"\n"
                        "workers = 3\nproxy-protocol = false\n");
  auto c = ParseFlags({"--workers=2", "--config", f, "--listen", "127.0.0.1:3"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->workers, 2);  // before --config on the line, and still the command line's
  ASSERT_EQ(c->listen.size(), 1u);  // a repeating flag's list is replaced, not added to
  EXPECT_EQ(c->listen[0].text, "127.0.0.1:3");
  EXPECT_EQ(c->base_domains, std::vector<std::string>{"a.test"});  // not given here: the file's
  EXPECT_FALSE(c->proxy_protocol);  // a switch set false in the file is simply not given
}

TEST_F(ConfigFile, ErrorsNameTheFileTheLineAndTheKey) {
  auto error = [&](const std::string& text) {
    auto c = ParseFlags({"--config", Write(text)});
    EXPECT_FALSE(c.ok()) << text;
    std::string m(c.status().message());
    return m.substr(m.find(':') + 1);  // without the temporary path
  };
  EXPECT_EQ(error("base-domain = \"a.test\"\nhello-timeuot = \"1s\"\n"),
            "2: hello-timeuot: no such flag (see cvmgate --help)");
  EXPECT_EQ(error("workers = [1, 2]\n"), "1: workers: takes one value, not a list");
  EXPECT_EQ(error("base-domain = \"a.test\"\nworkers = 1.5\n"),
            "2: workers: expected a string, a whole number or true/false (N)");
  EXPECT_EQ(error("config = \"/etc/other.toml\"\n"), "1: config: no such flag (see cvmgate --help)");
  EXPECT_EQ(error("base-domain = \"a.test\"\nworkers = \"many\"\n"),
            " --workers=many: expected a whole number from 1 to 1024");
  EXPECT_NE(error("workers = \n").find("1:11: "), std::string::npos);  // TOML syntax: line and column
  auto missing = ParseFlags({"--config", "/nonexistent/cvmgate.toml"});
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/cvmgate.toml"), std::string::npos);
}

// What a SIGHUP applies while running and what waits for a restart.
TEST(Config, ChangesSplitIntoLiveAndRestart) {
  std::vector<std::pair<std::string, std::string>> before = {
      {"listen", "127.0.0.1:1"}, {"hello-timeout", "5s"}, {"workers", "2"}, {"tls-cert", "a=x,y"}};
  std::vector<std::pair<std::string, std::string>> after = {
      {"listen", "127.0.0.1:1"}, {"hello-timeout", "1s"}, {"workers", "4"}, {"tls-cert", "a=x,y"},
      {"access-log", "/var/log/a"}};
  ConfigChanges ch = CompareConfigs(before, after);
  EXPECT_EQ(ch.live, (std::vector<std::string>{"hello-timeout", "access-log"}));
  EXPECT_EQ(ch.restart, std::vector<std::string>{"workers"});
  EXPECT_EQ(DescribeChanges(before, after, ch.live), "hello-timeout 5s -> 1s, access-log (default) -> /var/log/a");
  // In force afterwards: the live ones changed, workers still 2 (so the next reload says it again).
  auto in_force = AfterLiveChanges(before, after, ch);
  ConfigChanges again = CompareConfigs(in_force, after);
  EXPECT_TRUE(again.live.empty());
  EXPECT_EQ(again.restart, std::vector<std::string>{"workers"});
  EXPECT_TRUE(CompareConfigs(before, before).empty());
}

}  // namespace
}  // namespace cvmgate
