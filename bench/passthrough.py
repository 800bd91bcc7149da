# Passthrough comparison: cvmgate, HAProxy and nginx routing raw TLS by SNI, and a direct connection, in one run.
"""
Run with:  /usr/bin/python3 bench/passthrough.py [options]     (tools/setup --bench installs HAProxy and nginx)

Every product relays the client's bytes untouched to a backend chosen by the
ClientHello's SNI (`app-<port>s.example.test`); nothing decrypts, so the relay
itself is what is measured. The client is bench/loadgen.cc (a real ClientHello,
then raw bytes) and the backend bench/sink.cc (sink, or request/response).

  direct             loadgen -> sink
  cvmgate            passthrough mode, --workers 1 (splice inline)
  haproxy            mode tcp, req.ssl_sni routing, nbthread 1, option splice-auto
  haproxy-splice     the same with option splice-request + option splice-response forced
  nginx              stream, ssl_preread + map, worker_processes 1, default buffers (16k)
  nginx-256k         the same with proxy_buffer_size 256k

Cases (--cases):
  bulk-1       1 connection sends --bulk-bytes (GB/s, proxy CPU-s/GB)
  bulk-8       8 connections send --bulk-bytes / 8 each
  rr           --rr-count connections, 32 at a time, 1 KiB request / 1 KiB response (conn/s, CPU-ms/conn)
  latency      the same exchange at a fixed --latency-rate (open loop): p50/p99 from the scheduled start
               to the last response byte
  open-1k      --open-exchanges 1 KiB request/response exchanges, one after the other, on one open
               connection: p50/p99 from each request to the last byte of its response
  idle-1k, idle-8k
               that many connections relayed and left idle: the proxy's RSS growth per connection, and
               the projection to 100k from the slope between the two

Each repetition starts each product afresh and runs every case; the order rotates. Pinned layout (default):
the proxy on --proxy-cpus, loadgen and the sinks on --client-cpus.
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

from benchlib import (BUILD, CLK_TCK, NGINX_STREAM_MODULE, ROOT, add_product_args, build_tools, check_products,
                      Deadline, finish_report, fmt_size, free_port, log, parse_size, Process, rotated, Sink, taskset,
                      tree_ticks)

PRODUCTS = ("direct", "cvmgate", "haproxy", "haproxy-splice", "nginx", "nginx-256k")
CASES = ("bulk-1", "bulk-8", "rr", "latency", "open-1k", "idle-1k", "idle-8k")
BASE_DOMAIN = "example.test"


def sni(port):
    return f"app-{port}s.{BASE_DOMAIN}"


def start_product(product, args, workdir, backends, cpus, tag):
    """Starts a proxy routing sni(port) to 127.0.0.1:port for every backend port; None for direct."""
    if product == "direct":
        return None
    port = free_port()
    logpath = workdir / f"{product}-{tag}.log"
    if product == "cvmgate":
        state = workdir / f"state-{tag}.json"  # one per process: a state file has one daemon
        state.write_text(json.dumps({"version": 1, "apps": {"app": {"instances": [
            {"id": "app-i1", "address": "127.0.0.1", "ports": "1024-65535"}]}}}))
        # One app carries every connection here: lift its default limit of 2000 like the others' maxconn.
        cmd = [str(args.cvmgate), "--listen", f"127.0.0.1:{port}", "--base-domain", BASE_DOMAIN,
               "--state", str(state), "--admin", f"unix:{workdir}/admin-{tag}.sock", "--workers", "1",
               "--app-max-connections", "100000"] + args.cvmgate_arg
        return Process(product, cmd, port, cpus, logpath, args.start_timeout, ready_text=b"cvmgate: ready")
    if product.startswith("haproxy"):
        splice = ("    option splice-request\n    option splice-response\n" if product == "haproxy-splice"
                  else "    option splice-auto\n")
        rules = "".join(f"    use_backend b{p} if {{ req.ssl_sni -i {sni(p)} }}\n" for p in backends)
        servers = "".join(f"backend b{p}\n    server s{p} 127.0.0.1:{p}\n" for p in backends)
        cfg = workdir / f"{product}.cfg"
        cfg.write_text(f"""global
    nbthread 1
    # 8000 idle relays fit the 20,000-descriptor limit only with few spare splice pipes.
    maxconn 8200
    maxpipes 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
{splice}frontend tls
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
{rules}{servers}""")
        return Process(product, [args.haproxy, "-db", "-f", str(cfg)], port, cpus, logpath, args.start_timeout)
    if product.startswith("nginx"):
        prefix = workdir / product
        prefix.mkdir(exist_ok=True)
        entries = "".join(f"        {sni(p)} 127.0.0.1:{p};\n" for p in backends)
        buffers = "        proxy_buffer_size 256k;\n" if product == "nginx-256k" else ""
        cfg = prefix / "nginx.conf"
        cfg.write_text(f"""load_module {NGINX_STREAM_MODULE};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 19000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 18000; }}
