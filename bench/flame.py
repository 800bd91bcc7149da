#!/usr/bin/env python3
"""A flame graph (drawn as an icicle: callers on top) of a `perf record --call-graph dwarf` profile,
with the folded stacks beside it and a summary of where the time went.

  /usr/bin/python3 bench/flame.py PERF_DATA --png OUT.png --folded OUT.txt [--title T] [--top N]

Frames without a symbol (Debian's libssl and libcrypto keep only their exported names) are named
by their library, consecutive ones folded into one. The summary splits the samples by where their
leaf ran (kernel, OpenSSL, cvmgate, libc and other) and, under each given --under frame, the same split.
Needs perf and matplotlib (tools/setup --bench)."""

import argparse
import collections
import os
import subprocess
import sys


def parse_frame(line):
    """'addr sym (dso)' -> (name, kind): the symbol, or the library's file name for an unknown one;
    kind is where it runs: kernel, OpenSSL, cvmgate, or libc and other."""
    parts = line.strip().split(" ", 1)
    if len(parts) < 2:
        return None
    rest, dso = parts[1], ""
    if rest.endswith(")") and " (" in rest:
        rest, dso = rest.rsplit(" (", 1)
        dso = dso[:-1]
    base = os.path.basename(dso)
    if "kernel" in dso:
        kind = "kernel"
    elif base.startswith(("libssl", "libcrypto")):
        kind = "OpenSSL"
    elif base == "cvmgate":
        kind = "cvmgate"
    else:
        kind = "libc and other"
    sym = rest.strip()
    if not sym or sym.startswith("[unknown]"):
        return "[" + (base or "unknown") + "]", kind
    return sym.split("+0x")[0], kind


def read_stacks(perf_data):
    """{(frame names, root first): samples}, {frame name: kind}."""
    out = subprocess.run(["perf", "script", "-i", perf_data, "-F", "ip,sym,dso"], capture_output=True, text=True,
                         check=True).stdout
    stacks = collections.Counter()
    kinds = {}
    for block in out.split("\n\n"):
        frames = []
        for line in reversed([l for l in block.splitlines() if l.strip()]):  # root first
            parsed = parse_frame(line)
            if parsed is None:
                continue
            name, kind = parsed
            kinds[name] = kind
            if frames and name == frames[-1] and name.startswith("["):
                continue  # one box for a run of unnamed frames of one library
            frames.append(name)
        if frames:
            stacks[tuple(frames)] += 1
    return stacks, kinds


def summary(stacks, kinds, under):
    total = sum(stacks.values())
    lines = [f"{total} samples"]

    def split(selected, label):
        n = sum(selected.values())
        if n == 0:
            lines.append(f"{label}: no samples")
            return
        parts = collections.Counter()
        for frames, c in selected.items():
            parts[kinds[frames[-1]]] += c
        shown = ", ".join(f"{k} {100 * v / n:.1f} %" for k, v in parts.most_common())
        lines.append(f"{label} ({100 * n / total:.1f} % of all): {shown}")

    split(stacks, "all")
    for u in under:
        split(collections.Counter({f: c for f, c in stacks.items() if u in f}), f"under {u}")
    return lines


def draw(stacks, kinds, png, title, min_frac=0.004):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    total = sum(stacks.values())
    tree = {}
    for frames, c in stacks.items():
        node = tree
        for f in frames:
            entry = node.setdefault(f, [0, {}])
            entry[0] += c
            node = entry[1]
    depth_max = max(len(f) for f in stacks)
    fig, ax = plt.subplots(figsize=(18, max(6, 0.28 * min(depth_max, 60))))
    palette = {"kernel": "#f2a65a", "OpenSSL": "#6fa8dc", "cvmgate": "#93c47d", "libc and other": "#cccccc"}

    def walk(node, x, depth):
        for name, (count, children) in sorted(node.items(), key=lambda kv: -kv[1][0]):
            w = count / total
            if w < min_frac:
                x += w
                continue
            ax.add_patch(Rectangle((x, -depth - 1), w, 0.95, facecolor=palette[kinds[name]],
                                   edgecolor="white", linewidth=0.3))
            if w > 0.03:
                ax.text(x + 0.002, -depth - 0.55, f"{name} {100 * w:.1f}%"[: int(w * 160)], fontsize=6,
                        va="center", clip_on=True)
            walk(children, x, depth + 1)
            x += w

    walk(tree, 0.0, 0)
    shown = min(depth_max, 60)
    ax.set_xlim(0, 1)
    ax.set_ylim(-shown - 1, 0)
    ax.set_yticks([])
    ax.set_xlabel("share of the process's samples (frames under 0.4 % left out; colour: kernel, OpenSSL, cvmgate)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("perf_data")
    ap.add_argument("--png", required=True)
    ap.add_argument("--folded", required=True)
    ap.add_argument("--title", default="cvmgate")
    ap.add_argument("--under", action="append", default=[], help="a frame whose subtree is summarised apart")
    ap.add_argument("--top", type=int, default=0, help="write only the N heaviest stacks to --folded (0: all)")
    args = ap.parse_args()
    stacks, kinds = read_stacks(args.perf_data)
    if not stacks:
        sys.exit("no samples with call graphs in " + args.perf_data)
    with open(args.folded, "w") as f:
        for frames, c in stacks.most_common(args.top or None):
            f.write(";".join(frames) + f" {c}\n")
    draw(stacks, kinds, args.png, args.title)
    print("\n".join(summary(stacks, kinds, args.under)))


if __name__ == "__main__":
    main()
