"""route() overhead and throughput on FakeMesh, asyncio and trio, as ratios.

    python bench/bench_overhead.py [--calls 20000] [--callers 1000] [--per-caller 100]
                                   [--pairs 7] [--runs 1] [--json PATH]

Baselines are measured in the same run: a direct ``await`` of the same in-process
actor's endpoint, and the same callers awaiting the same 4 actors directly.

The throughput ratio is the median over ``--pairs`` pairs of runs, each pair a
direct run and a routed run back to back: on a shared 2-core machine the speed of
the machine itself moves by up to ~2x from one second to the next (a direct run
against a direct run ranges 0.6-1.5), so one pair alone says little.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import anyio

from forge_sc import ForgeActor, endpoint, open_service
from forge_sc._spec import collect_endpoints
from forge_sc.testing import FakeMesh


class Echo(ForgeActor):
    @endpoint
    async def echo(self, x: int) -> int:
        return x

    @endpoint
    async def tick(self, x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x


def _direct(actor: Any, name: str) -> Any:
    # The endpoint's own function, bound: what FakeMesh calls in-process.
    return collect_endpoints(type(actor))[name].fn.__get__(actor)


async def overhead(calls: int) -> dict[str, float]:
    async with open_service(Echo, num_replicas=1, mesh=FakeMesh(seed=0)) as svc:
        mesh_actor = svc._mesh.actor(0)  # type: ignore[attr-defined]
        direct = _direct(mesh_actor, "echo")
        route = svc.echo.route
        for i in range(2000):  # warm-up
            await route(i)
            await direct(i)
        t_route: list[float] = []
        t_direct: list[float] = []
        clock = time.perf_counter
        # Interleave in blocks so drift hits both equally; per-call medians.
        for _ in range(calls // 100):
            for i in range(100):
                t0 = clock()
                await direct(i)
                t_direct.append(clock() - t0)
            for i in range(100):
                t0 = clock()
                await route(i)
                t_route.append(clock() - t0)
    d = statistics.median(t_direct) * 1e6
    r = statistics.median(t_route) * 1e6
    return {"direct_us": d, "route_us": r, "overhead_us": r - d}


async def throughput(callers: int, per_caller: int, pairs: int = 7) -> dict[str, Any]:
    mesh = FakeMesh(seed=0)
    async with open_service(
        Echo, num_replicas=4, mesh=mesh, replica_max_concurrent_requests=callers
    ) as svc:
        actors = [_direct(mesh.actor(i), "tick") for i in range(4)]

        async def direct_caller(k: int) -> None:
            f = actors[k % 4]
            for i in range(per_caller):
                await f(i)

        async def routed_caller(k: int) -> None:
            route = svc.tick.route
            for i in range(per_caller):
                await route(i)

        async def run(fn: Any) -> float:
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for k in range(callers):
                    tg.start_soon(fn, k)
            return callers * per_caller / (time.perf_counter() - t0)

        await run(routed_caller)  # warm-up
        direct_rates: list[float] = []
        routed_rates: list[float] = []
        for _ in range(pairs):
            direct_rates.append(await run(direct_caller))
            routed_rates.append(await run(routed_caller))
    ratios = [r / d for r, d in zip(routed_rates, direct_rates, strict=True)]
    return {
        "direct_per_s": statistics.median(direct_rates),
        "routed_per_s": statistics.median(routed_rates),
        "ratio": statistics.median(ratios),
        "pair_ratios": ratios,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--callers", type=int, default=1000)
    p.add_argument("--per-caller", type=int, default=100)
    p.add_argument("--pairs", type=int, default=7, help="direct/routed pairs per throughput")
    p.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    p.add_argument("--runs", type=int, default=1, help="repeat everything, print each run")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    a = p.parse_args()
    backends = ["asyncio", "trio"] if a.backend == "both" else [a.backend]
    out: dict[str, Any] = {"bench": "overhead", "load_1min": os.getloadavg()[0], "runs": []}
    for _ in range(a.runs):
        run: dict[str, Any] = {}
        for backend in backends:
            o = anyio.run(overhead, a.calls, backend=backend)
            print(
                f"[{backend}] route() overhead: {o['overhead_us']:.2f} us "
                f"(route {o['route_us']:.2f} us, direct await {o['direct_us']:.2f} us; "
                f"target <= 1.5 us)"
            )
            t = anyio.run(throughput, a.callers, a.per_caller, a.pairs, backend=backend)
            spread = ", ".join(f"{r:.2f}" for r in sorted(t["pair_ratios"]))
            print(
                f"[{backend}] throughput, 4 replicas, {a.callers} callers x {a.per_caller}: "
                f"{t['routed_per_s']:,.0f}/s routed vs {t['direct_per_s']:,.0f}/s direct "
                f"(medians) = ratio {t['ratio']:.2f}, median of {a.pairs} pairs "
                f"[{spread}] (target >= 0.7)"
            )
            run[backend] = {"overhead": o, "throughput": t}
        out["runs"].append(run)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
