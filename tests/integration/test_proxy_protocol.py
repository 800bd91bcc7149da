"""Integration tests of --proxy-protocol: the instance learns the client's address from a PROXY v2 header."""

import socket
import struct

import pytest

import peers
from peers import TlsClient, sni_name
from test_admin import ctl
from test_terminate import certs  # noqa: F401  (the wildcard certificate fixture)

BACKEND_IP = "127.0.0.2"
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def read_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def proxy_aware(conn):
    """Reads the PROXY v2 header, answers 'src=<ip>:<port> dst=<ip>:<port>\\n', then echoes until EOF."""
    try:
        head = read_exactly(conn, 16)
        if head[:12] != SIGNATURE or head[12] != 0x21:
            conn.sendall(b"no proxy header\n")
            return
        body = read_exactly(conn, struct.unpack("!H", head[14:16])[0])
    except EOFError:
        return
    if head[13] == 0x11:
        src, dst = socket.inet_ntop(socket.AF_INET, body[0:4]), socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    else:
        src, dst = socket.inet_ntop(socket.AF_INET6, body[0:16]), socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
    conn.sendall(("src=%s:%d dst=%s:%d\n" % (src, sport, dst, dport)).encode())
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


@pytest.fixture(scope="module")
def backend():
    b = peers.TcpServer(BACKEND_IP, peers.free_port(BACKEND_IP), proxy_aware)
    b.port = b.sock.getsockname()[1]
    yield b
    b.close()


def first_line(sock_or_client, read):
    data = b""
    while b"\n" not in data:
        chunk = read()
        assert chunk, "connection ended before the backend's line: %r" % data
        data += chunk
    return data.split(b"\n", 1)[0].decode()


def passthrough_line(gw, backend, app="app"):
    """The backend's first line for a passthrough connection to `app`, and the client's own address."""
    hello = TlsClient(gw.addr, sni_name(app, backend.port)).client_hello()
    s = peers.raw_connect(gw.addr)
    s.sendall(hello)
    s.settimeout(10)
    line = first_line(s, lambda: s.recv(4096))
    me = s.getsockname()
    s.close()
    return line, me


def terminated_line(gw, backend):
    """The backend's first line for a terminated (default mode) connection, and the client's own address."""
    c = TlsClient(gw.addr, sni_name("app", backend.port, mode=""))
    c.connect()
    c.send_hello()
    c.finish_handshake()
    me = c.sock.getsockname()
    c._pump(until=lambda got: b"\n" in got, timeout=10)
    line = bytes(c.plain).split(b"\n", 1)[0].decode()
    c.close()
    return line, me


def test_passthrough_instance_sees_the_client_address(make_gateway, backend):
    gw = make_gateway(state={"version": 1, "apps": {"app": {"instances": [{"id": "a1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                      args=["--proxy-protocol"])
    line, me = passthrough_line(gw, backend)
    assert line == "src=%s:%d dst=%s:%d" % (me[0], me[1], gw.addr[0], gw.addr[1]), line


def test_terminated_instance_sees_the_client_address(make_gateway, backend, certs):  # noqa: F811
    crt, key = certs["example.test"]
    gw = make_gateway(state={"version": 1, "apps": {"app": {"instances": [{"id": "a1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                      args=["--proxy-protocol", "--tls-cert", "example.test=%s,%s" % (crt, key)])
    line, me = terminated_line(gw, backend)
    assert line == "src=%s:%d dst=%s:%d" % (me[0], me[1], gw.addr[0], gw.addr[1]), line


def test_without_the_flag_no_header_is_sent(make_gateway, backend):
    gw = make_gateway(state={"version": 1, "apps": {"app": {"instances": [{"id": "a1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}})
    line, _ = passthrough_line(gw, backend)
    assert line == "no proxy header", line


def test_an_app_overrides_the_flag_both_ways(ctl_bin, make_gateway, backend):
    state = {"version": 1, "apps": {
        "wants": {"instances": [{"id": "w1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]},
        "plain": {"instances": [{"id": "p1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]},
        "legacy": {"proxy_protocol": False, "instances": [{"id": "l1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}}
    gw = make_gateway(state=state, args=["--proxy-protocol"])
    assert passthrough_line(gw, backend, "wants")[0].startswith("src=")
    assert passthrough_line(gw, backend, "legacy")[0] == "no proxy header", "the state file's override is read"
    out = ctl(ctl_bin, gw, "app-set", "plain", "--proxy-protocol", "off")
    assert out.strip() == "app plain: max connections 2000, proxy protocol off", out
    assert passthrough_line(gw, backend, "plain")[0] == "no proxy header"
    assert passthrough_line(gw, backend, "p1")[0] == "no proxy header", "a pinned instance follows its app"
    assert passthrough_line(gw, backend, "wants")[0].startswith("src="), "other apps keep the flag"
    table = ctl(ctl_bin, gw, "apps")
    assert "legacy" in table and "off*" in table, table
    ctl(ctl_bin, gw, "app-set", "plain", "--proxy-protocol", "default")
    assert passthrough_line(gw, backend, "plain")[0].startswith("src=")


def test_an_app_turns_the_header_on_without_the_flag(ctl_bin, make_gateway, backend, certs):  # noqa: F811
    crt, key = certs["example.test"]
    gw = make_gateway(state={"version": 1, "apps": {"app": {"instances": [{"id": "a1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                      args=["--tls-cert", "example.test=%s,%s" % (crt, key)])
    ctl(ctl_bin, gw, "app-set", "app", "--proxy-protocol", "on")
    line, me = terminated_line(gw, backend)
    assert line == "src=%s:%d dst=%s:%d" % (me[0], me[1], gw.addr[0], gw.addr[1]), line
