# Where kTLS pays in terminate mode: cvmgate's CPU per connection with record crypto in userspace,
# with kTLS installed at the handshake, and with kTLS after the --ktls-after-bytes threshold.
"""
Run with:  tools/kernel-lab/run-in-kernel /usr/bin/python3 bench/ktls_threshold.py [options]
(the kernel needs kTLS: this machine's has none, the kernel-lab guest's has).

Modes (cvmgate, --workers 1, pinned on --proxy-cpus; client and backend on --client-cpus):

  userspace     --ktls off: OpenSSL encrypts and decrypts, the relay copies
  at-handshake  --ktls-after-bytes 0: OpenSSL hands the keys to the kernel after the handshake
  threshold     cvmgate's defaults: userspace until --ktls-after-bytes / --ktls-after, then kTLS

For each size S, `tlsload client` opens connections that each send S bytes and receive S bytes
(TLS 1.3, TLS_AES_128_GCM_SHA256, a full handshake each), --conns at a time, as many as make about
--bytes-per-run; cvmgate's utime+stime per connection is the figure. Installing kTLS costs the
kernel's crypto set-up per socket; it pays once the bytes it then moves without OpenSSL and without
copies outweigh that. The break-even is the smallest size where at-handshake costs less than
userspace; the default threshold should sit near it.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import terminate  # noqa: E402  (same directory)
from benchlib import BUILD, ROOT, Deadline, Process, build_tools, free_port, log, parse_size  # noqa: E402

MODES = {"userspace": ["--ktls", "off"], "at-handshake": ["--ktls-after-bytes", "0"], "threshold": []}


def main():
    ap = argparse.ArgumentParser(description="CPU per terminated connection: userspace TLS vs kTLS, by size")
    ap.add_argument("--cvmgate", type=Path, default=ROOT / "build" / "tools" / "cvmgate")
    ap.add_argument("--sizes", default="1KiB,16KiB,64KiB,256KiB,1MiB,4MiB")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bytes-per-run", default="64MiB", help="about this many bytes each way per run")
    ap.add_argument("--min-count", type=int, default=30)
    ap.add_argument("--max-count", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--proxy-cpus", default="1")
    ap.add_argument("--client-cpus", default="0")
    ap.add_argument("--start-timeout", type=float, default=20.0)
    ap.add_argument("--run-timeout", type=float, default=300.0)
    ap.add_argument("--max-seconds", type=float, default=1500.0)
    ap.add_argument("--out", type=Path, help="write the table here too")
    args = ap.parse_args()
    args.cvmgate_arg = []
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m} (have {', '.join(MODES)})")
    if not Path("/proc/net/tls_stat").exists():
        ap.exit(1, f"{ap.prog}: this kernel has no kTLS (/proc/net/tls_stat); run it under tools/kernel-lab\n")
    build_tools(("tlsload",), libs=("-lssl", "-lcrypto"))
    per_run = parse_size(args.bytes_per_run)
    deadline = Deadline(args.max_seconds)
    tmp = tempfile.TemporaryDirectory(prefix="cvmgate-bench-ktls-")
    workdir = Path(tmp.name)
    cert = terminate.make_certificate(workdir)
    cpus = {"proxy": args.proxy_cpus, "client": args.client_cpus}
    args.backend_port = free_port()
    backend = Process("backend", [str(BUILD / "tlsload"), "serve", "--listen", f"127.0.0.1:{args.backend_port}"],
                      args.backend_port, cpus["client"], workdir / "backend.log", args.start_timeout)
    cpu = {}  # (mode, size) -> [CPU-ms per connection]
    problems = []
    t0 = time.monotonic()
    try:
        for rep in range(args.reps):
            for i in range(len(modes)):
                mode = modes[(i + rep) % len(modes)]  # rotate the order with the repetition
                if deadline.left() <= 0:
                    break
                args.cvmgate_arg = MODES[mode]
                proc = terminate.start_product("cvmgate", args, workdir, args.backend_port, cert, cpus["proxy"],
                                               f"{mode}-r{rep + 1}")
                try:
                    for size in sizes:
                        count = max(args.min_count, min(args.max_count, per_run // size))
                        case = {"up": size, "down": size, "count": count, "conns": min(args.conns, count),
                                "tls": "1.3", "kind": "hs"}
                        r = terminate.one_run(args, "pinned", "cvmgate", proc, backend, f"{size}", case, cpus)
                        if r["error"]:
                            problems.append(f"{mode} {size}: {r['error']}")
                            continue
                        cpu.setdefault((mode, size), []).append(r["proxy_cpu_ms_per_conn"])
                        log(f"[{time.monotonic() - t0:6.1f}s] r{rep + 1} {mode} {size} B: "
                            f"{r['proxy_cpu_ms_per_conn']:.3f} CPU-ms/conn ({count} conns)")
                finally:
                    proc.stop()
    finally:
        backend.stop()

    def cell(mode, size):
        v = cpu.get((mode, size))
        if not v:
            return "—"
        return f"{statistics.median(v):.3f} ({min(v):.3f}–{max(v):.3f})"

    lines = ["| bytes each way per connection | " + " | ".join(f"{m} CPU-ms/conn" for m in modes)
             + " | at-handshake ÷ userspace |", "|---:|" + "---:|" * (len(modes) + 1)]
    even = None
    for size in sizes:
        u, k = cpu.get(("userspace", size)), cpu.get(("at-handshake", size))
        ratio = statistics.median(k) / statistics.median(u) if u and k else None
        if ratio is not None and ratio < 1 and even is None:
            even = size
        shown = f"{ratio:.2f}" if ratio is not None else "—"
        lines.append(f"| {size:,} | " + " | ".join(cell(m, size) for m in modes) + f" | {shown} |")
    text = "\n".join(lines)
    text += ("\n\nkTLS at the handshake costs less than userspace TLS from "
             + (f"{even:,} bytes each way" if even else "none of these sizes") + " on this machine.\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    for p in problems:
        print("problem:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
