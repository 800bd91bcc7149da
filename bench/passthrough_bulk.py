# Bulk-throughput benchmark for cvmgate TLS passthrough: direct loadgen->sink versus loadgen->cvmgate->sink per --splice-mode.
"""
Run with:  /usr/bin/python3 bench/passthrough_bulk.py [options]

For each CPU layout (default: pinned, then unpinned) one sink is started and
every case is run --reps times, interleaved (rep 1 of every case, then rep 2,
...), so slow drift in the machine spreads over all cases alike:

  direct        loadgen -> sink
  copy|inline|uring
                loadgen -> cvmgate --splice-mode MODE -> sink

each with 1 stream and with --multi-streams streams. A fresh cvmgate process
is started for every gateway run and stopped with SIGTERM afterwards.

Per run it records loadgen's payload GB/s (1 GB = 1e9 bytes, ClientHello not
counted), the gateway's CPU seconds from /proc/PID/stat utime+stime (all of its
threads, clock-tick resolution) read just before and just after the loadgen
run, and the client side's CPU seconds (loadgen getrusage + sink getrusage).
CPU time the kernel spends in softirq context on behalf of a socket is charged
to whichever task happens to be running, so on loopback part of the receive
work of one process shows up in another's numbers.

Each run is checked: loadgen must finish every stream without error, the sink
must have seen exactly streams * (hello + bytes) bytes and as many closed
connections, and a gateway must release its connection fds and exit cleanly on
SIGTERM. Failures are listed under the table. Everything is bounded in time:
per process start (--start-timeout), per loadgen run (--run-timeout), and for
the whole benchmark (--max-seconds).
"""

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (BUILD, CLK_TCK, ROOT, Deadline, Sink, build_tools, cpu_times, cpu_usage, fmt_size, free_port, log,
                      parse_size, proc_sockets, proc_status, proc_ticks, finish_report, stop_process, taskset)

GATEWAY_MODES = ("copy", "inline", "uring")


