"""The ACME flow for a base domain's wildcard certificate, end to end: lego obtains *.gw.test and
gw.test from pebble (a test ACME CA) with DNS-01 answered by pebble-challtestsrv, and
tools/acme-deploy-hook installs it and has the gateway reread it, on the first run and on a renewal.
What a user sees is checked: new connections get the pebble-issued certificate, and a connection
opened before the reload keeps relaying."""

import hashlib
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import urllib.request

import pytest

import peers
from peers import TlsClient

DOMAIN = "gw.test"
BACKEND_IP = "127.0.0.2"
HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "acme-deploy-hook")
LEGO_TIMEOUT = 40  # seconds for one lego run or renew (two DNS-01 authorizations each)

pytestmark = [pytest.mark.skipif(
    not all(shutil.which(b) for b in ("lego", "pebble", "pebble-challtestsrv", "openssl")),
    reason="needs the Debian packages lego and pebble (and openssl)"),
    peers.skip_in_kernel_suite("The ACME flow")]

# lego's 'exec' DNS provider runs this with present|cleanup FQDN VALUE: it puts the TXT record into,
# or takes it out of, pebble-challtestsrv's DNS through its management API.
DNS_EXEC = """#!/usr/bin/python3
import json, os, sys, urllib.request
action, fqdn, value = sys.argv[1:4]
body = {"host": fqdn, "value": value} if action == "present" else {"host": fqdn}
path = "/set-txt" if action == "present" else "/clear-txt"
with open(os.environ["ACME_TEST_DNS_LOG"], "a") as log:
    log.write("%s %s\\n" % (action, fqdn))
req = urllib.request.Request(os.environ["CHALLTESTSRV_URL"] + path, data=json.dumps(body).encode(),
                             method="POST")
urllib.request.urlopen(req, timeout=10).read()
"""


def free_tcp_udp_port(attempts=50):
    """A port free for both TCP and UDP on 127.0.0.1 (a DNS server takes both)."""
    for _ in range(attempts):
        port = peers.free_port("127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for TCP and UDP on 127.0.0.1")


def dns_answers(port, name="ready.%s." % DOMAIN, timeout=0.5):
    """True when a DNS server on 127.0.0.1:port answers an A query for name."""
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
    query += struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(query, ("127.0.0.1", port))
            reply, _ = s.recvfrom(512)
        except OSError:
            return False
    return reply[:2] == b"\x42\x42"


