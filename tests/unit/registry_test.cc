// Unit tests of the registry: the address pool, idempotent registration, and crash-safe persistence.
#include "control/registry.h"

#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace cvmgate {
namespace {

constexpr char kKey1[] = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
constexpr char kKey2[] = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
constexpr char kKey3[] = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/cvmgate-registry-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

IpPool Pool(const char* cidr = "10.0.0.0/8", const char* gateway = "10.0.0.1") {
  auto p = IpPool::Create(cidr, gateway);
  EXPECT_TRUE(p.ok()) << p.status();
  return *std::move(p);
}

std::string Read(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void Write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(IpPool, SkipsTheGatewayAndRunsOut) {
  IpPool pool = Pool("192.168.7.0/29", "192.168.7.1");  // usable .1-.6, .1 is the gateway
  std::vector<std::string> got;
  for (int i = 0; i < 5; ++i) {
    auto ip = pool.Allocate();
    ASSERT_TRUE(ip.ok()) << ip.status();
    got.push_back(IpText(*ip));
  }
  EXPECT_EQ(got, (std::vector<std::string>{"192.168.7.2", "192.168.7.3", "192.168.7.4", "192.168.7.5",
                                           "192.168.7.6"}));
  auto none = pool.Allocate();
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(none.status().message().find("exhausted"), std::string::npos);
}

TEST(IpPool, FreedAddressesAreReusedAfterTheOthers) {
  IpPool pool = Pool("192.168.7.0/29", "192.168.7.1");
  auto a = pool.Allocate();
  auto b = pool.Allocate();
  pool.Release(*a);
  EXPECT_EQ(IpText(*pool.Allocate()), "192.168.7.4") << "the cursor moves on before reusing";
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(pool.Allocate().ok());
  EXPECT_EQ(IpText(*pool.Allocate()), IpText(*a)) << "then the freed one comes back";
  (void)b;
}

TEST(IpPool, BadPoolsAndReservations) {
  EXPECT_FALSE(IpPool::Create("10.0.0.0", "10.0.0.1").ok());
  EXPECT_FALSE(IpPool::Create("10.0.0.1/8", "10.0.0.1").ok()) << "host bits set";
  EXPECT_FALSE(IpPool::Create("10.0.0.0/8", "11.0.0.1").ok()) << "gateway outside";
  EXPECT_FALSE(IpPool::Create("10.0.0.0/31", "10.0.0.1").ok());
  IpPool pool = Pool();
  in_addr gw = pool.gateway();
  EXPECT_FALSE(pool.Reserve(gw).ok());
  in_addr x{};
  inet_pton(AF_INET, "10.9.9.9", &x);
  EXPECT_TRUE(pool.Reserve(x).ok());
  EXPECT_EQ(pool.Reserve(x).code(), absl::StatusCode::kAlreadyExists);
}

TEST(Registry, RegisterIsIdempotentAndANewKeyReplacesThePeer) {
  TempDir dir;
  Registry reg(Pool(), dir.file("state.json"));
  ASSERT_TRUE(reg.Load().ok());
  auto first = reg.Register("App", "App-1", kKey1);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->reg.address, "10.0.0.2");
  EXPECT_EQ(first->reg.app, "app") << "ids are stored lowercase";
  EXPECT_TRUE(first->changed);
  auto again = reg.Register("app", "app-1", kKey1);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->changed);
  EXPECT_EQ(again->reg.address, "10.0.0.2");
  auto rekeyed = reg.Register("app", "app-1", kKey2);
  ASSERT_TRUE(rekeyed.ok());
  EXPECT_EQ(rekeyed->reg.address, "10.0.0.2") << "a new key keeps the CVM's address";
  ASSERT_TRUE(rekeyed->replaced_key.has_value());
  EXPECT_EQ(rekeyed->replaced_key->ToBase64(), kKey1);
  EXPECT_EQ(reg.Register("app", "app-2", kKey3)->reg.address, "10.0.0.3");
}

