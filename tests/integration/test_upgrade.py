"""Upgrade without a dropped connection: `cvmgatectl upgrade` starts the binary at the daemon's path
with its arguments, hands it the listening sockets and the admin API's (SCM_RIGHTS), and the old
process drains. Connections opened all through it are all served; one open across it keeps working."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import peers
from peers import TlsClient, sni_name

BACKEND_IP = "127.0.0.2"


@pytest.fixture(scope="module")
def echo_port():
    port = peers.free_port(BACKEND_IP)
    server = peers.TcpServer(BACKEND_IP, port, peers.plain_echo, backlog=512)
    yield port
    server.close()


def ctl(ctl_bin, gw, *args):
    return subprocess.run([ctl_bin, "--admin", "unix:" + os.path.join(gw.workdir, "admin.sock")] + list(args),
                          capture_output=True, text=True, timeout=200)


def state(echo_port):
    return {"version": 1, "apps": {"app": {"instances": [
        {"id": "app-i1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}}


class Load(threading.Thread):
    """Opens connection after connection through the gateway (a ClientHello to the passthrough echo,
    read back, then closed), counting the ones served and the ones that failed, and how."""

    def __init__(self, gw, port, limit=20000, seconds=60):
        super().__init__(daemon=True)
        self.addr, self.limit, self.seconds = gw.addr, limit, seconds
        self.hello = TlsClient(gw.addr, sni_name("app", port)).client_hello()
        self.served = 0
        self.failures = []
        self.stop = threading.Event()

    def run(self):
        end = time.monotonic() + self.seconds
        while not self.stop.is_set() and self.served + len(self.failures) < self.limit and time.monotonic() < end:
            try:
                with socket.create_connection(self.addr, timeout=5) as s:
                    s.sendall(self.hello)
                    got = b""
                    while len(got) < len(self.hello):
                        chunk = s.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed after %d bytes" % len(got))
                        got += chunk
                self.served += 1
            except OSError as e:
                self.failures.append(repr(e))

    def wait_served(self, n, what):
        peers.wait_until(lambda: self.served >= n or not self.is_alive(), 30, what)
        assert self.served >= n, (self.served, self.failures[:5])


def listening_sockets(port):
    """The inodes of the sockets listening on 127.0.0.1:port: the same ones after an upgrade means
    none was closed (a closed listener resets what waits in its accept queue)."""
    out = subprocess.run(["ss", "-Hltne", "sport = :%d" % port], capture_output=True, text=True, timeout=10).stdout
    return sorted(re.findall(r"ino:(\d+)", out))


def successor_pid(out):
    # "upgraded: pid N serves now; pid M drains its K connections and exits"
    words = out.split()
    return int(words[2])


def stop_pid(pid):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # poll interval while it drains
    os.kill(pid, signal.SIGKILL)


def notifications(sock):
    out = []
    sock.settimeout(0.2)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except socket.timeout:
        pass
    return out


def test_upgrade_refuses_no_connection_and_keeps_the_open_ones(ctl_bin, make_gateway, echo_port, tmp_path,
                                                                monkeypatch):
    # As under systemd (Type=notify): READY=1 once serving; the successor names itself the main process.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    conf = tmp_path / "cvmgate.toml"
    conf.write_text('hello-timeout = "5s"\n')
    gw = make_gateway(state=state(echo_port), args=["--config", str(conf)], workers=2)
    assert notifications(notify) == ["READY=1"]
    # Open across the upgrade: relayed by the old process until it ends.
    kept = TlsClient(gw.addr, sni_name("app", echo_port))
    kept.connect()
    kept.send_hello()
    # Several clients at once, so that SYNs are in the accept queues while the sockets change hands.
    loads = [Load(gw, echo_port) for _ in range(4)]
    for load in loads:
        load.start()
    new_pid = None
    try:
        for load in loads:
            load.wait_served(50, "connections before the upgrade")
        sockets = listening_sockets(gw.addr[1])
        assert len(sockets) == 2, sockets  # one per worker
        # The successor reads the file again: its connections are logged, the old process's were not.
        conf.write_text('hello-timeout = "5s"\naccess-log = "%s"\n' % (tmp_path / "access.log"))
        start = len(gw.lines)
        up = ctl(ctl_bin, gw, "upgrade")
        assert up.returncode == 0, up
        new_pid = successor_pid(up.stdout)
        assert new_pid != gw.proc.pid
        assert notifications(notify) == ["MAINPID=%d\nREADY=1" % new_pid]
        for load in loads:
            load.wait_served(load.served + 100, "connections after the upgrade")
        for load in loads:
            load.stop.set()
            load.join(30)
        failures = [f for load in loads for f in load.failures]
        served = sum(load.served for load in loads)
        assert failures == [], "%d refused or failed of %d: %s" % (len(failures), served + len(failures), failures[:5])
        gw.wait_line(lambda l: "upgrade: took over 2 listening sockets and the admin API's" in l, start, 10,
                     "the successor's take-over line")
        logged = (tmp_path / "access.log").read_text().splitlines()
        assert len(logged) >= 400 and all("reason=relay_done" in l for l in logged), logged[:3]
        # The open connection still works through the old process, which waits for it.
        assert gw.alive(), "the old process must drain its live relay"
        kept.sock.sendall(b"still here")
        got = b""
        while len(got) < len(kept.client_hello()) + 10:
            chunk = kept.sock.recv(65536)
            assert chunk, "the relay across the upgrade was cut"
            got += chunk
        assert got.endswith(b"still here")
        kept.sock.close()
        assert gw.wait_exit(20) == 0, gw.log()
        assert listening_sockets(gw.addr[1]) == sockets, "the successor listens on the very same sockets"
        # The successor serves the admin API and the routes on its own.
        listed = ctl(ctl_bin, gw, "list")
        assert listed.returncode == 0 and "app-i1" in listed.stdout, listed
        c = TlsClient(gw.addr, sni_name("app", echo_port))
        c.connect()
        c.send_hello()
        c.sock.settimeout(5)
        assert c.sock.recv(65536)[:1] == b"\x16"
        c.close()
    finally:
        for load in loads:
            load.stop.set()
        if new_pid:
            stop_pid(new_pid)


def test_a_successor_that_cannot_start_leaves_the_old_process_serving(ctl_bin, make_gateway, echo_port, tmp_path):
    conf = tmp_path / "cvmgate.toml"
    conf.write_text('hello-timeout = "5s"\n')
    gw = make_gateway(state=state(echo_port), args=["--config", str(conf)])
    conf.write_text('hello-timeuot = "5s"\n')
    up = ctl(ctl_bin, gw, "upgrade")
    assert up.returncode == 1, up
    assert "exited with status 2 before it took over" in up.stderr, up
    assert gw.alive()
    # Everything still the old process's: routes, the admin API, and the state file's lock.
    load = Load(gw, echo_port, limit=50)
    load.run()
    assert load.served == 50 and not load.failures, load.failures[:5]
    assert ctl(ctl_bin, gw, "list").returncode == 0
    other = subprocess.run([gw.binary, "--base-domain", "example.test", "--state", gw.state_path, "--listen",
                            "127.0.0.1:%d" % peers.free_port(), "--admin", "unix:" + str(tmp_path / "b.sock")],
                           capture_output=True, text=True, timeout=30)
    assert other.returncode != 0 and "lock" in other.stderr, other
    gw.stop()
