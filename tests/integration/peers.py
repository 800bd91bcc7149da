"""Test peers for cvmgate integration tests: TLS backends, a wire-controlling TLS client, and a Gateway process wrapper."""

import hashlib
import json
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

TRAILER_PREFIX = b"sha256="
TRAILER_LEN = len(TRAILER_PREFIX) + 64 + 1  # "sha256=<64 hex>\n"


class PeerError(AssertionError):
    """A peer saw something other than what the test expected."""


# ---------------------------------------------------------------- helpers


# The kernel suite (tests/meson.build) runs these tests again in a guest on Debian's stock kernels,
# on an emulated CPU: a test of nothing the kernel decides skips there, and runs in the host suite.
IN_KERNEL_SUITE = os.environ.get("CVMGATE_TEST_WG") == "kernel"


def skip_in_kernel_suite(what):
    """A module-level mark: `what` does not depend on the kernel under test."""
    return pytest.mark.skipif(IN_KERNEL_SUITE, reason="%s does not depend on the kernel: it runs in the host "
                              "suite, not again in the kernel suite's emulated guest" % what)


def free_port(host="127.0.0.1"):
    """A TCP port that was free on host a moment ago (bind to port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_on_all(hosts, attempts=50):
    """A port number that can be bound on every host in hosts."""
    for _ in range(attempts):
        port = free_port(hosts[0])
        ok = True
        for h in hosts[1:]:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no port free on all of %s" % (hosts,))


def ipv6_loopback_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def sni_name(ident, port=None, mode="s", domain="example.test"):
    """The SNI cvmgate routes on: <id>[-<port>][s|g].<base-domain>."""
    name = ident
    if port is not None:
        name += "-%d" % port
    return "%s%s.%s" % (name, mode, domain)


def count_records(data):
    """Number of TLS records in data (which must be whole records)."""
    n = 0
    pos = 0
    while pos < len(data):
        _ctype, _ver, length = struct.unpack_from("!BHH", data, pos)
        pos += 5 + length
        n += 1
    if pos != len(data):
        raise ValueError("data does not end on a record boundary")
    return n


def make_cert(directory):
    """Self-signed EC certificate for *.example.test; returns (cert, key, der)."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=*.example.test",
         "-days", "2", "-keyout", key, "-out", cert],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    with open(cert) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return cert, key, der


def wait_until(predicate, timeout, what, interval=0.02):
    """Poll predicate until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise PeerError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)  # poll interval, not synchronisation


# ---------------------------------------------------------------- backends


def plain_echo(conn):
    """A TcpServer's serve: echoes until EOF."""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def echo_then_sha256(conn):
    """A TcpServer's serve: echoes until EOF, then sends 'sha256=<hex>\\n' of what it got and closes."""
    h = hashlib.sha256()
    while True:
        data = conn.recv(65536)
        if not data:
            break
        h.update(data)
        conn.sendall(data)
    conn.sendall(b"sha256=" + h.hexdigest().encode() + b"\n")


