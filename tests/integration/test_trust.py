"""What a hostile client, a careless admin or a second daemon does to a running cvmgate: bad bytes on the admin API,
one app taking another's names, static instances that would reach the gateway itself, a second cvmgate on the same
state, listener or admin socket, and idle connections on the TCP admin API."""

import json
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import peers
from peers import TlsClient, sni_name
from test_cvm_topology import in_netns, sh
from test_passthrough import ALPN_2K, assert_echo, open_relay
from test_terminate import certs, echo_port, tgw, trailer  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def admin_sock(gw):
    return os.path.join(gw.workdir, "admin.sock")


def curl_admin(gw, target):
    p = subprocess.run(["curl", "-s", "--unix-socket", admin_sock(gw), "-w", "\n%{http_code}", "http://x" + target],
                       capture_output=True, text=True, timeout=10)
    body, _, code = p.stdout.rpartition("\n")
    return int(code), json.loads(body)


def refragment(hello, size):
    """The same handshake bytes, in records of `size` bytes."""
    payload, pos = b"", 0
    while pos < len(hello):
        length = struct.unpack_from("!H", hello, pos + 3)[0]
        payload += hello[pos + 5:pos + 5 + length]
        pos += 5 + length
    return b"".join(b"\x16\x03\x01" + struct.pack("!H", len(payload[i:i + size])) + payload[i:i + size]
                    for i in range(0, len(payload), size))


def dribble(sock, wire):
    """Each 6-byte record in its own segment, a few at a time, as an attacker would send them."""
    for i in range(0, len(wire), 6):
        sock.send(wire[i:i + 6])
        if i % 60 == 54:
            time.sleep(0.001)  # pacing: the gateway sees the hello arrive in pieces


def test_a_hello_in_1_byte_records_is_read_and_relayed_in_passthrough(gateway, backends):
    c = TlsClient(gateway.addr, sni_name("app", backends.port), alpn=ALPN_2K, timeout=20)
    c.connect()
    dribble(c.sock, refragment(c.client_hello(), 1))  # 12 KB on the wire
    c.finish_handshake()  # with the backend: it got the same records, replayed after the hello was read
    ex = c.exchange(b"after a dribbled hello")
    c.close()
    assert_echo(ex, b"after a dribbled hello")
    counters = gateway.counters()
    assert counters["hello_read_not_peeked"] >= 1 and counters["routed_passthrough"] == 1, counters


def test_a_hello_in_1_byte_records_is_read_and_terminated(tgw, echo_port):
    c = TlsClient(tgw.addr, "app-%d.example.test" % echo_port, alpn=ALPN_2K + ["http/1.1"], timeout=20)
    c.connect()
    dribble(c.sock, refragment(c.client_hello(), 1))
    c.finish_handshake()  # with the gateway's OpenSSL, fed the read hello from memory
    payload = os.urandom(1 << 20)
    c.exchange(payload)
    got = bytes(c.plain)
    c.close()
    assert got == payload + trailer(payload)
    counters = tgw.counters()
    assert counters["hello_read_not_peeked"] >= 1 and counters["routed_terminate"] == 1, counters


def test_admin_requests_with_bad_bytes_get_a_400_and_cut_no_relay(ctl_bin, gateway, backends):
    live, _ = open_relay(gateway, backends)
    for target in ["/%ff", "/v1/explain?host=caf%e9-443s.example.test", "/v1/explain?host=%c0%af"]:
        code, body = curl_admin(gateway, target)
        assert code == 400, (target, body)
        assert body["error"] == "the request target is not UTF-8 once percent-decoded", body
    p = subprocess.run([ctl_bin.encode(), b"--admin", b"unix:" + admin_sock(gateway).encode(), b"explain",
                        b"caf\xe9-443s.example.test"], capture_output=True, timeout=10)
    assert p.returncode == 1 and b"not UTF-8" in p.stderr and b"HTTP 400" in p.stderr, p
    p = subprocess.run([ctl_bin.encode(), b"--admin", b"unix:" + admin_sock(gateway).encode(), b"register", b"--app",
                        b"\xe9vil", b"--instance", b"x", b"--address", b"127.0.0.9", b"--ports", b"80"],
                       capture_output=True, timeout=10)
    assert p.returncode == 1 and b"must be a DNS label" in p.stderr, p
    assert gateway.alive(), gateway.log()
    payload = os.urandom(256 << 10)
    assert_echo(live.exchange(payload), payload)
    live.close()


