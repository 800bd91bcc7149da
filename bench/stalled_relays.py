#!/usr/bin/env python3
# Kernel memory a relay holds when one side stops reading: a client that stalls in a download, an instance that
# stalls in an upload.
"""Runs cvmgate (one worker, passthrough) in a network namespace of its own, with the socket sysctls of
kernel-config/sysctl.d/90-cvmgate.conf (--profile) or the machine's. Each of N clients opens a relay:

  download: the instance sends without end; the client reads 8 MiB (a transfer that starts fast), then stops;
  upload:   the client sends without end; the instance reads nothing.

Once the buffers stop growing, it sums what the gateway holds for the relays: the receive and send queues of
its sockets (`ss` skmem: rmem_alloc and wmem_queued, the kernel's own accounting) and the bytes in its relay
pipes (cvmgate_relay_pipe_bytes). Prints MiB per stalled relay; --json writes the numbers.

Usage: bench/stalled_relays.py [--cvmgate PATH] [--relays 8] [--profile] [--json FILE] [-- CVMGATE FLAGS]
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import peers  # noqa: E402
from test_cvm_topology import in_netns, sh  # noqa: E402

SERVICE = 8443
PROFILE = ROOT / "kernel-config" / "sysctl.d" / "90-cvmgate.conf"
SOCKET_SYSCTLS = ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem")


def profile_values():
    out = {}
    for line in PROFILE.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in SOCKET_SYSCTLS:
            out[key.strip()] = " ".join(value.split())
    return out


def gateway_sockets(ns):
    """{(local, peer): (rmem_alloc, wmem_queued)} of cvmgate's TCP sockets."""
    out = sh("ip", "netns", "exec", ns, "ss", "-tmnpH")
    socks, last = {}, None
    for line in out.splitlines():
        if "cvmgate" in line and not line.startswith("\t"):
            cols = line.split()
            last = (cols[3], cols[4])
        m = re.search(r"skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f\d+,w(\d+)", line)
        if m and last is not None:
            socks[last] = (int(m.group(1)), int(m.group(2)))
            last = None
    return socks


def pipe_bytes(gw):
    return gw.counters().get("relay_pipe_bytes", 0)


def measure(args, direction):
    ns = "cvmstall-%x-%s" % (os.getpid() & 0xffff, direction[0])
    sh("ip", "netns", "add", ns)
    work = Path(tempfile.mkdtemp(prefix="cvmgate-stall-"))
    gw, server, clients, stop = None, None, [], threading.Event()
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        if args.profile:
            for key, value in profile_values().items():
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", "%s=%s" % (key, value))
        gw = peers.Gateway(str(args.cvmgate), str(work), listen=["127.0.0.1:443"], netns=ns, workers=1,
                           args=args.cvmgate_arg, state={"version": 1, "apps": {"app": {"instances": [
                               {"id": "i1", "address": "127.0.0.2", "ports": str(SERVICE)}]}}})
        gw.start()

        def serve(conn):
            if direction == "upload":
                stop.wait(120)  # reads nothing
                return
            chunk = b"x" * 65536
            while not stop.is_set():
                conn.sendall(chunk)

        with in_netns(ns):
            server = peers.TcpServer("127.0.0.2", SERVICE, serve)
            for _ in range(args.relays):
                s = socket.create_connection(("127.0.0.1", 443), timeout=10)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                s.sendall(peers.TlsClient(("127.0.0.1", 443), peers.sni_name("app", SERVICE)).client_hello())
                if direction == "download":
                    got = 0
                    while got < 8 << 20:
                        got += len(s.recv(1 << 20))
                else:
                    s.setblocking(False)
                clients.append(s)
        chunk = b"y" * 65536
        deadline = time.monotonic() + 60
        last, still = None, 0
        while time.monotonic() < deadline:
            if direction == "upload":
                for s in clients:
                    try:
                        while True:
                            s.send(chunk)
                    except BlockingIOError:
                        pass
            time.sleep(0.25)  # poll interval while the buffers fill
            socks = gateway_sockets(ns)
            total = sum(r + w for r, w in socks.values())
            still = still + 1 if total == last else 0
            last = total
            if still >= 4:
                break
        socks = gateway_sockets(ns)
        client_side = [v for (local, _), v in socks.items() if local.endswith(":443")]
        backend_side = [v for (_, peer), v in socks.items() if peer.endswith(":%d" % SERVICE)]
        assert len(client_side) == len(backend_side) == args.relays, socks
        pipes = pipe_bytes(gw)
        n = args.relays
        mib = 1 << 20
        return {
            "client_socket_receive": sum(r for r, _ in client_side) / n / mib,
            "client_socket_send": sum(w for _, w in client_side) / n / mib,
            "backend_socket_receive": sum(r for r, _ in backend_side) / n / mib,
            "backend_socket_send": sum(w for _, w in backend_side) / n / mib,
            "pipes": pipes / n / mib,
            "total": (sum(r + w for r, w in client_side + backend_side) + pipes) / n / mib,
        }
    finally:
        stop.set()
        for s in clients:
            s.close()
        if server is not None:
            server.close()
        if gw is not None:
            gw.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cvmgate", type=Path, default=ROOT / "build" / "tools" / "cvmgate")
    ap.add_argument("--relays", type=int, default=8)
    ap.add_argument("--profile", action="store_true", help="apply the profile's tcp_rmem and tcp_wmem in the namespace")
    ap.add_argument("--json", type=Path)
    ap.add_argument("cvmgate_arg", nargs="*", help="extra cvmgate flags (after --)")
    args = ap.parse_args()
    results = {d: measure(args, d) for d in ("download", "upload")}
    sysctls = profile_values() if args.profile else {k: sh("sysctl", "-n", k) for k in SOCKET_SYSCTLS}
    print("| stalled side | client socket recv | client socket send | instance socket recv | instance socket send "
          "| pipes | total, MiB per relay |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for d, r in results.items():
        print("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | **%.2f** |" % (
            "client stops reading a download" if d == "download" else "instance stops reading an upload",
            r["client_socket_receive"], r["client_socket_send"], r["backend_socket_receive"],
            r["backend_socket_send"], r["pipes"], r["total"]))
    print("\n%d relays each; sysctls: %s; cvmgate %s %s" % (
        args.relays, ", ".join("%s = %s" % kv for kv in sysctls.items()), args.cvmgate, " ".join(args.cvmgate_arg)))
    if args.json:
        args.json.write_text(json.dumps({"per_relay_mib": results, "sysctls": sysctls}, indent=1))


if __name__ == "__main__":
    main()
