"""A batch of tensor rows on the wire: one stacked encoding against one per row, and
against the same rows as lists of floats, through Monarch's own pickler.

    pip install -e '.[torch]'
    python bench/bench_rows.py [--rows 32] [--width 64] [--reps 2000] [--json PATH]

Each figure is the mean of ``--reps`` rounds in this process: the client's part
(forge_sc's encoding, then Monarch's ``torch_dump``) and the replica's part
(Monarch's ``torch_loads``, then ``torch.stack`` of the rows, or ``torch.tensor`` of
the lists, as the batching bench's endpoint does). "per row" encodes each row on its
own, as forge_sc did before a list of rows travelled as one tensor.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from monarch._src.actor.pickle import torch_dump, torch_loads

from forge_sc import _tensors


def _encode_rows(rows: Any) -> Any:
    return _tensors.encode_call((rows,), {}, None)[0]


def _encode_each(rows: Any) -> Any:
    return ([_tensors.encode_call((r,), {}, None)[0][0] for r in rows],)


def _as_batch(out: Any) -> Any:
    return torch.stack(out) if isinstance(out[0], torch.Tensor) else torch.tensor(out)


def _mean_us(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(min(200, reps)):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def measure(payload: Any, encode: Callable[[Any], Any], reps: int) -> dict[str, float]:
    def client() -> bytes:
        f = io.BytesIO()
        torch_dump(encode(payload), f)
        return f.getvalue()

    data = client()

    def replica() -> Any:
        return _as_batch(torch_loads(data)[0])

    return {
        "client_us": _mean_us(client, reps),
        "replica_us": _mean_us(replica, reps),
        "bytes": float(len(data)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rows = [r.clone() for r in torch.randn(a.rows, a.width)]
    cases = {
        "tensor rows, one encoding": (rows, _encode_rows),
        "tensor rows, one per row": (rows, _encode_each),
        "rows as lists": ([r.tolist() for r in rows], _encode_rows),
    }
    out: dict[str, Any] = {"bench": "rows", "load_1min": os.getloadavg()[0], "cases": {}}
    print(f"load {os.getloadavg()[0]:.1f}; {a.rows} rows of {a.width} float32")
    for name, (payload, encode) in cases.items():
        out["cases"][name] = measure(payload, encode, a.reps)
    base = out["cases"]["tensor rows, one per row"]
    for name, m in out["cases"].items():
        print(
            f"{name:28s} client {m['client_us']:7.1f} us ({m['client_us'] / base['client_us']:.2f}"
            f" of per row), replica {m['replica_us']:7.1f} us "
            f"({m['replica_us'] / base['replica_us']:.2f}), {m['bytes']:,.0f} bytes"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
