"""The plots of docs/performance.md, made from the benches' ``--json`` files.

    python bench/plot_performance.py [--data docs/perf] [--run 1] [--out docs]

Reads (each optional) from ``--data``, for run ``--run N``: ``reroute_spares_N.json``
and ``reroute_nospares_N.json`` (bench_reroute.py --json), ``batching_monarch_N.json``
(bench_batching.py --sizes ... --payload list tensor stacked --json) and ``payload_N.json``
(bench_payload.py --json); writes ``perf_reroute.png``, ``perf_batching.png`` and
``perf_payload.png`` to ``--out``. Needs matplotlib (``pip install -e '.[plot]'``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_ROWS = {
    "list": "rows as lists",
    "tensor": "tensor rows (a list of tensors: the default)",
    "stacked": 'tensor rows, collate="stack"',
}


def load(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def reroute(data: str, out: str, run: int) -> None:
    runs = [
        (name, load(os.path.join(data, f"reroute_{name}_{run}.json")))
        for name in ("nospares", "spares")
    ]
    runs = [(n, d) for n, d in runs if d is not None]
    if not runs:
        return
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3.2 * len(runs)), squeeze=False)
    for ax, (_name, d) in zip(axes[:, 0], runs, strict=True):
        backend, r = next(iter(d["results"].items()))
        tl = r["timeline"]
        kills = r["kills_at"]
        # Three kills in the middle of the run, with a little before and after.
        k0 = kills[len(kills) // 2 - 1]
        k1 = kills[min(len(kills) - 1, len(kills) // 2 + 1)]
        lo, hi = k0 - 0.3, k1 + 1.5
        pts = [p for p in tl if lo <= p[0] <= hi]
        t = [p[0] - lo for p in pts]
        ax.step(t, [p[1] for p in pts], where="post", label="healthy replicas", lw=1.8)
        if d["args"].get("spares"):
            ax.step(t, [p[2] for p in pts], where="post", label="ready spares", lw=1.2)
        for k in kills:
            if lo <= k <= hi:
                ax.axvline(k - lo, color="red", ls="--", lw=1)
        ax2 = ax.twinx()
        rate_t, rate = [], []
        step = 10  # samples of 5 ms: the rate over 50 ms windows
        for a, b in itertools.pairwise(pts[::step]):
            if b[0] > a[0]:
                rate_t.append(b[0] - lo)
                rate.append((b[3] - a[3]) / (b[0] - a[0]))
        ax2.plot(rate_t, rate, color="gray", lw=0.8, alpha=0.7)
        ax2.set_ylim(0, max(rate, default=1) * 1.3)
        ax2.set_ylabel("answered / s", color="gray")
        ax.set_ylim(0, d["args"]["replicas"] + 1.5)
        ax.set_ylabel("replicas")
        spares = d["args"].get("spares", 0)
        ax.set_title(
            f"{d['args']['replicas']} replicas, {d['args']['callers']} callers, "
            f"spare_replicas={spares} ({backend}): SIGKILLs (red) and capacity"
        )
        ax.legend(loc="lower left", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "perf_reroute.png"), dpi=110)
    plt.close(fig)


def batching(data: str, out: str, run: int) -> None:
    d = load(os.path.join(data, f"batching_monarch_{run}.json"))
    if d is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in d["runs"]:
        sizes = sorted(int(n) for n in run["per_s"])
        ax.plot(
            sizes,
            [run["per_s"][str(n)] for n in sizes],
            marker="o",
            label=f"{_ROWS.get(run['payload'], run['payload'])} ({run['backend']})",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("batch_size")
    ax.set_ylabel("rows / s")
    ax.set_title("Batched MLP on Monarch: throughput by batch size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "perf_batching.png"), dpi=110)
    plt.close(fig)


def payload(data: str, out: str, run: int) -> None:
    d = load(os.path.join(data, f"payload_{run}.json"))
    if d is None:
        return
    backend = next(k for k in d if isinstance(d[k], dict) and "forge_sc" in d[k])
    res = d[backend]
    kinds = [("to_replica_gbs", "to the replica"), ("from_replica_gbs", "back")]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.35
    for i, (who, label) in enumerate([("forge_sc", "forge_sc"), ("monarch_pickle", "Monarch")]):
        if who not in res:
            continue
        vals = [max(res[who][k]) for k, _ in kinds]
        ax.bar([j + i * width for j in range(len(kinds))], vals, width, label=label)
    ax.axhline(max(d["memcpy_warm_gbs"]), color="k", ls=":", label="memcpy (warm)")
    ax.axhline(max(d["memcpy_fresh_gbs"]), color="gray", ls="--", label="memcpy (fresh memory)")
    ax.set_xticks([j + width / 2 for j in range(len(kinds))], [k[1] for k in kinds])
    ax.set_ylabel("GB/s (best of the reps)")
    ax.set_title(f"{d['bytes'] / 1e6:.0f} MB float32 tensor, same host")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "perf_payload.png"), dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="docs/perf")
    p.add_argument("--run", type=int, default=1)
    p.add_argument("--out", default="docs")
    a = p.parse_args()
    reroute(a.data, a.out, a.run)
    batching(a.data, a.out, a.run)
    payload(a.data, a.out, a.run)


if __name__ == "__main__":
    main()
