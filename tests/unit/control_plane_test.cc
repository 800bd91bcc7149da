// Unit tests of the control plane: health from handshakes on a fake clock, peer reconciliation,
// snapshot publication only on change, and the admin API's answers.
#include "control/control_plane.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "dataplane/addresses.h"
#include "tests/common/fake_tunnel.h"

namespace cvmgate {
namespace {

using nlohmann::json;

constexpr char kKey1[] = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
constexpr char kKey2[] = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
constexpr char kKey3[] = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";
constexpr char kStray[] = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

class FakeClock : public Clock {
 public:
  absl::Time Now() override { return now; }
  absl::Time now = absl::FromUnixSeconds(1'800'000'000);
};

ControlOptions Options() {
  ControlOptions o;
  o.base_domains = {"example.test"};
  o.gateway_endpoint = "gw.example.test:51820";
  o.listeners = {SockaddrFromIp("0.0.0.0", 443).value()};
  return o;
}

class ControlPlaneTest : public ::testing::Test {
 protected:
  ControlPlaneTest()
      : dir_(std::filesystem::temp_directory_path() / ("cvmgate-cp-" + std::to_string(getpid()))),
        registry_(*IpPool::Create("10.0.0.0/8", "10.0.0.1"), (dir_ / "state.json").string()),
        domain_(1, *RouteSnapshot::Build({})),
        control_(Options(), registry_, domain_, &tunnel_, clock_, [] { return std::string("cvmgate_accepted_total 7\n"); }) {
    std::filesystem::create_directories(dir_);
  }
  ~ControlPlaneTest() override { std::filesystem::remove_all(dir_); }

  json Call(const std::string& method, const std::string& path, const json& body = nullptr,
            std::map<std::string, std::string> query = {}, int want = 200) {
    HttpRequest r;
    r.method = method;
    r.path = path;
    r.query = std::move(query);
    if (!body.is_null()) r.body = body.dump();
    HttpResponse resp = control_.Handle(r);
    EXPECT_EQ(resp.status, want) << path << ": " << resp.body;
    return json::parse(resp.body, nullptr, false);
  }
  json Register(const std::string& app, const std::string& id, const std::string& key, int want = 200) {
    return Call("POST", "/v1/register", {{"app", app}, {"instance", id}, {"public_key", key}}, {}, want);
  }
  void Handshake(const char* key, absl::Duration ago) {
    tunnel_.handshakes[key] = absl::ToUnixSeconds(clock_.now - ago);
  }
  size_t Healthy(const std::string& id) { return domain_.current()->Find(id).healthy.size(); }

  std::filesystem::path dir_;
  FakeClock clock_;
  testing::FakeTunnel tunnel_;
  Registry registry_;
  SnapshotDomain domain_;
  ControlPlane control_;
};

TEST_F(ControlPlaneTest, RegisterReturnsTheTunnelDetailsAndAddsThePeer) {
  json r = Register("app", "app-1", kKey1);
  EXPECT_EQ(r["ip"], "10.0.0.2");
  EXPECT_EQ(r["gateway_ip"], "10.0.0.1");
  EXPECT_EQ(r["gateway_endpoint"], "gw.example.test:51820");
  EXPECT_EQ(r["base_domains"], json::array({"example.test"}));
  EXPECT_EQ(r["wireguard_peer"], "set");
  EXPECT_EQ(tunnel_.peers[kKey1], "10.0.0.2");
  EXPECT_TRUE(domain_.current()->Find("app").known);
  EXPECT_EQ(Healthy("app"), 0u) << "no handshake yet: not routable";
}

TEST_F(ControlPlaneTest, WithSeveralGatewayHostsRegisterListsEachAndSkipsTheirAddresses) {
  // Another host's tunnel address is never a CVM's (it is the next free one here).
  std::ofstream(dir_ / "state.json") << R"({"version": 1, "gateways": {
      "gw-a": {"public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "endpoint": "a.example:51820",
               "tunnel_address": "10.0.0.1"},
      "gw-b": {"public_key": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=", "endpoint": "b.example:51820",
               "tunnel_address": "10.0.0.2"}}})";
  ASSERT_TRUE(registry_.Load().ok());
  json r = Register("app", "app-1", kKey3);
  EXPECT_EQ(r["ip"], "10.0.0.3") << "10.0.0.2 is gw-b's";
  ASSERT_EQ(r["gateways"].size(), 2u) << r.dump();
  EXPECT_EQ(r["gateways"][1]["name"], "gw-b");
  EXPECT_EQ(r["gateways"][1]["endpoint"], "b.example:51820");
  EXPECT_EQ(r["gateways"][1]["tunnel_address"], "10.0.0.2");
  Call("GET", "/v1/nodes", nullptr, {}, 404);  // this test's host was not given a node name
}

