#!/usr/bin/env python3
"""Several gateway hosts on one etcd registry: what a registration costs and how soon the other host
routes it. A 3-member etcd cluster and two cvmgate hosts (A and B) on loopback, static instances
(no WireGuard), every request to the admin API over its unix socket:

- registrations per second through host A, one client and four;
- register on A -> routable on B: from the registration's answer on A until B's explain says
  passthrough (B polled back to back), median and p99;
- a state file of N instances imported through A: how long it takes, how long B needs after it to
  route them all, B's resident memory, and B's snapshot publishes meanwhile.

Prints a Markdown report (and --json FILE). Bounded: every wait has a deadline."""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from etcd_cluster import EtcdCluster  # noqa: E402

PORTS = "8443"


class UnixHttp(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("cvmgate", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Host:
    def __init__(self, cvmgate, name, work, endpoints, prefix):
        self.name = name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "admin.sock")
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.proc = subprocess.Popen(
            [str(cvmgate), "--listen", "127.0.0.1:0", "--base-domain", "bench.test", "--workers", "1",
             "--registry", "etcd:" + endpoints, "--registry-prefix", prefix, "--node-name", name,
             "--state", os.path.join(self.dir, "state.json"), "--admin", "unix:" + self.sock],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 20
        while "cvmgate: ready" not in Path(self.log.name).read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("host %s did not start:\n%s" % (name, Path(self.log.name).read_text()))
            time.sleep(0.05)

    def call(self, method, path, body=None, timeout=60):
        conn = UnixHttp(self.sock, timeout)
        try:
            conn.request(method, path, None if body is None else json.dumps(body),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def register(self, instance, address):
        status, body = self.call("POST", "/v1/register",
                                 {"app": instance, "instance": instance + "-i", "address": address, "ports": PORTS})
        if status != 200:
            raise RuntimeError("register %s: %d %s" % (instance, status, body[:200]))

    def routes(self, app):
        status, body = self.call("GET", "/v1/explain?host=%s-8443s.bench.test" % app)
        return status == 200 and json.loads(body).get("verdict", "").startswith("passthrough")

    def rss_mib(self):
        for line in Path("/proc/%d/status" % self.proc.pid).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def metric(self, name):
        status, body = self.call("GET", "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def address(n):
    """Outside the tunnel pool: a static host there may serve several instances."""
    return "192.0.2.%d" % (1 + n % 250)


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def routable_on_b(a, b, tag, samples, results, suffix):
    """From a registration's answer on A until B's explain says passthrough (B polled back to back)."""
    delays = []
    for i in range(samples):
        app = "%s%d" % (tag, i)
        a.register(app, address(i))
        t0 = time.monotonic()
        while not b.routes(app):
            if time.monotonic() - t0 > 30:
                raise RuntimeError("B never routed " + app)
        delays.append((time.monotonic() - t0) * 1000)
    results["routable_on_b_ms_p50" + suffix] = statistics.median(delays)
    results["routable_on_b_ms_p99" + suffix] = percentile(delays, 99)
    results["routable_on_b_ms_max" + suffix] = max(delays)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--registrations", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=200, help="register-to-routable measurements")
    ap.add_argument("--instances", type=int, default=10000, help="instances in the imported state file")
    ap.add_argument("--large-samples", type=int, default=50,
                    help="measurements (and registrations per host) once the import is in")
    ap.add_argument("--cvmgate", default=str(ROOT / "build" / "tools" / "cvmgate"))
    ap.add_argument("--json")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cvmgate-bench-etcd-")
    cluster = EtcdCluster(3)
    hosts = []
    results = {}
    try:
        cluster.wait_ready()
        prefix = "/bench/%d/" % os.getpid()
        a = Host(args.cvmgate, "a", work, cluster.endpoints(), prefix)
        b = Host(args.cvmgate, "b", work, cluster.endpoints(), prefix)
        hosts = [a, b]

        # Registrations per second through A.
        for clients in (1, 4):
            per = args.registrations // clients
            start = time.monotonic()
            threads = [threading.Thread(target=lambda c=c: [a.register("r%d-%d-%d" % (clients, c, i), address(i))
                                                             for i in range(per)]) for c in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            results["registrations_per_s_%d_clients" % clients] = per * clients / (time.monotonic() - start)

        routable_on_b(a, b, "p", args.samples, results, "")

        # A state file of N instances imported through A.
        doc = {"version": 1, "apps": {"bulk": {"instances": [
            {"id": "bulk-%d" % i, "address": address(i), "ports": PORTS} for i in range(args.instances)]}}}
        publishes_before = b.metric("cvmgate_snapshot_publishes_total")
        instances_before = b.metric("cvmgate_instances")
        rss_before = b.rss_mib()
        t0 = time.monotonic()
        status, body = a.call("POST", "/v1/import", doc, timeout=1200)
        if status != 200:
            raise RuntimeError("import: %d %s" % (status, body[:300]))
        imported = time.monotonic() - t0
        t1 = time.monotonic()
        want = instances_before + args.instances
        while b.metric("cvmgate_instances") < want:
            if time.monotonic() - t1 > 600:
                raise RuntimeError("B did not converge: %d of %d instances" % (b.metric("cvmgate_instances"), want))
            time.sleep(0.05)  # poll interval
        results.update({
            "import_instances": args.instances,
            "import_s": imported,
            "import_per_s": args.instances / imported,
            "b_converged_after_import_s": time.monotonic() - t1,
            "b_rss_mib_before": rss_before,
            "b_rss_mib_after": b.rss_mib(),
            "b_snapshot_publishes": b.metric("cvmgate_snapshot_publishes_total") - publishes_before,
        })

        # With the registry that large: register on A -> routable on B, and both hosts registering at
        # once (each one's writes are the other's foreign changes, and they race for the registry).
        routable_on_b(a, b, "q", args.large_samples, results, "_large")
        per = args.large_samples
        start = time.monotonic()
        threads = [threading.Thread(target=lambda h=h: [h.register("s%s-%d" % (h.name, i), address(i))
                                                         for i in range(per)]) for h in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        results["registrations_per_s_large_both_hosts"] = per * 2 / (time.monotonic() - start)
    finally:
        for h in hosts:
            h.stop()
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)

    r = results
    print("## Several gateway hosts on one etcd registry\n")
    print("- host: %s, kernel %s, %d CPUs; %s" % (os.uname().nodename, os.uname().release, os.cpu_count(),
                                                   time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())))
    print("- 3 etcd members (etcd %s) and 2 cvmgate hosts on loopback, static instances, admin API over unix "
          "sockets; etcd's data on %s" % (subprocess.run(["etcd", "--version"], capture_output=True, text=True)
                                          .stdout.split()[2], tempfile.gettempdir()))
    print()
    print("| measure | value |")
    print("|---|---:|")
    print("| registrations/s through one host, 1 client | %.0f |" % r["registrations_per_s_1_clients"])
    print("| registrations/s through one host, 4 clients | %.0f |" % r["registrations_per_s_4_clients"])
    print("| register on A -> routable on B, p50 / p99 / max | %.1f / %.1f / %.1f ms |" % (
        r["routable_on_b_ms_p50"], r["routable_on_b_ms_p99"], r["routable_on_b_ms_max"]))
    print("| import of %d instances through A | %.1f s (%.0f/s) |" % (r["import_instances"], r["import_s"],
                                                                      r["import_per_s"]))
    print("| B routes them all, after the import ended | %.1f s |" % r["b_converged_after_import_s"])
    print("| B's snapshot publishes during the import | %d |" % r["b_snapshot_publishes"])
    print("| B's RSS before / after | %.0f / %.0f MiB |" % (r["b_rss_mib_before"], r["b_rss_mib_after"]))
    print("| with %d instances: register on A -> routable on B, p50 / p99 / max | %.1f / %.1f / %.1f ms |" % (
        r["import_instances"], r["routable_on_b_ms_p50_large"], r["routable_on_b_ms_p99_large"],
        r["routable_on_b_ms_max_large"]))
    print("| with %d instances: registrations/s, A and B registering at once | %.0f |" % (
        r["import_instances"], r["registrations_per_s_large_both_hosts"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
