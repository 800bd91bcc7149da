"""cvmgate runs as an unprivileged user with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only, as the systemd unit
starts it: port 443 binds, connections relay, and (where the kernel has WireGuard) the tunnel interface is
created over netlink. Without CAP_NET_BIND_SERVICE port 443 is refused, so the capability is really used."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import peers
from peers import TlsClient, sni_name
from test_cvm_topology import in_netns, sh
from test_passthrough import open_relay

NOBODY = 65534
CAPS = "+net_admin,+net_bind_service"
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN = 10, 12
KERNEL_WIREGUARD = os.path.isdir("/sys/module/wireguard")


def banner(conn):
    conn.sendall(b"instance=a1\n")


def start(cvmgate_bin, ns, work, caps):
    cmd = ["ip", "netns", "exec", ns, "setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
           "--inh-caps=-all," + caps, "--ambient-caps=-all," + caps, "--bounding-set=-all," + caps,
           cvmgate_bin, "--listen", "0.0.0.0:443", "--base-domain", "example.test", "--workers", "1",
           "--state", str(work / "state.json"), "--admin", "unix:%s" % (work / "admin.sock")]
    if KERNEL_WIREGUARD:
        cmd += ["--wg-interface", "wgpriv", "--wg-backend", "netlink", "--wg-private-key-file", str(work / "wg.key")]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_ready(proc, timeout=30):
    """Reads stderr until 'cvmgate: ready' (True) or the process exits (False); returns (ready, log)."""
    log = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            return False, "".join(log)
        log.append(line)
        if "cvmgate: ready" in line:
            return True, "".join(log)
    return False, "".join(log)


def cap_eff(pid):
    with open("/proc/%d/status" % pid) as f:
        fields = dict(l.split(":", 1) for l in f if ":" in l)
    return int(fields["CapEff"].strip(), 16), int(fields["Uid"].split()[0])


def worker_caps(pid):
    """{thread name: (CapEff, CapPrm)} of each data-plane worker thread."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            fields = dict(l.split(":", 1) for l in f if ":" in l)
        name = fields["Name"].strip()
        if name.startswith("cvmgate-w"):
            out[name] = (int(fields["CapEff"].strip(), 16), int(fields["CapPrm"].strip(), 16))
    return out


def test_worker_threads_hold_no_capability(gateway, backends):
    """Capabilities are per thread: the internet-facing workers drop every one once their listeners are bound,
    while the control thread keeps what WireGuard needs (here, as root, all of them)."""
    c, _ = open_relay(gateway, backends)  # the workers relay without any
    c.close()
    workers = worker_caps(gateway.proc.pid)
    assert sorted(workers) == ["cvmgate-w0", "cvmgate-w1"], workers
    assert all(c == (0, 0) for c in workers.values()), workers
    main_caps, _ = cap_eff(gateway.proc.pid)
    assert main_caps & (1 << CAP_NET_ADMIN), hex(main_caps)


def test_runs_as_nobody_with_two_capabilities(cvmgate_bin):
    ns = "cvmgate-priv-%x" % (os.getpid() & 0xffff)
    # pytest's own temporary directories are root-only: nobody needs a path it can walk.
    work = Path(tempfile.mkdtemp(prefix="cvmgate-priv-"))
    backend_port = 8443
    (work / "state.json").write_text(json.dumps(
        {"version": 1, "apps": {"app": {"instances": [{"id": "a1", "address": "127.0.0.1", "ports": str(backend_port)}]}}}))
    for p in (work, work / "state.json"):
        os.chown(p, NOBODY, NOBODY)
    sh("ip", "netns", "add", ns)
    proc = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Control: the same start without CAP_NET_BIND_SERVICE cannot bind port 443.
        denied = start(cvmgate_bin, ns, work, "+net_admin")
        ready, log = wait_ready(denied)
        denied.wait(10)
        assert not ready and denied.returncode != 0, log
        assert "443" in log and "ermission denied" in log, log

        proc = start(cvmgate_bin, ns, work, CAPS)
        ready, log = wait_ready(proc)
        assert ready, log
        caps, uid = cap_eff(proc.pid)  # ip netns exec and setpriv exec in place: the pid is cvmgate's
        assert uid == NOBODY
        assert caps == (1 << CAP_NET_BIND_SERVICE) | (1 << CAP_NET_ADMIN), hex(caps)
        workers = worker_caps(proc.pid)
        assert workers and all(c == (0, 0) for c in workers.values()), workers
        with in_netns(ns):
            server = peers.TcpServer("127.0.0.1", backend_port, banner)
            try:
                s = peers.raw_connect(("127.0.0.1", 443))
                s.sendall(TlsClient(("127.0.0.1", 443), sni_name("app", backend_port)).client_hello())
                s.settimeout(10)
                assert s.recv(64) == b"instance=a1\n", "a passthrough connection is relayed"
                s.close()
            finally:
                server.close()
        if KERNEL_WIREGUARD:
            assert "wgpriv" in sh("ip", "-n", ns, "link", "show", "wgpriv"), "the tunnel interface was created"
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