class Gateway:
    def __init__(self, args, mode, cpus, state_path, logdir, tag):
        self.port = free_port()
        self.mode = mode
        self.logpath = logdir / f"cvmgate-{tag}.log"
        self.cmd = [
            str(args.cvmgate), "--listen", f"127.0.0.1:{self.port}", "--base-domain", args.base_domain,
            "--state", str(state_path), "--admin", f"unix:{logdir}/admin-{tag}.sock",
            "--workers", str(args.workers), "--splice-mode", mode,
        ] + args.gateway_arg
        self.logf = open(self.logpath, "wb")
        try:
            self.p = subprocess.Popen(taskset(cpus) + self.cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        except OSError as e:
            self.logf.close()
            raise RuntimeError(f"cannot start cvmgate: {e}") from e
        dl = Deadline(args.start_timeout)
        while True:
            if b"cvmgate: ready" in self.logpath.read_bytes():
                break
            if self.p.poll() is not None or dl.left() <= 0:
                rc, _ = stop_process(self.p)
                self.logf.close()
                raise RuntimeError(f"cvmgate --splice-mode {mode} not ready (exit {rc}); log: "
                                   + self.log_tail())
            time.sleep(0.02)

    def log_tail(self, n=6):
        try:
            lines = self.logpath.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def stop(self):
        rc, killed = stop_process(self.p)
        self.logf.close()
        return rc, killed


def run_loadgen(args, cpus, port, sni, streams, nbytes):
    cmd = taskset(cpus) + [
        str(BUILD / "loadgen"), "bulk", "--connect", f"127.0.0.1:{port}", "--conns", str(streams),
        "--bytes", str(nbytes), "--sni", sni, "--timeout", str(args.run_timeout),
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout + 15)
    except subprocess.TimeoutExpired:
        return None, "loadgen did not exit within --run-timeout + 15 s"
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return None, f"loadgen exit {p.returncode}, no JSON; stderr: {p.stderr.strip()[-300:]}"
    res["rc"] = p.returncode
    return res, None


def one_run(args, layout, cpus, sink, case, streams, nbytes, state_path, logdir, tag):
    """Runs one repetition of one case; returns a result dict (with 'error' set on failure)."""
    r = {"layout": layout, "case": case, "streams": streams, "bytes_per_stream": nbytes, "error": None, "notes": []}
    gw = None
    if case != "direct":
        try:
            gw = Gateway(args, case, cpus["gateway"], state_path, logdir, tag)
        except RuntimeError as e:
            r["error"] = str(e)
            r["start_failed"] = True
            return r
        port = gw.port
        time.sleep(0.05)
        fd0 = proc_sockets(gw.p.pid)
        gw_t0 = proc_ticks(gw.p.pid)
    else:
        port = sink.port
    sni = f"{args.sni_id}-{sink.port}s.{args.base_domain}"
    s0 = sink.stats()
    c0 = cpu_times()
    res, err = run_loadgen(args, cpus["client"], port, sni, streams, nbytes)
    usage = cpu_usage(c0, cpu_times())
    s1 = sink.stats()
    r["cpu_busy"] = {c: u[0] for c, u in usage.items()}
    r["cpu_steal"] = max((u[1] for u in usage.values()), default=0.0)
    if gw is not None and gw.p.poll() is None:
        gw_t1 = proc_ticks(gw.p.pid)
        r["gw_cpu_s"] = (gw_t1 - gw_t0) / CLK_TCK
    r["sink_cpu_s"] = s1["cpu_s"] - s0["cpu_s"]
    if res is not None:
        r.update(gbps=res["gbps"], wall_s=res["wall_s"], payload_bytes=res["payload_bytes"],
                 loadgen_cpu_s=res["cpu_s"], hello_bytes=res["hello_bytes"])
        gb = res["payload_bytes"] / 1e9
        if gb > 0:
            r["client_cpu_per_gb"] = (res["cpu_s"] + r["sink_cpu_s"]) / gb
            if "gw_cpu_s" in r:
                r["gw_cpu_per_gb"] = r["gw_cpu_s"] / gb
        if res["rc"] != 0 or res["completed"] != streams:
            err = (f"loadgen rc={res['rc']} completed={res['completed']}/{streams} errors={res['errors']} "
                   f"timed_out={res['timed_out']} first_error={res['first_error']!r}")
        else:
            want = streams * (res["hello_bytes"] + nbytes)
            got = s1["bytes"] - s0["bytes"]
            closed = s1["closed"] - s0["closed"]
            if got != want or closed != streams:
                err = f"sink saw {got} bytes on {closed} closed connections, expected {want} on {streams}"
    for k in ("errors", "verify_errors"):
        if s1[k] != s0[k]:
            err = (err + "; " if err else "") + f"sink {k} +{s1[k] - s0[k]}: {s1['first_error']}"
    if gw is not None:
        if gw.p.poll() is not None:
            err = (err + "; " if err else "") + f"cvmgate exited during the run (rc {gw.p.returncode}): {gw.log_tail()}"
        else:
            # Connection sockets must be released once all streams are closed.
            dl = Deadline(2.0)
            fds = proc_sockets(gw.p.pid)
            while fds > fd0 and dl.left() > 0:
                time.sleep(0.05)
                fds = proc_sockets(gw.p.pid)
            if fds > fd0:
                r["notes"].append(f"cvmgate still holds {fds - fd0} more sockets than before the run, 2 s after it ended")
            # An idle gateway should not burn CPU.
            t0 = proc_ticks(gw.p.pid)
            time.sleep(args.idle_window)
            idle = (proc_ticks(gw.p.pid) - t0) / CLK_TCK / args.idle_window
            r["gw_idle_cpu_frac"] = idle
            if idle > 0.2:
                r["notes"].append(f"cvmgate used {idle:.0%} of a CPU while idle after the run")
            r["gw_vmhwm"] = proc_status(gw.p.pid, "VmHWM")
            r["gw_threads"] = proc_status(gw.p.pid, "Threads")
        rc, killed = gw.stop()
        if killed:
            r["notes"].append("cvmgate did not exit within 5 s of SIGTERM and was killed")
        elif rc not in (0, -signal.SIGTERM):
            r["notes"].append(f"cvmgate exited with status {rc} on SIGTERM: {gw.log_tail(3)}")
        if err:
            err += f" [log {gw.logpath}]"
    r["error"] = err
    return r


def summarize(results, layouts, cases, stream_list, reps):
    rows = []
    for layout in layouts:
        for streams in stream_list:
            direct = None
            for case in cases:
                rs = [x for x in results if x["layout"] == layout and x["case"] == case and x["streams"] == streams]
                ok = [x for x in rs if not x["error"] and "gbps" in x]
                row = {"layout": layout, "case": case, "streams": streams, "ok": len(ok), "n": len(rs)}
                if ok:
                    g = [x["gbps"] for x in ok]
                    row["median"] = statistics.median(g)
                    row["min"], row["max"] = min(g), max(g)
                    gw = [x["gw_cpu_per_gb"] for x in ok if "gw_cpu_per_gb" in x]
                    row["gw_cpu"] = statistics.median(gw) if gw else None
                    row["client_cpu"] = statistics.median([x["client_cpu_per_gb"] for x in ok])
                    cpus = sorted(ok[0]["cpu_busy"])
                    row["busy"] = [statistics.median([x["cpu_busy"].get(c, 0.0) for x in ok]) for c in cpus]
                if case == "direct":
                    direct = row.get("median")
                row["ratio"] = row["median"] / direct if direct and "median" in row else None
                rows.append(row)
    return rows


def table(rows, reps):
    out = [
        "| layout | case | streams | median GB/s | spread (min–max) | cvmgate CPU-s/GB | loadgen+sink CPU-s/GB "
        "| ratio to direct | CPU busy % (cpu0/cpu1/…) | ok runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        case = "direct" if r["case"] == "direct" else f"cvmgate {r['case']}"
        if "median" in r:
            gw = "—" if r["case"] == "direct" else (f"{r['gw_cpu']:.3f}" if r["gw_cpu"] is not None else "n/a")
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "n/a"
            out.append(f"| {r['layout']} | {case} | {r['streams']} | {r['median']:.2f} | {r['min']:.2f}–{r['max']:.2f} "
                       f"| {gw} | {r['client_cpu']:.3f} | {ratio} | {'/'.join(f'{b * 100:.0f}' for b in r['busy'])} "
                       f"| {r['ok']}/{r['n']} |")
        else:
            out.append(f"| {r['layout']} | {case} | {r['streams']} | FAILED | | | | | | {r['ok']}/{r['n']} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description="cvmgate passthrough bulk-throughput benchmark")
    ap.add_argument("--cvmgate", type=Path, default=None,
                    help="gateway binary (default: build/tools/cvmgate, else build/cvmgate)")
    ap.add_argument("--modes", default=",".join(GATEWAY_MODES), help="gateway splice modes to run")
    ap.add_argument("--no-gateway", action="store_true", help="run the direct case only")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--multi-streams", type=int, default=8)
    ap.add_argument("--single-bytes", default="2GiB", help="bytes for the 1-stream case")
    ap.add_argument("--multi-bytes", default="512MiB", help="bytes per stream for the multi-stream case")
    ap.add_argument("--layouts", default="pinned,unpinned", help="pinned and/or unpinned")
    ap.add_argument("--gateway-cpus", default="1", help="taskset CPU list for cvmgate in the pinned layout")
    ap.add_argument("--client-cpus", default="0", help="taskset CPU list for loadgen and sink in the pinned layout")
    ap.add_argument("--workers", type=int, default=1, help="cvmgate --workers")
    ap.add_argument("--gateway-arg", action="append", default=[],
                    help="extra cvmgate flag, repeatable (e.g. --gateway-arg=--pipe-size=65536)")
    ap.add_argument("--sink-discard", choices=("read", "trunc"), default="trunc",
                    help="sink copies data to user space (read) or drops it in the kernel (trunc)")
    ap.add_argument("--verify", action="store_true", help="sink checks every payload byte")
    ap.add_argument("--base-domain", default="example.test")
    ap.add_argument("--app", default="app", help="app name in the state file")
    ap.add_argument("--instance-id", default="app-i1", help="instance id in the state file")
    ap.add_argument("--sni-id", default="app", help="the <id> in the SNI <id>-<port>s.<base-domain>")
    ap.add_argument("--start-timeout", type=float, default=10.0, help="seconds to wait for 'ready'")
    ap.add_argument("--run-timeout", type=float, default=120.0, help="loadgen --timeout per run")
    ap.add_argument("--idle-window", type=float, default=0.3, help="seconds of gateway idle-CPU check per run")
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="stop starting new runs after this")
    ap.add_argument("--json", type=Path, help="write per-run results here")
    ap.add_argument("--logdir", type=Path, help="keep cvmgate logs here (default: a temporary directory)")
    args = ap.parse_args()

    overall = Deadline(args.max_seconds)
    if args.cvmgate is None:
        candidates = [ROOT / "build" / "tools" / "cvmgate", ROOT / "build" / "cvmgate"]
        args.cvmgate = next((c for c in candidates if c.is_file()), candidates[0])
    build_tools(("loadgen", "sink"))
    single, multi = parse_size(args.single_bytes), parse_size(args.multi_bytes)
    stream_list = [(1, single), (args.multi_streams, multi)]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in GATEWAY_MODES:
            ap.error(f"unknown mode {m}")
    have_gw = args.cvmgate.is_file() and os.access(args.cvmgate, os.X_OK) and not args.no_gateway
    cases = ["direct"] + (modes if have_gw else [])
    ncpu = os.cpu_count() or 1
    layouts = [l for l in args.layouts.split(",") if l]
    layout_cpus = {
        "pinned": {"gateway": args.gateway_cpus, "client": args.client_cpus},
        "unpinned": {"gateway": None, "client": None},
    }
    for l in layouts:
        if l not in layout_cpus:
            ap.error(f"unknown layout {l}")
    if "pinned" in layouts and ncpu < 2:
        log("only one CPU: dropping the pinned layout")
        layouts.remove("pinned")

    tmp = tempfile.TemporaryDirectory(prefix="cvmgate-bench-")
    logdir = args.logdir or Path(tmp.name)
    logdir.mkdir(parents=True, exist_ok=True)
    state_path = Path(tmp.name) / "state.json"
    state_path.write_text(json.dumps(
        {"version": 1, "apps": {args.app: {"instances": [{"id": args.instance_id, "address": "127.0.0.1",
                                                            "ports": "1024-65535"}]}}}))

    results, problems, truncated = [], [], False
    notes = {}  # note text -> run tags
    start_failures = {}  # (layout, case) -> consecutive gateway start failures
    t_start = time.monotonic()
    for layout in layouts:
        cpus = layout_cpus[layout]
        try:
            flags = ["--discard", args.sink_discard] + (["--verify"] if args.verify else [])
            sink = Sink(cpus["client"], args.start_timeout, flags=flags)
        except RuntimeError as e:
            problems.append(f"{layout}: {e}")
            continue
        try:
            for rep in range(args.reps):
                for streams, nbytes in stream_list:
                    for case in cases:
                        if overall.left() <= 0:
                            truncated = True
                            break
                        tag = f"{layout}-{case}-{streams}s-r{rep + 1}"
                        if start_failures.get((layout, case), 0) >= 2:
                            log(f"{tag}: skipped, cvmgate --splice-mode {case} failed to start twice")
                            continue
                        r = one_run(args, layout, cpus, sink, case, streams, nbytes, state_path, logdir, tag)
                        if r.get("start_failed"):
                            start_failures[(layout, case)] = start_failures.get((layout, case), 0) + 1
                        else:
                            start_failures[(layout, case)] = 0
                        r["rep"] = rep + 1
                        results.append(r)
                        status = f"{r['gbps']:.2f} GB/s" if "gbps" in r else "no result"
                        if "gw_cpu_s" in r:
                            status += f", cvmgate {r['gw_cpu_s']:.2f} CPU-s"
                        log(f"[{time.monotonic() - t_start:6.1f}s] {tag}: {status}"
                            + (f"  ERROR: {r['error']}" if r["error"] else ""))
                        for n in r["notes"]:
                            log(f"    note: {n}")
                        if r["error"]:
                            problems.append(f"{tag}: {r['error']}")
                        for n in r["notes"]:
                            notes.setdefault(n, []).append(tag)
        finally:
            rc, killed, err = sink.stop()
            if rc != 0 or killed:
                problems.append(f"sink ({layout}) exit {rc}, killed={killed}: {err.strip()[-300:]}")

    for n, tags in notes.items():
        problems.append(f"{n} ({len(tags)} run{'s' if len(tags) > 1 else ''}: {', '.join(tags[:4])}"
                        + (", …)" if len(tags) > 4 else ")"))
    if args.logdir is None and problems:
        keep = Path(tempfile.mkdtemp(prefix="cvmgate-bench-logs-"))
        for f in Path(tmp.name).glob("cvmgate-*.log"):
            f.rename(keep / f.name)
        problems.append(f"cvmgate logs kept in {keep}")

    rows = summarize(results, layouts, cases, [s for s, _ in stream_list], args.reps)
    hello = next((r["hello_bytes"] for r in results if "hello_bytes" in r), 0)
    print("## cvmgate passthrough bulk throughput\n")
    print(f"- host: {platform.node()}, kernel {platform.release()}, {ncpu} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"- gateway: `{args.cvmgate}` --workers {args.workers}"
          + ("" if have_gw else " — **not found or disabled: direct case only**"))
    for layout in layouts:
        if layout == "pinned":
            print(f"- layout `pinned`: cvmgate on CPU {args.gateway_cpus} (`taskset -c {args.gateway_cpus}`); "
                  f"loadgen and sink share CPU {args.client_cpus}; the direct rows use the same client CPU")
        else:
            print("- layout `unpinned`: no affinity set; the scheduler places cvmgate, loadgen and sink")
    print(f"- streams: 1 × {fmt_size(single)}, {args.multi_streams} × {fmt_size(multi)}; "
          f"{args.reps} repetition{'s' if args.reps != 1 else ''} per case, interleaved; fresh cvmgate process per run")
    print(f"- every connection first sends a synthesized {hello}-byte TLS 1.3 ClientHello with SNI "
          f"`{args.sni_id}-<sinkport>s.{args.base_domain}`; GB/s = payload bytes / 1e9 / loadgen wall time "
          f"(connect to last peer close)")
    print(f"- sink discards with `{args.sink_discard}`" + (", verifying every payload byte" if args.verify else ""))
    print("- CPU-s/GB: cvmgate = /proc/PID/stat utime+stime over the run (all threads, "
          f"1/{CLK_TCK} s ticks); loadgen+sink = their getrusage; medians over the ok runs")
    print("- CPU busy %: share of each CPU's time in user, system, irq and softirq during the loadgen run "
          "(from /proc/stat; iowait counts as idle), median over the ok runs")
    steal = [x["cpu_steal"] for x in results if "cpu_steal" in x]
    if steal:
        print(f"- hypervisor steal during runs: median {statistics.median(steal):.1%}, max {max(steal):.1%} "
              "(of the most-stolen CPU)")
    print(f"- wall time of the benchmark: {time.monotonic() - t_start:.0f} s"
          + (" — **stopped early by --max-seconds**" if truncated else ""))
    print()
    print(table(rows, args.reps))
    status = finish_report(problems, "No errors: every run completed, byte counts matched, cvmgate released its sockets and exited cleanly.",
                           args.json, results, rows)
    tmp.cleanup()
    return status


if __name__ == "__main__":
    sys.exit(main())
