"""A large float32 tensor to a same-host replica and back (DESIGN §8: >= 2 GB/s each way).

    python bench/bench_payload.py [--mb 100] [--reps 5] [--backend asyncio trio]
                                  [--json PATH]

One replica on MonarchMesh. Per direction, ``--reps`` timed calls after a warm-up:

* to the replica: ``put(t)``; the replica reads one element of every 4 KiB page of
  the tensor it got (so a mapping that was never touched is not counted as moved);
* back: ``get(n)`` returns a tensor the replica made once (not timed); the client
  reads one element per page of what it got, inside the timing;
* round trip: ``echo(t)`` (each way counted: 2 x size / time).

Baselines in the same run: the machine's memcpy rate (``dst.copy_(src)`` into warm
memory, and ``src.clone()`` into fresh memory, which pays the first touch of every
page), and the same endpoints on a plain Monarch actor, whose arguments and results
Monarch pickles itself (``torch.save`` of the storage: what forge_sc did before).
Printed: min-max GB/s over the reps; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import anyio
import torch
from payload_actors import Payload, PlainPayload, touch

from forge_sc import open_service
from forge_sc.mesh._bridge import wait

clock = time.perf_counter


def memcpy_rates(n: int, reps: int) -> dict[str, list[float]]:
    src = torch.randn(n)
    dst = torch.empty_like(src)
    dst.copy_(src)
    warm, fresh = [], []
    for _ in range(reps):
        t0 = clock()
        dst.copy_(src)
        warm.append(src.nbytes / (clock() - t0) / 1e9)
        t0 = clock()
        c = src.clone()
        fresh.append(src.nbytes / (clock() - t0) / 1e9)
        del c
    return {"memcpy_warm_gbs": warm, "memcpy_fresh_gbs": fresh}


async def timed(fn: Any, nbytes: int, reps: int, factor: int = 1) -> list[float]:
    for _ in range(3):  # warm-up: the segments are made (fresh memory) and reused after
        await fn()
    rates = []
    for _ in range(reps):
        t0 = clock()
        await fn()
        rates.append(factor * nbytes / (clock() - t0) / 1e9)
    return rates


async def via_service(n: int, reps: int) -> dict[str, list[float]]:
    t = torch.randn(n)
    async with open_service(Payload, num_replicas=1) as svc:

        async def put() -> None:
            await svc.put.route(t)

        async def get() -> None:
            touch(await svc.get.route(n))

        async def echo() -> None:
            touch(await svc.echo.route(t))

        return {
            "to_replica_gbs": await timed(put, t.nbytes, reps),
            "from_replica_gbs": await timed(get, t.nbytes, reps),
            "round_trip_each_way_gbs": await timed(echo, t.nbytes, reps, factor=2),
        }


async def via_monarch(n: int, reps: int) -> dict[str, list[float]]:
    from monarch.actor import default_bootstrap_cmd, this_host

    from forge_sc.mesh.monarch import _child_env

    t = torch.randn(n)
    cmd = default_bootstrap_cmd().with_env(_child_env(()))  # this folder on its path
    procs = this_host().spawn_procs(per_host={"procs": 1}, bootstrap_command=cmd)
    try:
        actor = procs.spawn("plain_payload", PlainPayload)

        async def put() -> None:
            await wait(actor.put.call_one(t))

        async def get() -> None:
            touch(await wait(actor.get.call_one(n)))

        async def echo() -> None:
            touch(await wait(actor.echo.call_one(t)))

        return {
            "to_replica_gbs": await timed(put, t.nbytes, reps),
            "from_replica_gbs": await timed(get, t.nbytes, reps),
            "round_trip_each_way_gbs": await timed(echo, t.nbytes, reps, factor=2),
        }
    finally:
        await anyio.to_thread.run_sync(lambda: procs.stop().get())


def rng(values: list[float]) -> str:
    return f"{min(values):5.2f}-{max(values):5.2f} (median {statistics.median(values):5.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=100.0, help="tensor size, MB (10^6 bytes)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--backend", nargs="+", default=["asyncio"])
    p.add_argument("--no-monarch-baseline", action="store_true")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    a = p.parse_args()
    n = int(a.mb * 1e6 / 4)
    out: dict[str, Any] = {
        "bench": "payload",
        "bytes": n * 4,
        "reps": a.reps,
        "load_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    out.update(memcpy_rates(n, a.reps))
    print(
        f"{n * 4 / 1e6:.0f} MB float32, {a.reps} reps, load {out['load_1min']:.1f}; "
        f"memcpy {rng(out['memcpy_warm_gbs'])} GB/s warm, "
        f"{rng(out['memcpy_fresh_gbs'])} GB/s into fresh memory"
    )
    for backend in a.backend:
        res = {"forge_sc": anyio.run(via_service, n, a.reps, backend=backend)}
        if not a.no_monarch_baseline:
            res["monarch_pickle"] = anyio.run(via_monarch, n, a.reps, backend=backend)
        out[backend] = res
        for kind, figs in res.items():
            print(f"[{backend}, {kind}]")
            print(f"  to the replica      {rng(figs['to_replica_gbs'])} GB/s  (target >= 2)")
            print(f"  back from it        {rng(figs['from_replica_gbs'])} GB/s  (target >= 2)")
            print(f"  round trip, per way {rng(figs['round_trip_each_way_gbs'])} GB/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
