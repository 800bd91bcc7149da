"""CVM isolation on the gateway host: kernel-config/nftables/cvmgate-nft against CVMs that try to move laterally.

A gateway and two CVMs in network namespaces (test_cvm_topology's topology; wireguard-go here, kernel
WireGuard in the kernel suite). The CVMs configure their own side as an attacker would: routes and
allowed-ips for all of 10.0.0.0/8 and for 127.0.0.0/8 through the tunnel. The gateway host is made
permissive on purpose (ip_forward=1, route_localnet=1, as hosts with containers or kube-proxy often are),
so every attempt first succeeds without the ruleset: that proves each check can fail, and that it is the
ruleset that stops it once applied."""

import json
import socket
import subprocess
from pathlib import Path

import peers
from test_cvm_topology import pytestmark  # noqa: F401  (skips without wg / wireguard-go)
from test_cvm_topology import topo  # noqa: F401  (the namespaces fixture)
from test_cvm_topology import SERVICE_PORT, WG_KIND, in_netns, sh, start_gateway, through_gateway

NFT_SCRIPT = str(Path(__file__).resolve().parents[2] / "kernel-config" / "nftables" / "cvmgate-nft")
ADMIN_PORT = 7070     # the gateway's admin API, on 127.0.0.1
LOCAL_PORT = 7071     # another service of the host bound to 127.0.0.1
TUNNEL_PORT = 7072    # a service of the host bound to the gateway's tunnel address
CVM_PORT = 7073       # a service inside CVM 2, on its tunnel address
# A dropped SYN never gets an answer: this bounds each refused attempt.
ATTEMPT_TIMEOUT_S = 4.0 if WG_KIND == "kernel" else 2.0


def banner(conn):
    conn.sendall(b"reached\n")


def reach(ns, ip, port, source=None):
    """True when a TCP connection from namespace ns to ip:port gets the service's banner."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(ATTEMPT_TIMEOUT_S)
        if source:
            s.bind((source, 0))
        s.connect((ip, port))
        return s.recv(16) == b"reached\n"
    except OSError:
        return False
    finally:
        s.close()


def nft(topo, *args):
    return sh("ip", "netns", "exec", topo.gw, NFT_SCRIPT, *args)


def drop_counters(topo):
    """Packets dropped by the ruleset's input and forward rules."""
    out = sh("ip", "netns", "exec", topo.gw, "nft", "-j", "list", "table", "inet", "cvmgate")
    total = 0
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        if any("drop" in e for e in rule["expr"]):
            total += sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return total


def open_up_cvm(topo, cvm, gateway_key):
    """The CVM routes 10.0.0.0/8 and 127.0.0.0/8 into its tunnel, as a hostile CVM may."""
    ns, ifname = topo.cvms[cvm], topo.cvm_if[cvm]
    sh("ip", "netns", "exec", ns, "wg", "set", ifname, "peer", gateway_key, "allowed-ips", "10.0.0.0/8,127.0.0.0/8")
    sh("ip", "-n", ns, "route", "add", "10.0.0.0/8", "dev", ifname)
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.%s.route_localnet=1" % ifname)
    # Loopback destinations leave through the tunnel: a rule ahead of the local table sends them there.
    sh("ip", "-n", ns, "route", "add", "127.0.0.0/8", "dev", ifname, "table", "100")
    sh("ip", "-n", ns, "rule", "add", "pref", "20", "lookup", "local")
    sh("ip", "-n", ns, "rule", "del", "pref", "0")
    sh("ip", "-n", ns, "rule", "add", "to", "127.0.0.0/8", "lookup", "100", "pref", "10")


