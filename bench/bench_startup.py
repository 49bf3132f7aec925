"""Start-up: how long ``open_service`` takes to enter its body, by replica count
(DESIGN §8: 8 replicas <= 1.5 s; 1 replica no slower than ~0.55 s).

    python bench/bench_startup.py [--replicas 1 4 8] [--reps 3] [--backend asyncio]
                                  [--phases] [--json PATH]

Each rep opens a service of an echo actor on MonarchMesh and closes it; the time is
from ``open_service`` to the first line of its body (every replica healthy). With
``--phases``, each replica's start is split (bench-only instrumentation of
``MonarchReplica._start``): building the ProcMesh (``spawn_procs``, in a thread),
the health actor's first answer (the process started, imported Monarch and
forge_sc), and the user's actor answering (its class imported, ``__init__`` run).
Also printed once: the CPU time of importing Monarch and forge_sc in a fresh
interpreter, what every replica process pays.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio

from forge_sc import ForgeActor, endpoint, open_service
from forge_sc.mesh import monarch as _monarch

clock = time.perf_counter


class Echo(ForgeActor):
    @endpoint
    async def echo(self, x: int) -> int:
        return x


def import_cost() -> dict[str, float]:
    """Wall and CPU seconds of ``import monarch.actor, forge_sc`` in a fresh process."""
    code = (
        "import time, os; w = time.perf_counter(); c = time.process_time(); "
        "import monarch.actor; m = time.process_time() - c; "
        "import forge_sc; print(time.perf_counter() - w, time.process_time() - c, m)"
    )
    t0 = clock()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    total = clock() - t0
    wall, cpu, monarch_cpu = (float(x) for x in out.stdout.split())
    return {
        "interpreter_total_s": total,
        "imports_wall_s": wall,
        "imports_cpu_s": cpu,
        "monarch_cpu_s": monarch_cpu,
    }


#: Per replica start, seconds since the open began: (start, procs built, ready).
PHASES: list[tuple[float, float, float]] = []
_T0 = [0.0]


def instrument() -> None:
    """Time the phases of every replica start (bench-only)."""
    original_build = _monarch.MonarchReplica._build
    original_start = _monarch.MonarchReplica._start
    built: dict[int, float] = {}

    def build(self: Any, env: Any, hosts: int) -> None:
        original_build(self, env, hosts)
        built[id(self)] = clock() - _T0[0]

    async def start(self: Any) -> None:
        t0 = clock() - _T0[0]
        await original_start(self)
        PHASES.append((t0, built.pop(id(self), float("nan")), clock() - _T0[0]))

    _monarch.MonarchReplica._build = build  # type: ignore[method-assign]
    _monarch.MonarchReplica._start = start  # type: ignore[method-assign]


async def open_once(n: int) -> float:
    t0 = _T0[0] = clock()
    PHASES.clear()
    async with open_service(Echo, num_replicas=n) as svc:
        entered = clock() - t0
        assert await svc.echo.route(1) == 1
    return entered


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--backend", default="asyncio")
    p.add_argument("--phases", action="store_true")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args()
    out: dict[str, Any] = {
        "bench": "startup",
        "load_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "backend": a.backend,
    }
    out["imports"] = cost = import_cost()
    print(
        f"load {out['load_1min']:.1f}; a fresh interpreter importing Monarch and forge_sc: "
        f"{cost['interpreter_total_s']:.2f} s wall, imports {cost['imports_cpu_s']:.2f} s CPU "
        f"(Monarch {cost['monarch_cpu_s']:.2f} s)"
    )
    if a.phases:
        instrument()
    anyio.run(open_once, 1, backend=a.backend)  # warm-up (caches, bytecode)
    results: dict[str, list[float]] = {}
    for n in a.replicas:
        times = [anyio.run(open_once, n, backend=a.backend) for _ in range(a.reps)]
        results[str(n)] = times
        if a.phases:
            out.setdefault("phases", {})[str(n)] = sorted(PHASES)
            for i, (t_start, t_built, t_ready) in enumerate(sorted(PHASES)):
                print(
                    f"    replica start {i}: began {t_start:.2f} s, procs built {t_built:.2f} s,"
                    f" ready {t_ready:.2f} s"
                )
        print(
            f"{n} replicas: {min(times):.2f}-{max(times):.2f} s "
            f"(median {statistics.median(times):.2f} s)"
        )
    out["open_service_s"] = results
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
