"""Smoke runs of the benchmark harnesses (bench/), so they keep working between benchmark runs: tiny sizes,
cvmgate and the direct baseline only (HAProxy and nginx are installed by tools/setup --bench, not for tests).
The numbers are not checked, only that every run completes, every byte is accounted for and the report is whole."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.environ.get("CVMGATE_TEST_WG") == "kernel",
                                reason="the harnesses are host tools; under emulation they only measure the emulator")


def harness(*args):
    p = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, "%s\nstdout:\n%s\nstderr:\n%s" % (" ".join(map(str, args)), p.stdout, p.stderr[-3000:])
    return p.stdout


def test_passthrough_harness(cvmgate_bin):
    out = harness(REPO / "bench" / "passthrough.py", "--cvmgate", cvmgate_bin, "--products", "direct,cvmgate",
                  "--cases", "bulk-1,rr,latency,open-1k,idle-1k", "--reps", "1", "--bulk-bytes", "16MiB",
                  "--rr-count", "200", "--latency-count", "50", "--open-exchanges", "100", "--layout", "unpinned")
    for row in ("| bulk-1 | cvmgate |", "| rr | cvmgate |", "| latency | cvmgate |", "| open-1k | cvmgate |",
                "| idle-1k | cvmgate |"):
        assert row in out, out
    assert "FAILED" not in out and "No errors" in out, out


def test_terminate_harness(cvmgate_bin):
    out = harness(REPO / "bench" / "terminate.py", "--cvmgate", cvmgate_bin, "--products", "direct,cvmgate",
                  "--cases", "upload,download,hs-tls13,resume-tls13", "--reps", "1", "--bulk-bytes", "8MiB",
                  "--hs-count", "50",
                  "--layouts", "unpinned")
    for row in ("| unpinned | upload | cvmgate |", "| unpinned | hs-tls13 | cvmgate |",
                "| unpinned | resume-tls13 | cvmgate |"):
        assert row in out, out
    assert "FAILED" not in out and "No errors" in out, out


def test_registry_etcd_harness(cvmgate_bin):
    out = harness(REPO / "bench" / "registry_etcd.py", "--cvmgate", cvmgate_bin, "--registrations", "8",
                  "--samples", "4", "--instances", "20", "--large-samples", "3")
    for row in ("| registrations/s through one host, 4 clients |", "| register on A -> routable on B, p50",
                "| import of 20 instances through A |", "| B routes them all, after the import ended |",
                "| with 20 instances: register on A -> routable on B", "| with 20 instances: registrations/s, A and B"):
        assert row in out, out
