"""A real etcd cluster for the integration tests: N members on free loopback ports, data in a
temporary directory, members stopped and started by the test (the C++ tests have the same in
tests/common/etcd_cluster.h)."""

import os
import shutil
import subprocess
import tempfile
import time

import peers


class EtcdCluster:
    def __init__(self, members=3, netns=None, host="127.0.0.1"):
        self.netns = netns  # run the members inside this network namespace
        self.host = host    # the address they listen on (loopback unless another is given)
        self.dir = tempfile.mkdtemp(prefix="cvmgate-etcd-")
        self.members = [{"name": "m%d" % i, "client": peers.free_port(), "peer": peers.free_port(), "proc": None}
                        for i in range(members)]
        for i in range(members):
            self.start(i)

    def client_url(self, i):
        return "http://%s:%d" % (self.host, self.members[i]["client"])

    def endpoints(self):
        return ",".join(self.client_url(i) for i in range(len(self.members)))

    def start(self, i):
        m = self.members[i]
        if m["proc"] is not None:
            return
        cluster = ",".join("%s=http://127.0.0.1:%d" % (p["name"], p["peer"]) for p in self.members)
        client = "http://%s:%d" % (self.host, m["client"])
        peer = "http://127.0.0.1:%d" % m["peer"]
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        m["proc"] = subprocess.Popen(
            prefix + ["etcd", "--name", m["name"], "--data-dir", os.path.join(self.dir, m["name"]),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", "cvmgate-test", "--logger", "zap",
             "--log-outputs", os.path.join(self.dir, m["name"] + ".log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, i):
        m = self.members[i]
        if m["proc"] is None:
            return
        m["proc"].terminate()
        m["proc"].wait(timeout=30)
        m["proc"] = None

    def wait_ready(self, timeout=30.0):
        """Every running member answers a linearizable read (etcdctl get), within `timeout`."""
        deadline = time.monotonic() + timeout
        for i, m in enumerate(self.members):
            if m["proc"] is None:
                continue
            prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
            peers.wait_until(lambda: subprocess.run(
                prefix + ["etcdctl", "--endpoints", self.client_url(i), "--command-timeout=1s", "get", "ready"],
                env=dict(os.environ, ETCDCTL_API="3"), capture_output=True).returncode == 0,
                max(0.1, deadline - time.monotonic()), "etcd member %s to serve" % m["name"], interval=0.1)

    def close(self):
        for i in range(len(self.members)):
            self.stop(i)
        shutil.rmtree(self.dir, ignore_errors=True)