TEST(Registry, BadInputIsRefusedAndChangesNothing) {
  TempDir dir;
  Registry reg(Pool(), dir.file("state.json"));
  ASSERT_TRUE(reg.Register("app", "a1", kKey1).ok());
  std::string before = Read(dir.file("state.json"));
  struct Case {
    absl::StatusOr<Registry::Outcome> result;
    const char* message;
  };
  std::vector<Case> cases = {
      {reg.Register("app", "a2", "not-base64"), "public key"},
      {reg.Register("app", "a2", "AQEB"), "public key"},
      {reg.Register("app", "a2", kKey1), "already belongs to instance 'a1'"},
      {reg.Register("other", "a1", kKey2), "belongs to app 'app'"},
      {reg.Register("bad_app", "a2", kKey2), "app id 'bad_app'"},
      {reg.Register("app", std::string(64, 'x'), kKey2), "instance id"},
      {reg.RegisterStatic("app", "a1", "127.0.0.1", "80"), "registered with a WireGuard key"},
      {reg.RegisterStatic("app", "s1", "nope", "80"), "not an IPv4 or IPv6 address"},
      {reg.RegisterStatic("app", "s1", "10.0.0.2", "80"), "already used by instance 'a1'"},
      {reg.RegisterStatic("app", "s1", "::ffff:10.0.0.2", "80"), "already used by instance 'a1'"},
      {reg.RegisterStatic("app", "s1", "127.0.0.2", ""), "names the ports it serves"},
      {reg.RegisterStatic("app", "s1", "127.0.0.2", "0"), "not a port"},
      {reg.RegisterStatic("app", "s1", "127.0.0.2", "80,70000"), "not a port"},
      {reg.RegisterStatic("app", "s1", "127.0.0.2", "90-80"), "ends before it starts"},
      {reg.RegisterStatic("app", "s1", "0.0.0.0", "80"), "unspecified"},
      {reg.RegisterStatic("app", "s1", "::", "80"), "unspecified"},
      {reg.RegisterStatic("app", "s1", "224.0.0.1", "80"), "multicast"},
      {reg.RegisterStatic("app", "s1", "ff02::1", "80"), "multicast"},
      {reg.RegisterStatic("app", "s1", "255.255.255.255", "80"), "broadcast"},
      {reg.RegisterStatic("app", "s1", "10.0.0.1", "80"), "the gateway's own address"},
      {reg.Register("app", "-", kKey2), "must be a DNS label"},
      {reg.Register("app", "--", kKey2), "must be a DNS label"},
      {reg.Register("app", "a-", kKey2), "must be a DNS label"},
      {reg.Register("-app", "a2", kKey2), "must be a DNS label"},
  };
  for (auto& c : cases) {
    ASSERT_FALSE(c.result.ok()) << c.message;
    EXPECT_NE(c.result.status().message().find(c.message), std::string::npos) << c.result.status().message();
  }
  EXPECT_EQ(Read(dir.file("state.json")), before);
  EXPECT_EQ(reg.instances().size(), 1u);
  EXPECT_EQ(reg.pool().used(), 1u);
}

TEST(Registry, StaticInstancesAndDeregistration) {
  TempDir dir;
  Registry reg(Pool("10.0.0.0/29", "10.0.0.1"), dir.file("state.json"));
  auto s = reg.RegisterStatic("web", "web-local", "127.0.0.2", "8443, 8080");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->reg.is_static());
  EXPECT_EQ(s->reg.ports.ToString(), "8080,8443");
  EXPECT_FALSE(reg.RegisterStatic("web", "web-local", "127.0.0.2", "8080,8443")->changed);
  EXPECT_TRUE(reg.RegisterStatic("web", "web-local", "127.0.0.2", "8080")->changed) << "new ports are a change";
  auto inside = reg.RegisterStatic("web", "web-pool", "10.0.0.4", "80");
  ASSERT_TRUE(inside.ok());
  EXPECT_EQ(reg.pool().used(), 1u) << "a static address inside the pool is reserved";
  auto cvm = reg.Register("web", "web-cvm", kKey1);
  ASSERT_TRUE(cvm.ok());
  EXPECT_NE(cvm->reg.address, "10.0.0.4");
  auto gone = reg.Deregister("web-cvm");
  ASSERT_TRUE(gone.ok());
  EXPECT_EQ(gone->key->ToBase64(), kKey1);
  EXPECT_EQ(reg.pool().used(), 1u) << "deregistering frees the address";
  EXPECT_EQ(reg.Deregister("web-cvm").status().code(), absl::StatusCode::kNotFound);
}

