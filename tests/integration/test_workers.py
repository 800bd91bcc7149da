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


def worker_live(ctl_bin, gw):
    """{worker index: live connections} from the metrics page."""
    from test_admin import ctl
    out = {}
    for line in ctl(ctl_bin, gw, "metrics").splitlines():
        if line.startswith("cvmgate_worker_live_connections{"):
            out[int(line.split('"')[1])] = int(line.split()[-1])
    return out


def hold_relays(gw, backends, n):
    """n relays opened one after the other, each carrying bytes before the next opens."""
    held = []
    for _ in range(n):
        c, _ = open_relay(gw, backends)
        held.append(c)
    return held


def test_rebalance_spreads_long_lived_connections_over_the_workers(ctl_bin, make_gateway, backends):
    # SO_REUSEPORT's hash puts each connection on a worker at random: 16 of them split 8/8 only one
    # time in five. A worker holding more than another hands the connection it accepts to that one.
    gw = make_gateway(workers=2)
    held = hold_relays(gw, backends, 16)
    live = worker_live(ctl_bin, gw)
    counters = gw.counters()
    for c in held:
        c.close()
    assert sorted(live) == [0, 1], live
    assert sum(live.values()) == 16, live
    assert abs(live[0] - live[1]) <= 1, (live, counters)
    assert counters.get("handed_off", 0) == counters.get("adopted", 0), counters


def test_rebalance_off_leaves_connections_where_the_hash_put_them(ctl_bin, make_gateway, backends):
    gw = make_gateway(workers=2, args=["--rebalance", "off"])
    held = hold_relays(gw, backends, 16)
    live = worker_live(ctl_bin, gw)
    counters = gw.counters()
    for c in held:
        c.close()
    assert sum(live.values()) == 16, live
    assert counters.get("handed_off", 0) == 0 and counters.get("adopted", 0) == 0, counters
