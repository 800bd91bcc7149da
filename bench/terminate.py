# Terminate-mode benchmark: cvmgate, HAProxy and nginx each ending TLS and relaying plaintext, plus direct TLS.
"""
Run with:  /usr/bin/python3 bench/terminate.py [options]     (tools/setup --bench installs HAProxy and nginx)

Products, each ending TLS with the same ECDSA P-256 wildcard certificate and
relaying the plaintext to the same plain backend (`tlsload serve`):

  direct   no proxy: the backend ends TLS itself (`tlsload serve --tls`); the
           ceiling of one TLS hop on this machine
  cvmgate  default (terminate) mode, --workers 1, host name app-<port>.example.test
  haproxy  `mode tcp`, `bind ... ssl crt`, nbthread 1
  nginx    stream module, `listen ... ssl` + `proxy_pass`, worker_processes 1

Cases (the client is `tlsload client`, OpenSSL, TLS 1.3 TLS_AES_128_GCM_SHA256
unless stated, full handshake on every connection, no session reuse):

  upload      1 connection sends --bulk-bytes to the backend
  download    1 connection receives --bulk-bytes from the backend
  upload-8    8 connections send --bulk-bytes / 8 each
  hs-tls13    --hs-count connections, --hs-conns at a time, 1 KiB each way, TLS 1.3
  hs-tls12    the same over TLS 1.2 (ECDHE-ECDSA-AES128-GCM-SHA256)
  resume-tls13, resume-tls12
              the same, each connection resuming the client's first session (a ticket): all but
              the first --hs-conns are resumed handshakes (the run fails otherwise)

Every repetition starts each product afresh and runs every case against it;
the order of products rotates with the repetition. Per run it records the
client's GB/s or connections/s, the proxy's CPU seconds (utime+stime of the
process and its children from /proc, clock ticks) and the backend's. A run
counts only when the client finished every connection without error, the
payload matched the pattern at the receiver, and the backend saw no error.

Layouts: `pinned` puts the proxy (or the direct TLS server) on --proxy-cpus and
the client and backend on --client-cpus; `unpinned` sets no affinity.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (BUILD, CLK_TCK, NGINX_STREAM_MODULE, add_product_args, build_tools, check_products, Deadline,
                      finish_report, fmt_size, free_port, log, parse_size, Process, rotated, taskset)

PRODUCTS = ("direct", "cvmgate", "haproxy", "nginx")
BASE_DOMAIN = "example.test"


def cases(args):
    bulk = parse_size(args.bulk_bytes)
    return {
        "upload": {"up": bulk, "down": 0, "count": 1, "conns": 1, "tls": "1.3", "kind": "bulk"},
        "download": {"up": 0, "down": bulk, "count": 1, "conns": 1, "tls": "1.3", "kind": "bulk"},
        "upload-8": {"up": bulk // 8, "down": 0, "count": 8, "conns": 8, "tls": "1.3", "kind": "bulk"},
        "hs-tls13": {"up": 1024, "down": 1024, "count": args.hs_count, "conns": args.hs_conns, "tls": "1.3",
                     "kind": "hs"},
        "hs-tls12": {"up": 1024, "down": 1024, "count": args.hs_count, "conns": args.hs_conns, "tls": "1.2",
                     "kind": "hs"},
        "resume-tls13": {"up": 1024, "down": 1024, "count": args.hs_count, "conns": args.hs_conns, "tls": "1.3",
                         "kind": "hs", "resume": True},
        "resume-tls12": {"up": 1024, "down": 1024, "count": args.hs_count, "conns": args.hs_conns, "tls": "1.2",
                         "kind": "hs", "resume": True},
    }


def make_certificate(workdir):
    key, crt, both = workdir / "key.pem", workdir / "crt.pem", workdir / "both.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-days", "7", "-subj", f"/CN=*.{BASE_DOMAIN}",
                    "-addext", f"subjectAltName=DNS:*.{BASE_DOMAIN},DNS:{BASE_DOMAIN}"],
                   check=True, capture_output=True, timeout=60)
    both.write_bytes(crt.read_bytes() + key.read_bytes())  # HAProxy wants chain and key in one file
    return crt, key, both


def start_product(product, args, workdir, backend_port, cert, cpus, tag):
    crt, key, both = cert
    port = free_port()
    logpath = workdir / f"{product}-{tag}.log"
    if product == "direct":
        cmd = [str(BUILD / "tlsload"), "serve", "--listen", f"127.0.0.1:{port}", "--tls", f"{crt},{key}"]
        return Process(product, cmd, port, cpus, logpath, args.start_timeout)
    if product == "cvmgate":
        state = workdir / f"state-{tag}.json"  # one per process: a state file has one daemon
        state.write_text(json.dumps({"version": 1, "apps": {"app": {"instances": [
            {"id": "app-i1", "address": "127.0.0.1", "ports": "1024-65535"}]}}}))
        cmd = [str(args.cvmgate), "--listen", f"127.0.0.1:{port}", "--base-domain", BASE_DOMAIN, "--state",
               str(state), "--admin", f"unix:{workdir}/admin-{tag}.sock", "--workers", "1",
               "--tls-cert", f"{BASE_DOMAIN}={crt},{key}"] + args.cvmgate_arg
        return Process(product, cmd, port, cpus, logpath, args.start_timeout, ready_text=b"cvmgate: ready")
    if product == "haproxy":
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(f"""global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend tls
    bind 127.0.0.1:{port} ssl crt {both}
    default_backend app