TEST(Registry, PersistsAcrossRestartsAndIgnoresAHalfWrittenTempFile) {
  TempDir dir;
  std::string path = dir.file("state.json");
  {
    Registry reg(Pool(), path);
    ASSERT_TRUE(reg.Register("app", "a1", kKey1).ok());
    ASSERT_TRUE(reg.RegisterStatic("app", "s1", "127.0.0.2", "80,443").ok());
  }
  // A crash between writing the temp file and the rename leaves this behind.
  Write(path + ".tmp.4242", R"({"version": 1, "apps": {"app": {"instances": [{"id": "half)");
  Registry again(Pool(), path);
  ASSERT_TRUE(again.Load().ok());
  ASSERT_EQ(again.instances().size(), 2u);
  EXPECT_EQ(again.instances().at("a1").address, "10.0.0.2");
  EXPECT_EQ(again.instances().at("a1").key->ToBase64(), kKey1);
  EXPECT_TRUE(again.instances().at("s1").is_static());
  EXPECT_EQ(again.instances().at("s1").ports.ToString(), "80,443");
  EXPECT_EQ(again.Register("app", "a2", kKey2)->reg.address, "10.0.0.3") << "loaded addresses stay taken";
}

TEST(Registry, AFailedWriteIsRolledBack) {
  TempDir dir;
  Registry reg(Pool(), dir.file("missing-dir/state.json"));
  auto r = reg.Register("app", "a1", kKey1);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("registration not saved"), std::string::npos) << r.status();
  EXPECT_TRUE(reg.instances().empty());
  EXPECT_EQ(reg.pool().used(), 0u);
}

TEST(Registry, BadStateFilesSayWhatIsWrongAndKeepTheOldState) {
  TempDir dir;
  std::string path = dir.file("state.json");
  Registry reg(Pool(), path);
  ASSERT_TRUE(reg.Register("app", "a1", kKey1).ok());
  struct Case {
    const char* text;
    const char* message;
  };
  std::vector<Case> cases = {
      {"{", "not a JSON object"},
      {R"({"apps": {}})", "version"},
      {R"({"version": 2})", "version"},
      {R"({"version": 1, "apps": []})", "'apps' must be an object"},
      {R"({"version": 1, "apps": {"a b": {"instances": []}}})", "app id 'a b'"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x"}]}}})", "'id' and 'address'"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x", "address": "nope", "ports": "80"}]}}})",
       "address 'nope' is not an IPv4 or IPv6 address"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x", "address": "127.0.0.2"}]}}})",
       "names the ports it serves"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x", "address": "10.0.0.2", "ports": "80", "public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]}}})",
       "'ports' is for static instances"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x", "address": "10.0.0.2", "public_key": "zz"}]}}})",
       "instance 'x'"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x", "address": "10.0.0.1", "public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]}}})",
       "the gateway's own address"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "x", "address": "127.0.0.1", "ports": "80"}]},
                                  "b": {"instances": [{"id": "X", "address": "127.0.0.2", "ports": "80"}]}}})",
       "instance 'x': appears twice"},
      {R"({"version": 1, "apps": {"a": {"proxy_protocol": "yes"}}})", "'proxy_protocol' must be true or false"},
      {R"({"version": 1, "apps": {"a": {"max_connections": 0}}})", "'max_connections' must be an integer"},
      {R"({"version": 1, "apps": {"a": {"max_connections": 1.5}}})", "'max_connections' must be an integer"},
  };
  for (const auto& c : cases) {
    Write(path, c.text);
    auto s = reg.Load();
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_NE(s.message().find(c.message), std::string::npos) << "got: " << s.message() << "\nwant: " << c.message;
    EXPECT_NE(s.message().find(path), std::string::npos) << "the error names the file";
    EXPECT_EQ(reg.instances().size(), 1u);
  }
}