stream {{
    map $ssl_preread_server_name $app {{
{entries}        default 127.0.0.1:9;
    }}
    server {{
        listen 127.0.0.1:{port};
        ssl_preread on;
{buffers}        proxy_pass $app;
    }}
}}
""")
        cmd = [args.nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(cfg)]
        return Process(product, cmd, port, cpus, logpath, args.start_timeout)
    raise ValueError(product)


def tree_rss_kib(pid):
    """VmRSS of pid and its children (nginx's master and worker), KiB."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                    text=True).stdout.split()]
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def loadgen(args, cpus, port, mode, extra, timeout):
    cmd = taskset(cpus) + [str(BUILD / "loadgen"), mode, "--connect", f"127.0.0.1:{port}",
                           "--timeout", str(timeout)] + extra
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 15, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, "loadgen did not exit in time"
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return None, f"loadgen exit {p.returncode}, no JSON: {p.stderr.strip()[-300:]}"
    if p.returncode != 0 or res.get("errors"):
        return res, f"loadgen rc={p.returncode} errors={res.get('errors')} first_error={res.get('first_error')!r}"
    return res, None


def run_idle(args, cpus, proc, bulk_sink, n):
    """Holds n idle relayed connections through a freshly started proxy; returns (RSS before KiB, RSS with the
    connections KiB, error)."""
    port = proc.port if proc else bulk_sink.port
    before = tree_rss_kib(proc.p.pid) if proc else 0
    s0 = bulk_sink.stats()
    cmd = taskset(cpus["client"]) + [str(BUILD / "loadgen"), "hold", "--connect", f"127.0.0.1:{port}",
                                      "--conns", str(n), "--sni", sni(bulk_sink.port),
                                      "--timeout", str(args.run_timeout)]
    lg = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = lg.stdout.readline().strip()
        if line != f"holding {n}":
            return before, None, f"loadgen hold: {line!r} {lg.stderr.read()[-200:] if lg.poll() is not None else ''}"
        dl = Deadline(30)
        while bulk_sink.stats()["accepted"] - s0["accepted"] < n and dl.left() > 0:
            time.sleep(0.05)
        relayed = bulk_sink.stats()["accepted"] - s0["accepted"]
        if relayed < n:
            return before, None, f"only {relayed} of {n} idle connections reached the backend"
        time.sleep(0.2)  # let lazily touched memory settle
        return before, (tree_rss_kib(proc.p.pid) if proc else 0), None
    finally:
        lg.send_signal(signal.SIGKILL)
        lg.wait(10)


def splice_calls(args, product, proc, sinks, cpus):
    """splice(2) calls the proxy makes during one bulk-1 run, counted by strace (None when strace is missing).
    HAProxy's splice-auto may never engage on loopback; this shows which configuration really splices."""
    if proc is None or not os.path.exists("/usr/bin/strace"):
        return None
    out = Path(tempfile.mktemp(prefix="cvmgate-strace-"))
    st = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=splice", "-o", str(out), "-p", str(proc.p.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # strace attaches to every thread
    try:
        bulk = sinks[0]
        loadgen(args, cpus["client"], proc.port, "bulk",
                ["--conns", "1", "--bytes", str(64 << 20), "--sni", sni(bulk.port)], args.run_timeout)
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(10)
    calls = 0
    for line in out.read_text().splitlines() if out.exists() else []:
        parts = line.split()
        if parts and parts[-1] == "splice":
            calls = int(parts[3])
    out.unlink(missing_ok=True)
    return calls


def one_case(args, name, product, proc, sinks, cpus):
    r = {"product": product, "case": name, "error": None}
    bulk, rr, open_rr = sinks
    port_of = (lambda s: proc.port if proc else s.port)
    t0 = tree_ticks(proc.p.pid) if proc else 0
    if name.startswith("idle"):
        n = 1000 if name == "idle-1k" else 8000
        before, after, err = run_idle(args, cpus, proc, bulk, n)
        if after is not None:
            r.update(rss_fresh_kib=before, rss_kib=after, kib_per_conn=(after - before) / n)
        r["error"] = err
        return r
    if name.startswith("bulk"):
        streams = 1 if name == "bulk-1" else 8
        nbytes = parse_size(args.bulk_bytes) // streams
        s0 = bulk.stats()
        sink_t0 = tree_ticks(bulk.p.pid)
        res, err = loadgen(args, cpus["client"], port_of(bulk), "bulk",
                           ["--conns", str(streams), "--bytes", str(nbytes), "--sni", sni(bulk.port)],
                           args.run_timeout)
        s1 = bulk.stats()
        if res is not None and not err:
            want = streams * (res["hello_bytes"] + nbytes)
            if s1["bytes"] - s0["bytes"] != want:
                err = f"sink saw {s1['bytes'] - s0['bytes']} bytes, expected {want}"
            r.update(gbps=res["gbps"], payload_bytes=res["payload_bytes"])
            if res.get("wall_s"):
                r["load_busy"] = (res.get("cpu_s", 0.0) + (tree_ticks(bulk.p.pid) - sink_t0) / CLK_TCK) / res["wall_s"]
    elif name == "open-1k":
        extra = ["--count", "1", "--conns", "1", "--exchanges", str(args.open_exchanges), "--sni",
                 sni(open_rr.port)]
        res, err = loadgen(args, cpus["client"], port_of(open_rr), "rr", extra, args.run_timeout)
        if res is not None:
            r.update(p50_us=res["lat_p50_us"], p99_us=res["lat_p99_us"])
    else:
        extra = ["--count", str(args.rr_count if name == "rr" else args.latency_count), "--conns",
                 "32" if name == "rr" else "256", "--sni", sni(rr.port)]
        if name == "latency":
            extra += ["--rate", str(args.latency_rate)]
        sink_t0 = tree_ticks(rr.p.pid)
        res, err = loadgen(args, cpus["client"], port_of(rr), "rr", extra, args.run_timeout)
        if res is not None:
            r.update(conn_per_s=res["conn_per_s"], p50_us=res["lat_p50_us"], p99_us=res["lat_p99_us"],
                     connections=res["completed"])
            # The load side's CPU-seconds per second of the run: near its CPU count, the load side, not
            # the proxy, bounds conn/s (CPU per connection then compares the proxies).
            if res.get("wall_s"):
                load_cpu_s = res.get("cpu_s", 0.0) + (tree_ticks(rr.p.pid) - sink_t0) / CLK_TCK
                r["load_busy"] = load_cpu_s / res["wall_s"]
    if proc is not None:
        if not proc.alive():
            err = (err + "; " if err else "") + f"{product} exited: {proc.log_tail()}"
        else:
            r["proxy_cpu_s"] = (tree_ticks(proc.p.pid) - t0) / CLK_TCK
            if r.get("payload_bytes"):
                r["cpu_per_gb"] = r["proxy_cpu_s"] / (r["payload_bytes"] / 1e9)
            if r.get("connections"):
                r["cpu_ms_per_conn"] = r["proxy_cpu_s"] * 1e3 / r["connections"]
    r["error"] = err
    return r


def idle_case(args, name, product, workdir, sinks, cpus, tag):
    """Idle cases get a process of their own, measured from its fresh start."""
    try:
        proc = start_product(product, args, workdir, [x.port for x in sinks], cpus["proxy"], tag)
    except RuntimeError as e:
        return {"product": product, "case": name, "error": str(e)}
    time.sleep(0.2)
    try:
        return one_case(args, name, product, proc, sinks, cpus)
    finally:
        if proc is not None:
            proc.stop()


METRICS = {  # case -> (result key, unit, format, higher is better)
    "bulk-1": ("gbps", "GB/s", "{:.2f}", True),
    "bulk-8": ("gbps", "GB/s", "{:.2f}", True),
    "rr": ("conn_per_s", "conn/s", "{:.0f}", True),
    "latency": ("p99_us", "µs p99", "{:.0f}", False),
    "open-1k": ("p99_us", "µs p99", "{:.0f}", False),
    "idle-1k": ("kib_per_conn", "KiB/conn", "{:.1f}", False),
    "idle-8k": ("kib_per_conn", "KiB/conn", "{:.1f}", False),
}


def summarize(results, case_names, products):
    rows = []
    for name in case_names:
        key, _, _, _ = METRICS[name]
        per = {}
        for product in products:
            ok = [x for x in results if x["case"] == name and x["product"] == product and not x["error"]
                  and key in x]
            n = sum(1 for x in results if x["case"] == name and x["product"] == product)
            row = {"case": name, "product": product, "ok": len(ok), "n": n}
            if ok:
                vals = [x[key] for x in ok]
                row.update(median=statistics.median(vals), min=min(vals), max=max(vals))
                for extra in ("cpu_per_gb", "cpu_ms_per_conn", "p50_us", "p99_us", "load_busy"):
                    xs = [x[extra] for x in ok if extra in x]
                    if xs:
                        row[extra] = statistics.median(xs)
                if any("rss_kib" in x for x in ok):
                    row["rss_mib"] = statistics.median([x["rss_kib"] for x in ok if "rss_kib" in x]) / 1024
            per[product] = row
            rows.append(row)
        for row in per.values():
            for peer in products:
                other = per.get(peer, {})
                if row.get("median") and other.get("median"):
                    row[f"vs_{peer}"] = row["median"] / other["median"]
    return rows


def idle_projection(rows):
    """KiB per connection from the slope between 1k and 8k idle connections, projected to 100k."""
    out = {}
    for product in {r["product"] for r in rows}:
        a = next((r for r in rows if r["product"] == product and r["case"] == "idle-1k" and "median" in r), None)
        b = next((r for r in rows if r["product"] == product and r["case"] == "idle-8k" and "median" in r), None)
        if a and b:
            slope = (b["median"] * 8000 - a["median"] * 1000) / 7000  # KiB per extra connection
            out[product] = {"slope_kib": slope, "mib_at_100k": slope * 100000 / 1024}
    return out


def table(rows, products, projection):
    peers = [p for p in products if p not in ("cvmgate",)]
    head = "| case | product | median | spread | proxy CPU | " + " | ".join(f"÷ {p}" for p in peers) + " | ok |"
    out = [head, "|" + "---|" * (5 + len(peers) + 1)]
    for r in rows:
        key, unit, fmt, _ = METRICS[r["case"]]
        if "median" not in r:
            out.append(f"| {r['case']} | {r['product']} | FAILED | | |" + " |" * len(peers) + f" {r['ok']}/{r['n']} |")
            continue
        cpu = ""
        if "cpu_per_gb" in r:
            cpu = f"{r['cpu_per_gb']:.3f} CPU-s/GB"
        elif "cpu_ms_per_conn" in r:
            cpu = f"{r['cpu_ms_per_conn']:.3f} CPU-ms/conn"
        value = fmt.format(r["median"]) + " " + unit
        if r["case"] in ("latency", "open-1k"):
            value += f" (p50 {r['p50_us']:.0f})"
        if r["case"] in ("rr", "bulk-1", "bulk-8") and "load_busy" in r:
            value += f" (load side {r['load_busy']:.2f} CPU)"
        if r["case"].startswith("idle") and "rss_mib" in r:
            value += f" ({r['rss_mib']:.0f} MiB total)"
        spread = fmt.format(r["min"]) + "–" + fmt.format(r["max"])
        ratios = " | ".join(f"{r[f'vs_{p}']:.2f}" if f"vs_{p}" in r else "—" for p in peers)
        out.append(f"| {r['case']} | {r['product']} | {value} | {spread} | {cpu} | {ratios} | {r['ok']}/{r['n']} |")
    if projection:
        out.append("")
        out.append("| product | idle KiB per extra connection (1k→8k slope) | projected RSS growth at 100k |")
        out.append("|---|---:|---:|")
        for product in products:
            if product in projection:
                p = projection[product]
                out.append(f"| {product} | {p['slope_kib']:.1f} | {p['mib_at_100k']:.0f} MiB |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description="passthrough: cvmgate vs HAProxy vs nginx vs direct")
    add_product_args(ap, PRODUCTS)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bulk-bytes", default="1GiB", help="bytes per bulk run (split over bulk-8's streams)")
    ap.add_argument("--rr-count", type=int, default=5000)
    ap.add_argument("--latency-count", type=int, default=1000)
    ap.add_argument("--latency-rate", type=float, default=500.0, help="connections per second in the latency case")
    ap.add_argument("--open-exchanges", type=int, default=5000, help="exchanges on the open connection of open-1k")
    ap.add_argument("--layout", choices=("pinned", "unpinned"), default="pinned")
    ap.add_argument("--proxy-cpus", default="1")
    ap.add_argument("--client-cpus", default="0")
    ap.add_argument("--start-timeout", type=float, default=10.0)
    ap.add_argument("--run-timeout", type=float, default=60.0)
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    products = check_products(ap, args, PRODUCTS)
    case_names = [c for c in args.cases.split(",") if c]
    for c in case_names:
        if c not in CASES:
            ap.error(f"unknown case {c} (have {', '.join(CASES)})")
    build_tools(("loadgen", "sink"))
    cpus = ({"proxy": args.proxy_cpus, "client": args.client_cpus} if args.layout == "pinned"
            else {"proxy": None, "client": None})
    overall = Deadline(args.max_seconds)
    tmp = tempfile.TemporaryDirectory(prefix="cvmgate-bench-pt-")
    workdir = Path(tmp.name)
    results, problems, truncated = [], [], False
    spliced = {}  # product -> splice(2) calls in a 64 MiB bulk run
    t_start = time.monotonic()
    bulk = Sink(cpus["client"], args.start_timeout, flags=["--discard", "trunc"])
    rr = Sink(cpus["client"], args.start_timeout, mode="rr")
    open_rr = Sink(cpus["client"], args.start_timeout, mode="rr", flags=["--exchanges", str(args.open_exchanges)])
    sinks = (bulk, rr, open_rr)
    try:
        for rep, product in rotated(products, args.reps):
            if overall.left() <= 0:
                truncated = True
                break
            tag = f"{product}-r{rep + 1}"
            try:
                proc = start_product(product, args, workdir, [x.port for x in sinks], cpus["proxy"], tag)
            except RuntimeError as e:
                problems.append(f"{tag}: {e}")
                continue
            try:
                if rep == 0 and product not in spliced and proc is not None:
                    spliced[product] = splice_calls(args, product, proc, sinks, cpus)
                for name in case_names:
                    if name.startswith("idle"):
                        r = idle_case(args, name, product, workdir, sinks, cpus, f"{tag}-{name}")
                    else:
                        r = one_case(args, name, product, proc, sinks, cpus)
                    r["rep"] = rep + 1
                    results.append(r)
                    key, unit, fmt, _ = METRICS[name]
                    shown = (fmt.format(r[key]) + " " + unit) if key in r else "no result"
                    log(f"[{time.monotonic() - t_start:6.1f}s] {tag} {name}: {shown}"
                        + (f"  ERROR: {r['error']}" if r["error"] else ""))
                    if r["error"]:
                        problems.append(f"{tag} {name}: {r['error']}")
            finally:
                if proc is not None:
                    _, killed = proc.stop()
                    if killed:
                        problems.append(f"{tag}: {product} did not exit within 5 s of SIGTERM")
    finally:
        for x in sinks:
            x.stop()

    rows = summarize(results, case_names, products)
    projection = idle_projection(rows)
    print("## Passthrough: cvmgate, HAProxy and nginx routing by SNI, and direct, same run\n")
    print(f"- host: {platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print("- cvmgate --workers 1 (splice inline, 1 MiB pipes, --app-max-connections 100000); HAProxy nbthread 1 (`haproxy`: option splice-auto; "
          "`haproxy-splice`: splice-request + splice-response); nginx stream worker_processes 1 (`nginx`: default "
          "16k buffer; `nginx-256k`: proxy_buffer_size 256k); every proxy routes by SNI")
    print(f"- layout {args.layout}" + (f": proxy on CPU {args.proxy_cpus}, loadgen and sinks on CPU "
                                        f"{args.client_cpus}" if args.layout == "pinned" else ""))
    print(f"- bulk: {fmt_size(parse_size(args.bulk_bytes))} per run (ClientHello, then raw bytes; the sink drops "
          f"them with MSG_TRUNC); rr: {args.rr_count} connections, 32 at a time, 1 KiB each way; latency: "
          f"{args.latency_count} connections at {args.latency_rate:.0f}/s, from scheduled start to last response "
          f"byte; open-1k: {args.open_exchanges} exchanges of 1 KiB each way, one after the other, on one open "
          "connection, from each request to the last byte of its response; idle: RSS growth of a freshly started proxy (process and children) with 1k and 8k idle relayed "
          "connections, per connection, and its total RSS (cvmgate sizes its connection table from the "
          "descriptor limit at start, so that part is in its starting RSS)")
    print("- \"load side\" (bulk, rr) is the CPU loadgen and the sink used per second of the run: where it is as "
          "many CPUs as the load side has, the load side bounds the rate, and the proxy's CPU per unit of work is "
          "the figure that compares the proxies")
    if spliced:
        shown = ", ".join(f"{p} {'n/a' if c is None else c}" for p, c in spliced.items())
        print(f"- splice(2) calls during one 64 MiB stream, by strace: {shown}")
    print(f"- proxy CPU: utime+stime from /proc (1/{CLK_TCK} s ticks); {args.reps} repetitions, a fresh process "
          f"each; medians; wall time {time.monotonic() - t_start:.0f} s"
          + (" — **stopped early by --max-seconds**" if truncated else ""))
    print()
    print(table(rows, products, projection))
    status = finish_report(problems, "No errors: every run completed and every byte reached the backend.",
                           args.json, results, {"rows": rows, "idle_projection": projection,
                                                "splice_calls": spliced})
    tmp.cleanup()
    return status


if __name__ == "__main__":
    sys.exit(main())
