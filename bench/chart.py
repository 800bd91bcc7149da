# Draws bench/results/chart.png from the passthrough and terminate JSON results (matplotlib, Debian's).
"""Usage: chart.py RESULTS_DIR OUT.png"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"direct": "#999999", "cvmgate": "#1f77b4", "haproxy": "#ff7f0e", "haproxy-splice": "#ffbb78",
          "nginx": "#2ca02c", "nginx-256k": "#98df8a"}


def rows_of(path):
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    rows = doc["rows"]
    return rows["rows"] if isinstance(rows, dict) else rows


def grouped(ax, rows, cases, key, title, ylabel, products):
    width = 0.8 / max(1, len(products))
    for i, product in enumerate(products):
        values = []
        for case in cases:
            r = next((x for x in rows if x["case"] == case and x["product"] == product and key in x), None)
            values.append(r[key] if r else 0)
        xs = [c + (i - (len(products) - 1) / 2) * width for c in range(len(cases))]
        ax.bar(xs, values, width, label=product, color=COLORS.get(product))
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def main():
    results, out = Path(sys.argv[1]), Path(sys.argv[2])
    pt = rows_of(results / "passthrough.json")
    tm = [r for r in rows_of(results / "terminate.json") if r.get("layout", "pinned") == "pinned"]
    pt_products = [p for p in COLORS if any(r["product"] == p for r in pt)]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    grouped(axes[0][0], pt, ["bulk-1", "bulk-8"], "median", "Passthrough bulk throughput (higher is better)",
            "GB/s", pt_products)
    grouped(axes[0][1], pt, ["rr"], "median", "Passthrough new connections, 1 KiB each way (higher is better)",
            "connections/s", pt_products)
    grouped(axes[1][0], pt, ["idle-1k", "idle-8k"], "median",
            "Memory per idle relayed connection (lower is better)", "KiB per connection",
            [p for p in pt_products if p != "direct"])
    # Terminate: each proxy's CPU per unit of work, relative to HAProxy's.
    cases = [c for c in ("upload", "download", "upload-8", "hs-tls13", "hs-tls12") if any(r["case"] == c for r in tm)]
    rel = []
    for r in tm:
        base = next((x for x in tm if x["case"] == r["case"] and x["product"] == "haproxy" and x.get("cpu")), None)
        if base and r.get("cpu") and r["product"] != "direct":
            rel.append({"case": r["case"], "product": r["product"], "ratio": r["cpu"] / base["cpu"]})
    grouped(axes[1][1], rel, cases, "ratio", "Terminate mode: proxy CPU per GB or per connection, ÷ HAProxy "
            "(lower is better)", "relative CPU", [p for p in ("cvmgate", "haproxy", "nginx")])
    for ax in (axes[0][0], axes[1][1]):
        ax.legend(fontsize=8)
    fig.suptitle("cvmgate vs HAProxy vs nginx, same machine, same run (bench/results/*.md for medians and spread)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"chart: {out}")


if __name__ == "__main__":
    main()