TEST(Registry, AppSettingsPersistWithoutInstancesAndEmptyOnesAreDropped) {
  TempDir dir;
  std::string path = dir.file("state.json");
  {
    Registry reg(Pool(), path);
    EXPECT_TRUE(reg.app_settings("web").empty());
    auto changed = reg.SetAppSettings("Web", {.proxy_protocol = true, .max_connections = 7});
    ASSERT_TRUE(changed.ok()) << changed.status();
    EXPECT_TRUE(*changed);
    EXPECT_FALSE(*reg.SetAppSettings("web", {.proxy_protocol = true, .max_connections = 7})) << "a repeat is no change";
    ASSERT_TRUE(reg.Register("web", "w1", kKey1).ok());
    ASSERT_TRUE(reg.SetAppSettings("quiet", {.proxy_protocol = false}).ok());
    ASSERT_TRUE(reg.Deregister("w1").ok());
    EXPECT_EQ(reg.app_settings("web").max_connections, 7) << "settings outlive the app's last instance";
  }
  Registry again(Pool(), path);
  ASSERT_TRUE(again.Load().ok());
  EXPECT_EQ(again.app_settings("web").proxy_protocol, true);
  EXPECT_EQ(again.app_settings("web").max_connections, 7);
  EXPECT_EQ(again.app_settings("quiet").proxy_protocol, false) << "an explicit off is kept, not confused with unset";
  EXPECT_FALSE(again.app_settings("quiet").max_connections.has_value());
  ASSERT_TRUE(again.SetAppSettings("web", {}).ok());
  EXPECT_EQ(again.all_app_settings().size(), 1u) << "clearing every override forgets the app";
  EXPECT_EQ(Read(path).find("\"web\""), std::string::npos);
}

TEST(Registry, BadAppSettingsAreRefusedAndAFailedWriteIsRolledBack) {
  TempDir dir;
  Registry reg(Pool(), dir.file("state.json"));
  EXPECT_EQ(reg.SetAppSettings("a b", {.proxy_protocol = true}).status().code(), absl::StatusCode::kInvalidArgument);
  auto zero = reg.SetAppSettings("a", {.max_connections = 0});
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.status().message().find("max_connections must be in [1, "), std::string::npos) << zero.status();
  Registry unwritable(Pool(), dir.file("missing-dir/state.json"));
  auto r = unwritable.SetAppSettings("a", {.proxy_protocol = true});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("app settings not saved"), std::string::npos) << r.status();
  EXPECT_TRUE(unwritable.app_settings("a").empty());
}

// One name, one meaning: `victim-443s.<base>` must never reach another app's instance.
TEST(Registry, AppAndInstanceIdsShareOneNamespace) {
  TempDir dir;
  Registry reg(Pool(), dir.file("state.json"));
  ASSERT_TRUE(reg.Register("victim", "victim-1", kKey1).ok());
  ASSERT_TRUE(reg.SetAppSettings("planned", {.max_connections = 5}).ok());
  std::string before = Read(dir.file("state.json"));
  struct Case {
    absl::StatusOr<Registry::Outcome> result;
    const char* message;
  };
  std::vector<Case> cases = {
      {reg.Register("evil", "victim", kKey2), "instance id 'victim' is an app's id"},
      {reg.RegisterStatic("evil", "Victim", "127.0.0.2", "443"), "instance id 'victim' is an app's id"},
      {reg.Register("evil", "planned", kKey2), "instance id 'planned' is an app's id"},
      {reg.Register("web", "web", kKey2), "instance id 'web' is an app's id"},
      {reg.Register("victim-1", "x1", kKey2), "app id 'victim-1' is the id of an instance of app 'victim'"},
      {reg.Register("evil", "victim-1", kKey2), "belongs to app 'victim'"},
  };
  for (auto& c : cases) {
    ASSERT_FALSE(c.result.ok()) << c.message;
    EXPECT_EQ(c.result.status().code(), absl::StatusCode::kAlreadyExists) << c.result.status();
    EXPECT_NE(c.result.status().message().find(c.message), std::string::npos) << c.result.status().message();
  }
  auto settings = reg.SetAppSettings("victim-1", {.proxy_protocol = true});
  ASSERT_FALSE(settings.ok());
  EXPECT_NE(settings.status().message().find("is the id of an instance"), std::string::npos) << settings.status();
  EXPECT_EQ(Read(dir.file("state.json")), before);
  EXPECT_EQ(reg.instances().size(), 1u);
}

