# The access log's cost at the new-connection load: cvmgate without it, with it in logfmt and in JSON,
# and nginx's stream access log for scale, in one run.
"""
Run with:  /usr/bin/python3 bench/access_log.py [options]     (tools/setup --bench installs nginx)

Short connections are where a per-connection log costs most: every connection is a ClientHello,
a 1 KiB request and a 1 KiB response through passthrough (bench/loadgen.cc rr, 32 at a time,
against bench/sink.cc rr), --count connections per run.

  cvmgate-off     --access-log off (the baseline)
  cvmgate-logfmt  --access-log FILE
  cvmgate-json    --access-log FILE --access-log-format json
  nginx-off       stream, ssl_preread + map, worker_processes 1, access_log off
  nginx-log       the same with a stream access_log (buffer=64k)
  cvmgate-baseline  --baseline BINARY, log off: an older cvmgate (e.g. one without the access log and
                  the time histograms), to measure what measuring costs; only with --baseline

Each repetition starts every product afresh; the order rotates. The proxy runs on --proxy-cpus, the
load and the sink on --client-cpus. Reported: conn/s and the proxy's CPU-ms per connection (median,
min-max), and each with-log row against its own product without the log. Every logged run checks
that the file has one line per connection (and cvmgate's access_log_dropped).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import (BUILD, CLK_TCK, NGINX_STREAM_MODULE, ROOT, build_tools, Deadline, finish_report, free_port,
                      log, Process, rotated, Sink, taskset, tree_ticks)

PRODUCTS = ("cvmgate-off", "cvmgate-logfmt", "cvmgate-json", "nginx-off", "nginx-log", "cvmgate-baseline")
BASE_DOMAIN = "example.test"


def sni(port):
    return f"app-{port}s.{BASE_DOMAIN}"


def start(product, args, workdir, backend, tag):
    port = free_port()
    logpath = workdir / f"{product}-{tag}.out"
    access = workdir / f"{product}-{tag}.access"
    if product.startswith("cvmgate"):
        state = workdir / f"state-{tag}.json"
        state.write_text(json.dumps({"version": 1, "apps": {"app": {"instances": [
            {"id": "app-i1", "address": "127.0.0.1", "ports": "1024-65535"}]}}}))
        binary = args.baseline if product == "cvmgate-baseline" else args.cvmgate
        cmd = [str(binary), "--listen", f"127.0.0.1:{port}", "--base-domain", BASE_DOMAIN,
               "--state", str(state), "--admin", f"unix:{workdir}/admin-{tag}.sock", "--workers", "1",
               "--app-max-connections", "100000"]
        if product in ("cvmgate-logfmt", "cvmgate-json"):
            cmd += ["--access-log", str(access)]
        if product == "cvmgate-json":
            cmd += ["--access-log-format", "json"]
        return Process(product, cmd, port, args.proxy_cpus, logpath, args.start_timeout,
                       ready_text=b"cvmgate: ready"), access
    prefix = workdir / f"{product}-{tag}"
    prefix.mkdir()
    log_conf = (f"    log_format basic '$remote_addr:$remote_port [$time_iso8601] $ssl_preread_server_name "
                f"$upstream_addr $status $bytes_received $bytes_sent $upstream_connect_time $session_time';\n"
                f"    access_log {access} basic buffer=64k;\n" if product == "nginx-log" else "    access_log off;\n")
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
{log_conf}    map $ssl_preread_server_name $app {{
        {sni(backend)} 127.0.0.1:{backend};
        default 127.0.0.1:9;
    }}
    server {{
        listen 127.0.0.1:{port};
        ssl_preread on;
        proxy_pass $app;
    }}
}}
""")
    cmd = [args.nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(cfg)]
    return Process(product, cmd, port, args.proxy_cpus, logpath, args.start_timeout), access


def dropped(workdir, tag):
    p = subprocess.run([str(Path(args.cvmgate).parent / "cvmgatectl"), "--admin", f"unix:{workdir}/admin-{tag}.sock",
                        "metrics"], capture_output=True, text=True, timeout=30)
    for line in p.stdout.splitlines():
        if line.startswith("cvmgate_access_log_dropped_total "):
            return int(line.split()[1])
    return None