TEST_F(ControlPlaneTest, HealthFollowsTheLatestHandshake) {
  Register("app", "app-1", kKey1);
  Register("app", "app-2", kKey2);
  Handshake(kKey1, absl::Seconds(10));
  Handshake(kKey2, absl::Minutes(6));
  ASSERT_TRUE(control_.Poll().ok());
  EXPECT_EQ(Healthy("app"), 1u);
  EXPECT_EQ(Healthy("app-1"), 1u);
  EXPECT_EQ(Healthy("app-2"), 0u);
  clock_.now += absl::Minutes(5);  // app-1's handshake is now 5 min 10 s old
  ASSERT_TRUE(control_.Poll().ok());
  EXPECT_EQ(Healthy("app"), 0u);
  Handshake(kKey2, absl::Seconds(1));
  ASSERT_TRUE(control_.Poll().ok());
  EXPECT_EQ(Healthy("app"), 1u);
  EXPECT_EQ(domain_.current()->instances()[domain_.current()->Find("app").healthy[0]].id, "app-2");
}

TEST_F(ControlPlaneTest, SnapshotsArePublishedOnlyWhenRoutingChanges) {
  Register("app", "app-1", kKey1);
  Handshake(kKey1, absl::Seconds(1));
  ASSERT_TRUE(control_.Poll().ok());
  uint64_t publishes = control_.publishes();
  for (int i = 0; i < 5; ++i) {
    clock_.now += absl::Seconds(10);
    Handshake(kKey1, absl::Seconds(1));
    ASSERT_TRUE(control_.Poll().ok());
  }
  EXPECT_EQ(control_.publishes(), publishes);
  EXPECT_EQ(domain_.Reclaim(), 0u);
}

// A device the supervisor cannot read keeps its last handshakes: they age,
// and once older than --healthy-within nothing routes to those instances, in
// the snapshot the workers use as in `list`.
TEST_F(ControlPlaneTest, AnUnreadableDeviceRoutesNothingOnceItsHandshakesAreTooOld) {
  Register("app", "app-1", kKey1);
  Handshake(kKey1, absl::Seconds(10));
  ASSERT_TRUE(control_.Poll().ok());
  EXPECT_EQ(Healthy("app"), 1u);
  tunnel_.readable = false;  // wireguard-go stopped answering
  clock_.now += absl::Minutes(4);
  ASSERT_TRUE(control_.Poll().ok());
  EXPECT_EQ(Healthy("app"), 1u) << "not all at once: the last handshake is 4 min 10 s old";
  clock_.now += absl::Minutes(1);
  ASSERT_TRUE(control_.Poll().ok());
  EXPECT_EQ(Healthy("app"), 0u) << "5 min 10 s: the snapshot routes nothing there";
  EXPECT_EQ(Call("GET", "/v1/list")["instances"][0]["healthy"], false);
  // Registering meanwhile answers at once, and says the peer is pending.
  json r = Register("app", "app-2", kKey2);
  EXPECT_EQ(r["wireguard_peer"], "pending: the tunnel is being restored; the peer is set once it is back");
}