// The state file obeys what the API does: each of these states is refused by
// the loader, and the same registrations are refused by the API.
TEST(Registry, TheLoaderAppliesTheApiRules) {
  TempDir dir;
  std::string path = dir.file("state.json");
  Registry reg(Pool(), path);
  struct Case {
    const char* text;
    const char* message;
  };
  std::vector<Case> cases = {
      // an instance named like an app listed after it
      {R"({"version": 1, "apps": {"evil": {"instances": [{"id": "victim", "address": "127.0.0.2", "ports": "443"}]},
                                  "victim": {"instances": [{"id": "v1", "address": "127.0.0.3", "ports": "443"}]}}})",
       "an id names one app or one instance, never both"},
      {R"({"version": 1, "apps": {"web": {"instances": [{"id": "web", "address": "127.0.0.2", "ports": "443"}]}}})",
       "instance id 'web' is an app's id"},
      {R"({"version": 1, "apps": {"victim": {"max_connections": 3},
                                  "evil": {"instances": [{"id": "victim", "address": "127.0.0.2", "ports": "1"}]}}})",
       "instance id 'victim' is an app's id"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "s1", "address": "10.0.0.5", "ports": "80"},
                                                      {"id": "s2", "address": "::ffff:10.0.0.5", "ports": "81"}]}}})",
       "already used by instance 's1'"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "s1", "address": "0.0.0.0", "ports": "80"}]}}})",
       "unspecified"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "s1", "address": "ff02::1", "ports": "80"}]}}})",
       "multicast"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "--", "address": "127.0.0.2", "ports": "80"}]}}})",
       "must be a DNS label"},
      {R"({"version": 1, "apps": {"-": {"instances": []}}})", "must be a DNS label"},
      {R"({"version": 1, "apps": {"a": {"instances": [{"id": "s1", "address": "127.0.0.2", "ports": "0-80"}]}}})",
       "not a port"},
  };
  for (const auto& c : cases) {
    Write(path, c.text);
    auto s = reg.Load();
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_NE(s.message().find(c.message), std::string::npos) << "got: " << s.message() << "\nwant: " << c.message;
  }
  // What the API accepts, the loader accepts: several static instances on one
  // host address outside the pool, mapped addresses written canonically.
  Write(path, "{\"version\": 1}");
  ASSERT_TRUE(reg.Load().ok());
  ASSERT_TRUE(reg.RegisterStatic("web", "w1", "::ffff:127.0.0.2", "8080").ok());
  ASSERT_TRUE(reg.RegisterStatic("api", "a1", "127.0.0.2", "9000-9100").ok());
  ASSERT_TRUE(reg.RegisterStatic("api", "a2", "2001:DB8::0:1", "443").ok());
  EXPECT_EQ(reg.instances().at("w1").address, "127.0.0.2");
  EXPECT_EQ(reg.instances().at("a2").address, "2001:db8::1");
  std::string saved = Read(path);
  Registry loaded(Pool(), path);
  ASSERT_TRUE(loaded.Load().ok()) << saved;
  EXPECT_EQ(loaded.ToJson(), reg.ToJson());
  Write(path, R"({"version": 1, "apps": {"web": {"instances": [{"id": "w1", "address": "::ffff:127.0.0.2", "ports": "8080"},
                                                              {"id": "w2", "address": "127.0.0.2", "ports": "8081"}]}}})");
  ASSERT_TRUE(reg.Load().ok());
  EXPECT_EQ(reg.instances().at("w1").address, "127.0.0.2");
}

TEST(PortSet, ParsesListsAndRangesCanonically) {
  auto p = PortSet::Parse(" 8443,80, 9000-9100,9050-9200,81");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ToString(), "80-81,8443,9000-9200");
  EXPECT_TRUE(p->Contains(81));
  EXPECT_TRUE(p->Contains(9200));
  EXPECT_FALSE(p->Contains(82));
  EXPECT_FALSE(p->Contains(443));
  for (const char* bad : {"", ",", "80,", "0", "65536", "08", "-5", "5-", "a", "1-2-3", "+80", "90-80"}) {
    EXPECT_FALSE(PortSet::Parse(bad).ok()) << bad;
  }
  EXPECT_EQ(PortSet::Parse("1-65535")->ToString(), "1-65535");
}

