"""Integration tests for cvmgate's SNI-routed TLS passthrough, run against the real binary in CVMGATE_BIN."""

import hashlib
import os
import signal
import socket
import subprocess
import time

import pytest

import peers
from peers import TlsClient, sni_name

HELLO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "hello")
INSTANCES = {"app-i1", "app-i2"}
ALPN_2K = ["proto-%03d" % i for i in range(171)]
ALPN_20K = ["proto-%04d" % i for i in range(1800)]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def connect_client(gw, backends, ident="app", alpn=None, addr=None, timeout=10.0, mode="s",
                   domain="example.test"):
    c = TlsClient(addr or gw.addr, sni_name(ident, backends.port, mode, domain), alpn=alpn,
                  timeout=timeout)
    c.connect()
    return c


def open_relay(gw, backends, ident="app", **kw):
    """A client through the gateway with the handshake done and the banner read."""
    c = connect_client(gw, backends, ident, **kw)
    c.send_hello()
    c.finish_handshake()
    banner = c.read_banner()
    assert banner.startswith("instance="), banner
    return c, banner[len("instance="):]


def assert_echo(ex, payload):
    assert ex.instance in INSTANCES, ex
    assert len(ex.echoed) == len(payload), ex
    assert sha(ex.echoed) == sha(payload), "echoed bytes differ from the payload sent"
    assert ex.trailer == sha(payload), "backend received different bytes: %r" % (ex,)


def expect_closed(gw, counter, send=None, sni=None, backends=None, timeout=5.0):
    """Open a connection, send bytes, and check the gateway hangs up with the refusal's TLS alert (a
    name it cannot serve) or without a byte (anything else)."""
    before = gw.counters()
    if sni is not None:
        c = TlsClient(gw.addr, sni)
        c.connect()
        c.send_hello()
        closed = c.wait_closed(timeout)
        c.close()
    else:
        s = peers.raw_connect(gw.addr)
        if send:
            s.sendall(send)
        closed = peers.wait_closed(s, timeout)
        s.close()
    alert = peers.refusal_alert(counter)
    if alert:
        # The alert, then a FIN: a reset could overtake it.
        assert closed.how == "eof" and closed.data == alert, "expected the alert, then EOF: %r" % (closed,)
    else:
        assert closed.how in ("eof", "reset"), "gateway did not close the connection: %r" % (closed,)
        assert closed.data == b"", "client received bytes before the close: %r" % (closed,)
    after = gw.wait_counter(counter, before.get(counter, 0) + 1)
    assert after.get("routed_passthrough", 0) == before.get("routed_passthrough", 0), after
    return closed, after


# ---------------------------------------------------------------- data path


@pytest.mark.parametrize("mode", ["inline", "uring", "copy"])
def test_4mib_payload_intact_both_ways(make_gateway, backends, mode):
    gw = make_gateway(args=["--splice-mode", mode])
    c, _ = open_relay(gw, backends)
    payload = os.urandom(4 << 20)
    ex = c.exchange(payload, timeout=60)
    c.close()
    assert_echo(ex, payload)
    counters = gw.wait_counter("bytes_backend_to_client", len(payload))
    assert counters["bytes_client_to_backend"] >= len(payload), counters
    assert counters["routed_passthrough"] >= 1, counters
    if mode == "copy":
        assert counters["relay_copy"] >= 1, counters
        assert counters.get("relay_splice", 0) == 0, counters
    elif mode == "inline":
        assert counters["relay_splice"] >= 1, counters
    else:  # uring may fall back when the kernel refuses io_uring
        assert counters["relay_splice"] + counters["relay_copy"] >= 1, counters
    gw.stop()


@pytest.mark.parametrize("taskrun", ["defer", "coop", "off"])
def test_every_ring_task_work_mode_relays_and_half_closes(make_gateway, backends, taskrun):
    gw = make_gateway(args=["--ring-taskrun", taskrun])
    assert "ring task work %s," % taskrun in gw.log(), gw.log()
    c, _ = open_relay(gw, backends)
    payload = os.urandom(1 << 20)
    c.send(payload)
    c.half_close()
    ex = peers.Exchange(c.read_until_eof(timeout=30), c.tls_end)
    c.close()
    assert_echo(ex, payload)
    gw.stop()


