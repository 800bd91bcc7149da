"""End-to-end CVM topology on this host: a gateway and two CVMs in network namespaces, each CVM with
its own wireguard-go interface and key, registered through cvmgatectl and reached over its tunnel."""

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

import peers
from peers import TlsClient, sni_name

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
GW_UNDERLAY = {"cvm1": ("192.0.2.1", "192.0.2.2"), "cvm2": ("192.0.2.5", "192.0.2.6")}
WG_PORT = 51820
# Long enough to cover one phase of traffic after a handshake; the kernel suite's
# emulated CPU makes every TLS handshake through two tunnels far slower.
HEALTHY_WITHIN_S = 20 if os.environ.get("CVMGATE_TEST_WG") == "kernel" else 4
SERVICE_PORT = 8443

# "uapi": wireguard-go on both sides (this host); "kernel": kernel WireGuard over netlink (the kernel suite).
WG_KIND = os.environ.get("CVMGATE_TEST_WG", "uapi")

pytestmark = pytest.mark.skipif(
    shutil.which("wg") is None or (WG_KIND == "uapi" and shutil.which("wireguard-go") is None),
    reason="wg and wireguard-go are needed (tools/setup installs them)")


@contextlib.contextmanager
def in_netns(name):
    """Run the body on this thread inside network namespace `name` (sockets made there stay there)."""
    with open("/proc/self/ns/net") as home, open("/run/netns/" + name) as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns " + name)
        try:
            yield
        finally:
            _libc.setns(home.fileno(), CLONE_NEWNET)