TEST(Registry, MissingStateFileIsEmpty) {
  Registry reg(Pool(), "/nonexistent/cvmgate-state.json");
  EXPECT_TRUE(reg.Load().ok());
  EXPECT_TRUE(reg.instances().empty());
}

}  // namespace
}  // namespace cvmgate

namespace cvmgate {
namespace {

TEST(Registry, ImportKeepsAddressesAndRunsAgainHarmlessly) {
  TempDir dir;
  Registry reg(Pool(), dir.file("state.json"));
  ASSERT_TRUE(reg.Load().ok());
  ASSERT_TRUE(reg.Register("other", "other-1", kKey3).ok());  // takes 10.0.0.2
  const std::string doc = std::string(R"({"version": 1, "apps": {"app": {"max_connections": 7, "instances": [
      {"id": "app-1", "address": "10.0.0.50", "public_key": ")") + kKey1 + R"("},
      {"id": "app-2", "address": "192.0.2.7", "ports": "8080"}]}}})";
  auto first = reg.Import(doc);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->added, 2u);
  EXPECT_EQ(first->settings, 1u);
  EXPECT_EQ(reg.instances().at("app-1").address, "10.0.0.50") << "a CVM keeps its /32 across the move";
  EXPECT_EQ(reg.app_settings("app").max_connections, 7);
  auto again = reg.Import(doc);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->added, 0u);
  EXPECT_EQ(again->unchanged, 2u);

  Registry reloaded(Pool(), dir.file("state.json"));
  ASSERT_TRUE(reloaded.Load().ok());
  EXPECT_EQ(reloaded.instances().size(), 3u) << "each import is saved";

  // The document is held to the registry's rules before anything is added, and so is each instance.
  auto bad = reg.Import(R"({"version": 1, "apps": {"x": {"instances": [{"id": "x", "address": "10.0.0.60",
      "public_key": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="}]}}})");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_NE(bad.status().message().find("imported registry: instance id 'x' is an app's id"), std::string::npos) << bad.status();
  auto taken = reg.Import(std::string(R"({"version": 1, "apps": {"y": {"instances": [{"id": "y-1",
      "address": "10.0.0.2", "public_key": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="}]}}})"));
  EXPECT_FALSE(taken.ok()) << "10.0.0.2 is other-1's";
  EXPECT_NE(taken.status().message().find("instance 'y-1'"), std::string::npos) << taken.status();
  EXPECT_EQ(reg.instances().size(), 3u);
}

// A shared store as another gateway host changes it: what it holds whole, and the updates its watch
// would hand over.
class SharedStore final : public RegistryStore {
 public:
  const std::string& name() const override { return name_; }
  absl::StatusOr<std::string> Read() override {
    ++reads;
    return document;
  }
  absl::Status Write(std::span<const RegistryChange>, const Registry&) override { return absl::OkStatus(); }
  RegistryUpdate TakeUpdate() override { return std::exchange(update, RegistryUpdate{}); }

  std::string document = R"({"version": 1})";
  RegistryUpdate update;
  int reads = 0;

 private:
  std::string name_ = "shared store";
};