backend app
    server app1 127.0.0.1:{backend_port}
""")
        return Process(product, [args.haproxy, "-db", "-f", str(cfg)], port, cpus, logpath, args.start_timeout)
    if product == "nginx":
        prefix = workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        cfg = prefix / "nginx.conf"
        cfg.write_text(f"""load_module {NGINX_STREAM_MODULE};
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 20000; }}
stream {{
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_pass 127.0.0.1:{backend_port};
    }}
}}
""")
        cmd = [args.nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(cfg)]
        return Process(product, cmd, port, cpus, logpath, args.start_timeout)
    raise ValueError(product)


def backend_stats(backend):
    """The backend's counters, from its SIGUSR1 line."""
    before = backend.logpath.read_bytes().count(b"\n")
    backend.p.send_signal(10)  # SIGUSR1
    dl = Deadline(5)
    while dl.left() > 0:
        text = backend.logpath.read_bytes()
        if text.count(b"\n") > before:  # a whole new line
            return json.loads(text.decode().splitlines()[before])
        time.sleep(0.01)
    raise RuntimeError("backend did not answer SIGUSR1")


def run_client(args, case, port, cpus):
    sni = f"app-{args.backend_port}.{BASE_DOMAIN}"
    cmd = taskset(cpus) + [str(BUILD / "tlsload"), "client", "--connect", f"127.0.0.1:{port}", "--sni", sni,
                           "--up", str(case["up"]), "--down", str(case["down"]), "--count", str(case["count"]),
                           "--conns", str(case["conns"]), "--tls-version", case["tls"],
                           "--resume", "on" if case.get("resume") else "off",
                           "--timeout", str(args.run_timeout)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout + 15)
    except subprocess.TimeoutExpired:
        return None, "client did not exit within --run-timeout + 15 s"
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return None, f"client exit {p.returncode}, no JSON; stderr: {p.stderr.strip()[-300:]}"
    if p.returncode != 0 or res["connections"] != case["count"] or res["errors"]:
        return res, (f"client rc={p.returncode} connections={res['connections']}/{case['count']} "
                     f"errors={res['errors']} first_error={res['first_error']!r}")
    if case.get("resume") and res["resumed"] < case["count"] - case["conns"]:
        return res, f"only {res['resumed']} of {case['count']} connections resumed a session"
    return res, None


def one_run(args, layout, product, proc, backend, name, case, cpus):
    r = {"layout": layout, "product": product, "case": name, "error": None}
    b0 = backend_stats(backend)
    p0 = proc.ticks()
    res, err = run_client(args, case, proc.port, cpus["client"])
    p1 = proc.ticks() if proc.alive() else p0
    b1 = backend_stats(backend)
    r["proxy_cpu_s"] = (p1 - p0) / CLK_TCK
    r["backend_cpu_s"] = b1["cpu_s"] - b0["cpu_s"]
    if b1["errors"] != b0["errors"]:
        err = (err + "; " if err else "") + f"backend error: {b1['first_error']}"
    if not proc.alive():
        err = (err + "; " if err else "") + f"{product} exited during the run: {proc.log_tail()}"
    if res is not None:
        r.update(gbps=res["gbps"], conns_per_s=res["conns_per_s"], wall_s=res["wall_s"],
                 payload_bytes=res["payload_bytes"], client_cpu_s=res["cpu_s"], p50_ms=res["p50_ms"],
                 p99_ms=res["p99_ms"], version=res["version"], suite=res["suite"], connections=res["connections"])
        if res["payload_bytes"]:
            r["proxy_cpu_per_gb"] = r["proxy_cpu_s"] / (res["payload_bytes"] / 1e9)
        if res["connections"]:
            r["proxy_cpu_ms_per_conn"] = r["proxy_cpu_s"] * 1e3 / res["connections"]
    r["error"] = err
    return r