def test_half_close_client_still_receives_everything(gateway, backends):
    c, _ = open_relay(gateway, backends)
    payload = os.urandom(64 << 10)
    c.send(payload)
    c.half_close()  # TCP FIN from the client; the backend has yet to answer it
    plain = c.read_until_eof(timeout=10)
    c.close()
    ex = peers.Exchange(plain, c.tls_end)
    # The trailer is sent only after the backend saw EOF, so its arrival proves
    # the FIN crossed the gateway while the other direction stayed open.
    assert_echo(ex, payload)
    assert ex.tls_end == "close_notify", ex


def test_both_instances_receive_traffic(gateway, backends):
    # Random choice over 2 instances: P(40 picks all alike) = 2 * 2**-40 < 1e-9.
    before = backends.counts()
    seen = {}
    for _ in range(40):
        c, inst = open_relay(gateway, backends)
        c.close()
        seen[inst] = seen.get(inst, 0) + 1
    after = backends.counts()
    assert set(seen) == INSTANCES, seen
    for name in INSTANCES:
        assert after[name] - before[name] >= 1, (before, after)
    assert sum(after.values()) - sum(before.values()) == 40, (before, after)


@pytest.mark.parametrize("pinned", ["app-i2", "app-i1"])
def test_instance_id_pins(gateway, backends, pinned):
    before = backends.counts()
    for _ in range(15):
        c, inst = open_relay(gateway, backends, ident=pinned)
        c.close()
        assert inst == pinned
    after = backends.counts()
    other = (INSTANCES - {pinned}).pop()
    assert after[other] == before[other], (before, after)
    assert after[pinned] - before[pinned] == 15, (before, after)


@pytest.mark.parametrize("split_at", [3, 1000])  # inside the record header; mid-extensions
def test_split_2k_hello_routes(gateway, backends, split_at):
    c = connect_client(gateway, backends, alpn=ALPN_2K)
    hello = c.client_hello()
    assert 1800 <= len(hello) <= 2400 and peers.count_records(hello) == 1, len(hello)
    c.send_hello(split_at=split_at, pause=0.3)
    c.finish_handshake()
    ex = c.exchange(b"split hello %d" % split_at)
    c.close()
    assert_echo(ex, b"split hello %d" % split_at)


def test_hello_spanning_two_records_routes(gateway, backends):
    c = connect_client(gateway, backends, alpn=ALPN_20K)
    hello = c.client_hello()
    assert len(hello) > 16384 + 5 and peers.count_records(hello) == 2, len(hello)
    c.send_hello()
    c.finish_handshake()
    ex = c.exchange(b"big hello")
    c.close()
    assert_echo(ex, b"big hello")


def test_hello_over_max_bytes_closed(make_gateway, backends):
    gw = make_gateway(args=["--hello-max-bytes", "4096"])
    c, _ = open_relay(gw, backends, alpn=ALPN_2K)  # 2 KiB still fits
    c.close()
    c = connect_client(gw, backends, alpn=ALPN_20K)
    before = gw.counters()
    c.send_hello()
    closed = c.wait_closed(5)
    c.close()
    assert closed.how in ("eof", "reset") and closed.data == b"", closed
    gw.wait_counter("closed_hello_too_large", before.get("closed_hello_too_large", 0) + 1)


# ---------------------------------------------------------------- real clients


@pytest.mark.parametrize("name", ["openssl_tls12.bin", "openssl_tls13.bin", "curl.bin",
                                  "python.bin", "python_2k.bin", "python_20k.bin"])
def test_captured_hello_forwarded_verbatim(make_gateway, name):
    """Replay a real client's captured ClientHello (SNI app-8443s.example.test)."""
    with open(os.path.join(HELLO_DIR, name), "rb") as f:
        hello = f.read()
    sink = None
    for host in ("127.0.8.%d" % i for i in range(1, 65)):  # port 8443 is fixed by the SNI
        try:
            sink = peers.RawSink(host, 8443)
            break
        except OSError as e:
            error = e
    if sink is None:
        pytest.skip("port 8443 is taken on 127.0.8.1-64, the fixture SNI needs it: %s" % error)
    try:
        gw = make_gateway(state=peers.default_state({"app-i1": sink.ip}))
        s = peers.raw_connect(gw.addr)
        s.sendall(hello)
        got = sink.receive(len(hello))
        s.close()
    finally:
        sink.close()
    assert got == hello, "backend got %d bytes, sent %d" % (len(got), len(hello))