class Pebble:
    """pebble (the ACME CA) and pebble-challtestsrv (its DNS), on 127.0.0.1 ports picked here."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []
        self.logs = []
        # pebble's own TLS certificate, for its directory and management API; lego trusts it.
        self.tls_cert = os.path.join(workdir, "pebble-tls.pem")
        self.tls_key = os.path.join(workdir, "pebble-tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=pebble", "-addext",
                        "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", self.tls_key,
                        "-out", self.tls_cert], check=True, capture_output=True, timeout=30)
        self.ctx = ssl.create_default_context(cafile=self.tls_cert)
        self.dns_port = free_tcp_udp_port()
        self.challtest_port = peers.free_port("127.0.0.1")
        self.acme_port = peers.free_port("127.0.0.1")
        self.mgmt_port = peers.free_port("127.0.0.1")
        self.directory = "https://127.0.0.1:%d/dir" % self.acme_port
        self.challtest_url = "http://127.0.0.1:%d" % self.challtest_port

    def _spawn(self, name, cmd, env=None):
        log_path = os.path.join(self.workdir, name + ".log")
        log = open(log_path, "wb")
        self.logs.append(log_path)
        self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=self.workdir, env=env))
        log.close()

    def start(self, timeout=20.0):
        self._spawn("challtestsrv", ["pebble-challtestsrv", "-dns01", "127.0.0.1:%d" % self.dns_port,
                                     "-management", "127.0.0.1:%d" % self.challtest_port,
                                     "-http01", "", "-https01", "", "-tlsalpn01", ""])
        config = os.path.join(self.workdir, "pebble-config.json")
        with open(config, "w") as f:
            json.dump({"pebble": {"listenAddress": "127.0.0.1:%d" % self.acme_port,
                                  "managementListenAddress": "127.0.0.1:%d" % self.mgmt_port,
                                  "certificate": self.tls_cert, "privateKey": self.tls_key,
                                  # Where pebble's VA would dial for HTTP-01 and TLS-ALPN-01: unused
                                  # here (DNS-01 only), and nothing listens there.
                                  "httpPort": peers.free_port("127.0.0.1"), "tlsPort": peers.free_port("127.0.0.1"),
                                  "ocspResponderURL": "", "externalAccountBindingRequired": False}}, f)
        # No random validation delays, no rejected nonces, (almost) no reuse of valid authorizations.
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self._spawn("pebble", ["pebble", "-config", config, "-dnsserver", "127.0.0.1:%d" % self.dns_port], env)
        peers.wait_until(lambda: dns_answers(self.dns_port), timeout, "pebble-challtestsrv's DNS", interval=0.05)
        peers.wait_until(self._challtest_ready, timeout, "pebble-challtestsrv's management API", interval=0.05)
        peers.wait_until(self._acme_ready, timeout, "pebble's ACME directory", interval=0.05)
        return self

    def _check_alive(self):
        for p in self.procs:
            if p.poll() is not None:
                raise peers.PeerError("%s exited %s:\n%s" % (p.args[0], p.returncode, self.log()))

    def _challtest_ready(self):
        self._check_alive()
        try:
            with socket.create_connection(("127.0.0.1", self.challtest_port), timeout=0.5):
                return True
        except OSError:
            return False

    def _acme_ready(self):
        self._check_alive()
        try:
            return "newOrder" in json.loads(self.get(self.directory))
        except (OSError, ValueError):
            return False

    def get(self, url, timeout=5):
        with urllib.request.urlopen(url, context=self.ctx, timeout=timeout) as r:
            return r.read().decode()

    def root_pem(self):
        return self.get("https://127.0.0.1:%d/roots/0" % self.mgmt_port)

    def intermediate_pem(self):
        return self.get("https://127.0.0.1:%d/intermediates/0" % self.mgmt_port)

    def log(self):
        out = []
        for path in self.logs:
            with open(path, "rb") as f:
                out.append("---- %s ----\n%s" % (os.path.basename(path), f.read().decode("utf-8", "replace")[-6000:]))
        return "\n".join(out)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def pebble(tmp_path, request):
    workdir = tmp_path / "pebble"
    workdir.mkdir()
    p = Pebble(str(workdir))
    try:
        yield p.start()
    finally:
        p.stop()
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        if failed:
            print(p.log())


@pytest.fixture
def echo_port():
    port = peers.free_port(BACKEND_IP)
    server = peers.TcpServer(BACKEND_IP, port, peers.echo_then_sha256)
    yield port
    server.close()


class Lego:
    """The lego ACME client against pebble: DNS-01 through the exec provider, the deploy hook."""

    def __init__(self, pebble, workdir):
        self.pebble = pebble
        self.workdir = workdir
        self.dns_log = os.path.join(workdir, "dns-exec.log")
        self.dns_exec = os.path.join(workdir, "dns-exec")
        with open(self.dns_exec, "w") as f:
            f.write(DNS_EXEC)
        os.chmod(self.dns_exec, 0o755)

    def run(self, *command, env=None):
        cmd = ["lego", "--server", self.pebble.directory, "--accept-tos", "--email", "ops@" + DOMAIN,
               "--path", os.path.join(self.workdir, "lego"), "--key-type", "ec256",
               # DNS-01 through challtestsrv. It answers TXT but not SOA, so lego asks it for the
               # record once and skips the walk to the zone's authoritative servers (a real
               # deployment keeps that check).
               "--dns", "exec", "--dns.resolvers", "127.0.0.1:%d" % self.pebble.dns_port, "--dns.disable-cp",
               "--domains", "*." + DOMAIN, "--domains", DOMAIN] + list(command)
        full_env = dict(os.environ, LEGO_CA_CERTIFICATES=self.pebble.tls_cert, EXEC_PATH=self.dns_exec,
                        EXEC_POLLING_INTERVAL="1", EXEC_PROPAGATION_TIMEOUT="20", EXEC_SEQUENCE_INTERVAL="0",
                        CHALLTESTSRV_URL=self.pebble.challtest_url, ACME_TEST_DNS_LOG=self.dns_log,
                        **(env or {}))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=LEGO_TIMEOUT, cwd=self.workdir,
                              env=full_env)

    def dns_calls(self):
        if not os.path.exists(self.dns_log):
            return []
        with open(self.dns_log) as f:
            return f.read().split("\n")[:-1]


def served(gw, name, cadata):
    """The certificate a new client verifying against cadata gets for name (dict form, and DER)."""
    ctx = ssl.create_default_context(cadata=cadata)
    with socket.create_connection(gw.addr, timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
            return s.getpeercert(), s.getpeercert(binary_form=True)


def subject_cn(name_tuple):
    return dict(x[0] for x in name_tuple)["commonName"]


def pem_certs(text):
    """The DER of each certificate in a PEM text."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    return [ssl.PEM_cert_to_DER_cert(block[block.index(begin):] + end)
            for block in text.split(end) if begin in block]