def sh(*args, check=True, env=None):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=30, env=env)
    if check and p.returncode != 0:
        raise AssertionError("%s -> %d: %s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p.stdout.strip()


class Topology:
    """Namespaces gw-<tag>, cvm1-<tag>, cvm2-<tag>; veth underlay on TEST-NET-1; tunnels in 10.0.0.0/8."""

    def __init__(self, tmp_path):
        self.tag = "%x" % (os.getpid() & 0xfffff)
        self.tmp = tmp_path
        self.gw = "cvmgw-" + self.tag
        self.cvms = {c: "%s-%s" % (c, self.tag) for c in ("cvm1", "cvm2")}
        self.gw_if = "wgg" + self.tag  # wireguard-go's socket path is not namespaced: names differ
        self.cvm_if = {c: "wg%s%s" % (c[-1], self.tag) for c in self.cvms}
        self.keys = {}
        self.wg_pids = []
        sh("ip", "netns", "add", self.gw)
        sh("ip", "-n", self.gw, "link", "set", "lo", "up")
        for cvm, ns in self.cvms.items():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            gw_ip, cvm_ip = GW_UNDERLAY[cvm]
            veth = "v%s%s" % (cvm[-1], self.tag)
            sh("ip", "link", "add", veth, "netns", self.gw, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", self.gw, "addr", "add", gw_ip + "/30", "dev", veth)
            sh("ip", "-n", self.gw, "link", "set", veth, "up")
            sh("ip", "-n", ns, "addr", "add", cvm_ip + "/30", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            private = sh("wg", "genkey")
            (tmp_path / (cvm + ".key")).write_text(private + "\n")
            self.keys[cvm] = sh("sh", "-c", "echo %s | wg pubkey" % private)

    def start_cvm_wireguard(self, cvm, gateway_public_key, tunnel_ip):
        ns, ifname = self.cvms[cvm], self.cvm_if[cvm]
        if WG_KIND == "kernel":
            sh("ip", "-n", ns, "link", "add", ifname, "type", "wireguard")
        else:
            env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
            sh("ip", "netns", "exec", ns, "wireguard-go", ifname, env=env)
        sh("ip", "netns", "exec", ns, "wg", "set", ifname, "private-key", str(self.tmp / (cvm + ".key")),
           "peer", gateway_public_key, "endpoint", "%s:%d" % (GW_UNDERLAY[cvm][0], WG_PORT),
           "allowed-ips", "10.0.0.1/32", "persistent-keepalive", "1")
        sh("ip", "-n", ns, "addr", "add", tunnel_ip + "/32", "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "up")
        sh("ip", "-n", ns, "route", "add", "10.0.0.1/32", "dev", ifname)

    def stop_cvm_wireguard(self, cvm):
        if WG_KIND == "kernel":
            sh("ip", "-n", self.cvms[cvm], "link", "del", self.cvm_if[cvm])
            return
        sh("pkill", "-f", "wireguard-go %s" % self.cvm_if[cvm], check=False)
        peers.wait_until(lambda: not os.path.exists("/var/run/wireguard/%s.sock" % self.cvm_if[cvm]), 10,
                         "wireguard-go of %s to exit" % cvm)

    def refresh_handshake(self, cvm, gateway_public_key):
        """Drop and re-add the CVM's peer, so its next packet makes a fresh handshake."""
        ns, ifname = self.cvms[cvm], self.cvm_if[cvm]
        sh("ip", "netns", "exec", ns, "wg", "set", ifname, "peer", gateway_public_key, "remove")
        sh("ip", "netns", "exec", ns, "wg", "set", ifname, "peer", gateway_public_key, "endpoint",
           "%s:%d" % (GW_UNDERLAY[cvm][0], WG_PORT), "allowed-ips", "10.0.0.1/32", "persistent-keepalive", "1")

    def close(self):
        # The UAPI socket's path is not namespaced: the next test's interface of
        # the same name must not find these still answering there.
        ifnames = [self.gw_if] + list(self.cvm_if.values())
        for ifname in ifnames:
            subprocess.run(["pkill", "-f", "^wireguard-go %s$" % ifname], capture_output=True)
        for ifname in ifnames:
            peers.wait_until(lambda: subprocess.run(["pgrep", "-f", "^wireguard-go %s$" % ifname],
                                                    capture_output=True).returncode != 0,
                             10, "wireguard-go %s to exit" % ifname)
            try:
                os.unlink("/var/run/wireguard/%s.sock" % ifname)
            except FileNotFoundError:
                pass
        for ns in [self.gw] + list(self.cvms.values()):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def topo(tmp_path):
    """Tests take it before make_gateway: the gateway then stops first, and cannot restart the
    wireguard-go this teardown stops."""
    t = Topology(tmp_path)
    yield t
    t.close()


def ctl_json(ctl_bin, gw, *args):
    p = subprocess.run([ctl_bin, "--admin", "unix:" + os.path.join(gw.workdir, "admin.sock"), "--json"] + list(args),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return json.loads(p.stdout)


def health(ctl_bin, gw):
    return {i["instance"]: i["healthy"] for i in ctl_json(ctl_bin, gw, "list")["instances"]}


def start_gateway(make_gateway, topo, extra=()):
    return make_gateway(state={"version": 1}, netns=topo.gw, args=[
        "--wg-interface", topo.gw_if, "--wg-backend", "netlink" if WG_KIND == "kernel" else "uapi",
        "--wg-private-key-file", str(topo.tmp / "gateway.key"), "--wg-listen-port", str(WG_PORT),
        "--wg-endpoint", "192.0.2.1:%d" % WG_PORT, "--health-poll", "300ms", "--healthy-within", "%ds" % HEALTHY_WITHIN_S] + list(extra))


def through_gateway(gw, topo, ident, payload=b"ping"):
    with in_netns(topo.gw):
        c = TlsClient(gw.addr, sni_name(ident, SERVICE_PORT), timeout=30)
        c.connect()
    try:
        c.send_hello()
        c.finish_handshake()
        banner = c.read_banner()
        ex = c.exchange(payload)
    except peers.PeerError as e:
        raise AssertionError("%s; gateway counters: %s" % (e, {k: v for k, v in gw.counters().items() if v}))
    finally:
        c.close()
    assert ex.echoed == payload, ex
    return banner[len("instance="):]


def test_cvms_over_wireguard_health_and_deregistration(topo, make_gateway, ctl_bin, tls_cert):
    gw = start_gateway(make_gateway, topo)
    servers = {}
    gateway_key = None
    for cvm in ("cvm1", "cvm2"):
        reply = ctl_json(ctl_bin, gw, "register", "--app", "app", "--instance", cvm, "--public-key", topo.keys[cvm])
        gateway_key = reply["gateway_public_key"]
        assert reply["gateway_endpoint"] == "192.0.2.1:%d" % WG_PORT and reply["gateway_ip"] == "10.0.0.1", reply
        topo.start_cvm_wireguard(cvm, gateway_key, reply["ip"])
        with in_netns(topo.cvms[cvm]):
            servers[cvm] = peers.Backend(reply["ip"], SERVICE_PORT, cvm, tls_cert[0], tls_cert[1], "echo")
    try:
        peers.wait_until(lambda: health(ctl_bin, gw) == {"cvm1": True, "cvm2": True}, 20, "both CVMs to handshake")
        # Both CVMs serve the app: 20 random picks miss one with probability 2 * 2^-20.
        seen = {through_gateway(gw, topo, "app") for _ in range(20)}
        assert seen == {"cvm1", "cvm2"}, seen
        assert through_gateway(gw, topo, "cvm2") == "cvm2", "an instance id pins that CVM"

        # cvm2's WireGuard stops: it turns unhealthy and new connections all go to cvm1.
        topo.stop_cvm_wireguard("cvm2")
        peers.wait_until(lambda: not health(ctl_bin, gw)["cvm2"], HEALTHY_WITHIN_S + 10, "cvm2 to turn unhealthy")
        topo.refresh_handshake("cvm1", gateway_key)
        peers.wait_until(lambda: health(ctl_bin, gw)["cvm1"], 10, "cvm1 to handshake afresh")
        assert {through_gateway(gw, topo, "app") for _ in range(10)} == {"cvm1"}
        explained = ctl_json(ctl_bin, gw, "explain", sni_name("cvm2", SERVICE_PORT))
        assert explained["verdict"] == "refused: no healthy instance", explained

        # Deregistering removes the gateway's WireGuard peer.
        ctl_json(ctl_bin, gw, "deregister", "--instance", "cvm2")
        with in_netns(topo.gw):
            dump = sh("wg", "show", topo.gw_if, "peers")
        assert topo.keys["cvm2"] not in dump and topo.keys["cvm1"] in dump, dump

        # kill -9 and a restart keep every registration and the tunnel.
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        again = peers.Gateway(gw.binary, gw.workdir, listen=gw.listen, netns=topo.gw, args=gw.args)
        again.write_state = lambda state: None
        again.start()
        try:
            listed = ctl_json(ctl_bin, again, "list")["instances"]
            assert [(i["instance"], i["ip"]) for i in listed] == [("cvm1", "10.0.0.2")], listed
            topo.refresh_handshake("cvm1", gateway_key)
            peers.wait_until(lambda: health(ctl_bin, again).get("cvm1"), 10, "cvm1 healthy after the restart")
            assert through_gateway(again, topo, "app") == "cvm1"
        finally:
            again.kill()
    finally:
        for s in servers.values():
            s.close()


# ---------------------------------------------------------------- a dying tunnel


def gateway_wireguard_go(topo):
    """The pid of the gateway's wireguard-go, or None."""
    p = subprocess.run(["pgrep", "-f", "^wireguard-go %s$" % topo.gw_if], capture_output=True, text=True)
    pids = [int(x) for x in p.stdout.split()]
    return pids[0] if pids else None


def metric(ctl_bin, gw, name):
    p = subprocess.run([ctl_bin, "--admin", "unix:" + os.path.join(gw.workdir, "admin.sock"), "metrics"],
                       capture_output=True, text=True, timeout=10)
    for line in p.stdout.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric %s in:\n%s" % (name, p.stdout))


def up_with_two_cvms(topo, make_gateway, ctl_bin, tls_cert, extra=()):
    gw = start_gateway(make_gateway, topo, extra)
    servers, gateway_key = {}, None
    for cvm in ("cvm1", "cvm2"):
        reply = ctl_json(ctl_bin, gw, "register", "--app", "app", "--instance", cvm, "--public-key", topo.keys[cvm])
        gateway_key = reply["gateway_public_key"]
        topo.start_cvm_wireguard(cvm, gateway_key, reply["ip"])
        with in_netns(topo.cvms[cvm]):
            servers[cvm] = peers.Backend(reply["ip"], SERVICE_PORT, cvm, tls_cert[0], tls_cert[1], "echo")
    peers.wait_until(lambda: health(ctl_bin, gw) == {"cvm1": True, "cvm2": True}, 20, "both CVMs to handshake")
    assert {through_gateway(gw, topo, cvm) for cvm in ("cvm1", "cvm2")} == {"cvm1", "cvm2"}
    return gw, servers, gateway_key


def recovered(gw, topo, gateway_key, seconds):
    """Waits until both CVMs are reached through the gateway again; returns how long that took."""
    started = time.monotonic()

    def both():
        try:
            return {through_gateway(gw, topo, cvm) for cvm in ("cvm1", "cvm2")} == {"cvm1", "cvm2"}
        except (AssertionError, OSError):
            return False
    peers.wait_until(both, seconds, "both CVMs reachable through the restored tunnel", interval=0.1)
    with in_netns(topo.gw):
        dump = sh("wg", "show", topo.gw_if, "dump").splitlines()
        addresses = sh("ip", "-4", "addr", "show", topo.gw_if)
    device, peer_lines = dump[0].split("\t"), [l.split("\t") for l in dump[1:]]
    assert device[1] == gateway_key and device[2] == str(WG_PORT), device  # the same key and port
    assert {(p[0], p[3]) for p in peer_lines} >= {(topo.keys["cvm1"], "10.0.0.2/32"),
                                                  (topo.keys["cvm2"], "10.0.0.3/32")}, peer_lines
    assert "10.0.0.1/8" in addresses, addresses
    return time.monotonic() - started


@pytest.mark.skipif(WG_KIND != "uapi", reason="wireguard-go runs where the kernel has no WireGuard: the kernel "
                    "suite deletes the kernel interface instead (test_a_deleted_interface_is_recreated)")
def test_a_killed_wireguard_go_is_restarted_with_every_peer(topo, make_gateway, ctl_bin, tls_cert):
    gw, servers, gateway_key = up_with_two_cvms(topo, make_gateway, ctl_bin, tls_cert)
    try:
        old = gateway_wireguard_go(topo)
        assert old is not None
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        took = recovered(gw, topo, gateway_key, 20)
        new = gateway_wireguard_go(topo)
        assert new is not None and new != old, (old, new)
        gw.wait_line(lambda l: "wireguard-go of %s (pid %d) exited (signal 9)" % (topo.gw_if, old) in l,
                     0, 5, "the exit logged")
        gw.wait_line(lambda l: "%s restored in" % topo.gw_if in l, 0, 5, "the restore logged")
        assert metric(ctl_bin, gw, "cvmgate_wireguard_restores_total") >= 1
        assert health(ctl_bin, gw) == {"cvm1": True, "cvm2": True}, "the handshakes seen before still count"
        print("recovered from kill -9 of wireguard-go in %.2f s (%.2f s after the first retry)"
              % (time.monotonic() - killed_at, took))
    finally:
        for s in servers.values():
            s.close()


@pytest.mark.skipif(WG_KIND != "uapi", reason="wireguard-go runs where the kernel has no WireGuard")
def test_a_stopped_wireguard_go_never_stalls_the_admin_api_and_is_replaced(topo, make_gateway, ctl_bin, tls_cert):
    gw, servers, gateway_key = up_with_two_cvms(topo, make_gateway, ctl_bin, tls_cert, ["--wg-restart-after", "4s"])
    stopped = gateway_wireguard_go(topo)
    try:
        os.kill(stopped, signal.SIGSTOP)
        stopped_at = time.monotonic()
        slowest, late_key = 0.0, None
        while time.monotonic() - stopped_at < 6:
            for args in (["list"], ["explain", sni_name("app", SERVICE_PORT)], ["metrics"]):
                started = time.monotonic()
                p = subprocess.run([ctl_bin, "--admin", "unix:" + os.path.join(gw.workdir, "admin.sock")] + args,
                                   capture_output=True, text=True, timeout=10)
                slowest = max(slowest, time.monotonic() - started)
                assert p.returncode == 0, p
            if late_key is None:
                late_key = sh("sh", "-c", "wg genkey | wg pubkey")
                started = time.monotonic()
                reply = ctl_json(ctl_bin, gw, "register", "--app", "late", "--instance", "late-1", "--public-key",
                                 late_key)
                slowest = max(slowest, time.monotonic() - started)
                assert reply["wireguard_peer"].startswith("pending"), reply
            time.sleep(0.2)  # pacing of the probes, not synchronisation
        assert slowest < 1.0, "an admin request took %.2f s while wireguard-go was stopped" % slowest
        gw.wait_line(lambda l: "(pid %d) answered nothing for" % stopped in l, 0, 15, "the stuck wireguard-go killed")
        recovered_in = recovered(gw, topo, gateway_key, 20)
        assert gateway_wireguard_go(topo) not in (None, stopped)
        assert metric(ctl_bin, gw, "cvmgate_wireguard_go_kills_total") >= 1
        with in_netns(topo.gw):
            assert late_key in sh("wg", "show", topo.gw_if, "peers"), "the peer registered meanwhile was set"
        print("admin requests answered within %.3f s while stopped; both CVMs reached again %.1f s after SIGSTOP "
              "(%.2f s after the first try once it was killed)" % (slowest, time.monotonic() - stopped_at, recovered_in))
    finally:
        try:
            os.kill(stopped, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for s in servers.values():
            s.close()


def test_a_deleted_interface_is_recreated(topo, make_gateway, ctl_bin, tls_cert):
    gw, servers, gateway_key = up_with_two_cvms(topo, make_gateway, ctl_bin, tls_cert)
    try:
        deleted_at = time.monotonic()
        sh("ip", "-n", topo.gw, "link", "del", topo.gw_if)
        recovered(gw, topo, gateway_key, 60 if WG_KIND == "kernel" else 20)
        gw.wait_line(lambda l: "%s restored in" % topo.gw_if in l, 0, 5, "the restore logged")
        assert metric(ctl_bin, gw, "cvmgate_wireguard_restores_total") >= 1
        print("recovered from a deleted %s interface in %.2f s" % (WG_KIND, time.monotonic() - deleted_at))
    finally:
        for s in servers.values():
            s.close()


# ---------------------------------------------------------------- several gateway hosts


def test_a_cvm_peers_with_two_gateway_hosts_and_either_serves_it(topo, make_gateway, ctl_bin, tls_cert):
    """Two gateway hosts, each in a namespace of its own with its own WireGuard interface and underlay to
    the CVM, share one registry in etcd (three members in the first host's namespace, reached by the
    second over a link between them). A CVM registered through host A gets both hosts in the answer,
    peers with both, and is served through either; deregistered through B, A drops its peer."""
    from etcd_cluster import EtcdCluster  # noqa: E402 (only this test needs it)

    gw2 = "cvmgw2-" + topo.tag
    link = "l%s" % topo.tag
    cvm_ns = topo.cvms["cvm1"]
    b_if = "wgh" + topo.tag
    cluster = None
    b = None
    servers = []
    try:
        sh("ip", "netns", "add", gw2)
        sh("ip", "-n", gw2, "link", "set", "lo", "up")
        # Host A <-> host B (etcd lives on A's side), and host B <-> the CVM.
        sh("ip", "link", "add", link, "netns", topo.gw, "type", "veth", "peer", "name", "eth0", "netns", gw2)
        sh("ip", "-n", topo.gw, "addr", "add", "198.51.100.1/30", "dev", link)
        sh("ip", "-n", topo.gw, "link", "set", link, "up")
        sh("ip", "-n", gw2, "addr", "add", "198.51.100.2/30", "dev", "eth0")
        sh("ip", "-n", gw2, "link", "set", "eth0", "up")
        sh("ip", "link", "add", "b" + topo.tag, "netns", gw2, "type", "veth", "peer", "name", "eth1", "netns", cvm_ns)
        sh("ip", "-n", gw2, "addr", "add", "192.0.2.9/30", "dev", "b" + topo.tag)
        sh("ip", "-n", gw2, "link", "set", "b" + topo.tag, "up")
        sh("ip", "-n", cvm_ns, "addr", "add", "192.0.2.10/30", "dev", "eth1")
        sh("ip", "-n", cvm_ns, "link", "set", "eth1", "up")
        cluster = EtcdCluster(3, netns=topo.gw, host="198.51.100.1")
        cluster.wait_ready()

        registry = ["--registry", "etcd:" + cluster.endpoints(), "--registry-prefix", "/topology/"]
        a = start_gateway(make_gateway, topo, registry + ["--node-name", "host-a"])
        b = make_gateway(state={"version": 1}, netns=gw2, args=registry + [
            "--node-name", "host-b", "--wg-interface", b_if, "--wg-backend",
            "netlink" if WG_KIND == "kernel" else "uapi", "--wg-private-key-file", str(topo.tmp / "gateway-b.key"),
            "--wg-listen-port", str(WG_PORT), "--wg-address", "10.0.0.2", "--wg-endpoint", "192.0.2.9:%d" % WG_PORT,
            "--health-poll", "300ms", "--healthy-within", "%ds" % HEALTHY_WITHIN_S])
        peers.wait_until(lambda: len(ctl_json(ctl_bin, a, "nodes")["nodes"]) == 2, 5, "A to know B")

        reply = ctl_json(ctl_bin, a, "register", "--app", "app", "--instance", "cvm1", "--public-key",
                         topo.keys["cvm1"])
        hosts = {g["name"]: g for g in reply["gateways"]}
        assert set(hosts) == {"host-a", "host-b"}, reply
        assert hosts["host-b"]["endpoint"] == "192.0.2.9:%d" % WG_PORT and hosts["host-b"]["tunnel_address"] == "10.0.0.2"
        assert reply["ip"] not in ("10.0.0.1", "10.0.0.2"), "a host's tunnel address is never a CVM's"
        # The CVM peers with every host in the answer.
        topo.start_cvm_wireguard("cvm1", hosts["host-a"]["public_key"], reply["ip"])
        cvm_if = topo.cvm_if["cvm1"]
        sh("ip", "netns", "exec", cvm_ns, "wg", "set", cvm_if, "peer", hosts["host-b"]["public_key"], "endpoint",
           hosts["host-b"]["endpoint"], "allowed-ips", "10.0.0.2/32", "persistent-keepalive", "1")
        sh("ip", "-n", cvm_ns, "route", "add", "10.0.0.2/32", "dev", cvm_if)
        with in_netns(cvm_ns):
            servers.append(peers.Backend(reply["ip"], SERVICE_PORT, "cvm1", tls_cert[0], tls_cert[1], "echo"))

        peers.wait_until(lambda: health(ctl_bin, b).get("cvm1"), 20, "B to see its own handshake with cvm1")
        peers.wait_until(lambda: health(ctl_bin, a).get("cvm1"), 20, "A to see its own handshake with cvm1")
        assert through_gateway(a, topo, "app") == "cvm1"
        with in_netns(gw2):
            c = TlsClient(b.addr, sni_name("app", SERVICE_PORT), timeout=30)
            c.connect()
        try:
            c.send_hello()
            c.finish_handshake()
            assert c.read_banner() == "instance=cvm1", "host B serves the CVM over its own tunnel"
            assert c.exchange(b"through B").echoed == b"through B"
        finally:
            c.close()
        with in_netns(gw2):
            assert topo.keys["cvm1"] in sh("wg", "show", b_if, "peers"), "B set the peer A registered"

        ctl_json(ctl_bin, b, "deregister", "--instance", "cvm1")
        def a_dropped():
            with in_netns(topo.gw):
                return topo.keys["cvm1"] not in sh("wg", "show", topo.gw_if, "peers")
        peers.wait_until(a_dropped, 5, "A to drop the peer B deregistered")
    finally:
        for s in servers:
            s.close()
        if cluster is not None:
            cluster.close()
        if b is not None:
            b.kill()  # first: a live host would start its wireguard-go again
        subprocess.run(["pkill", "-f", "^wireguard-go %s$" % b_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", gw2], capture_output=True)


def test_an_upgrade_keeps_the_tunnel_and_its_cvms(topo, make_gateway, ctl_bin, tls_cert):
    """cvmgatectl upgrade with CVMs behind WireGuard: the successor takes the tunnel as it is (key,
    port, peers, the CVMs' handshakes) and serves both CVMs; the registry goes on with it."""
    # Handshakes are not renewed for minutes: health must not lapse during the test.
    gw, servers, gateway_key = up_with_two_cvms(topo, make_gateway, ctl_bin, tls_cert,
                                                extra=("--healthy-within", "300s"))
    new_pid = None
    try:
        wg_before = gateway_wireguard_go(topo)
        p = subprocess.run([ctl_bin, "--admin", "unix:" + os.path.join(gw.workdir, "admin.sock"), "upgrade"],
                           capture_output=True, text=True, timeout=200)
        assert p.returncode == 0, p
        new_pid = int(p.stdout.split()[2])
        assert gw.wait_exit(20) == 0, gw.log()  # nothing to drain: the old process is gone
        recovered(gw, topo, gateway_key, 20)  # both CVMs through the successor, the tunnel as it was
        assert gateway_wireguard_go(topo) == wg_before, "the same wireguard-go serves the tunnel"
        assert health(ctl_bin, gw) == {"cvm1": True, "cvm2": True}
        ctl_json(ctl_bin, gw, "deregister", "--instance", "cvm2")
        assert {through_gateway(gw, topo, "app") for _ in range(6)} == {"cvm1"}
    finally:
        if new_pid:
            os.kill(new_pid, signal.SIGTERM)
            peers.wait_until(lambda: not os.path.exists("/proc/%d" % new_pid) or
                             open("/proc/%d/stat" % new_pid).read().split()[2] == "Z", 20, "the successor's exit")
        for s in servers.values():
            s.close()