class TcpServer:
    """A plain TCP server on ip:port running serve(conn) in a thread per connection (the socket is closed after)."""

    def __init__(self, ip, port, serve, backlog=64):
        self.serve = serve
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(backlog)
        threading.Thread(target=self._loop, daemon=True, name="tcp-server-%d" % port).start()

    def _loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        with conn:
            try:
                self.serve(conn)
            except OSError:
                pass

    def close(self):
        # shutdown first: it wakes the thread blocked in accept(), which would otherwise keep the
        # socket listening (and serving one more connection) after close().
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Backend:
    """A threaded TLS server on ip:port that knows itself as name.

    mode "echo": send "instance=<name>\\n", echo everything received until the
    client's EOF, then send "sha256=<hex of all bytes received>\\n" and close.
    mode "https": answer one HTTP request with body "instance=<name>".
    """

    def __init__(self, ip, port, name, cert, key, mode="echo"):
        self.ip = ip
        self.port = port
        self.name = name
        self.mode = mode
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        # A client's TCP half-close without close_notify reads as a clean EOF.
        self.ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        self._lock = threading.Lock()
        self.accepted = 0
        self.errors = []
        self.received_digests = []
        self._threads = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((ip, port))
        self._sock.listen(128)
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="backend-%s-%d" % (name, port))
        self._acceptor.start()

    def connections(self):
        with self._lock:
            return self.accepted

    def _accept_loop(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self._stopping:
                conn.close()
                return
            with self._lock:
                self.accepted += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()

    def _serve(self, conn):
        conn.settimeout(60)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as e:
            with self._lock:
                self.errors.append("handshake: %r" % (e,))
            conn.close()
            return
        try:
            if self.mode == "echo":
                self._echo(tls)
            else:
                self._https(tls)
        except (OSError, ssl.SSLError) as e:
            with self._lock:
                self.errors.append("%s: %r" % (self.mode, e))
        finally:
            tls.close()

    def _echo(self, tls):
        tls.sendall(b"instance=%s\n" % self.name.encode())
        digest = hashlib.sha256()
        while True:
            data = tls.recv(65536)
            if not data:
                break
            digest.update(data)
            tls.sendall(data)
        hexdigest = digest.hexdigest()
        with self._lock:
            self.received_digests.append(hexdigest)
        tls.sendall(TRAILER_PREFIX + hexdigest.encode() + b"\n")
        try:
            tls.unwrap()  # close_notify; the client has already sent its EOF
        except (OSError, ssl.SSLError):
            pass

    def _https(self, tls):
        request = b""
        while b"\r\n\r\n" not in request:
            data = tls.recv(4096)
            if not data:
                return
            request += data
        body = b"instance=%s" % self.name.encode()
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body))
        try:
            tls.unwrap()
        except (OSError, ssl.SSLError):
            pass

    def close(self):
        self._stopping = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._acceptor.join(5)


class RawSink:
    """A plain TCP listener that records the first `want` bytes of each connection."""

    def __init__(self, ip, port):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((ip, port))
        self._sock.listen(16)
        self.ip, self.port = ip, port

    def receive(self, want, timeout=10.0):
        """Accept one connection, read until want bytes or EOF, return them."""
        self._sock.settimeout(timeout)
        conn, _ = self._sock.accept()
        deadline = time.monotonic() + timeout
        data = b""
        try:
            while len(data) < want:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                conn.settimeout(remaining)
                try:
                    chunk = conn.recv(want - len(data))
                except socket.timeout:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            conn.close()
        return data

    def close(self):
        self._sock.close()


# ---------------------------------------------------------------- client


class Exchange:
    """What a client saw on one echo connection."""

    def __init__(self, plain, tls_end):
        self.raw = bytes(plain)
        self.tls_end = tls_end
        nl = self.raw.find(b"\n")
        self.banner = self.raw[:nl].decode("ascii", "replace") if nl >= 0 else None
        rest = self.raw[nl + 1:] if nl >= 0 else b""
        tail = rest[-TRAILER_LEN:]
        if len(rest) >= TRAILER_LEN and tail.startswith(TRAILER_PREFIX) and tail.endswith(b"\n"):
            self.trailer = tail[len(TRAILER_PREFIX):-1].decode("ascii")
            self.echoed = rest[:-TRAILER_LEN]
        else:
            self.trailer = None
            self.echoed = rest

    @property
    def instance(self):
        if self.banner and self.banner.startswith("instance="):
            return self.banner[len("instance="):]
        return None

    def __repr__(self):
        return "Exchange(banner=%r, echoed=%d bytes, trailer=%r, tls_end=%r)" % (
            self.banner, len(self.echoed), self.trailer, self.tls_end)


class Closed:
    """How a connection ended when the test expected the gateway to close it."""

    def __init__(self, data, how, elapsed):
        self.data, self.how, self.elapsed = data, how, elapsed

    def __repr__(self):
        return "Closed(%d bytes %r, how=%s, after %.2fs)" % (
            len(self.data), self.data[:40], self.how, self.elapsed)


