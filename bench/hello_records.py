#!/usr/bin/env python3
# The cost of a ClientHello cut into tiny TLS records: gateway CPU per hello, 1-byte records against one record.
"""A client sends the same 10.8 KB ClientHello (an SNI and padding) either as one TLS record in one write, or as
1-byte records (64 KiB on the wire, the --hello-max-bytes default), one record per write on several connections at
once, so the gateway sees them arrive a few records at a time. The name routes nowhere (unknown app), so the gateway's
whole work per connection is accept, the hello, and the close. Reports the gateway's CPU (utime + stime) per hello,
median and spread over repetitions, and the ratio.

Usage: bench/hello_records.py [--cvmgate PATH] [--reps 5] [--tiny 16] [--one 2000]
"""

import argparse
import json
import socket
import statistics
import struct
import tempfile
import time
from pathlib import Path

import benchlib

NAME = b"nope-443s.example.test"


def hello_message(padding=10800):
    sni = struct.pack("!HHHBH", 0, len(NAME) + 5, len(NAME) + 3, 0, len(NAME)) + NAME
    pad = struct.pack("!HH", 21, padding) + bytes(padding)
    ext = sni + pad
    body = b"\x03\x03" + b"\xab" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(ext)) + ext
    return b"\x01" + struct.pack("!I", len(body))[1:] + body


def records(msg, size):
    return [b"\x16\x03\x01" + struct.pack("!H", len(msg[i:i + size])) + msg[i:i + size]
            for i in range(0, len(msg), size)]


def wait_closed(socks, seconds):
    deadline = time.monotonic() + seconds
    for s in socks:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
        s.close()


def run_case(port, recs, count, per_write):
    """Opens `count` connections and sends each the records, `per_write` records per send, interleaved."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    chunks = [b"".join(recs[i:i + per_write]) for i in range(0, len(recs), per_write)]
    for n, chunk in enumerate(chunks):
        for s in socks:
            s.send(chunk)
        if n % 64 == 63:
            time.sleep(0.0002)  # let the gateway see the records a few at a time
    wait_closed(socks, 30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cvmgate", type=Path, default=benchlib.ROOT / "build" / "tools" / "cvmgate")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", type=int, default=64, help="hellos in 1-byte records per repetition")
    ap.add_argument("--one", type=int, default=4000, help="hellos in one record per repetition")
    ap.add_argument("--cpus", default="1", help="CPUs the gateway is pinned to (taskset)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    msg = hello_message()
    cases = {"one record": (records(msg, 16384), args.one, 1), "1-byte records": (records(msg, 1), args.tiny, 1)}
    wire = {k: sum(map(len, v[0])) for k, v in cases.items()}
    results = {k: [] for k in cases}
    with tempfile.TemporaryDirectory(prefix="cvmgate-hello-") as tmp:
        tmp = Path(tmp)
        (tmp / "state.json").write_text(json.dumps({"version": 1}))
        port = benchlib.free_port()
        gw = benchlib.Process("cvmgate", [str(args.cvmgate), "--listen", f"127.0.0.1:{port}", "--base-domain",
                                          "example.test", "--state", str(tmp / "state.json"), "--workers", "1",
                                          "--admin", f"unix:{tmp}/admin.sock"],
                              port, args.cpus, tmp / "cvmgate.log", 20, ready_text=b"cvmgate: ready")
        try:
            for rep in range(args.reps):
                for name, (recs, count, per_write) in cases.items():
                    before = gw.ticks()
                    started = time.monotonic()
                    run_case(port, recs, count, per_write)
                    cpu = (gw.ticks() - before) / benchlib.CLK_TCK
                    results[name].append(cpu / count)
                    benchlib.log(f"rep {rep + 1} {name}: {count} hellos of {wire[name]} wire bytes, gateway CPU "
                                 f"{cpu * 1e3:.0f} ms ({cpu / count * 1e6:.0f} µs each), {time.monotonic() - started:.1f} s")
        finally:
            gw.stop()
    print("| ClientHello (10.8 KB handshake) | wire bytes | gateway CPU per hello, median (spread) |")
    print("|---|---:|---:|")
    for name, xs in results.items():
        print(f"| {name} | {wire[name]} | {statistics.median(xs) * 1e6:.0f} µs ({min(xs) * 1e6:.0f}–{max(xs) * 1e6:.0f}) |")
    ratio = statistics.median(results["1-byte records"]) / statistics.median(results["one record"])
    print(f"\n1-byte records cost {ratio:.1f}x one record ({args.reps} repetitions, gateway pinned to CPU {args.cpus}).")
    if args.json:
        args.json.write_text(json.dumps({"per_hello_cpu_s": results, "wire_bytes": wire, "ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
