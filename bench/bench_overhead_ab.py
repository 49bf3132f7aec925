"""bench_overhead.py before and after: a git ref against this working tree, alternated.

    python bench/bench_overhead_ab.py [--base main] [--pairs 3]
        [bench_overhead.py options, e.g. --backend trio]

The base (``--base``, a git ref) is exported to a temporary folder; each pair runs
``bench/bench_overhead.py --json`` of this tree on the base's ``forge_sc`` and then on
this tree's, one after the other, so both see the same machine. Every pair is printed
with the load average; the summary gives, per backend and figure, the quietest pair
(the one whose direct baselines were fastest) and the range over the pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(pythonpath: Path, extra: list[str]) -> dict[str, Any]:
    """One ``bench_overhead.py --json`` run on ``pythonpath``'s forge_sc, flattened:
    ``{backend: {overhead and throughput figures}, "load_before", "load_after"}``."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figures.json"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "bench_overhead.py"),
                "--json",
                str(path),
                *extra,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        out = json.loads(path.read_text())
    figures: dict[str, Any] = {"load_before": out["load_1min"], "load_after": os.getloadavg()[0]}
    for backend, f in out["runs"][0].items():
        figures[backend] = {**f["overhead"], **f["throughput"]}
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", default="main")
    p.add_argument("--pairs", type=int, default=3)
    a, extra = p.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        archive = subprocess.run(
            ["git", "archive", a.base, "forge_sc"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        pairs = []
        for n in range(a.pairs):
            before, after = run(base, extra), run(ROOT, extra)
            pairs.append((before, after))
            for backend in ("asyncio", "trio"):
                if backend not in after:
                    continue
                b, t = before[backend], after[backend]
                print(
                    f"pair {n + 1} [{backend}] overhead {b['overhead_us']:.2f} -> "
                    f"{t['overhead_us']:.2f} us, ratio {b['ratio']:.2f} -> {t['ratio']:.2f} "
                    f"(load {before['load_before']:.1f}-{after['load_after']:.1f})",
                    flush=True,
                )
    print(f"summary ({a.base} -> working tree, {a.pairs} pairs, quietest pair; range):")
    for backend in ("asyncio", "trio"):
        if backend not in pairs[0][1]:
            continue
        rows = [(b[backend], t[backend], b["load_before"]) for b, t in pairs]
        q = min(rows, key=lambda r: r[0]["direct_us"] + r[1]["direct_us"])
        print(
            f"  [{backend}] route() overhead {q[0]['overhead_us']:.2f} -> "
            f"{q[1]['overhead_us']:.2f} us (range {min(r[0]['overhead_us'] for r in rows):.2f}"
            f"-{max(r[0]['overhead_us'] for r in rows):.2f} -> "
            f"{min(r[1]['overhead_us'] for r in rows):.2f}"
            f"-{max(r[1]['overhead_us'] for r in rows):.2f}), load {q[2]:.1f}"
        )
        q = max(rows, key=lambda r: r[0]["direct_per_s"] + r[1]["direct_per_s"])
        print(
            f"  [{backend}] throughput ratio {q[0]['ratio']:.2f} -> {q[1]['ratio']:.2f} "
            f"(range {min(r[0]['ratio'] for r in rows):.2f}-{max(r[0]['ratio'] for r in rows):.2f}"
            f" -> {min(r[1]['ratio'] for r in rows):.2f}-{max(r[1]['ratio'] for r in rows):.2f})"
            f", load {q[2]:.1f}"
        )


if __name__ == "__main__":
    main()