TEST_F(ControlPlaneTest, DeregisterRemovesPeerAndRoute) {
  Register("app", "app-1", kKey1);
  json r = Call("POST", "/v1/deregister", {{"instance", "app-1"}});
  EXPECT_EQ(r["removed"], true);
  EXPECT_FALSE(tunnel_.peers.contains(kKey1));
  EXPECT_FALSE(domain_.current()->Find("app-1").known);
  Call("POST", "/v1/deregister", {{"instance", "app-1"}}, {}, 404);
}

TEST_F(ControlPlaneTest, BadRequestsGetClearErrors) {
  EXPECT_NE(Register("app", "app-1", "bogus", 400)["error"].get<std::string>().find("public key"), std::string::npos);
  Register("app", "app-1", kKey1);
  EXPECT_NE(Register("other", "app-1", kKey2, 409)["error"].get<std::string>().find("belongs to app"),
            std::string::npos);
  Call("POST", "/v1/register", json::object(), {}, 400);
  Call("GET", "/v1/register", nullptr, {}, 405);
  Call("GET", "/nope", nullptr, {}, 404);
  Call("GET", "/v1/explain", nullptr, {}, 400);
}

TEST_F(ControlPlaneTest, ListAndExplain) {
  Register("app", "app-1", kKey1);
  Call("POST", "/v1/register", {{"app", "app"}, {"instance", "local"}, {"address", "127.0.0.2"}, {"ports", "80,8443"}});
  Handshake(kKey1, absl::Seconds(30));
  ASSERT_TRUE(control_.Poll().ok());
  json list = Call("GET", "/v1/list");
  ASSERT_EQ(list["instances"].size(), 2u);
  EXPECT_EQ(list["instances"][0]["instance"], "app-1");
  EXPECT_EQ(list["instances"][0]["last_handshake_age_s"], 30);
  EXPECT_EQ(list["instances"][0]["healthy"], true);
  EXPECT_EQ(list["instances"][1]["static"], true);
  EXPECT_EQ(list["instances"][1]["healthy"], true);
  EXPECT_EQ(list["instances"][1]["ports"], "80,8443");

  json e = Call("GET", "/v1/explain", nullptr, {{"host", "app-8443s.example.test"}});
  EXPECT_EQ(e["mode"], "passthrough");
  EXPECT_EQ(e["port"], 8443);
  EXPECT_EQ(e["candidates"].size(), 2u);
  EXPECT_EQ(e["routable"], true);
  EXPECT_NE(e["verdict"].get<std::string>().find("one of 2 healthy"), std::string::npos);
  json pinned = Call("GET", "/v1/explain", nullptr, {{"host", "local-80s.example.test"}});
  EXPECT_EQ(pinned["pinned"], true);
  EXPECT_EQ(pinned["candidates"][0]["address"], "127.0.0.2:80");
  clock_.now += absl::Minutes(10);
  json down = Call("GET", "/v1/explain", nullptr, {{"host", "app-1-8443s.example.test"}});
  EXPECT_EQ(down["verdict"], "refused: no healthy instance");
  EXPECT_EQ(Call("GET", "/v1/explain", nullptr, {{"host", "x.other.test"}})["routable"], false);
  EXPECT_NE(Call("GET", "/v1/explain", nullptr, {{"host", "nope-1s.example.test"}})["verdict"].get<std::string>().find(
                "no app or instance"),
            std::string::npos);
}

