"""Integration tests of TLS termination (default and g modes): real clients, plaintext backends behind the gateway."""

import asyncio
import hashlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import time
import threading

import pytest

import peers
from peers import TlsClient

BACKEND_IP = "127.0.0.2"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wildcard")
    out = {}
    for domain in ("example.test", "other.test"):
        key, crt = d / (domain + ".key"), d / (domain + ".pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=*." + domain, "-addext",
                        "subjectAltName=DNS:*." + domain, "-keyout", str(key), "-out", str(crt)],
                       check=True, capture_output=True)
        out[domain] = (str(crt), str(key))
    return out


@pytest.fixture(scope="module")
def echo_port():
    port = peers.free_port(BACKEND_IP)
    server = peers.TcpServer(BACKEND_IP, port, peers.echo_then_sha256)
    yield port
    server.close()


@pytest.fixture
def tgw(make_gateway, certs):
    crt, key = certs["example.test"]
    return make_gateway(base_domains=("example.test", "nocert.test"),
                        state={"version": 1, "apps": {"app": {"instances": [{"id": "app-i1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                        args=["--tls-cert", "example.test=%s,%s" % (crt, key), "--handshake-timeout", "1s"])


def tls_context(certs, **kw):
    ctx = ssl.create_default_context(cafile=certs["example.test"][0])
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def trailer(payload):
    return b"sha256=" + hashlib.sha256(payload).hexdigest().encode() + b"\n"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_terminated_payload_arrives_intact_both_ways(tgw, echo_port, version):
    # One thread drives both directions: an SSL object must never be used from two threads at once.
    c = TlsClient(tgw.addr, "app-%d.example.test" % echo_port, timeout=30, tls_version=version)
    c.connect()
    c.send_hello()
    c.finish_handshake()
    assert c.sslobj.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert c.sslobj.selected_alpn_protocol() is None  # the client offered none
    payload = os.urandom(4 << 20)
    ex = c.exchange(payload)
    got = bytes(c.plain)
    c.close()
    assert len(got) == len(payload) + len(trailer(payload)), ex
    assert got == payload + trailer(payload), "bytes differ"
    c = tgw.counters()
    # Userspace TLS (no kTLS here), kTLS from the handshake, or moved to kTLS at --ktls-after-bytes.
    assert c["routed_terminate"] == 1 and c["relay_tls_userspace"] + c["ktls_tx"] + c["ktls_later"] == 1, c


def test_a_client_with_a_small_receive_window_gets_every_byte_in_order(tgw, echo_port):
    """Records sealed together go out in one send; what the client's window does not take waits, in order."""
    c = TlsClient(tgw.addr, "app-%d.example.test" % echo_port, timeout=60)
    c.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the gateway's sends mostly fall short
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sock.settimeout(60)
    c.sock.connect(tgw.addr)
    c.send_hello()
    c.finish_handshake()
    payload = os.urandom(2 << 20)
    assert c.echo(payload) == payload, "bytes differ"
    c.send_close_notify()
    c.read_until_eof(timeout=60)
    assert bytes(c.plain) == payload + trailer(payload)
    assert c.tls_end == "close_notify", c.tls_end
    c.close()


def test_client_close_notify_half_closes_and_backend_end_sends_close_notify(tgw, certs, echo_port):
    """The client's close_notify becomes a FIN to the backend; the backend's answer still flows back,
    then the backend's FIN reaches the client as close_notify."""
    c = TlsClient(tgw.addr, "app-%d.example.test" % echo_port, timeout=10)
    c.connect()
    c.send_hello()
    c.finish_handshake()
    ex_payload = os.urandom(100000)
    ex = c.exchange(ex_payload)  # then a TCP half-close: the gateway sees the client's end
    raw = bytes(c.plain)
    c.close()
    assert raw == ex_payload + trailer(ex_payload), len(raw)
    assert ex.tls_end == "close_notify", ex


def test_default_mode_offers_http11_and_g_offers_h2(tgw, certs, echo_port):
    for label, want in (("app-%d" % echo_port, "http/1.1"), ("app-%dg" % echo_port, "h2")):
        ctx = tls_context(certs)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(tgw.addr, timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=label + ".example.test") as s:
            assert s.selected_alpn_protocol() == want, label
    tgw.wait_counter("routed_terminate", 1)
    tgw.wait_counter("routed_grpc", 1)


def test_curl_https_to_a_plain_http_backend(tgw, certs, tmp_path):
    (tmp_path / "index.html").write_text("hello from the cvm\n")
    port = peers.free_port(BACKEND_IP)
    server = subprocess.Popen(["/usr/bin/python3", "-m", "http.server", str(port), "--bind", BACKEND_IP],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        peers.wait_until(lambda: _listening(BACKEND_IP, port), 10, "the HTTP backend")
        name = "app-%d.example.test" % port
        for tls in (["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3"]):
            out = subprocess.run(["curl", "-sS", "--cacert", certs["example.test"][0], "--resolve",
                                  "%s:%d:127.0.0.1" % (name, tgw.addr[1])] + tls +
                                 ["https://%s:%d/index.html" % (name, tgw.addr[1])],
                                 capture_output=True, text=True, timeout=20)
            assert out.returncode == 0 and out.stdout == "hello from the cvm\n", out
    finally:
        server.kill()
        server.wait()


def _listening(ip, port):
    try:
        socket.create_connection((ip, port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("nghttp") is None or shutil.which("nghttpd") is None,
                    reason="nghttp2-client and nghttp2-server are needed (tools/setup installs them)")
def test_http2_through_g_to_an_h2c_backend(tgw, certs, tmp_path):
    (tmp_path / "grpc.txt").write_text("h2 ok\n")
    port = peers.free_port(BACKEND_IP)
    server = subprocess.Popen(["nghttpd", "--no-tls", "-a", BACKEND_IP, "-d", str(tmp_path), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        peers.wait_until(lambda: _listening(BACKEND_IP, port), 10, "the h2c backend")
        name = "app-%dg.example.test" % port
        # nghttp has no --resolve: hand it the gateway's address and set the SNI/authority by header.
        out = subprocess.run(["nghttp", "-v", "-H", ":authority: " + name,
                              "https://127.0.0.1:%d/grpc.txt" % tgw.addr[1]],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out
        assert "h2 ok" in out.stdout, out.stdout[-2000:]
        tgw.wait_counter("routed_grpc", 1)
    finally:
        server.kill()
        server.wait()


def test_websocket_echo_through_the_gateway(tgw, certs):
    websockets = pytest.importorskip("websockets", reason="python3-websockets is needed (tools/setup installs it)")
    port = peers.free_port(BACKEND_IP)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = loop.create_future()

    async def echo(ws, path=None):
        async for message in ws:
            await ws.send(message)

    async def serve():
        async with websockets.serve(echo, BACKEND_IP, port):
            ready.set()
            await stop

    t = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    t.start()
    assert ready.wait(10)
    name = "app-%d.example.test" % port

    async def client():
        ctx = tls_context(certs)
        async with websockets.connect("wss://%s:%d/" % (name, tgw.addr[1]), ssl=ctx, server_hostname=name,
                                      host="127.0.0.1", port=tgw.addr[1]) as ws:
            messages = ["hello", "x" * 100000, "bye"]
            for m in messages:
                await ws.send(m)
                assert await ws.recv() == m

    try:
        asyncio.run(asyncio.wait_for(client(), 20))
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        t.join(10)
    tgw.wait_counter("routed_terminate", 1)


def test_refusals_without_certificate_and_on_handshake_timeout(tgw, certs, echo_port):
    from test_passthrough import expect_closed
    expect_closed(tgw, "closed_no_certificate", sni="app-%d.nocert.test" % echo_port)
    # A client that sends its hello and then nothing: the handshake times out.
    before = tgw.counters()
    c = TlsClient(tgw.addr, "app-%d.example.test" % echo_port)
    c.connect()
    c.send_hello()
    closed = c.wait_closed(5)
    c.close()
    assert closed.how in ("eof", "reset"), closed
    tgw.wait_counter("closed_tls_handshake_timeout", before.get("closed_tls_handshake_timeout", 0) + 1)


@pytest.mark.parametrize("host,says,number", [("nosuchapp-%d.example.test", "unrecognized name", 112),
                                              ("app-%d.nocert.test", "handshake failure", 40)],
                         ids=["unknown-app", "no-certificate"])
def test_a_refused_name_is_explained_to_curl_and_openssl(tgw, echo_port, host, says, number):
    """A client refused after its ClientHello gets a TLS alert, not a reset: the user reads why."""
    name = host % echo_port
    port = tgw.addr[1]
    curl = subprocess.run(["curl", "-sS", "-k", "--max-time", "10", "--resolve", "%s:%d:127.0.0.1" % (name, port),
                           "https://%s:%d/" % (name, port)], capture_output=True, text=True, timeout=30)
    assert curl.returncode == 35, (curl.returncode, curl.stderr)  # CURLE_SSL_CONNECT_ERROR
    assert says in curl.stderr, curl.stderr
    assert "reset" not in curl.stderr, curl.stderr
    s_client = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", name],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert s_client.returncode != 0
    said = s_client.stdout + s_client.stderr
    assert says in said and "SSL alert number %d" % number in said, said


def _make_cert(directory, name):
    key, crt = directory / (name + ".key"), directory / (name + ".pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=*.example.test/O=" + name, "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt, key


def _served_org(gw, echo_port):
    c = TlsClient(gw.addr, "app-%d.example.test" % echo_port)
    c.connect()
    c.send_hello()
    c.finish_handshake()
    der = c.sslobj.getpeercert(binary_form=True)
    c.close()
    text = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                          capture_output=True, timeout=10).stdout.decode()
    return text.rsplit("O = ", 1)[-1].strip()


def test_certificate_reload_keeps_live_connections_and_refuses_a_bad_one(make_gateway, ctl_bin, echo_port,
                                                                         tmp_path):
    live_crt, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    first_crt, first_key = _make_cert(tmp_path, "first")
    second_crt, second_key = _make_cert(tmp_path, "second")
    shutil.copy(first_crt, live_crt)
    shutil.copy(first_key, live_key)
    gw = make_gateway(state={"version": 1, "apps": {"app": {"instances": [{"id": "a1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                      args=["--tls-cert", "example.test=%s,%s" % (live_crt, live_key)])
    assert _served_org(gw, echo_port) == "first"
    live = TlsClient(gw.addr, "app-%d.example.test" % echo_port)
    live.connect()
    live.send_hello()
    live.finish_handshake()
    assert live.echo(b"before") == b"before"

    # New files, reloaded through the admin API: new connections get them, the live one goes on.
    shutil.copy(second_crt, live_crt)
    shutil.copy(second_key, live_key)
    admin = "unix:" + os.path.join(gw.workdir, "admin.sock")
    out = subprocess.run([ctl_bin, "--admin", admin, "reload-certificates"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0 and "reloaded the certificates of 1 base domains" in out.stdout, out
    assert _served_org(gw, echo_port) == "second"
    assert live.echo(b"after the reload") == b"after the reload"

    # A key that does not match the chain: refused on SIGHUP and through the API, the old pair stays.
    shutil.copy(first_key, live_key)
    ok, line = gw.reload()
    assert not ok and "does not match" in line, line
    out = subprocess.run([ctl_bin, "--admin", admin, "reload-certificates"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 1 and "does not match" in out.stderr, out
    assert _served_org(gw, echo_port) == "second"
    assert live.echo(b"still here") == b"still here"
    live.close()


def _connect_with(gw, ctx, name, session=None):
    s = ctx.wrap_socket(socket.create_connection(gw.addr, timeout=10), server_hostname=name, session=session)
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"  # after this a TLS 1.3 client has read its session ticket
    return s


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_session_resumption_with_tickets(tgw, certs, echo_port, version):
    ctx = tls_context(certs, minimum_version=version, maximum_version=version)
    name = "app-%d.example.test" % echo_port
    first = _connect_with(tgw, ctx, name)
    session = first.session
    assert not first.session_reused
    first.close()
    again = _connect_with(tgw, ctx, name, session)
    assert again.session_reused, "the ticket from the first connection did not resume"
    again.close()


def test_a_tls13_handshake_issues_one_ticket(tgw, certs, echo_port):
    # OpenSSL issues two by default; each costs a session copy, its encryption and a record.
    name = "app-%d.example.test" % echo_port
    host, port = tgw.addr
    p = subprocess.Popen(["openssl", "s_client", "-connect", "%s:%d" % (host, port), "-servername", name,
                          "-tls1_3", "-CAfile", certs["example.test"][0], "-ign_eof", "-msg"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        p.stdin.write(b"ping-through-gateway\n")
        p.stdin.flush()
        # The tickets come right after the handshake, before the echo: once the echo is read, every
        # ticket has been.
        text = ""
        deadline = time.monotonic() + 10
        while "\nping-through-gateway" not in text and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            text += line.decode(errors="replace")
    finally:
        p.kill()
        p.wait()
    assert "Verify return code: 0 (ok)" in text, text
    assert "\nping-through-gateway" in text, "the echo did not come back:\n" + text
    assert text.count(", NewSessionTicket") == 1, text


def _s_client_key_type(gw, name, ca, *extra):
    """The key type of the certificate the gateway serves to `openssl s_client` with `extra` flags."""
    host, port = gw.addr
    out = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % (host, port), "-servername", name,
                          "-CAfile", ca, *extra], input=b"", capture_output=True, timeout=20)
    text = out.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text, text
    for line in text.splitlines():
        if line.strip().startswith("a:PKEY:"):
            return line.split("a:PKEY:")[1].split(",")[0].strip()
    raise AssertionError("no certificate in:\n" + text)


def test_an_ecdsa_and_an_rsa_certificate_for_one_domain(make_gateway, certs, echo_port, tmp_path):
    ecdsa_crt, ecdsa_key = certs["example.test"]
    rsa_key, rsa_crt = tmp_path / "rsa.key", tmp_path / "rsa.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=*.example.test", "-addext", "subjectAltName=DNS:*.example.test", "-keyout", str(rsa_key),
                    "-out", str(rsa_crt)], check=True, capture_output=True)
    both = tmp_path / "both.pem"
    both.write_bytes(open(ecdsa_crt, "rb").read() + rsa_crt.read_bytes())  # the client trusts either
    gw = make_gateway(state={"version": 1, "apps": {"app": {"instances": [
                          {"id": "app-i1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                      args=["--tls-cert", "example.test=%s,%s" % (ecdsa_crt, ecdsa_key),
                            "--tls-cert", "example.test=%s,%s" % (rsa_crt, rsa_key)])
    name = "app-%d.example.test" % echo_port
    assert _s_client_key_type(gw, name, str(both), "-tls1_3") == "id-ecPublicKey"
    assert _s_client_key_type(gw, name, str(both), "-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256") == "rsaEncryption"
    assert _s_client_key_type(gw, name, str(both), "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256") == \
        "rsaEncryption"
    assert _s_client_key_type(gw, name, str(both), "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256") == \
        "id-ecPublicKey"
    # A reload keeps both.
    ok, line = gw.reload()
    assert ok, line
    assert _s_client_key_type(gw, name, str(both), "-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256") == "rsaEncryption"


def test_two_certificates_of_one_key_type_for_one_domain_are_refused(cvmgate_bin, certs, tmp_path):
    crt, key = certs["example.test"]
    out = subprocess.run([cvmgate_bin, "--listen", "127.0.0.1:0", "--base-domain", "example.test",
                          "--state", str(tmp_path / "state.json"), "--admin", "unix:" + str(tmp_path / "a.sock"),
                          "--tls-cert", "example.test=%s,%s" % (crt, key),
                          "--tls-cert", "example.test=%s,%s" % (crt, key)], capture_output=True, text=True, timeout=20)
    assert out.returncode != 0, out
    assert "a second ECDSA certificate (one of each key type" in out.stderr, out.stderr


def test_ticket_keys_rotate_and_old_tickets_stop_resuming(make_gateway, certs, echo_port, ctl_bin):
    crt, key = certs["example.test"]
    gw = make_gateway(state={"version": 1, "apps": {"app": {"instances": [{"id": "a1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                      args=["--tls-cert", "example.test=%s,%s" % (crt, key), "--health-poll", "100ms",
                            "--ticket-key-rotation", "300ms"])
    admin = "unix:" + os.path.join(gw.workdir, "admin.sock")

    def rotations():
        out = subprocess.run([ctl_bin, "--admin", admin, "metrics"], capture_output=True, text=True, timeout=10)
        for line in out.stdout.splitlines():
            if line.startswith("cvmgate_ticket_key_rotations_total "):
                return int(float(line.split()[1]))
        raise AssertionError("no ticket rotation metric:\n" + out.stdout)

    ctx = tls_context(certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    name = "app-%d.example.test" % echo_port
    first = _connect_with(gw, ctx, name)
    session = first.session
    first.close()
    issued_at = rotations()
    # Two rotations later the key that sealed the ticket is gone: a full handshake follows.
    peers.wait_until(lambda: rotations() >= issued_at + 2, 10, "two ticket-key rotations")
    late = _connect_with(gw, ctx, name, session)
    assert not late.session_reused, "a ticket outlived two key rotations"
    late.close()


def test_tls_min_version_13_refuses_a_tls12_client(make_gateway, certs, echo_port):
    crt, key = certs["example.test"]
    gw = make_gateway(state={"version": 1, "apps": {"app": {"instances": [{"id": "a1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                      args=["--tls-cert", "example.test=%s,%s" % (crt, key), "--tls-min-version", "1.3"])
    name = "app-%d.example.test" % echo_port
    old = tls_context(certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        _connect_with(gw, old, name)
    gw.wait_counter("closed_tls_handshake_failed", 1)
    _connect_with(gw, tls_context(certs), name).close()


TLS_STAT = "/proc/net/tls_stat"


def tls_stat():
    with open(TLS_STAT) as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def _terminated_exchange(gw, echo_port, version, size=1 << 20):
    c = TlsClient(gw.addr, "app-%d.example.test" % echo_port, timeout=60, tls_version=version)
    c.connect()
    c.send_hello()
    c.finish_handshake()
    payload = os.urandom(size)
    c._pump(payload, until=lambda got: len(got) >= len(payload), timeout=60)
    # The client ends with close_notify, which reaches the backend as a FIN.
    c.send_close_notify()
    c.read_until_eof(timeout=60)
    got = bytes(c.plain)
    tls_end = c.tls_end
    c.close()
    assert got == payload + trailer(payload), "%d bytes back" % len(got)
    assert tls_end == "close_notify", tls_end


needs_ktls = pytest.mark.skipif(not os.path.exists(TLS_STAT),
                                reason="this kernel has no TLS module: kTLS is tested in the kernel suite "
                                       "(tools/kernel-lab)")


def _gateway(make_gateway, certs, *args):
    crt, key = certs["example.test"]
    return make_gateway(base_domains=("example.test",),
                        state={"version": 1, "apps": {"app": {"instances": [{"id": "app-i1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                        args=["--tls-cert", "example.test=%s,%s" % (crt, key), *args])


@pytest.fixture
def at_handshake(make_gateway, certs):
    """kTLS installed at the handshake (OpenSSL's offload), not after a threshold."""
    return _gateway(make_gateway, certs, "--ktls-after-bytes", "0")


@needs_ktls
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_ktls_offload_is_used(at_handshake, echo_port, version):
    before = tls_stat()
    _terminated_exchange(at_handshake, echo_port, version)
    after = tls_stat()
    assert after["TlsTxSw"] > before["TlsTxSw"], (before, after)
    counters = at_handshake.counters()
    assert counters["ktls_tx"] == 1 and counters["relay_tls_userspace"] == 0, counters
    assert counters["relay_splice"] == 1 and counters["relay_copy"] == 0, "both directions should splice: %s" % counters
    # TLS 1.2 RX through OpenSSL, TLS 1.3 RX installed by cvmgate from the traffic secret.
    assert after["TlsRxSw"] > before["TlsRxSw"], (before, after)
    assert counters["ktls_rx"] == 1 and counters["ktls_fallback_tls13_rx"] == 0, counters
    assert counters["ktls_later"] == 0, counters


@needs_ktls
def test_tls13_key_update_on_ktls_closes_cleanly_and_is_counted(at_handshake, echo_port):
    """Kernels 6.1/6.12 cannot rekey a kTLS RX socket: a client KeyUpdate ends the relay, counted."""
    tgw = at_handshake
    name = "app-%d.example.test" % echo_port
    client = subprocess.Popen(["openssl", "s_client", "-connect", "%s:%d" % tgw.addr, "-servername", name,
                               "-tls1_3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        client.stdin.write(b"hello\n")
        client.stdin.flush()
        tgw.wait_counter("ktls_rx", 1, timeout=30)
        client.stdin.write(b"k\n")  # s_client's command: send a KeyUpdate
        client.stdin.flush()
        tgw.wait_counter("closed_tls_keyupdate", 1, timeout=30)
    finally:
        client.kill()
        client.wait()


def _handshake(gw, echo_port, version):
    c = TlsClient(gw.addr, "app-%d.example.test" % echo_port, timeout=60, tls_version=version)
    c.connect()
    c.send_hello()
    c.finish_handshake()
    return c


def _close_and_check(c, sent):
    """The client sends close_notify; the echo's trailer and the gateway's close_notify come back."""
    c.send_close_notify()
    c.read_until_eof(timeout=60)
    got, tls_end = bytes(c.plain), c.tls_end
    c.close()
    assert got == sent + trailer(sent), "%d bytes back of %d" % (len(got), len(sent) + len(trailer(sent)))
    assert tls_end == "close_notify", tls_end


SUITES = [
    (ssl.TLSVersion.TLSv1_2, [], "ECDHE-ECDSA-AES256-GCM-SHA384"),
    (ssl.TLSVersion.TLSv1_2, ["--tls-ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"], "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (ssl.TLSVersion.TLSv1_2, ["--tls-ciphers", "ECDHE+CHACHA20"], "ECDHE-ECDSA-CHACHA20-POLY1305"),
    (ssl.TLSVersion.TLSv1_3, [], "TLS_AES_128_GCM_SHA256"),
    (ssl.TLSVersion.TLSv1_3, ["--tls-ciphersuites", "TLS_AES_256_GCM_SHA384"], "TLS_AES_256_GCM_SHA384"),
    (ssl.TLSVersion.TLSv1_3, ["--tls-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"], "TLS_CHACHA20_POLY1305_SHA256"),
]


@needs_ktls
@pytest.mark.parametrize("version,args,suite", SUITES, ids=[s[2] for s in SUITES])
def test_ktls_after_bytes_moves_a_live_connection_to_the_kernel(make_gateway, certs, echo_port, version, args,
                                                                suite):
    gw = _gateway(make_gateway, certs, "--ktls-after-bytes", "65536", *args)
    before = tls_stat()
    c = _handshake(gw, echo_port, version)
    assert c.sslobj.cipher()[0] == suite, c.sslobj.cipher()
    # Below the threshold: userspace TLS, no kTLS socket yet.
    first = os.urandom(16384)
    assert c.echo(first) == first
    counters = gw.counters()
    assert counters["ktls_later"] == 1 and counters["ktls_later_bytes"] == 0, counters
    assert tls_stat()["TlsCurrTxSw"] == before["TlsCurrTxSw"], "kTLS engaged before the threshold"
    # Across it, both ways at once: the connection moves while bytes flow in both directions.
    second = os.urandom(3 << 20)
    assert c.echo(second) == second, "bytes differ across the move to kTLS"
    gw.wait_counter("ktls_later_bytes", 1)
    now = tls_stat()
    assert now["TlsCurrTxSw"] == before["TlsCurrTxSw"] + 1 and now["TlsCurrRxSw"] == before["TlsCurrRxSw"] + 1, \
        (before, now)
    # After it: the kernel's records, spliced both ways.
    third = os.urandom(1 << 20)
    assert c.echo(third) == third
    counters = gw.counters()
    assert counters["relay_spliced_after_ktls"] == 2 and counters["ktls_later_failed"] == 0, counters
    assert counters["ktls_tx"] == 0 and counters["relay_tls_userspace"] == 0, counters
    _close_and_check(c, first + second + third)


@needs_ktls
@pytest.mark.parametrize("mode,spliced", [("uring", 2), ("copy", 0)])
def test_ktls_after_bytes_in_each_relay_mode(make_gateway, certs, echo_port, mode, spliced):
    """The move to kTLS under the ring's splice and under the copy relay (which stays a copy)."""
    gw = _gateway(make_gateway, certs, "--ktls-after-bytes", "65536", "--splice-mode", mode)
    c = _handshake(gw, echo_port, ssl.TLSVersion.TLSv1_3)
    sent = b""
    for size in (16384, 3 << 20, 1 << 20):  # below, across and after the threshold
        chunk = os.urandom(size)
        assert c.echo(chunk) == chunk, "bytes differ (%d-byte exchange)" % size
        sent += chunk
    counters = gw.wait_counter("ktls_later_bytes", 1)
    assert counters["relay_spliced_after_ktls"] == spliced and counters["ktls_later_failed"] == 0, counters
    _close_and_check(c, sent)


@needs_ktls
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_ktls_after_time_moves_a_slow_connection_to_the_kernel(make_gateway, certs, echo_port, version):
    gw = _gateway(make_gateway, certs, "--ktls-after-bytes", "1000000000", "--ktls-after", "500ms")
    c = _handshake(gw, echo_port, version)
    sent = b""
    deadline = time.monotonic() + 20
    while gw.counters()["ktls_later_time"] == 0:  # small exchanges until one comes after the 500 ms
        assert time.monotonic() < deadline, "no move to kTLS after --ktls-after: %s" % gw.counters()
        msg = os.urandom(512)
        assert c.echo(msg) == msg
        sent += msg
    assert gw.counters()["ktls_later_bytes"] == 0
    last = os.urandom(1 << 20)
    assert c.echo(last) == last
    _close_and_check(c, sent + last)


@needs_ktls
def test_a_key_update_before_the_threshold_keeps_the_connection_in_userspace(make_gateway, certs, echo_port):
    """A TLS 1.3 KeyUpdate in userspace changes the keys: the move is refused, counted, bytes intact."""
    gw = _gateway(make_gateway, certs, "--ktls-after-bytes", "65536")
    name = "app-%d.example.test" % echo_port
    client = subprocess.Popen(["openssl", "s_client", "-connect", "%s:%d" % gw.addr, "-servername", name,
                               "-tls1_3", "-quiet", "-no_ign_eof"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # -quiet: stdout holds only what comes back; -no_ign_eof: it still takes "k" as a command.
    line = b"~" * 1023 + b"\n"
    lines = 128  # 128 KiB: past the threshold, after the KeyUpdate
    try:
        # s_client's command: send a KeyUpdate. It takes a whole read of its stdin as the command, so
        # the data goes only once it says it sent the KeyUpdate.
        client.stdin.write(b"k\n")
        client.stdin.flush()
        said = b""
        deadline = time.monotonic() + 30
        while b"KEYUPDATE" not in said:
            assert time.monotonic() < deadline, "s_client said: %r" % said
            r, _, _ = select.select([client.stderr], [], [], max(0.0, deadline - time.monotonic()))
            if r:
                chunk = os.read(client.stderr.fileno(), 4096)
                assert chunk, "s_client ended: %r" % said
                said += chunk
        client.stdin.write(line * lines)
        client.stdin.flush()
        echoed = 0
        while echoed < lines * 1023:
            assert time.monotonic() < deadline, "echoed %d bytes; %s" % (echoed, gw.counters())
            r, _, _ = select.select([client.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                continue
            chunk = os.read(client.stdout.fileno(), 65536)
            assert chunk, "s_client ended after %d echoed bytes" % echoed
            echoed += chunk.count(b"~")
        counters = gw.wait_counter("ktls_later_failed", 1)
        assert counters["ktls_later_bytes"] == 0 and counters["closed_relay_error"] == 0, counters
    finally:
        client.kill()
        client.wait()


@pytest.mark.skipif(os.path.exists(TLS_STAT), reason="this kernel has kTLS: the fallback is not taken here")
def test_without_kernel_tls_the_userspace_fallback_is_counted(tgw, echo_port):
    _terminated_exchange(tgw, echo_port, ssl.TLSVersion.TLSv1_3)
    counters = tgw.counters()
    assert counters["ktls_fallback_no_kernel_tls"] == 1 and counters["relay_tls_userspace"] == 1, counters
    assert counters["ktls_tx"] == 0, counters