def med(values):
    return statistics.median(values) if values else None


def summarize(results, layouts, case_names, products):
    rows = []
    for layout in layouts:
        for name in case_names:
            per = {}
            for product in products:
                ok = [x for x in results if x["layout"] == layout and x["case"] == name and x["product"] == product
                      and not x["error"]]
                n = sum(1 for x in results if x["layout"] == layout and x["case"] == name and x["product"] == product)
                hs = name.startswith(("hs", "resume"))
                metric = "conns_per_s" if hs else "gbps"
                vals = [x[metric] for x in ok]
                row = {"layout": layout, "case": name, "product": product, "ok": len(ok), "n": n, "hs": hs}
                if vals:
                    row.update(median=med(vals), min=min(vals), max=max(vals),
                               cpu=med([x["proxy_cpu_ms_per_conn" if hs else "proxy_cpu_per_gb"] for x in ok]),
                               p99=med([x["p99_ms"] for x in ok]), suite=ok[0]["suite"], version=ok[0]["version"])
                per[product] = row
                rows.append(row)
            for row in per.values():
                for peer in ("direct", "haproxy", "nginx"):
                    other = per.get(peer, {})
                    if row.get("median") and other.get("median"):
                        row[f"vs_{peer}"] = row["median"] / other["median"]
                    if peer != "direct" and row.get("cpu") and other.get("cpu"):
                        row[f"cpu_vs_{peer}"] = row["cpu"] / other["cpu"]
    return rows


