"""The config file (--config, TOML): `cvmgate check-config` before a start, and SIGHUP reading it again
(what can change is applied while running, the rest is named as waiting for a restart)."""

import socket
import ssl
import subprocess

import pytest

import peers

BACKEND_IP = "127.0.0.2"


def make_cert(directory, name):
    key, crt = directory / (name + ".key"), directory / (name + ".pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=" + name, "-addext", "subjectAltName=DNS:*.example.test",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return str(crt), str(key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return make_cert(d, "first"), make_cert(d, "second")


def check_config(cvmgate_bin, *args):
    return subprocess.run([cvmgate_bin, "check-config"] + list(args), capture_output=True, text=True, timeout=30)


def test_check_config_says_ok_or_names_the_problem(cvmgate_bin, certs, tmp_path):
    (crt, key), _ = certs
    conf = tmp_path / "cvmgate.toml"
    conf.write_text('listen = ["127.0.0.1:8443", "[::1]:8443"]\nbase-domain = "example.test"\n'
                    'tls-cert = ["example.test=%s,%s"]\naccess-log = "%s"\n' % (crt, key, tmp_path / "access.log"))
    ok = check_config(cvmgate_bin, "--config", str(conf))
    assert ok.returncode == 0, ok
    assert ok.stdout == ("cvmgate: configuration ok (%s): 2 listeners, base domains example.test, 1 certificates\n"
                         % conf), ok
    assert not (tmp_path / "access.log").exists(), "check-config creates nothing"

    # A key whose certificate does not exist: named, exit 1, nothing started.
    bad = check_config(cvmgate_bin, "--config", str(conf), "--tls-cert", "example.test=/nonexistent.pem," + key)
    assert bad.returncode == 1 and "/nonexistent.pem" in bad.stderr, bad
    # A certificate with another's key.
    _, (crt2, key2) = certs
    mismatch = check_config(cvmgate_bin, "--base-domain", "example.test", "--tls-cert",
                            "example.test=%s,%s" % (crt, key2))
    assert mismatch.returncode == 1 and "check-config:" in mismatch.stderr, mismatch
    conf.write_text('base-domain = "example.test"\nhello-timeuot = "1s"\n')
    typo = check_config(cvmgate_bin, "--config", str(conf))
    assert typo.returncode == 1, typo
    assert typo.stderr.strip() == "cvmgate: check-config: %s:2: hello-timeuot: no such flag (see cvmgate --help)" % conf
    conf.write_text('base-domain = "example.test"\naccess-log = "/nonexistent-dir/access.log"\n')
    unwritable = check_config(cvmgate_bin, "--config", str(conf))
    assert unwritable.returncode == 1 and "neither the file nor its directory is writable" in unwritable.stderr


def test_the_daemon_starts_from_the_file_and_refuses_a_bad_one(cvmgate_bin, make_gateway, tmp_path):
    conf = tmp_path / "cvmgate.toml"
    conf.write_text('base-domain = ["example.test", "other.test"]\nhello-timeout = "nope"\n')
    gw = peers.Gateway(cvmgate_bin, str(tmp_path), state={"version": 1}, base_domains=(),
                       args=["--config", str(conf)])
    with pytest.raises(peers.PeerError):
        gw.start()
    assert "%s: --hello-timeout=nope: expected a positive duration" % conf in gw.log(), gw.log()
    conf.write_text('base-domain = ["example.test", "other.test"]\n')
    gw = make_gateway(state={"version": 1}, base_domains=(), args=["--config", str(conf)])
    assert "base domains example.test other.test" in gw.log()


def test_sighup_applies_timeouts_and_names_what_needs_a_restart(make_gateway, tmp_path):
    conf = tmp_path / "cvmgate.toml"
    conf.write_text('hello-timeout = "60s"\nbacklog = 128\n')
    gw = make_gateway(state={"version": 1}, args=["--config", str(conf)])
    conf.write_text('hello-timeout = "1s"\nbacklog = 256\n')
    start = len(gw.lines)
    ok, line = gw.reload()
    assert ok, line
    gw.wait_line(lambda l: l == "cvmgate: config: applied hello-timeout 60s -> 1s", start, 5, "the applied line")
    gw.wait_line(lambda l: l == "cvmgate: config: changed, but take effect only at a restart: backlog 128 -> 256",
                 start, 5, "the restart line")
    # The new timeout is the one a new connection gets: silent clients are closed after 1 s, not 60.
    s = socket.create_connection(gw.addr, timeout=10)
    try:
        closed = peers.wait_closed(s, timeout=15)
    finally:
        s.close()
    assert closed.how in ("eof", "reset") and closed.elapsed < 10, closed
    # The restart-only change is still not in force, and is said again on the next SIGHUP.
    start = len(gw.lines)
    gw.reload()
    gw.wait_line(lambda l: "take effect only at a restart: backlog 128 -> 256" in l, start, 5, "the restart line")
    # A file that no longer parses keeps everything in force.
    conf.write_text('hello-timeout = \n')
    start = len(gw.lines)
    gw.reload()
    gw.wait_line(lambda l: l.startswith("cvmgate: config: %s:1:" % conf) and "the settings in force stay" in l,
                 start, 5, "the refusal")


def test_sighup_serves_the_certificate_the_file_now_names(make_gateway, certs, tmp_path):
    (crt1, key1), (crt2, key2) = certs
    port = peers.free_port(BACKEND_IP)
    echo = peers.TcpServer(BACKEND_IP, port, lambda c: c.sendall(c.recv(100)))
    try:
        conf = tmp_path / "cvmgate.toml"
        conf.write_text('tls-cert = "example.test=%s,%s"\naccess-log = "%s"\n' % (crt1, key1, tmp_path / "a.log"))
        gw = make_gateway(state={"version": 1, "apps": {"app": {"instances": [
            {"id": "app-i1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}}, args=["--config", str(conf)])
        name = "app-%d.example.test" % port

        def served_cn():
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with socket.create_connection(gw.addr, timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(b"ping")
                assert tls.recv(100) == b"ping"
                der = tls.getpeercert(binary_form=True)
            text = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                                  capture_output=True, check=True).stdout.decode()
            return text.strip()
        assert served_cn().endswith("CN = first")
        conf.write_text('tls-cert = "example.test=%s,%s"\naccess-log = "%s"\naccess-log-format = "json"\n'
                        % (crt2, key2, tmp_path / "b.log"))
        start = len(gw.lines)
        ok, line = gw.reload()
        assert ok, line
        gw.wait_line(lambda l: l.startswith("cvmgate: config: applied tls-cert ") and "access-log-format" in l,
                     start, 5, "the applied line")
        assert served_cn().endswith("CN = second")
        # The access log moved with it: the second connection's line is JSON, in the new file.
        line = peers.wait_until(lambda: (tmp_path / "b.log").exists() and (tmp_path / "b.log").read_text(), 10,
                                "a line in the new access log")
        assert line.startswith('{"time":') and line.count("\n") == 1, line
        assert (tmp_path / "a.log").read_text().count("\n") == 1
    finally:
        echo.close()