TEST(Registry, CatchUpTakesInOnlyWhatOthersChanged) {
  auto owned = std::make_unique<SharedStore>();
  SharedStore& store = *owned;
  Registry reg(Pool("10.0.0.0/24", "10.0.0.1"), std::move(owned));
  ASSERT_TRUE(reg.Load().ok());
  ASSERT_TRUE(reg.RegisterStatic("web", "web-1", "192.0.2.1", "80").ok());
  ASSERT_TRUE(reg.Register("vm", "vm-1", kKey1).ok());  // 10.0.0.2
  const uint64_t before = reg.catch_ups();

  auto nothing = reg.CatchUp();
  ASSERT_TRUE(nothing.ok());
  EXPECT_FALSE(*nothing);
  EXPECT_EQ(reg.catch_ups(), before);

  // Another host registered a CVM, deregistered web-1, set an app's settings and joined the cluster.
  store.update.instances["vm-2"] = std::string(R"({"app": "vm", "address": "10.0.0.3", "public_key": ")") + kKey2 + "\"}";
  store.update.instances["web-1"] = std::nullopt;
  store.update.apps["vm"] = R"({"max_connections": 9})";
  store.update.gateways["b"] = R"({"public_key": "k", "endpoint": "b:51820", "tunnel_address": "10.0.0.4"})";
  auto changed = reg.CatchUp();
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_TRUE(*changed);
  EXPECT_EQ(store.reads, 1) << "taken in without reading the store whole";
  EXPECT_EQ(reg.catch_ups(), before + 1);
  EXPECT_EQ(reg.instances().at("vm-2").address, "10.0.0.3");
  EXPECT_FALSE(reg.instances().contains("web-1"));
  EXPECT_EQ(reg.app_settings("vm").max_connections, 9);
  EXPECT_EQ(reg.gateways().at("b").endpoint, "b:51820");
  // What is taken in holds the pool: the next CVM gets neither the other host's nor vm-2's address.
  auto next = reg.Register("vm", "vm-3", kKey3);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->reg.address, "10.0.0.5");

  // The host leaves and the app's settings go: both are released.
  store.update.gateways["b"] = std::nullopt;
  store.update.apps["vm"] = std::nullopt;
  ASSERT_TRUE(reg.CatchUp().ok());
  EXPECT_TRUE(reg.gateways().empty());
  EXPECT_FALSE(reg.app_settings("vm").max_connections);
  EXPECT_EQ(store.reads, 1);
}

TEST(Registry, AnUpdateThatDoesNotFitIsUndoneAndTheStoreReadWhole) {
  auto owned = std::make_unique<SharedStore>();
  SharedStore& store = *owned;
  Registry reg(Pool("10.0.0.0/24", "10.0.0.1"), std::move(owned));
  ASSERT_TRUE(reg.Load().ok());
  ASSERT_TRUE(reg.Register("vm", "vm-1", kKey1).ok());  // 10.0.0.2
  ASSERT_TRUE(reg.RegisterStatic("vm", "vm-0", "192.0.2.50", "80").ok());
  const std::string kept = reg.ToJson();
  struct Case {
    const char* what;
    std::string instance;  // vm-2's value
    const char* app;       // an app's settings, or null
  };
  const std::vector<Case> cases = {
      {"an address held here", std::string(R"({"app": "vm", "address": "10.0.0.2", "public_key": ")") + kKey2 + "\"}",
       nullptr},
      {"a key held here", std::string(R"({"app": "vm", "address": "10.0.0.9", "public_key": ")") + kKey1 + "\"}",
       nullptr},
      {"an instance named as an app", std::string(R"({"app": "other", "address": "10.0.0.9", "public_key": ")") + kKey2 + "\"}",
       "vm-2"},
      {"not JSON", "{", nullptr},
      {"a bad port list", R"({"app": "vm", "address": "192.0.2.1", "ports": "0"})", nullptr},
  };
  for (const Case& c : cases) {
    store.reads = 0;
    store.update.instances["vm-2"] = c.instance;
    // Half of this update fits (it removes vm-0): none of it may stay.
    store.update.instances["vm-0"] = std::nullopt;
    if (c.app != nullptr) store.update.apps[c.app] = R"({"max_connections": 3})";
    // The store is read whole instead; that read fails too here, so what is left is the undo's work.
    store.document = "{";
    auto changed = reg.CatchUp();
    ASSERT_FALSE(changed.ok()) << c.what;
    EXPECT_NE(changed.status().message().find("shared store: not a JSON object"), std::string::npos)
        << c.what << ": " << changed.status();
    EXPECT_EQ(store.reads, 1) << c.what << ": the store is read whole instead";
    EXPECT_EQ(reg.ToJson(), kept) << c.what << ": nothing of the update stays";
    EXPECT_FALSE(reg.pool().CanReserve(in_addr{htonl(0x0a000002)}).ok()) << c.what << ": vm-1 keeps its address";
    EXPECT_TRUE(reg.app_settings("vm-2").empty()) << c.what;
  }
  // A store that lost track is read whole.
  store.update.resync = true;
  store.document = R"({"version": 1, "apps": {"x": {"instances": [{"id": "x-1", "address": "192.0.2.9", "ports": "80"}]}}})";
  auto whole = reg.CatchUp();
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(reg.instances().size(), 1u);
  EXPECT_TRUE(reg.instances().contains("x-1"));
}

}  // namespace
}  // namespace cvmgate