def run_one(product, args, workdir, sink, tag):
    proc, access = start(product, args, workdir, sink.port, tag)
    r = {"product": product}
    err = None
    try:
        t0 = tree_ticks(proc.p.pid)
        cmd = taskset(args.client_cpus) + [str(BUILD / "loadgen"), "rr", "--connect", f"127.0.0.1:{proc.port}",
                                           "--count", str(args.count), "--conns", "32", "--sni", sni(sink.port),
                                           "--timeout", str(args.run_timeout)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout + 15, cwd=ROOT)
        res = json.loads(p.stdout.strip().splitlines()[-1])
        if p.returncode != 0 or res.get("errors"):
            err = f"loadgen rc={p.returncode} errors={res.get('errors')}"
        r["conn_per_s"] = res["conn_per_s"]
        r["connections"] = res["completed"]
        r["cpu_ms_per_conn"] = (tree_ticks(proc.p.pid) - t0) / CLK_TCK * 1e3 / res["completed"]
        if product in ("cvmgate-logfmt", "cvmgate-json"):
            r["dropped"] = dropped(workdir, tag)
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError, KeyError) as e:
        err = f"{product}: {e}"
    finally:
        proc.stop()  # nginx flushes its buffered log, cvmgate its queues, on the way out
    if not err and product in ("cvmgate-logfmt", "cvmgate-json", "nginx-log"):
        # Lines of the load's connections (the start-up probe's carries no server name).
        lines = sum(sni(sink.port) in l for l in access.read_text().splitlines()) if access.exists() else 0
        r["log_lines"] = lines
        if lines + (r.get("dropped") or 0) != r["connections"]:
            err = f"{product}: {lines} log lines (+{r.get('dropped')} dropped) for {r['connections']} connections"
    r["error"] = err
    return r


def med_range(values):
    return statistics.median(values), min(values), max(values)


def main():
    global args
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--count", type=int, default=20000, help="connections per run")
    ap.add_argument("--products", default=",".join(PRODUCTS[:-1]))
    ap.add_argument("--baseline", type=Path, help="an older cvmgate binary, run as cvmgate-baseline")
    ap.add_argument("--cvmgate", type=Path, default=ROOT / "build/tools/cvmgate")
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--proxy-cpus", default="1")
    ap.add_argument("--client-cpus", default="0")
    ap.add_argument("--start-timeout", type=float, default=10.0)
    ap.add_argument("--run-timeout", type=float, default=60.0)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    products = [p for p in args.products.split(",") if p]
    unknown = set(products) - set(PRODUCTS)
    if unknown:
        ap.error(f"unknown products {sorted(unknown)}")
    if args.baseline and "cvmgate-baseline" not in products:
        products.append("cvmgate-baseline")
    if "cvmgate-baseline" in products and not args.baseline:
        ap.error("cvmgate-baseline needs --baseline BINARY")
    build_tools(("loadgen", "sink"))
    deadline = Deadline(args.max_seconds)
    sink = Sink(args.client_cpus, args.start_timeout, mode="rr")
    results, problems = [], []
    with tempfile.TemporaryDirectory(prefix="cvmgate-bench-log-") as tmp:
        workdir = Path(tmp)
        for n, (rep, product) in enumerate(rotated(products, args.reps)):
            if deadline.left() <= 0:
                problems.append(f"stopped at --max-seconds {args.max_seconds:.0f}: rep {rep} {product} not run")
                break
            r = run_one(product, args, workdir, sink, f"{rep}-{n}")
            r["rep"] = rep
            log(f"rep {rep} {product}: {r.get('conn_per_s', 0):.0f} conn/s, "
                f"{r.get('cpu_ms_per_conn', 0):.4f} CPU-ms/conn {r['error'] or ''}")
            results.append(r)
            if r["error"]:
                problems.append(r["error"])
    sink.stop()
    rows = {}
    for product in products:
        ok = [r for r in results if r["product"] == product and not r["error"]]
        if ok:
            rows[product] = {"conn_per_s": med_range([r["conn_per_s"] for r in ok]),
                             "cpu_ms_per_conn": med_range([r["cpu_ms_per_conn"] for r in ok]), "runs": len(ok),
                             "dropped": sum(r.get("dropped") or 0 for r in ok)}
    print(f"## Access log cost, short connections (passthrough, {args.count} connections per run, "
          f"32 at a time, 1 KiB each way; {args.reps} reps, proxy on CPU {args.proxy_cpus})\n")
    print("| product | conn/s median (min-max) | CPU-ms/conn median (min-max) | conn/s vs no log | "
          "CPU/conn vs no log | records dropped |")
    # (with --baseline, cvmgate-off's row is against the baseline binary: what the histograms cost)
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for product, row in rows.items():
        base = rows.get("cvmgate-baseline" if product == "cvmgate-off" and "cvmgate-baseline" in rows else
                        "cvmgate-off" if product.startswith("cvmgate") else "nginx-off")
        c, cpu = row["conn_per_s"], row["cpu_ms_per_conn"]
        vs = (f"{c[0] / base['conn_per_s'][0]:.3f}", f"{cpu[0] / base['cpu_ms_per_conn'][0]:.3f}") if base else ("", "")
        print(f"| {product} | {c[0]:.0f} ({c[1]:.0f}-{c[2]:.0f}) | {cpu[0]:.4f} ({cpu[1]:.4f}-{cpu[2]:.4f}) | "
              f"{vs[0]} | {vs[1]} | {row['dropped'] if product.startswith('cvmgate') else ''} |")
    return finish_report(problems, "", args.json, results, rows)


if __name__ == "__main__":
    sys.exit(main())
