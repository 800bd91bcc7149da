"""Several gateway hosts, one registry: two cvmgate daemons on one 3-member etcd cluster (loopback),
routing to static instances registered through either of them."""

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid

import pytest

import peers
from etcd_cluster import EtcdCluster
from peers import sni_name
from test_passthrough import assert_echo, open_relay


@pytest.fixture(scope="module")
def etcd():
    cluster = EtcdCluster(3)
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.close()


def ctl(ctl_bin, gw, *args, expect=0):
    p = subprocess.run([ctl_bin, "--admin", "unix:" + os.path.join(gw.workdir, "admin.sock")] + list(args),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == expect, "cvmgatectl %s -> %d\nstdout: %s\nstderr: %s" % (
        " ".join(args), p.returncode, p.stdout, p.stderr)
    return p.stdout + p.stderr


@pytest.fixture
def two_nodes(make_gateway, etcd):
    """Gateways A and B on one registry (a prefix of this test's own), both empty."""
    flags = ["--registry", "etcd:" + etcd.endpoints(), "--registry-prefix", "/t/%s/" % uuid.uuid4().hex]
    return (make_gateway(state={"version": 1}, args=flags + ["--node-name", "a"]),
            make_gateway(state={"version": 1}, args=flags + ["--node-name", "b"]))


def verdict(ctl_bin, gw, name):
    return [l for l in ctl(ctl_bin, gw, "explain", name).splitlines() if l.startswith("verdict:")][0]


def relay_through(gw, backends, size):
    """The instance a relayed echo of `size` random bytes through `gw` reached."""
    c, inst = open_relay(gw, backends)
    payload = os.urandom(size)
    assert_echo(c.exchange(payload), payload)
    c.close()
    return inst


def try_register(ctl_bin, gw, instance, address):
    """cvmgatectl register's output when it succeeded, else None (for polling until it does)."""
    p = subprocess.run([ctl_bin, "--admin", "unix:" + os.path.join(gw.workdir, "admin.sock"), "register", "--app",
                        "app", "--instance", instance, "--address", address, "--ports", peers.TEST_PORTS],
                       capture_output=True, text=True, timeout=30)
    return p.stdout if p.returncode == 0 else None


def register(ctl_bin, gw, instance, address, expect=0):
    return ctl(ctl_bin, gw, "register", "--app", "app", "--instance", instance, "--address", address,
               "--ports", peers.TEST_PORTS, expect=expect)


def test_registered_through_one_node_routed_by_the_other(ctl_bin, two_nodes, backends):
    a, b = two_nodes
    name = sni_name("app", backends.port)
    assert "refused" in verdict(ctl_bin, b, name)
    register(ctl_bin, a, "app-i1", "127.0.0.2")
    started = time.monotonic()
    peers.wait_until(lambda: "passthrough" in verdict(ctl_bin, b, name), 5, "node B to route app")
    assert time.monotonic() - started < 1.0, "B routes what A registered within a second"
    assert relay_through(b, backends, 64 << 10) == "app-i1"
    listed = ctl(ctl_bin, b, "list")
    assert "app-i1" in listed and "127.0.0.2" in listed, listed

    ctl(ctl_bin, b, "deregister", "--instance", "app-i1")
    peers.wait_until(lambda: "refused" in verdict(ctl_bin, a, name), 5, "node A to drop app")


def test_without_quorum_registrations_get_503_and_traffic_flows(ctl_bin, two_nodes, backends, etcd):
    a, b = two_nodes
    name = sni_name("app", backends.port)
    register(ctl_bin, a, "app-i1", "127.0.0.2")
    peers.wait_until(lambda: "passthrough" in verdict(ctl_bin, b, name), 5, "node B to route app")
    etcd.stop(1)
    etcd.stop(2)
    try:
        started = time.monotonic()
        out = register(ctl_bin, a, "app-i2", "127.0.0.3", expect=1)
        assert "(HTTP 503)" in out and "etcd" in out, out
        assert time.monotonic() - started < 10, "a registration fails within its deadline"
        # The data plane serves the routes it has.
        assert relay_through(b, backends, 16 << 10) == "app-i1"
    finally:
        etcd.start(1)
        etcd.start(2)
        etcd.wait_ready()
    out = peers.wait_until(lambda: try_register(ctl_bin, a, "app-i2", "127.0.0.3"), 15,
                           "registrations to work again")
    assert "registered" in out, out
    peers.wait_until(lambda: "2 healthy instances" in verdict(ctl_bin, b, name), 10, "node B to converge")


def test_a_bad_registry_flag_is_refused(cvmgate_bin, tmp_path):
    p = subprocess.run([cvmgate_bin, "--base-domain", "example.test", "--registry", "etcd:127.0.0.1:2379"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2, p.stderr
    assert "expected http://HOST:PORT or https://HOST:PORT" in p.stderr, p.stderr


def test_gateway_hosts_are_listed_and_a_dead_one_disappears(ctl_bin, make_gateway, etcd):
    flags = ["--registry", "etcd:" + etcd.endpoints(), "--registry-prefix", "/t/%s/" % uuid.uuid4().hex]
    a = make_gateway(state={"version": 1}, args=flags + ["--node-name", "gw-a"])
    b = make_gateway(state={"version": 1}, args=flags + ["--node-name", "gw-b"])
    peers.wait_until(lambda: "gw-b" in ctl(ctl_bin, a, "nodes"), 5, "A to see B")
    table = ctl(ctl_bin, a, "nodes")
    assert "gw-a (this one)" in table and "2 gateway hosts" in table, table
    assert "health as gateway host gw-a sees it" in ctl(ctl_bin, a, "list")

    # A second host under a live host's name does not start.
    clash = peers.Gateway(a.binary, str(a.workdir) + "-clash", args=flags + ["--node-name", "gw-b"])
    os.makedirs(clash.workdir)
    try:
        with pytest.raises(peers.PeerError):
            clash.start()
    finally:
        clash.kill()
    assert "a gateway host named 'gw-b' is live already" in clash.log(), clash.log()

    # A host killed without a word is gone when its lease runs out (10 s).
    b.kill()
    started = time.monotonic()
    peers.wait_until(lambda: "gw-b" not in ctl(ctl_bin, a, "nodes"), 20, "B's lease to lapse")
    assert time.monotonic() - started < 15, "within the lease's TTL and a watch"


def test_a_state_file_moves_into_etcd_and_back(ctl_bin, make_gateway, two_nodes, backends, tmp_path):
    a, b = two_nodes
    single = make_gateway()  # the state-file registry: app-i1 and app-i2, static
    exported = tmp_path / "exported.json"
    exported.write_text(ctl(ctl_bin, single, "export"))
    assert "imported: 2 instances added, 0 already there" in ctl(ctl_bin, a, "import", str(exported))
    name = sni_name("app", backends.port)
    peers.wait_until(lambda: "2 healthy instances" in verdict(ctl_bin, b, name), 5, "node B to route both")
    assert "imported: 0 instances added, 2 already there" in ctl(ctl_bin, b, "import", str(exported)), \
        "an import runs again harmlessly"
    back = json.loads(ctl(ctl_bin, b, "export"))
    assert back["apps"] == json.loads(exported.read_text())["apps"], "and comes back out the same"
    # One that differs stops the import and says which.
    changed = json.loads(exported.read_text())
    changed["apps"]["app"]["instances"][0]["address"] = "127.0.0.9"
    exported.write_text(json.dumps(changed))
    out = ctl(ctl_bin, a, "import", str(exported), expect=1)
    assert "instance 'app-i1' is registered here otherwise" in out and "(HTTP 409)" in out, out


class UnixHttp(http.client.HTTPConnection):
    """HTTP over the admin API's unix socket (no cvmgatectl process per request)."""

    def __init__(self, path):
        super().__init__("cvmgate", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def api_register(gw, instance, key):
    """(status, body) of one registration, or (None, error) when the gateway could not answer."""
    conn = UnixHttp(os.path.join(gw.workdir, "admin.sock"))
    try:
        conn.request("POST", "/v1/register", json.dumps({"app": "race", "instance": instance, "public_key": key}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    except (OSError, http.client.HTTPException, ValueError) as e:
        return None, str(e)
    finally:
        conn.close()


@pytest.fixture
def race_ns():
    name = "cvmgate-race-%x" % (os.getpid() & 0xfffff)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name])


@pytest.mark.skipif(shutil.which("wireguard-go") is None and os.environ.get("CVMGATE_TEST_WG") != "kernel",
                    reason="wireguard-go is needed (tools/setup installs it)")
def test_racing_registrations_through_two_hosts_and_a_kill(ctl_bin, make_gateway, race_ns, tmp_path):
    """CVM registrations race through two gateway hosts (each with its own WireGuard interface, all in a
    namespace of the test's own with the etcd members); one host is killed -9 in the middle. No address
    is handed out twice, and every registration that was acknowledged is on the surviving host."""
    total = 1000 if os.environ.get("CVMGATE_TEST_WG") != "kernel" else 200  # the kernel suite's CPU is emulated
    tag = "%x" % (os.getpid() & 0xfff)
    nodes = []
    cluster = EtcdCluster(3, netns=race_ns)
    try:
        cluster.wait_ready()
        backend = "netlink" if os.environ.get("CVMGATE_TEST_WG") == "kernel" else "uapi"
        common = ["--registry", "etcd:" + cluster.endpoints(), "--wg-backend", backend,
                  "--wg-pool", "10.0.0.0/16", "--health-poll", "1s"]
        for i, name in enumerate(("a", "b")):
            nodes.append(make_gateway(state={"version": 1}, netns=race_ns, args=common + [
                "--node-name", name, "--wg-interface", "wgr%s%s" % (name, tag),
                "--wg-private-key-file", str(tmp_path / ("%s.key" % name)), "--wg-address", "10.0.0.%d" % (i + 1),
                "--wg-listen-port", str(51820 + i), "--wg-endpoint", "192.0.2.1:%d" % (51820 + i)]))
        a, b = nodes
        acked, refused = {}, []
        lock = threading.Lock()
        counter = iter(range(total))

        def worker(gw):
            for n in counter:
                if gw.proc.poll() is not None:
                    break  # this host is dead: the other one takes the rest
                key = base64.b64encode(os.urandom(32)).decode()
                status, body = api_register(gw, "race-%d" % n, key)
                with lock:
                    if status == 200:
                        acked["race-%d" % n] = body["ip"]
                    else:
                        refused.append((gw is a, status, body))
                if status is None and gw is a:
                    break  # the killed host no longer answers: the other one takes the rest
                if gw is a and n >= total // 2 and a.proc.poll() is None:
                    a.proc.kill()  # kill -9 in the middle of the race: nothing acknowledged may be lost
        threads = [threading.Thread(target=worker, args=(gw,)) for gw in (a, a, b, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in threads), "the race ended"
        assert len(acked) >= total - 6, "all but those in flight at the kill succeed (%d acked; refused: %s)" % (len(acked), refused[:3])
        assert all(from_a for from_a, _, _ in refused), "only the killed host refused anything: %s" % refused[:3]
        assert len(set(acked.values())) == len(acked), "no address handed out twice"

        def listed():
            return {i["instance"]: i["ip"] for i in json.loads(ctl(ctl_bin, b, "--json", "list"))["instances"]}
        peers.wait_until(lambda: set(acked) <= set(listed()), 10, "B to hold every acknowledged registration")
        on_b = listed()
        assert all(on_b[i] == ip for i, ip in acked.items()), "with the address it was acknowledged with"
        assert len(set(on_b.values())) == len(on_b), "no address twice on B either"
    finally:
        cluster.close()
        for gw in nodes:
            gw.kill()
        # Each host's wireguard-go runs in a session of its own (it outlives a restart of cvmgate).
        subprocess.run(["pkill", "-f", "wireguard-go wgr[ab]%s$" % tag])