def pem_subject_cn(pem):
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"], input=pem,
                         capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    return dict(part.split("=", 1) for part in out[len("subject="):].split(","))["CN"]


def reload_lines(gw):
    return [l for l in gw.log().splitlines() if "certificates reloaded" in l]


def test_lego_obtains_and_renews_the_wildcard_and_the_hook_reloads_it(make_gateway, ctl_bin, pebble, echo_port,
                                                                      tmp_path):
    # The gateway starts on a placeholder (a host's first certificate, before ACME has run).
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    chain, key = str(tls_dir / "gw.pem"), str(tls_dir / "gw.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=placeholder", "-addext",
                    "subjectAltName=DNS:*." + DOMAIN, "-keyout", key, "-out", chain],
                   check=True, capture_output=True, timeout=30)
    gw = make_gateway(base_domains=(DOMAIN,),
                      state={"version": 1, "apps": {"app": {"instances": [
                          {"id": "app-i1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}},
                      args=["--tls-cert", "%s=%s,%s" % (DOMAIN, chain, key)])
    name = "app-%d.%s" % (echo_port, DOMAIN)
    root = pebble.root_pem()
    intermediate = pebble.intermediate_pem()
    with pytest.raises(ssl.SSLCertVerificationError):
        served(gw, name, root)

    # A connection that lives through both reloads, and the bytes it must carry.
    live = TlsClient(gw.addr, name, timeout=10)
    live.connect()
    live.send_hello()
    live.finish_handshake()
    placeholder_der = live.peer_cert_der()
    sent = []

    def echoed(chunk):
        sent.append(chunk)
        return live.echo(chunk) == chunk

    assert echoed(b"before the certificate")

    admin = "unix:" + os.path.join(gw.workdir, "admin.sock")
    hook = "%s --chain %s --key %s --admin %s" % (HOOK, chain, key, admin)
    lego = Lego(pebble, str(tmp_path))
    hook_env = {"CVMGATECTL": ctl_bin}

    # First issuance: both names proven by DNS-01, then the hook installs and reloads.
    # The order's authorizations are given up once it is issued: pebble would otherwise now and
    # then hand the renewal an authorization still valid (as Let's Encrypt does for 30 days).
    out = lego.run("run", "--run-hook", hook, "--always-deactivate-authorizations", "true", env=hook_env)
    assert out.returncode == 0, "lego run failed:\n%s\n%s" % (out.stdout, out.stderr)
    calls = lego.dns_calls()
    assert calls.count("present _acme-challenge.%s." % DOMAIN) == 2, calls  # *.gw.test and gw.test
    assert calls.count("cleanup _acme-challenge.%s." % DOMAIN) == 2, calls
    issued = os.path.join(str(tmp_path), "lego", "certificates", "_.%s" % DOMAIN)
    for installed, original in ((chain, issued + ".crt"), (key, issued + ".key")):
        with open(installed, "rb") as a, open(original, "rb") as b:
            assert a.read() == b.read(), "%s is not lego's %s" % (installed, original)
    assert sorted(os.listdir(str(tls_dir))) == ["gw.key", "gw.pem"]  # no temp file left behind
    assert os.stat(key).st_mode & 0o777 == 0o600  # kept the mode of the file it replaced

    # What a user sees now: the pebble-issued wildcard, verified against pebble's root alone (so
    # the gateway sends the intermediate), for the app's name.
    cert, der = served(gw, name, root)
    inter_cn = pem_subject_cn(intermediate)
    assert inter_cn.startswith("Pebble Intermediate CA"), inter_cn
    assert subject_cn(cert["issuer"]) == inter_cn, cert
    assert set(cert["subjectAltName"]) == {("DNS", "*." + DOMAIN), ("DNS", DOMAIN)}, cert
    assert der != placeholder_der
    first_serial = cert["serialNumber"]
    assert len(reload_lines(gw)) == 1, gw.log()

    # The connection opened before the reload still relays, on the placeholder it shook hands with.
    assert echoed(b"after the first certificate")

    # A renewal (forced: pebble's certificates run for years) calls the hook again: a new serial.
    out = lego.run("renew", "--days", "99999", "--no-random-sleep", "--renew-hook", hook, env=hook_env)
    assert out.returncode == 0, "lego renew failed:\n%s\n%s" % (out.stdout, out.stderr)
    assert lego.dns_calls().count("present _acme-challenge.%s." % DOMAIN) == 4, lego.dns_calls()
    cert, _ = served(gw, name, root)
    assert cert["serialNumber"] != first_serial, (cert["serialNumber"], first_serial)
    assert subject_cn(cert["issuer"]) == inter_cn, cert
    assert set(cert["subjectAltName"]) == {("DNS", "*." + DOMAIN), ("DNS", DOMAIN)}, cert
    with open(chain) as f:
        installed = pem_certs(f.read())
    assert len(installed) == 2 and installed[1] == pem_certs(intermediate)[0]  # leaf, then pebble's intermediate
    assert len(reload_lines(gw)) == 2, gw.log()
    assert gw.alive()

    # The live connection carried every byte both ways, through both reloads.
    assert echoed(b"after the renewal")
    ex = live.exchange(b"")
    everything = b"".join(sent)
    assert ex.raw == everything + b"sha256=" + hashlib.sha256(everything).hexdigest().encode() + b"\n", ex
    live.close()


def test_the_hook_installs_nothing_from_a_mismatched_pair(tmp_path, ctl_bin):
    # A key that is not the certificate's: the files cvmgate reads stay as they were, no reload.
    made = {}
    for n in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=" + n, "-keyout", str(tmp_path / (n + ".key")),
                        "-out", str(tmp_path / (n + ".pem"))], check=True, capture_output=True, timeout=30)
        made[n] = (str(tmp_path / (n + ".pem")), str(tmp_path / (n + ".key")))
    dest = tmp_path / "dest"
    dest.mkdir()
    shutil.copy(made["a"][0], str(dest / "gw.pem"))
    shutil.copy(made["a"][1], str(dest / "gw.key"))
    env = dict(os.environ, LEGO_CERT_PATH=made["b"][0], LEGO_CERT_KEY_PATH=made["a"][1], CVMGATECTL=ctl_bin)
    out = subprocess.run([HOOK, "--chain", str(dest / "gw.pem"), "--key", str(dest / "gw.key"),
                          "--admin", "unix:" + str(tmp_path / "nobody.sock")],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode != 0 and "does not match" in out.stderr, out
    with open(str(dest / "gw.pem"), "rb") as f, open(made["a"][0], "rb") as g:
        assert f.read() == g.read()
    assert sorted(os.listdir(str(dest))) == ["gw.key", "gw.pem"]
