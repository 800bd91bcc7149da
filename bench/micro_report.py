# Turns Google Benchmark's JSON (bench/micro) into a markdown table.
"""Usage: micro_report.py micro.json > micro.md"""

import json
import sys

LABELS = {
    "BM_ParseClientHello/openssl_tls13_256B": "ClientHello parse, 256 B (openssl s_client, TLS 1.3)",
    "BM_ParseClientHello/python_2KiB": "ClientHello parse, 2 KiB (post-quantum sized)",
    "BM_HelloAsItArrives/16384": "ClientHello of 10.8 KB in one record, parsed as it arrives",
    "BM_HelloAsItArrives/1": "the same hello in 1-byte records (64 KiB on the wire), parsed as it arrives",
    "BM_HelloAsItArrives/2": "the same hello in 2-byte records (38 KiB on the wire), parsed as it arrives",
    "BM_ParseHostName": "host-name parse (`<id>-<port>s.<base-domain>`)",
    "BM_LookupAndPick": "route lookup + random healthy instance, 100k apps / 1M instances",
    "BM_BuildAndPublish/1000": "snapshot build + publish, 1k instances",
    "BM_BuildAndPublish/100000": "snapshot build + publish, 100k instances",
}


def main():
    doc = json.load(open(sys.argv[1]))
    ctx = doc["context"]
    print("## Micro-benchmarks (bench/micro, Google Benchmark)\n")
    print(f"- {ctx.get('host_name', '')}: {ctx.get('num_cpus')} CPUs at {ctx.get('mhz_per_cpu')} MHz; "
          f"{ctx.get('date', '')}; median of the benchmark's own repetitions\n")
    print("| what | time per operation | throughput |")
    print("|---|---:|---:|")
    for b in doc["benchmarks"]:
        name = b["name"]
        t, unit = b["real_time"], b["time_unit"]
        scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[unit]
        ns = t * scale
        shown = f"{ns:.0f} ns" if ns < 1e4 else (f"{ns / 1e3:.1f} µs" if ns < 1e7 else f"{ns / 1e6:.1f} ms")
        rate = f"{b['bytes_per_second'] / 1e6:.0f} MB/s" if "bytes_per_second" in b else f"{1e9 / ns:,.0f}/s"
        print(f"| {LABELS.get(name, name)} | {shown} | {rate} |")
    print()
    times = {b["name"]: b["real_time"] for b in doc["benchmarks"]}
    one = times.get("BM_HelloAsItArrives/16384")
    for size in (1, 2):
        tiny = times.get(f"BM_HelloAsItArrives/{size}")
        if one and tiny:
            print(f"- a hello in {size}-byte records costs the parser {tiny / one:.1f}x the same hello in one record "
                  f"({tiny * 1000 / (10800 // size + 1):.2f} ns a record; the one-record parse reads the SNI, not the "
                  "padding)")
    print()


if __name__ == "__main__":
    main()
