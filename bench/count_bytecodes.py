"""Bytecodes executed per call, routed vs direct, by function: where the hot path goes.

    python bench/count_bytecodes.py [--backend asyncio|trio|both] [--callers 200] [--top 12]
                                    [--json PATH]

The throughput case of ``bench_overhead.py`` (4 in-process replicas, callers awaiting
an endpoint that awaits one checkpoint), counted with ``sys.settrace`` opcode events
instead of timed: the counts do not move with the machine's load, so a change to the
request path can be judged from one run. Steady state only: the counts of a run of
``--per-caller`` calls minus those of a run of a third of them, per call. Tracing
slows everything ~50x; the figures are counts, not times.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import anyio
from bench_overhead import Echo, _direct

from forge_sc import open_service
from forge_sc.testing import FakeMesh


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{code.co_name}"


async def _count(backend_callers: int, per_caller: int, routed: bool) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            counts[_where(frame)] += 1
        return tracer

    mesh = FakeMesh(seed=0)
    async with open_service(
        Echo, num_replicas=4, mesh=mesh, replica_max_concurrent_requests=backend_callers
    ) as svc:
        actors = [_direct(mesh.actor(i), "tick") for i in range(4)]

        def target(k: int) -> Callable[[int], Awaitable[Any]]:
            return svc.tick.route if routed else actors[k % 4]  # type: ignore[no-any-return]

        async def caller(k: int, n: int) -> None:
            f = target(k)
            for i in range(n):
                await f(i)

        async def run(n: int) -> None:
            async with anyio.create_task_group() as tg:
                for k in range(backend_callers):
                    tg.start_soon(caller, k, n)

        await run(3)  # warm-up: FakeMesh learns that tick suspends
        short, long = max(per_caller // 3, 1), per_caller
        sys.settrace(tracer)
        try:
            await run(short)
            first = collections.Counter(counts)
            counts.clear()
            await run(long)
        finally:
            sys.settrace(None)
    steady = collections.Counter(
        {k: (counts[k] - first.get(k, 0)) for k in counts.keys() | first.keys()}
    )
    calls = backend_callers * (long - short)
    return collections.Counter({k: v / calls for k, v in steady.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    p.add_argument("--callers", type=int, default=200)
    p.add_argument("--per-caller", type=int, default=30)
    p.add_argument("--top", type=int, default=12, help="functions listed for the routed call")
    p.add_argument("--json", metavar="PATH", help="also write the counts as JSON")
    a = p.parse_args()
    out: dict[str, Any] = {"bench": "bytecodes", "callers": a.callers}
    for backend in ["asyncio", "trio"] if a.backend == "both" else [a.backend]:
        direct = anyio.run(_count, a.callers, a.per_caller, False, backend=backend)
        routed = anyio.run(_count, a.callers, a.per_caller, True, backend=backend)
        d, r = sum(direct.values()), sum(routed.values())
        print(
            f"[{backend}] bytecodes per call, {a.callers} callers: direct {d:.0f}, "
            f"routed {r:.0f} (+{r - d:.0f}; direct/routed {d / r:.2f})"
        )
        extra = {k: routed[k] - direct.get(k, 0.0) for k in routed}
        top = sorted(extra.items(), key=lambda kv: -kv[1])[: a.top]
        for k, v in top:
            print(f"  {v:6.1f}  {k}")
        out[backend] = {"direct": d, "routed": r, "extra_by_function": dict(top)}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