def table(rows):
    out = ["| layout | case | product | median | spread (min–max) | proxy CPU | ÷ direct | ÷ HAProxy | ÷ nginx "
           "| CPU ÷ HAProxy | CPU ÷ nginx | p99 ms | ok |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def ratio(x):
        return f"{x:.2f}" if x is not None else "—"

    for r in rows:
        if "median" not in r:
            out.append(f"| {r['layout']} | {r['case']} | {r['product']} | FAILED | | | | | | | | | {r['ok']}/{r['n']} |")
            continue
        unit = "conn/s" if r["hs"] else "GB/s"
        fmt = "{:.0f}" if r["hs"] else "{:.3f}"
        cpu_unit = "CPU-ms/conn" if r["hs"] else "CPU-s/GB"
        cpu = f"{r['cpu']:.3f} {cpu_unit}" if r["cpu"] is not None else "—"
        if r["product"] == "direct":
            cpu += " (TLS server)"
        out.append(f"| {r['layout']} | {r['case']} | {r['product']} | {fmt.format(r['median'])} {unit} "
                   f"| {fmt.format(r['min'])}–{fmt.format(r['max'])} | {cpu} | {ratio(r.get('vs_direct'))} "
                   f"| {ratio(r.get('vs_haproxy'))} | {ratio(r.get('vs_nginx'))} "
                   f"| {ratio(r.get('cpu_vs_haproxy'))} | {ratio(r.get('cpu_vs_nginx'))} "
                   f"| {r['p99']:.1f} | {r['ok']}/{r['n']} |")
    return "\n".join(out)


def version_of(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def main():
    ap = argparse.ArgumentParser(description="terminate-mode benchmark: cvmgate vs HAProxy vs nginx vs direct TLS")
    add_product_args(ap, PRODUCTS)
    ap.add_argument("--cases", default="upload,download,upload-8,hs-tls13,hs-tls12,resume-tls13,resume-tls12")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bulk-bytes", default="1GiB", help="bytes per bulk case (split over upload-8's connections)")
    ap.add_argument("--hs-count", type=int, default=3000, help="connections per handshake run")
    ap.add_argument("--hs-conns", type=int, default=32, help="connections open at once in a handshake run")
    ap.add_argument("--layouts", default="pinned,unpinned")
    ap.add_argument("--proxy-cpus", default="1", help="taskset CPUs of the proxy in the pinned layout")
    ap.add_argument("--client-cpus", default="0", help="taskset CPUs of the client and backend in the pinned layout")
    ap.add_argument("--start-timeout", type=float, default=10.0)
    ap.add_argument("--run-timeout", type=float, default=120.0)
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="stop starting new runs after this")
    ap.add_argument("--json", type=Path, help="write per-run results here")
    args = ap.parse_args()

    products = check_products(ap, args, PRODUCTS)
    all_cases = cases(args)
    case_names = [c for c in args.cases.split(",") if c]
    for c in case_names:
        if c not in all_cases:
            ap.error(f"unknown case {c} (have {', '.join(all_cases)})")
    layouts = [l for l in args.layouts.split(",") if l]
    layout_cpus = {"pinned": {"proxy": args.proxy_cpus, "client": args.client_cpus},
                   "unpinned": {"proxy": None, "client": None}}
    for l in layouts:
        if l not in layout_cpus:
            ap.error(f"unknown layout {l}")
    build_tools(("tlsload",), libs=("-lssl", "-lcrypto"))

    overall = Deadline(args.max_seconds)
    tmp = tempfile.TemporaryDirectory(prefix="cvmgate-bench-tls-")
    workdir = Path(tmp.name)
    cert = make_certificate(workdir)
    results, problems, truncated = [], [], False
    t_start = time.monotonic()
    for layout in layouts:
        cpus = layout_cpus[layout]
        args.backend_port = free_port()
        backend = Process("backend", [str(BUILD / "tlsload"), "serve", "--listen", f"127.0.0.1:{args.backend_port}"],
                          args.backend_port, cpus["client"], workdir / f"backend-{layout}.log", args.start_timeout)
        try:
            for rep, product in rotated(products, args.reps):
                if overall.left() <= 0:
                    truncated = True
                    break
                tag = f"{layout}-{product}-r{rep + 1}"
                try:
                    proc = start_product(product, args, workdir, args.backend_port, cert, cpus["proxy"], tag)
                except RuntimeError as e:
                    problems.append(f"{tag}: {e}")
                    continue
                try:
                    for name in case_names:
                        r = one_run(args, layout, product, proc, backend, name, all_cases[name], cpus)
                        r["rep"] = rep + 1
                        results.append(r)
                        hs = name.startswith(("hs", "resume"))
                        if "gbps" in r:
                            status = (f"{r['conns_per_s']:.0f} conn/s" if hs else f"{r['gbps']:.3f} GB/s")
                            status += f", proxy {r['proxy_cpu_s']:.2f} CPU-s"
                        else:
                            status = "no result"
                        log(f"[{time.monotonic() - t_start:6.1f}s] {tag} {name}: {status}"
                            + (f"  ERROR: {r['error']}" if r["error"] else ""))
                        if r["error"]:
                            problems.append(f"{tag} {name}: {r['error']}")
                finally:
                    rc, killed = proc.stop()
                    if killed:
                        problems.append(f"{tag}: {product} did not exit within 5 s of SIGTERM")
        finally:
            backend.stop()

    rows = summarize(results, layouts, case_names, products)
    ncpu = os.cpu_count() or 1
    print("## Terminate mode: cvmgate, HAProxy and nginx ending TLS, same run\n")
    print(f"- host: {platform.node()}, kernel {platform.release()}, {ncpu} CPUs; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    ktls = os.path.exists("/proc/net/tls_stat")
    print(f"- kTLS: {'available' if ktls else 'not available (no tls module): every product runs TLS in userspace'}")
    print(f"- cvmgate `{args.cvmgate}` --workers 1 {' '.join(args.cvmgate_arg)}; "
          f"{version_of([args.haproxy, '-v'])} (nbthread 1); {version_of([args.nginx, '-v'])} "
          "(stream, worker_processes 1); OpenSSL " + version_of(["openssl", "version"]))
    print("- certificate: self-signed ECDSA P-256 for *.example.test; client: `bench/tlsload.cc`, one epoll thread, "
          "OpenSSL, no session reuse, TLS 1.3 TLS_AES_128_GCM_SHA256 (TLS 1.2: ECDHE-ECDSA-AES128-GCM-SHA256)")
    print(f"- bulk: {fmt_size(parse_size(args.bulk_bytes))} per run (GB/s = payload / 1e9 / client wall time, "
          f"handshake included); handshakes: {args.hs_count} connections, {args.hs_conns} at a time, "
          "each 1 KiB up and 1 KiB down (conn/s = connections / wall time)")
    print("- proxy CPU: utime+stime of the proxy process and its children over the client run "
          f"(1/{CLK_TCK} s ticks); per GB of payload, or per connection; for `direct` it is the TLS server's own")
    for layout in layouts:
        if layout == "pinned":
            print(f"- layout `pinned`: the proxy on CPU {args.proxy_cpus}, client and backend on CPU {args.client_cpus}")
        else:
            print("- layout `unpinned`: no affinity; proxy, client and backend share the CPUs")
    print(f"- {args.reps} repetitions, each starting every product afresh; medians over the ok runs; "
          f"wall time {time.monotonic() - t_start:.0f} s" + (" — **stopped early by --max-seconds**" if truncated else ""))
    print()
    print(table(rows))
    status = finish_report(problems, "No errors: every connection finished, payloads matched the pattern, every process exited cleanly.",
                           args.json, results, rows)
    tmp.cleanup()
    return status


if __name__ == "__main__":
    sys.exit(main())