TEST_F(ControlPlaneTest, StaticInstancesServeTheirPortsAndNeverTheGatewayItself) {
  auto error = [&](const json& body, int want) { return Call("POST", "/v1/register", body, {}, want)["error"]; };
  EXPECT_NE(error({{"app", "web"}, {"instance", "w1"}, {"address", "127.0.0.2"}}, 400).get<std::string>().find(
                "names the ports it serves"),
            std::string::npos);
  EXPECT_NE(error({{"app", "web"}, {"instance", "w1"}, {"address", "127.0.0.2"}, {"ports", 8080}}, 400)
                .get<std::string>()
                .find("'ports' must be a string"),
            std::string::npos);
  EXPECT_NE(error({{"app", "web"}, {"instance", "w1"}, {"public_key", kKey1}, {"ports", "80"}}, 400)
                .get<std::string>()
                .find("a CVM serves every port"),
            std::string::npos);
  // The gateway listens on 0.0.0.0:443: 127.0.0.2:443 would be itself.
  EXPECT_EQ(error({{"app", "web"}, {"instance", "w1"}, {"address", "127.0.0.2"}, {"ports", "400-500"}}, 409),
            "127.0.0.2:443 is this gateway's own listener: a static instance there would make the gateway connect to "
            "itself (serve other ports, or use another address)");
  EXPECT_TRUE(registry_.instances().empty());
  Call("POST", "/v1/register", {{"app", "web"}, {"instance", "w1"}, {"address", "::ffff:127.0.0.2"}, {"ports", "8080"}});
  Call("POST", "/v1/register", {{"app", "web"}, {"instance", "w2"}, {"address", "127.0.0.2"}, {"ports", "8081"}});
  EXPECT_EQ(registry_.instances().at("w1").address, "127.0.0.2");
  json e = Call("GET", "/v1/explain", nullptr, {{"host", "web-2222s.example.test"}});
  EXPECT_EQ(e["verdict"], "refused: no healthy instance serves port 2222 (static instances name theirs)");
  EXPECT_EQ(e["routable"], false);
  e = Call("GET", "/v1/explain", nullptr, {{"host", "web-8081s.example.test"}});
  EXPECT_EQ(e["routable"], true);
  EXPECT_NE(e["verdict"].get<std::string>().find("one of 1 healthy instances serving port 8081"), std::string::npos);
  const RouteSnapshot* snap = domain_.current();
  const Instance& w1 = snap->instances()[snap->Find("w1").healthy[0]];
  EXPECT_TRUE(w1.local) << "127.0.0.0/8 is this host's";
  EXPECT_TRUE(w1.Serves(8080));
  EXPECT_FALSE(w1.Serves(2222));
  EXPECT_TRUE(snap->Find("web").restricted);
}

TEST_F(ControlPlaneTest, NoAppTakesOverAnotherAppsNames) {
  Register("victim", "victim-1", kKey1);
  EXPECT_NE(Register("evil", "victim", kKey2, 409)["error"].get<std::string>().find("is an app's id"),
            std::string::npos);
  EXPECT_NE(Call("POST", "/v1/register",
                 {{"app", "victim-1"}, {"instance", "x"}, {"address", "192.0.2.7"}, {"ports", "443"}}, {}, 409)["error"]
                .get<std::string>()
                .find("is the id of an instance of app 'victim'"),
            std::string::npos);
  EXPECT_EQ(domain_.current()->instances().size(), 1u);
}

// Whatever bytes a request carries, the answer is JSON and a 4xx, never an exception.
TEST_F(ControlPlaneTest, BytesThatAreNotUtf8GetA400) {
  auto handle = [&](const std::string& raw) -> std::string {
    HttpRequest r;
    auto used = ParseHttpRequest(raw, 65536, r);
    if (!used.ok()) return std::string(used.status().message());
    HttpResponse resp = control_.Handle(r);
    EXPECT_TRUE(json::accept(resp.body)) << resp.body;
    return resp.status == 200 ? "200" : "not 200";
  };
  EXPECT_EQ(handle("GET /%ff HTTP/1.1\r\n\r\n"), "the request target is not UTF-8 once percent-decoded");
  EXPECT_EQ(handle("GET /v1/explain?host=caf%E9-443s.example.test HTTP/1.1\r\n\r\n"),
            "the request target is not UTF-8 once percent-decoded");
  EXPECT_EQ(handle("GET /v1/explain?host=a%C0%AF HTTP/1.1\r\n\r\n"),
            "the request target is not UTF-8 once percent-decoded")
      << "an overlong '/'";
  EXPECT_EQ(handle("GET /v1/explain?host=caf%C3%A9-443s.example.test HTTP/1.1\r\n\r\n"), "200")
      << "UTF-8 is fine: the name is refused by the grammar";
  std::string body = std::string("{\"app\": \"a\xe9\", \"instance\": \"b\", \"public_key\": \"") + kKey1 + "\"}";
  HttpRequest r;
  ASSERT_TRUE(ParseHttpRequest(absl::StrCat("POST /v1/register HTTP/1.1\r\nContent-Length: ", body.size(),
                                            "\r\n\r\n", body),
                               65536, r)
                  .ok());
  HttpResponse resp = control_.Handle(r);
  EXPECT_EQ(resp.status, 400) << resp.body;
  // Even a handler given bytes the parser would have refused answers without throwing.
  HttpRequest raw;
  raw.method = "GET";
  raw.path = "/\xff\xfe";
  EXPECT_EQ(control_.Handle(raw).status, 404);
  raw.path = "/v1/explain";
  raw.query["host"] = "\xe9.example.test";
  EXPECT_EQ(control_.Handle(raw).status, 200);
}

