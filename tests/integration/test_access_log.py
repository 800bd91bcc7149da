"""The access log: one line per connection (logfmt or JSON), reopened on SIGUSR2, and a full queue
drops records (counted) rather than holding a worker back."""

import calendar
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import time

import pytest

import peers
from peers import TlsClient, sni_name

BACKEND_IP = "127.0.0.2"


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("wildcard")
    key, crt = d / "example.test.key", d / "example.test.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=*.example.test", "-addext",
                    "subjectAltName=DNS:*.example.test", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return str(crt), str(key)


@pytest.fixture(scope="module")
def echo_port():
    port = peers.free_port(BACKEND_IP)
    server = peers.TcpServer(BACKEND_IP, port, peers.plain_echo)
    yield port
    server.close()


def logging_gateway(make_gateway, cert, *flags, workers=2):
    crt, key = cert
    return make_gateway(state={"version": 1, "apps": {"app": {"instances": [
        {"id": "app-i1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
        args=["--tls-cert", "example.test=%s,%s" % (crt, key)] + list(flags), workers=workers)


def metrics(ctl_bin, gw):
    p = subprocess.run([ctl_bin, "--admin", "unix:" + os.path.join(gw.workdir, "admin.sock"), "metrics"],
                       capture_output=True, text=True, timeout=30, check=True)
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(cvmgate_\w+) (\S+)$", p.stdout, re.M)}


def logfmt(line):
    """key=value pairs; values bare or double-quoted (shell-like quoting is close enough for these)."""
    return dict(part.split("=", 1) for part in shlex.split(line))


def lines_of(path):
    try:
        with open(path) as f:
            return [l for l in f.read().splitlines() if l]
    except FileNotFoundError:
        return []


def terminated_exchange(gw, cert, port, payload):
    ctx = ssl.create_default_context(cafile=cert[0])
    with socket.create_connection(gw.addr, timeout=10) as raw:
        local = raw.getsockname()
        with ctx.wrap_socket(raw, server_hostname="app-%d.example.test" % port) as tls:
            tls.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = tls.recv(65536)
                assert chunk, "the echo ended early"
                got += chunk
            version, cipher = tls.version(), tls.cipher()[0]
    assert got == payload
    return local, version, cipher


def test_a_terminated_connection_is_one_logfmt_line(make_gateway, cert, echo_port, tmp_path):
    path = tmp_path / "access.log"
    gw = logging_gateway(make_gateway, cert, "--access-log", str(path))
    payload = os.urandom(100_000)
    before = time.time()
    (client_ip, client_port), version, cipher = terminated_exchange(gw, cert, echo_port, payload)
    lines = peers.wait_until(lambda: lines_of(path), 10, "the access-log line")
    assert len(lines) == 1, lines
    f = logfmt(lines[0])
    assert list(f) == ["time", "client", "sni", "app", "mode", "instance", "tls", "cipher", "bytes_in", "bytes_out",
                       "handshake_ms", "connect_ms", "duration_ms", "reason"], lines[0]
    assert f["client"] == "%s:%d" % (client_ip, client_port)
    assert f["sni"] == "app-%d.example.test" % echo_port
    assert (f["app"], f["mode"], f["instance"]) == ("app", "terminate", "%s:%d" % (BACKEND_IP, echo_port))
    assert (f["tls"], f["cipher"]) == (version, cipher)
    assert (int(f["bytes_in"]), int(f["bytes_out"])) == (len(payload), len(payload))
    for key in ("handshake_ms", "connect_ms", "duration_ms"):
        assert re.fullmatch(r"\d+\.\d{3}", f[key]), (key, f[key])
    assert float(f["handshake_ms"]) + float(f["connect_ms"]) <= float(f["duration_ms"])
    assert f["reason"] == "relay_done"
    logged = calendar.timegm(time.strptime(f["time"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert before - 2 <= logged <= time.time() + 2, f["time"]
    assert f["time"].endswith("Z")


def test_refusals_are_json_lines_on_stderr(make_gateway, cert, echo_port):
    gw = logging_gateway(make_gateway, cert, "--access-log", "stderr", "--access-log-format", "json")
    c = TlsClient(gw.addr, "nosuchapp-%d.example.test" % echo_port)
    c.connect()
    c.send_hello()
    c.wait_closed()
    c.close()
    # s: the raw stream goes to the plaintext echo, which sends the ClientHello back.
    hello = TlsClient(gw.addr, sni_name("app", echo_port)).client_hello()
    with socket.create_connection(gw.addr, timeout=10) as raw:
        raw.sendall(hello)
        echoed = b""
        while len(echoed) < len(hello):
            chunk = raw.recv(65536)
            assert chunk, "the echo ended early"
            echoed += chunk
        raw.shutdown(socket.SHUT_WR)
        assert raw.recv(1) == b""

    def records():
        out = []
        for line in gw.lines:
            if line and line.startswith("{"):
                out.append(json.loads(line))
        return out if len(out) >= 2 else None
    refused, relayed = sorted(peers.wait_until(records, 10, "two JSON access-log lines"),
                              key=lambda r: r["reason"] != "closed_unknown_app")
    assert refused["sni"] == "nosuchapp-%d.example.test" % echo_port
    assert refused["reason"] == "closed_unknown_app"
    assert refused["app"] is None and refused["mode"] is None and refused["instance"] is None
    assert refused["tls"] is None and refused["handshake_ms"] is None and refused["connect_ms"] is None
    assert refused["bytes_in"] == 0 and refused["bytes_out"] == 0
    assert relayed["mode"] == "passthrough" and relayed["app"] == "app"
    assert relayed["instance"] == "%s:%d" % (BACKEND_IP, echo_port)
    assert relayed["bytes_in"] == relayed["bytes_out"] == len(hello) and relayed["tls"] is None
    assert relayed["reason"] == "relay_done"
    assert isinstance(relayed["connect_ms"], float)


def test_sigusr2_reopens_the_file_logrotate_moved(ctl_bin, make_gateway, cert, echo_port, tmp_path):
    path = tmp_path / "access.log"
    gw = logging_gateway(make_gateway, cert, "--access-log", str(path))
    terminated_exchange(gw, cert, echo_port, b"first")
    peers.wait_until(lambda: len(lines_of(path)) == 1, 10, "the first line")
    os.rename(path, str(path) + ".1")
    gw.signal(signal.SIGUSR2)
    peers.wait_until(lambda: metrics(ctl_bin, gw).get("cvmgate_access_log_reopens_total") == 1, 10, "the reopen")
    assert path.exists()
    terminated_exchange(gw, cert, echo_port, b"second")
    peers.wait_until(lambda: len(lines_of(path)) == 1, 10, "the second line, in the new file")
    assert len(lines_of(str(path) + ".1")) == 1
    assert logfmt(lines_of(path)[0])["bytes_in"] == "6"


def test_a_blocked_log_drops_and_counts_but_never_holds_connections(ctl_bin, make_gateway, cert, echo_port,
                                                                    tmp_path):
    """The log goes to a pipe nobody reads: once it is full, the log thread waits on it, the worker's
    queue fills, and records are dropped and counted while every connection is still served. Once
    the pipe is read, lines come again; written + dropped accounts for every connection."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, never read (yet)
    try:
        gw = logging_gateway(make_gateway, cert, "--access-log", str(fifo), "--access-log-queue", "16",
                             workers=1)
        name = "nosuchapp-%d.example.test" % echo_port
        total = 0
        deadline = time.monotonic() + 60
        while metrics(ctl_bin, gw).get("cvmgate_access_log_dropped_total", 0) == 0:
            assert time.monotonic() < deadline and total < 5000, "no record dropped after %d connections" % total
            for _ in range(100):
                c = TlsClient(gw.addr, name)
                c.connect()
                c.send_hello()
                closed = c.wait_closed()
                c.close()
                assert closed.data == peers.refusal_alert("closed_unknown_app"), closed
                total += 1
        # Still served while the log is stuck: a relayed connection works.
        terminated_exchange(gw, cert, echo_port, b"still served")
        total += 1
        drained = bytearray()

        def read_all():
            while True:
                try:
                    chunk = os.read(reader, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                drained.extend(chunk)

        def accounted():
            read_all()
            m = metrics(ctl_bin, gw)
            return m.get("cvmgate_access_log_written_total", 0) + m["cvmgate_access_log_dropped_total"] == total
        peers.wait_until(accounted, 20, "written + dropped == %d connections" % total)
        read_all()  # a line counted as written is in the pipe by now
        m = metrics(ctl_bin, gw)
        assert m["cvmgate_accepted_total"] == total
        assert drained.count(b"\n") == m["cvmgate_access_log_written_total"]
        assert m["cvmgate_access_log_dropped_total"] > 0
        refused = logfmt(drained.decode().splitlines()[0])  # logfmt writes what is missing as "-"
        assert (refused["app"], refused["mode"], refused["instance"], refused["tls"]) == ("-",) * 4, refused
        assert refused["reason"] == "closed_unknown_app"
    finally:
        os.close(reader)


def test_logrotate_with_the_shipped_rule_loses_no_line(ctl_bin, make_gateway, cert, echo_port, tmp_path):
    """The shipped logrotate rule, run by logrotate itself (its path and its signal pointed at this
    gateway): the old lines end in access.log.1, the next ones in a new access.log."""
    path = tmp_path / "access.log"
    gw = logging_gateway(make_gateway, cert, "--access-log", str(path))
    for i in range(3):
        terminated_exchange(gw, cert, echo_port, b"x" * (i + 1))
    peers.wait_until(lambda: len(lines_of(path)) == 3, 10, "three lines")
    shipped = open(os.path.join(os.path.dirname(__file__), "../../kernel-config/logrotate.d/cvmgate")).read()
    assert "/var/log/cvmgate/access.log {" in shipped and "systemctl kill --signal=SIGUSR2" in shipped
    rule = (shipped.replace("/var/log/cvmgate/access.log", str(path))
            .replace("systemctl kill --signal=SIGUSR2 --kill-whom=main cvmgate.service", "kill -USR2 %d" % gw.proc.pid))
    conf = tmp_path / "logrotate.conf"
    conf.write_text(rule)
    p = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "logrotate.state"), str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p
    peers.wait_until(lambda: metrics(ctl_bin, gw).get("cvmgate_access_log_reopens_total") == 1, 10, "the reopen")
    for i in range(2):
        terminated_exchange(gw, cert, echo_port, b"y" * (i + 10))
    peers.wait_until(lambda: len(lines_of(path)) == 2, 10, "two lines in the new file")
    rotated = lines_of(str(path) + ".1")  # delaycompress: the newest rotation stays plain
    # Each worker's records keep their order; two workers' may interleave either way.
    assert sorted(logfmt(l)["bytes_in"] for l in rotated) == ["1", "2", "3"]
    assert sorted(logfmt(l)["bytes_in"] for l in lines_of(path)) == ["10", "11"]
