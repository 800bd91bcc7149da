"""Worker placement: each data-plane worker thread is pinned to one CPU the process may run on, in turn,
unless --cpu-affinity=off; the ready line says where they run."""

import os
import subprocess

from test_passthrough import open_relay


def worker_cpus(pid):
    """{thread name: set of CPUs it may run on} of each data-plane worker thread."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            name = f.read().strip()
        if name.startswith("cvmgate-w"):
            out[name] = os.sched_getaffinity(int(tid))
    return out


def ready_line(gw):
    return next(l for l in gw.lines if l and "cvmgate: ready" in l)


def test_each_worker_is_pinned_to_one_allowed_cpu_in_turn(make_gateway, backends):
    allowed = sorted(os.sched_getaffinity(0))
    workers = len(allowed) + 1  # one more than the CPUs: the first CPU takes two
    gw = make_gateway(workers=workers)
    c, _ = open_relay(gw, backends)  # pinned workers still relay
    c.close()
    got = worker_cpus(gw.proc.pid)
    want = {"cvmgate-w%d" % i: {allowed[i % len(allowed)]} for i in range(workers)}
    assert got == want
    assert "on CPUs " + ",".join(str(allowed[i % len(allowed)]) for i in range(workers)) in ready_line(gw)
    # The control thread is not pinned: it may run anywhere the process may.
    assert os.sched_getaffinity(gw.proc.pid) == set(allowed)


def test_cpu_affinity_off_leaves_workers_to_the_scheduler(make_gateway):
    gw = make_gateway(args=["--cpu-affinity", "off"])
    got = worker_cpus(gw.proc.pid)
    assert sorted(got) == ["cvmgate-w0", "cvmgate-w1"]
    assert all(cpus == os.sched_getaffinity(0) for cpus in got.values()), got
    assert "workers not pinned" in ready_line(gw)


def test_workers_stay_inside_a_narrowed_cpu_set(make_gateway):
    """Under taskset (or a cpuset cgroup) only the CPUs the process was given are used."""
    allowed = sorted(os.sched_getaffinity(0))
    only = {allowed[-1]}
    os.sched_setaffinity(0, only)  # inherited by the gateway started below
    try:
        gw = make_gateway(workers=2)
    finally:
        os.sched_setaffinity(0, set(allowed))
    got = worker_cpus(gw.proc.pid)
    assert got == {"cvmgate-w0": only, "cvmgate-w1": only}, got


def test_bad_cpu_affinity_is_refused_with_the_flag_named(cvmgate_bin):
    p = subprocess.run([cvmgate_bin, "--base-domain", "example.test", "--cpu-affinity", "0-3"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0
    assert "--cpu-affinity=0-3: expected auto or off" in p.stderr, p.stderr