TEST_F(ControlPlaneTest, AppSettingsOverrideTheFlagsAndReachTheSnapshot) {
  Register("app", "app-1", kKey1);
  Register("other", "other-1", kKey2);
  auto lookup = [&](const char* id) { return domain_.current()->Find(id); };
  EXPECT_EQ(lookup("app").app_max_connections, 2000);
  EXPECT_FALSE(lookup("app").proxy_protocol);
  uint64_t publishes = control_.publishes();
  json r = Call("POST", "/v1/app-settings", {{"app", "App"}, {"proxy_protocol", true}, {"max_connections", 3}});
  EXPECT_EQ(r["app"], "app");
  EXPECT_EQ(r["changed"], true);
  EXPECT_EQ(r["max_connections"], 3);
  EXPECT_EQ(control_.publishes(), publishes + 1) << "new connections see the change at once";
  EXPECT_EQ(lookup("app").app_max_connections, 3);
  EXPECT_TRUE(lookup("app").proxy_protocol);
  EXPECT_TRUE(lookup("app-1").proxy_protocol) << "pinning an instance uses its app's settings";
  EXPECT_EQ(lookup("other").app_max_connections, 2000) << "other apps keep the flags";
  EXPECT_EQ(Call("POST", "/v1/app-settings", {{"app", "app"}, {"max_connections", 3}})["changed"], false);
  json explain = Call("GET", "/v1/explain", nullptr, {{"host", "app-80.example.test"}});
  EXPECT_EQ(explain["app_max_connections"], 3);
  EXPECT_EQ(explain["proxy_protocol"], true);
  // null goes back to the flag; a field left out stays.
  Call("POST", "/v1/app-settings", {{"app", "app"}, {"max_connections", nullptr}});
  EXPECT_EQ(lookup("app").app_max_connections, 2000);
  EXPECT_TRUE(lookup("app").proxy_protocol);
  Call("POST", "/v1/app-settings", {{"app", "future"}, {"max_connections", 9}});
  json apps = Call("GET", "/v1/apps");
  ASSERT_EQ(apps["apps"].size(), 3u);
  EXPECT_EQ(apps["apps"][0]["app"], "app");
  EXPECT_EQ(apps["apps"][0]["overrides"], json({{"proxy_protocol", true}}));
  EXPECT_EQ(apps["apps"][1]["app"], "future");
  EXPECT_EQ(apps["apps"][1]["instances"], 0);
  EXPECT_EQ(apps["apps"][1]["max_connections"], 9);
  EXPECT_EQ(apps["apps"][2]["overrides"], json::object());
  EXPECT_EQ(apps["defaults"]["max_connections"], 2000);
  // The settings are in the state file: a reload keeps them.
  ASSERT_TRUE(control_.Reload().ok());
  EXPECT_TRUE(lookup("app").proxy_protocol);
}