class TlsClient:
    """A TLS client on ssl.SSLObject + MemoryBIO over a raw socket.

    The test decides exactly when and how the ClientHello bytes go out
    (split_at/pause), and can half-close the TCP connection while still reading.
    """

    def __init__(self, addr, sni, alpn=None, timeout=10.0, tls_version=None):
        self.addr = addr
        self.sni = sni
        self.timeout = timeout
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        if tls_version is not None:
            self.ctx.minimum_version = self.ctx.maximum_version = tls_version
        if alpn:
            self.ctx.set_alpn_protocols(alpn)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = self.ctx.wrap_bio(self.incoming, self.outgoing,
                                        server_side=False, server_hostname=sni)
        self.sock = None
        self.plain = bytearray()
        self.tls_end = None      # "close_notify" or "ragged" once TLS has ended
        self.tcp_end = None      # "eof" or "reset" once the socket has ended
        self.raw_received = 0
        self.write_closed = False
        self._hello = None
        self.connected_at = None

    # -- wire control

    def client_hello(self):
        """The first flight (the ClientHello records) this client will send."""
        if self._hello is None:
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            self._hello = self.outgoing.read()
        return self._hello

    def connect(self):
        family = socket.AF_INET6 if ":" in self.addr[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.addr)
        self.connected_at = time.monotonic()
        return self

    def send_raw(self, data):
        self.sock.sendall(data)

    def send_hello(self, split_at=None, pause=0.3):
        """Send the ClientHello, optionally in two TCP segments with a pause."""
        hello = self.client_hello()
        if split_at is None:
            self.sock.sendall(hello)
            return
        assert 0 < split_at < len(hello), (split_at, len(hello))
        self.sock.sendall(hello[:split_at])
        time.sleep(pause)  # deliberate gap between the two segments
        self.sock.sendall(hello[split_at:])

    def finish_handshake(self):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.sslobj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            out = self.outgoing.read()
            if out:
                self.sock.sendall(out)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerError("handshake with %s (SNI %s) timed out" % (self.addr, self.sni))
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = None
            except socket.timeout:
                raise PeerError("handshake with %s (SNI %s) timed out" % (self.addr, self.sni))
            if not data:
                raise PeerError("connection closed during handshake (SNI %s) after %d bytes"
                                % (self.sni, self.raw_received))
            self.raw_received += len(data)
            self.incoming.write(data)
        out = self.outgoing.read()
        if out:
            self.sock.sendall(out)
        self.sock.settimeout(self.timeout)
        return self

    def handshake(self, split_at=None, pause=0.3):
        if self.sock is None:
            self.connect()
        self.send_hello(split_at, pause)
        return self.finish_handshake()

    def peer_cert_der(self):
        return self.sslobj.getpeercert(binary_form=True)

    # -- data

    def _drain_plain(self):
        while True:
            try:
                data = self.sslobj.read(262144)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.tls_end = "close_notify"
                return
            except ssl.SSLEOFError:
                self.tls_end = "ragged"
                return
            except ssl.SSLError as e:
                raise PeerError("TLS error after %d plaintext bytes (SNI %s): %s"
                                % (len(self.plain), self.sni, e)) from e
            if not data:
                self.tls_end = self.tls_end or "close_notify"
                return
            self.plain += data

    def _pump(self, payload=b"", half_close=False, until_eof=False, until=None,
              timeout=None):
        """Send payload while reading; optionally half-close and read to EOF.

        until: a predicate on the plaintext received so far that ends the pump.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        sock = self.sock
        sock.setblocking(False)
        view = memoryview(payload)
        off = 0
        out = bytearray(self.outgoing.read())
        try:
            while True:
                while off < len(view) and len(out) < 262144:
                    n = min(16384, len(view) - off)
                    self.sslobj.write(view[off:off + n])
                    off += n
                    out += self.outgoing.read()
                sent_all = off >= len(view) and not out
                if sent_all and half_close and not self.write_closed:
                    sock.shutdown(socket.SHUT_WR)
                    self.write_closed = True
                if sent_all:
                    if until is not None:
                        if until(self.plain):
                            return
                    elif not until_eof:
                        return
                if self.tcp_end is not None:
                    if out and not self.write_closed:
                        raise PeerError("connection ended (%s) with %d bytes unsent"
                                        % (self.tcp_end, len(out) + len(view) - off))
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerError(
                        "timed out after %.1fs: sent %d/%d bytes, received %d plaintext bytes"
                        % (timeout, off - 0, len(view), len(self.plain)))
                wlist = [sock] if out and not self.write_closed else []
                r, w, _ = select.select([sock], wlist, [], remaining)
                if w:
                    try:
                        n = sock.send(out)
                        del out[:n]
                    except BlockingIOError:
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        self.tcp_end = "reset"
                if r:
                    try:
                        data = sock.recv(262144)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        data = None
                    if data:
                        self.raw_received += len(data)
                        self.incoming.write(data)
                    else:
                        self.tcp_end = "eof" if data == b"" else "reset"
                        self.incoming.write_eof()
                    self._drain_plain()
                    more = self.outgoing.read()
                    if more and not self.write_closed:
                        out += more
        finally:
            sock.settimeout(self.timeout)

    def read_banner(self, timeout=None):
        self._pump(until=lambda p: b"\n" in p, timeout=timeout)
        nl = self.plain.find(b"\n")
        if nl < 0:
            raise PeerError("no banner; connection ended (%s/%s) after %r"
                            % (self.tcp_end, self.tls_end, bytes(self.plain)))
        return bytes(self.plain[:nl]).decode("ascii", "replace")

    def send(self, data, timeout=None):
        self._pump(data, timeout=timeout)

    def half_close(self):
        self._pump(b"", half_close=True)

    def send_close_notify(self):
        """Send TLS close_notify (not a TCP FIN); reading may go on until the peer ends."""
        try:
            self.sslobj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        data = self.outgoing.read()
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)

    def echo(self, payload, timeout=None):
        """Send payload and read until as many more plaintext bytes have come back."""
        want = len(self.plain) + len(payload)
        self._pump(payload, until=lambda got: len(got) >= want, timeout=timeout)
        return bytes(self.plain[want - len(payload):want])

    def read_until_eof(self, timeout=None):
        self._pump(until_eof=True, timeout=timeout)
        return bytes(self.plain)

    def exchange(self, payload, timeout=None):
        """Send payload (reading concurrently), half-close, read to EOF."""
        self._pump(payload, half_close=True, until_eof=True, timeout=timeout)
        return Exchange(self.plain, self.tls_end)

    def wait_closed(self, timeout=5.0):
        return wait_closed(self.sock, timeout, self.connected_at)

    def close(self):
        if self.sock is not None:
            self.sock.close()


# The TLS alert a client refused after its ClientHello receives (a plaintext record, level fatal),
# by the counter the refusal is counted under; refusals not listed close without a byte.
REFUSAL_ALERTS = {
    "closed_no_sni": 112, "closed_bad_name": 112, "closed_bad_port": 112, "closed_unknown_domain": 112,
    "closed_unknown_app": 112, "closed_port_not_served": 112,  # unrecognized_name
    "closed_no_certificate": 40,  # handshake_failure
    "closed_no_healthy_instance": 80, "closed_app_limit": 80, "closed_own_listener": 80,  # internal_error
}


def refusal_alert(counter):
    """The bytes a client refused under `counter` receives before the gateway's FIN."""
    alert = REFUSAL_ALERTS.get(counter)
    return b"" if alert is None else bytes([21, 3, 3, 0, 2, 2, alert])