def test_cvms_are_isolated_from_each_other_and_from_the_host(topo, make_gateway, ctl_bin, tls_cert, tmp_path):  # noqa: F811
    token = tmp_path / "admin.token"
    token.write_text("s3cret-token\n")
    gw = start_gateway(make_gateway, topo, extra=["--admin", "tcp:127.0.0.1:%d" % ADMIN_PORT,
                                                  "--admin-token-file", str(token)])

    def ctl(*args):
        out = sh("ip", "netns", "exec", topo.gw, ctl_bin, "--admin", "tcp:127.0.0.1:%d" % ADMIN_PORT,
                 "--token-file", str(token), "--json", *args)
        return json.loads(out)

    ips, servers, gateway_key = {}, [], None
    for cvm in ("cvm1", "cvm2"):
        reply = ctl("register", "--app", "app", "--instance", cvm, "--public-key", topo.keys[cvm])
        gateway_key, ips[cvm] = reply["gateway_public_key"], reply["ip"]
        topo.start_cvm_wireguard(cvm, gateway_key, reply["ip"])
        open_up_cvm(topo, cvm, gateway_key)
        with in_netns(topo.cvms[cvm]):
            servers.append(peers.Backend(reply["ip"], SERVICE_PORT, cvm, tls_cert[0], tls_cert[1], "echo"))
    with in_netns(topo.cvms["cvm2"]):
        servers.append(peers.TcpServer(ips["cvm2"], CVM_PORT, banner))
    with in_netns(topo.gw):
        servers.append(peers.TcpServer("127.0.0.1", LOCAL_PORT, banner))
        servers.append(peers.TcpServer("10.0.0.1", TUNNEL_PORT, banner))
    for knob in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.route_localnet=1",
                 "net.ipv4.conf.%s.route_localnet=1" % topo.gw_if):
        sh("ip", "netns", "exec", topo.gw, "sysctl", "-qw", knob)
    attacker = topo.cvms["cvm1"]
    attempts = {
        "CVM 1 -> CVM 2's service": (ips["cvm2"], CVM_PORT),
        "CVM 1 -> host service on the tunnel address": ("10.0.0.1", TUNNEL_PORT),
        "CVM 1 -> host service on 127.0.0.1": ("127.0.0.1", LOCAL_PORT),
    }
    try:
        peers.wait_until(lambda: {i["instance"]: i["healthy"] for i in ctl("list")["instances"]}
                         == {"cvm1": True, "cvm2": True}, 20, "both CVMs to handshake")
        # Without the ruleset this permissive host lets every attempt through.
        for what, (ip, port) in attempts.items():
            assert reach(attacker, ip, port), "control: %s should work before the ruleset" % what
        with in_netns(attacker):
            s = socket.create_connection(("127.0.0.1", ADMIN_PORT), timeout=ATTEMPT_TIMEOUT_S)
            s.sendall(b"GET /v1/list HTTP/1.0\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1."), "control: the admin API answers through the tunnel"
            s.close()

        nft(topo, "apply", "--wg-interface", topo.gw_if)
        nft(topo, "apply", "--wg-interface", topo.gw_if)  # idempotent: the table is replaced, not doubled
        tables = sh("ip", "netns", "exec", topo.gw, "nft", "list", "tables")
        assert tables.count("table inet cvmgate") == 1, tables
        for what, (ip, port) in attempts.items():
            assert not reach(attacker, ip, port), "%s must fail with the ruleset" % what
        assert not reach(attacker, "127.0.0.1", ADMIN_PORT), "the admin API must be unreachable from a CVM"
        assert drop_counters(topo) > 0, "the ruleset's own rules dropped the attempts"

        # A CVM cannot borrow another's address: WireGuard drops packets whose source is not the peer's /32.
        sh("ip", "-n", attacker, "addr", "add", ips["cvm2"] + "/32", "dev", topo.cvm_if["cvm1"])
        seen = spoof_probe(topo, attacker, ips)
        assert seen == {"own": True, "spoofed": False}, seen

        # The gateway's own connections to the CVMs still work, and fresh handshakes still come through.
        for cvm in ("cvm1", "cvm2"):
            topo.refresh_handshake(cvm, gateway_key)
        peers.wait_until(lambda: {i["instance"]: i["healthy"] for i in ctl("list")["instances"]}
                         == {"cvm1": True, "cvm2": True}, 20, "fresh handshakes through the ruleset")
        assert {through_gateway(gw, topo, "app") for _ in range(10)} <= {"cvm1", "cvm2"}
        assert through_gateway(gw, topo, "cvm2") == "cvm2"

        nft(topo, "remove")
        nft(topo, "remove")  # idempotent
        assert "cvmgate" not in sh("ip", "netns", "exec", topo.gw, "nft", "list", "tables")
        assert reach(attacker, "10.0.0.1", TUNNEL_PORT), "removing the ruleset restores the permissive host"
    finally:
        for s in servers:
            s.close()


def spoof_probe(topo, attacker, ips):
    """Sends a SYN to the gateway's tunnel service from the CVM's own address and from another CVM's, and
    reports which source addresses arrived on the gateway's WireGuard interface (an nft counter in a table
    of the test's own, at the first hook a packet meets)."""
    rules = ("table inet cvmgate_test {\n chain pre {\n  type filter hook prerouting priority raw - 10;\n"
             "  iifname \"%s\" ip saddr %s counter\n  iifname \"%s\" ip saddr %s counter\n }\n}\n"
             % (topo.gw_if, ips["cvm1"], topo.gw_if, ips["cvm2"]))
    subprocess.run(["ip", "netns", "exec", topo.gw, "nft", "-f", "-"], input=rules, text=True, check=True,
                   timeout=30)
    try:
        reach(attacker, "10.0.0.1", TUNNEL_PORT, source=ips["cvm1"])
        reach(attacker, "10.0.0.1", TUNNEL_PORT, source=ips["cvm2"])
        out = sh("ip", "netns", "exec", topo.gw, "nft", "-j", "list", "table", "inet", "cvmgate_test")
        counts = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if not rule:
                continue
            saddr = next(e["match"]["right"] for e in rule["expr"] if "match" in e
                         and e["match"]["left"].get("payload", {}).get("field") == "saddr")
            counts[saddr] = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        return {"own": counts.get(ips["cvm1"], 0) > 0, "spoofed": counts.get(ips["cvm2"], 0) > 0}
    finally:
        sh("ip", "netns", "exec", topo.gw, "nft", "delete", "table", "inet", "cvmgate_test")