def test_curl_through_gateway(gateway, backends):
    host = sni_name("app", backends.https_port)
    port = gateway.addr[1]
    r = subprocess.run(
        ["curl", "-sS", "-k", "--max-time", "10",
         "--resolve", "%s:%d:127.0.0.1" % (host, port), "https://%s:%d/" % (host, port)],
        capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout in ("instance=app-i1", "instance=app-i2"), r.stdout


def test_openssl_s_client_handshakes_with_backend(gateway, backends):
    r = subprocess.run(
        ["openssl", "s_client", "-connect", "127.0.0.1:%d" % gateway.addr[1],
         "-servername", sni_name("app", backends.port)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "subject=CN = *.example.test" in r.stdout, r.stdout
    assert "New, TLSv1.3" in r.stdout, r.stdout


def test_backend_certificate_is_seen_end_to_end(gateway, backends):
    c, _ = open_relay(gateway, backends)
    der = c.peer_cert_der()
    c.close()
    assert der == backends.cert_der


def test_ipv6_listener(make_gateway, backends):
    if not peers.ipv6_loopback_available():
        pytest.skip("this host has no IPv6 loopback (::1)")
    v6 = "[::1]:%d" % peers.free_port("::1")
    gw = make_gateway(listen=["127.0.0.1:%d" % peers.free_port(), v6])
    for i in range(2):
        c, _ = open_relay(gw, backends, addr=gw.addr_of(i))
        ex = c.exchange(b"over listener %d" % i)
        c.close()
        assert_echo(ex, b"over listener %d" % i)


# ---------------------------------------------------------------- rejections


def test_unknown_app_closed(gateway, backends):
    expect_closed(gateway, "closed_unknown_app", sni=sni_name("nosuchapp", backends.port))


def test_unknown_base_domain_closed(gateway, backends):
    expect_closed(gateway, "closed_unknown_domain",
                  sni=sni_name("app", backends.port, domain="example.org"))


@pytest.mark.parametrize("mode", ["", "g"])
def test_terminating_modes_without_a_certificate_closed(gateway, backends, mode):
    expect_closed(gateway, "closed_no_certificate",
                  sni=sni_name("app", backends.port, mode=mode))


def test_silent_client_closed_after_hello_timeout(make_gateway, backends):
    gw = make_gateway(args=["--hello-timeout", "1s"])
    before = gw.counters()
    s = peers.raw_connect(gw.addr)
    closed = peers.wait_closed(s, 6)
    s.close()
    assert closed.how in ("eof", "reset") and closed.data == b"", closed
    assert 0.8 <= closed.elapsed <= 4.0, closed
    gw.wait_counter("closed_hello_timeout", before.get("closed_hello_timeout", 0) + 1)


def test_not_tls_closed(gateway):
    expect_closed(gateway, "closed_not_tls",
                  send=b"GET / HTTP/1.1\r\nHost: app-9443s.example.test\r\n\r\n")


def test_no_sni_closed(gateway):
    c = TlsClient(gateway.addr, None)
    assert b"app-" not in c.client_hello()
    before = gateway.counters()
    c.connect()
    c.send_hello()
    closed = c.wait_closed(5)
    c.close()
    assert closed.how == "eof" and closed.data == peers.refusal_alert("closed_no_sni"), closed
    gateway.wait_counter("closed_no_sni", before.get("closed_no_sni", 0) + 1)


def test_captured_no_sni_hello_closed(gateway):
    with open(os.path.join(HELLO_DIR, "no_sni.bin"), "rb") as f:
        expect_closed(gateway, "closed_no_sni", send=f.read())


def test_sslv2_hello_closed(gateway):
    ciphers = bytes.fromhex("0700c0" "030080" "010080")
    challenge = os.urandom(16)
    body = b"\x01\x00\x02" + len(ciphers).to_bytes(2, "big") + b"\x00\x00" \
        + len(challenge).to_bytes(2, "big") + ciphers + challenge
    msg = bytes([0x80 | (len(body) >> 8), len(body) & 0xFF]) + body
    expect_closed(gateway, "closed_sslv2", send=msg)


def test_malformed_hello_closed(gateway):
    # ClientHello whose session id length (255) runs past the message end.
    body = b"\x03\x03" + b"\x00" * 32 + b"\xff" + b"\x00" * 9
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs
    expect_closed(gateway, "closed_hello_malformed", send=record)


def test_peer_closing_mid_hello_counted(gateway, backends):
    c = connect_client(gateway, backends)
    before = gateway.counters()
    c.send_raw(c.client_hello()[:100])
    c.close()
    after = gateway.wait_counter("closed_hello_peer_closed",
                                 before.get("closed_hello_peer_closed", 0) + 1)
    assert after["routed_passthrough"] == before.get("routed_passthrough", 0), after


def test_connect_failure_closes_client(make_gateway, backends):
    state = peers.default_state()
    state["apps"]["dead"] = {"instances": [{"id": "dead-i1", "address": "127.0.0.4", "ports": peers.TEST_PORTS}]}
    gw = make_gateway(state=state, args=["--connect-timeout", "2s"])
    before = gw.counters()
    c = connect_client(gw, backends, ident="dead")
    c.send_hello()
    closed = c.wait_closed(5)
    c.close()
    assert closed.how in ("eof", "reset") and closed.data == b"", closed
    gw.wait_counter("connect_failed", before.get("connect_failed", 0) + 1)


# ---------------------------------------------------------------- control


def test_reload_keeps_live_connection(gateway, backends):
    live, _ = open_relay(gateway, backends)
    gateway.write_state({"version": 1, "apps": {"other": {"instances": [
        {"id": "other-i1", "address": "127.0.0.2", "ports": peers.TEST_PORTS}]}}})
    ok, line = gateway.reload()
    assert ok, line
    assert gateway.counters()["reload_ok"] >= 1
    # The new table is in force: 'app' is gone, 'other' routes.
    expect_closed(gateway, "closed_unknown_app", sni=sni_name("app", backends.port))
    c, inst = open_relay(gateway, backends, ident="other")
    c.close()
    assert inst == "app-i1"
    # The relay opened before the reload still carries data both ways.
    payload = os.urandom(256 << 10)
    ex = live.exchange(payload)
    live.close()
    assert_echo(ex, payload)


@pytest.mark.parametrize("bad", ["{\"version\": 1, \"apps\": {", "not json at all",
                                 "{\"version\": 99, \"apps\": {}}"],
                         ids=["truncated", "not-json", "version-99"])
def test_bad_state_on_reload_keeps_old_routes(gateway, backends, bad):
    before = gateway.counters()
    gateway.write_state(bad)
    ok, line = gateway.reload()
    assert not ok, line
    after = gateway.counters()
    assert after["reload_failed"] == before.get("reload_failed", 0) + 1, after
    c, inst = open_relay(gateway, backends)
    ex = c.exchange(b"still routed")
    c.close()
    assert_echo(ex, b"still routed")


def _refused(addr):
    # A connection that reached a listener's accept queue as the listener closed is reset by
    # the kernel: that is also "not accepted".
    try:
        s = peers.raw_connect(addr, timeout=1.0)
    except (ConnectionRefusedError, ConnectionResetError, socket.timeout):
        return True
    s.close()
    return False


def test_sigterm_drains_live_relay_then_exits_0(make_gateway, backends):
    gw = make_gateway(args=["--drain-timeout", "30s"])
    c, _ = open_relay(gw, backends)
    first = os.urandom(1 << 20)
    c.send(first)
    gw.signal(signal.SIGTERM)
    peers.wait_until(lambda: _refused(gw.addr), 5, "the listener to stop accepting after SIGTERM")
    assert gw.alive(), "cvmgate exited with a relay still live; log:\n" + gw.log()
    second = os.urandom(1 << 20)
    ex = c.exchange(second, timeout=20)
    c.close()
    assert_echo(ex, first + second)
    finished = time.monotonic()
    rc = gw.wait_exit(10)
    assert rc == 0, gw.log()
    assert time.monotonic() - finished < 10, "exit waited for the drain timeout"