TEST_F(ControlPlaneTest, BadAppSettingsGetClearErrors) {
  auto error = [&](const json& body, int want) { return Call("POST", "/v1/app-settings", body, {}, want)["error"]; };
  EXPECT_EQ(error({{"proxy_protocol", true}}, 400), "give 'app'");
  EXPECT_EQ(error({{"app", "a"}, {"proxy_protocol", "yes"}}, 400),
            "'proxy_protocol' must be true, false or null (the --proxy-protocol flag)");
  EXPECT_EQ(error({{"app", "a"}, {"max_connections", 0}}, 400),
            "'max_connections' must be an integer in [1, 16777216] or null (--app-max-connections)");
  EXPECT_EQ(error({{"app", "a"}, {"max_conns", 5}}, 400),
            "unknown field 'max_conns' (have app, proxy_protocol, max_connections)");
  EXPECT_EQ(error({{"app", "a b"}, {"max_connections", 5}}, 400),
            "app id 'a b' must be a DNS label: 1-63 of [a-z0-9-], starting and ending with a letter or digit");
  Call("GET", "/v1/app-settings", nullptr, {}, 405);
  EXPECT_TRUE(registry_.all_app_settings().empty());
}

TEST_F(ControlPlaneTest, MetricsHaveWorkerCountersAndControlGauges) {
  Register("app", "app-1", kKey1);
  ASSERT_TRUE(control_.Poll().ok());
  HttpRequest r;
  r.method = "GET";
  r.path = "/metrics";
  HttpResponse m = control_.Handle(r);
  EXPECT_EQ(m.status, 200);
  EXPECT_NE(m.body.find("cvmgate_accepted_total 7"), std::string::npos);
  EXPECT_NE(m.body.find("# TYPE cvmgate_instances gauge\ncvmgate_instances 1\n"), std::string::npos) << m.body;
  EXPECT_NE(m.body.find("cvmgate_health_polls_total 1"), std::string::npos);
  EXPECT_NE(m.body.find("cvmgate_wireguard_peers 1"), std::string::npos);
}

TEST(AdminHttp, TokensAreComparedWhole) {
  EXPECT_TRUE(TokenMatches("Bearer s3cret", "s3cret"));
  EXPECT_FALSE(TokenMatches("Bearer s3cre", "s3cret"));
  EXPECT_FALSE(TokenMatches("Bearer s3cret2", "s3cret"));
  EXPECT_FALSE(TokenMatches("Bearer S3cret", "s3cret"));
  EXPECT_FALSE(TokenMatches("s3cret", "s3cret"));
  EXPECT_FALSE(TokenMatches("", "s3cret"));
}

TEST(AdminHttp, ParsesRequestsAndRefusesBadOnes) {
  HttpRequest r;
  std::string req = "POST /v1/explain?host=a%2Db.example.test&x HTTP/1.1\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}";
  EXPECT_EQ(*ParseHttpRequest(req.substr(0, 20), 1024, r), 0u) << "incomplete";
  EXPECT_EQ(*ParseHttpRequest(req.substr(0, req.size() - 1), 1024, r), 0u) << "body incomplete";
  ASSERT_EQ(*ParseHttpRequest(req, 1024, r), req.size());
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.path, "/v1/explain");
  EXPECT_EQ(r.query["host"], "a-b.example.test");
  EXPECT_EQ(r.headers["x-a"], "b");
  EXPECT_EQ(r.body, "{}");
  EXPECT_FALSE(ParseHttpRequest("GARBAGE\r\n\r\n", 1024, r).ok());
  EXPECT_EQ(ParseHttpRequest("POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", 1024, r).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_FALSE(ParseHttpRequest(std::string(20000, 'a'), 1024, r).ok());
  EXPECT_TRUE(ParseAdminAddress("unix:/run/x.sock").ok());
  EXPECT_TRUE(ParseAdminAddress("tcp:127.0.0.1:9000").ok());
  EXPECT_FALSE(ParseAdminAddress("tcp:0.0.0.0:9000").ok()) << "loopback only";
  EXPECT_FALSE(ParseAdminAddress("http://x").ok());
}

}  // namespace
}  // namespace cvmgate