def test_an_app_cannot_take_over_another_apps_names(ctl_bin, gateway, backends):
    def ctl(*args):
        return subprocess.run([ctl_bin, "--admin", "unix:" + admin_sock(gateway)] + list(args), capture_output=True,
                              text=True, timeout=10)

    for instance, message in [("app", "instance id 'app' is an app's id"), ("app-i1", "belongs to app 'app'")]:
        p = ctl("register", "--app", "evil", "--instance", instance, "--address", "127.0.0.9", "--ports", "1-65535")
        assert p.returncode == 1 and message in p.stderr and "HTTP 409" in p.stderr, p
    p = ctl("register", "--app", "app-i2", "--instance", "evil-1", "--address", "127.0.0.9", "--ports", "1-65535")
    assert p.returncode == 1 and "app id 'app-i2' is the id of an instance of app 'app'" in p.stderr, p
    # The names still reach the app they belong to.
    for ident in ("app", "app-i1"):
        c, inst = open_relay(gateway, backends, ident)
        c.close()
        assert inst.startswith("app-i"), inst


def test_a_state_file_where_an_app_takes_another_apps_name_is_refused(cvmgate_bin, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "apps": {
        "evil": {"instances": [{"id": "victim", "address": "127.0.0.9", "ports": "443"}]},
        "victim": {"instances": [{"id": "victim-1", "address": "127.0.0.2", "ports": "443"}]}}}))
    p = subprocess.run([cvmgate_bin, "--listen", "127.0.0.1:0", "--base-domain", "example.test", "--state", str(state),
                        "--admin", "unix:%s" % (tmp_path / "admin.sock")], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1, p
    assert "instance id 'victim' is an app's id" in p.stderr, p.stderr


def test_static_instances_serve_their_ports_and_never_the_gateway_itself(cvmgate_bin, ctl_bin, tmp_path):
    """The README's own example: a static instance on 127.0.0.2 while the gateway listens on 0.0.0.0:443."""
    ns = "cvmgate-self-%x" % (os.getpid() & 0xffff)
    sh("ip", "netns", "add", ns)
    gw = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        gw = peers.Gateway(cvmgate_bin, str(tmp_path), listen=["0.0.0.0:443"], netns=ns, workers=1, state={
            "version": 1, "apps": {"web": {"instances": [{"id": "local", "address": "127.0.0.2", "ports": "443,8443"}]}}})
        gw.start()
        before = gw.counters()
        with in_netns(ns):
            server = peers.TcpServer("127.0.0.2", 8443, lambda conn: conn.sendall(b"instance=local\n"))
            try:
                s = peers.raw_connect(("127.0.0.1", 443))
                s.sendall(TlsClient(("127.0.0.1", 443), sni_name("web", 8443)).client_hello())
                s.settimeout(10)
                assert s.recv(64) == b"instance=local\n", "a port it serves is relayed"
                s.close()
                for port, counter in [(443, "closed_own_listener"), (2222, "closed_port_not_served"),
                                      (22, "closed_port_not_served")]:
                    c = TlsClient(("127.0.0.1", 443), sni_name("web", port))
                    c.connect()
                    c.send_hello()
                    closed = c.wait_closed(5)
                    c.close()
                    assert closed.how == "eof" and closed.data == peers.refusal_alert(counter), (port, closed)
                    gw.wait_counter(counter, before.get(counter, 0) + 1)
            finally:
                server.close()
        after = gw.counters()
        # One accept per client connection: the gateway never opened one to itself.
        assert after["accepted"] - before.get("accepted", 0) == 4, after
        assert after["connect_attempts"] - before.get("connect_attempts", 0) == 1, after
        assert after["closed_own_listener"] - before.get("closed_own_listener", 0) == 1, after
        assert after["closed_port_not_served"] - before.get("closed_port_not_served", 0) == 2, after

        def ctl(*args):
            return subprocess.run([ctl_bin, "--admin", "unix:" + admin_sock(gw)] + list(args), capture_output=True,
                                  text=True, timeout=10)
        p = ctl("explain", sni_name("web", 443))
        assert "verdict: refused: 127.0.0.2:443 is this gateway's own listener" in p.stdout, p
        p = ctl("explain", sni_name("web", 2222))
        assert "verdict: refused: no healthy instance serves port 2222" in p.stdout, p
        p = ctl("register", "--app", "api", "--instance", "a1", "--address", "127.0.0.5", "--ports", "400-500")
        assert p.returncode == 1 and "127.0.0.5:443 is this gateway's own listener" in p.stderr, p
        p = ctl("register", "--app", "api", "--instance", "a1", "--address", "127.0.0.5", "--ports", "8000-8100")
        assert p.returncode == 0, p
    finally:
        if gw is not None:
            gw.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_second_cvmgate_refuses_to_start_next_to_the_first(cvmgate_bin, ctl_bin, gateway, backends, tmp_path):
    first = gateway

    def second(*args):
        return subprocess.run([cvmgate_bin, "--base-domain", "example.test", "--workers", "1"] + list(args),
                              capture_output=True, text=True, timeout=20)

    p = second("--listen", "127.0.0.1:0", "--state", first.state_path, "--admin", "unix:%s" % (tmp_path / "b.sock"))
    assert p.returncode == 1, p
    assert "is in use by another cvmgate (pid %d)" % first.proc.pid in p.stderr, p.stderr
    p = second("--listen", first.listen[0], "--state", str(tmp_path / "b.json"),
               "--admin", "unix:%s" % (tmp_path / "b.sock"))
    assert p.returncode == 1 and "another process listens there" in p.stderr, p
    p = second("--listen", "127.0.0.1:0", "--state", str(tmp_path / "c.json"), "--admin", "unix:" + admin_sock(first))
    assert p.returncode == 1 and "a running process answers on this socket" in p.stderr, p
    # The first one lost nothing: its admin socket answers, and every new connection is still its own.
    out = subprocess.run([ctl_bin, "--admin", "unix:" + admin_sock(first), "list"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0 and "app-i1" in out.stdout, out
    before = first.counters()
    for _ in range(10):
        c, _ = open_relay(first, backends)
        c.close()
    assert first.counters()["routed_passthrough"] - before["routed_passthrough"] == 10


def test_idle_tcp_admin_connections_do_not_delay_an_operator(ctl_bin, make_gateway, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    admin = "tcp:127.0.0.1:%d" % peers.free_port("127.0.0.1")
    make_gateway(state={"version": 1}, args=["--admin", admin, "--admin-token-file", str(token)])
    idle = []
    try:
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", int(admin.rsplit(":", 1)[1])), timeout=5))
        started = time.monotonic()
        p = subprocess.run([ctl_bin, "--admin", admin, "--token-file", str(token), "list"], capture_output=True,
                           text=True, timeout=10)
        elapsed = time.monotonic() - started
    finally:
        for s in idle:
            s.close()
    assert p.returncode == 0 and "0 instances" in p.stdout, p
    assert elapsed < 2.0, "an authorised request waited %.1f s behind idle connections" % elapsed


def test_a_stalled_relay_holds_a_bounded_amount_of_kernel_memory(cvmgate_bin, tmp_path):
    """A client that stops reading a download, an instance that stops reading an upload: what the gateway holds for
    each relay (socket queues as the kernel accounts them, and pipe contents) under the sysctl profile's caps."""
    out = tmp_path / "stalled.json"
    p = subprocess.run(["/usr/bin/python3", str(ROOT / "bench" / "stalled_relays.py"), "--cvmgate", cvmgate_bin,
                        "--relays", "4", "--profile", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    per_relay = json.loads(out.read_text())["per_relay_mib"]
    download, upload = per_relay["download"], per_relay["upload"]
    # Unsent bytes beyond those in flight stay under TCP_NOTSENT_LOWAT; the instance socket under --backend-rcvbuf.
    assert download["client_socket_send"] < 1.5 and download["backend_socket_receive"] < 2.5, p.stdout
    assert download["total"] < 4.5 and upload["total"] < 6, p.stdout