def wait_closed(sock, timeout, since=None):
    """Read from sock until the peer closes it; report what arrived and when."""
    since = time.monotonic() if since is None else since
    deadline = time.monotonic() + timeout
    data = b""
    how = "timeout"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            how = "reset"
            break
        if not chunk:
            how = "eof"
            break
        data += chunk
    return Closed(data, how, time.monotonic() - since)


def raw_connect(addr, timeout=10.0):
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    s.connect(addr)
    return s


# ---------------------------------------------------------------- gateway


# Static instances name the ports they serve; the test backends listen on ports the kernel picks,
# and no gateway under test listens on these addresses.
TEST_PORTS = "1024-65535"


def default_state(address_by_instance=None):
    instances = address_by_instance or {"app-i1": "127.0.0.2", "app-i2": "127.0.0.3"}
    return {"version": 1, "apps": {"app": {"instances": [
        {"id": i, "address": a, "ports": TEST_PORTS} for i, a in instances.items()]}}}


class Gateway:
    """One cvmgate process: state file, flags, stderr log, counters and signals."""

    READY = "cvmgate: ready"
    COUNTERS_BEGIN = "cvmgate: counters begin"
    COUNTERS_END = "cvmgate: counters end"

    def __init__(self, binary, workdir, state=None, listen=None, base_domains=("example.test",),
                 workers=2, args=(), netns=None):
        self.binary = binary
        self.workdir = workdir
        self.state_path = os.path.join(workdir, "state.json")
        self.state = default_state() if state is None else state
        self.listen = list(listen) if listen else ["127.0.0.1:%d" % free_port("127.0.0.1")]
        self.base_domains = list(base_domains)
        self.workers = workers
        self.args = list(args)
        self.netns = netns  # run inside this network namespace (ip netns exec)
        self.proc = None
        self.lines = []
        self.snapshots = []
        self._cond = threading.Condition()
        self._reader = None
        self._collecting = None
        self.returncode = None

    # -- addresses

    @staticmethod
    def _split(listen):
        host, _, port = listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def addr(self):
        return self._split(self.listen[0])

    def addr_of(self, i):
        return self._split(self.listen[i])

    # -- process

    def command(self):
        cmd = ["ip", "netns", "exec", self.netns, self.binary] if self.netns else [self.binary]
        for listen in self.listen:
            cmd += ["--listen", listen]
        for d in self.base_domains:
            cmd += ["--base-domain", d]
        cmd += ["--state", self.state_path, "--workers", str(self.workers),
                "--admin", "unix:" + os.path.join(self.workdir, "admin.sock")]
        return cmd + self.args

    def write_state(self, state):
        """Write state (a dict, or raw text) atomically to the state file."""
        text = state if isinstance(state, str) else json.dumps(state, indent=1)
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.state_path)

    def start(self, ready_timeout=10.0):
        self.write_state(self.state)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     cwd=self.workdir)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        try:
            self.wait_line(lambda l: self.READY in l, 0, ready_timeout, "'%s'" % self.READY)
        except PeerError:
            self.kill()
            raise
        return self

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self.lines.append(line)
                if self.COUNTERS_BEGIN in line:
                    self._collecting = {}
                elif self.COUNTERS_END in line and self._collecting is not None:
                    self.snapshots.append(self._collecting)
                    self._collecting = None
                elif self._collecting is not None:
                    parts = line.split()
                    if len(parts) == 2:
                        try:
                            self._collecting[parts[0]] = int(parts[1])
                        except ValueError:
                            pass
                self._cond.notify_all()
        with self._cond:
            self.lines.append(None)  # end of stderr
            self._cond.notify_all()

    def log(self):
        with self._cond:
            return "\n".join(l for l in self.lines if l is not None)

    def wait_line(self, predicate, start, timeout, what):
        """Wait for a stderr line at index >= start matching predicate; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    line = self.lines[i]
                    if line is None:
                        raise PeerError("cvmgate stderr ended (exit %s) before %s; log:\n%s"
                                        % (self.proc.poll(), what, self.log_unlocked()))
                    if predicate(line):
                        return line
                    i += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerError("timed out after %.1fs waiting for %s; log:\n%s"
                                    % (timeout, what, self.log_unlocked()))
                self._cond.wait(remaining)

    def log_unlocked(self):
        return "\n".join(l for l in self.lines[-200:] if l is not None)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def counters(self, timeout=5.0):
        """Ask for the counters with SIGUSR1 and return the block it prints."""
        with self._cond:
            seen = len(self.snapshots)
        self.signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.snapshots) <= seen:
                if self.lines and self.lines[-1] is None:
                    raise PeerError("cvmgate exited while counters were asked for")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerError("no counters block within %.1fs of SIGUSR1; log:\n%s"
                                    % (timeout, self.log_unlocked()))
                self._cond.wait(remaining)
            return dict(self.snapshots[-1])

    def wait_counter(self, name, at_least, timeout=5.0):
        """Poll counters until counters[name] >= at_least; return the counters."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.counters()
            if c.get(name, 0) >= at_least:
                return c
            if time.monotonic() >= deadline:
                raise PeerError("counter %s is %s, expected >= %d within %.1fs; counters: %s"
                                % (name, c.get(name), at_least, timeout, c))
            time.sleep(0.05)  # poll interval

    def reload(self, timeout=5.0):
        """SIGHUP; return (ok, line) from the 'cvmgate: reload ...' log line."""
        with self._cond:
            start = len(self.lines)
        self.signal(signal.SIGHUP)
        line = self.wait_line(
            lambda l: "cvmgate: reload ok" in l or "cvmgate: reload failed" in l,
            start, timeout, "a reload log line")
        return "cvmgate: reload ok" in line, line

    def wait_exit(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PeerError("cvmgate still running %.1fs later; log:\n%s"
                            % (timeout, self.log()))
        self._reader.join(5)
        return self.returncode

    def stop(self, timeout=10.0):
        """SIGTERM and assert a clean exit 0; returns the final counters if printed."""
        if not self.alive():
            raise PeerError("cvmgate already exited with %s; log:\n%s"
                            % (self.proc.poll(), self.log()))
        self.signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        assert rc == 0, "cvmgate exited %s after SIGTERM; log:\n%s" % (rc, self.log())
        return self.snapshots[-1] if self.snapshots else None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
