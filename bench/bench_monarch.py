"""route() on real Monarch processes against direct Monarch calls on the same procs.

    python bench/bench_monarch.py [--backends asyncio trio] [--seq 2000]
                                  [--callers 200] [--per-caller 10] [--replicas 4]
                                  [--remote [--hosts 3]]

Services on MonarchMesh, per backend. The baseline is measured in the same run on
the very actors the service spawned: ``call_one`` awaited directly (on trio through
forge_sc's bridge, the only way to await a Monarch future there). Printed:

* sequential median latency of ``route()`` and of the direct call on a 1-replica
  service, and their ratio;
* throughput with ``--callers`` concurrent callers, each making ``--per-caller``
  calls, routed vs direct (direct callers spread round-robin over the same actors);
* the trio bridge's own cost: direct on trio vs direct on asyncio.

Blocks of direct and routed calls are interleaved so machine drift hits both.

``--remote`` runs the same on replicas placed on ``--hosts`` Monarch worker processes
of this machine attached over TCP (``MonarchMesh(workers=[...], ca=...)``, each worker
in a session of its own), this client on TCP too (``HYPERACTOR_MESH_DEFAULT_TRANSPORT``,
default ``tcp://127.0.0.1:0``); the baseline is direct calls to the same actors on
those workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from itertools import cycle
from typing import Any

if "--remote" in sys.argv:  # the client's transport: read when Monarch loads
    os.environ.setdefault("HYPERACTOR_MESH_DEFAULT_TRANSPORT", "tcp://127.0.0.1:0")

import anyio
import trio

from forge_sc import ForgeActor, endpoint, open_service
from forge_sc.mesh._bridge import wait
from forge_sc.mesh.monarch import MonarchMesh

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


class Echo(ForgeActor):
    @endpoint
    async def echo(self, x: int) -> int:
        return x


def _actors(svc: Any) -> list[Any]:
    """The Monarch actor meshes behind the service's replicas (bench-only access)."""
    return [r._inc.handle._actor for r in svc._replicas]


async def direct_call(actor: Any, x: int) -> Any:
    """The baseline: ``call_one`` awaited natively on asyncio, through the bridge
    (the only way) on trio."""
    fut = actor.echo.call_one(x)
    if trio.lowlevel.in_trio_run():
        return await wait(fut)
    return await fut


async def sequential(svc: Any, actors: list[Any], calls: int) -> dict[str, float]:
    route = svc.echo.route
    clock = time.perf_counter
    t_direct: list[float] = []
    t_route: list[float] = []
    for i in range(200):  # warm-up
        await route(i)
        await direct_call(actors[i % len(actors)], i)
    block = 100
    for b in range(max(1, calls // block)):
        actor = actors[b % len(actors)]
        for i in range(block):
            t0 = clock()
            await direct_call(actor, i)
            t_direct.append(clock() - t0)
        for i in range(block):
            t0 = clock()
            await route(i)
            t_route.append(clock() - t0)
    d = statistics.median(t_direct) * 1e6
    r = statistics.median(t_route) * 1e6
    return {"direct_us": d, "route_us": r, "ratio": r / d}


async def throughput(
    svc: Any, actors: list[Any], callers: int, per_caller: int, rounds: int = 8
) -> dict[str, float]:
    route = svc.echo.route

    async def direct_caller(actor: Any) -> None:
        for i in range(per_caller):
            await direct_call(actor, i)

    async def route_caller() -> None:
        for i in range(per_caller):
            await route(i)

    async def timed(kind: str) -> float:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            if kind == "direct":
                for _, actor in zip(range(callers), cycle(actors), strict=False):
                    tg.start_soon(direct_caller, actor)
            else:
                for _ in range(callers):
                    tg.start_soon(route_caller)
        return callers * per_caller / (time.perf_counter() - t0)

    direct: list[float] = []
    routed: list[float] = []
    for _ in range(rounds):
        direct.append(await timed("direct"))
        routed.append(await timed("route"))
    d = statistics.median(direct)
    r = statistics.median(routed)
    return {"direct_per_s": d, "route_per_s": r, "ratio": r / d}


@contextlib.contextmanager
def _workers(args: argparse.Namespace) -> Iterator[list[str] | None]:
    """The attached workers' addresses with ``--remote`` (killed afterwards)."""
    if not args.remote:
        yield None
        return
    sys.path.insert(0, ROOT)
    from tests.monarch._hosts import hosts

    with hosts(args.hosts) as hs:
        yield [h.address for h in hs]


def _mesh(workers: list[str] | None) -> MonarchMesh | None:
    return None if workers is None else MonarchMesh(workers=workers, ca="trust_all_connections")


async def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    with _workers(args) as workers:
        # Sequential on one replica: round-robin over several processes would add the
        # cost of waking a different process per call to route() only.
        async with open_service(Echo, num_replicas=1, mesh=_mesh(workers)) as svc:
            seq = await sequential(svc, _actors(svc), args.seq)
        async with open_service(
            Echo,
            num_replicas=args.replicas,
            replica_max_concurrent_requests=max(10, -(-args.callers // args.replicas)),
            mesh=_mesh(workers),
        ) as svc:
            thr = await throughput(svc, _actors(svc), args.callers, args.per_caller)
    return {"sequential": seq, "throughput": thr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
    parser.add_argument("--seq", type=int, default=2000)
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--per-caller", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--remote", action="store_true", help="replicas on attached TCP workers")
    parser.add_argument("--hosts", type=int, default=3, help="worker hosts with --remote")
    args = parser.parse_args()
    if args.remote:
        print(
            f"--remote: replicas on {args.hosts} Monarch workers attached over "
            f"tcp://127.0.0.1, client transport {os.environ['HYPERACTOR_MESH_DEFAULT_TRANSPORT']}"
        )

    results: dict[str, dict[str, dict[str, float]]] = {}
    for backend in args.backends:
        results[backend] = anyio.run(run, args, backend=backend)
        seq, thr = results[backend]["sequential"], results[backend]["throughput"]
        print(
            f"{backend:8s} sequential median: route {seq['route_us']:7.0f} us, direct "
            f"call_one {seq['direct_us']:7.0f} us -> ratio {seq['ratio']:.3f}"
        )
        print(
            f"{backend:8s} {args.callers} callers x {args.per_caller}, {args.replicas} "
            f"replicas: route {thr['route_per_s']:6.0f}/s, direct {thr['direct_per_s']:6.0f}/s"
            f" -> ratio {thr['ratio']:.3f}"
        )
    if "asyncio" in results and "trio" in results:
        a, t = results["asyncio"], results["trio"]
        print(
            "trio bridge vs asyncio, direct calls: sequential latency x"
            f"{t['sequential']['direct_us'] / a['sequential']['direct_us']:.3f}, "
            f"throughput x{t['throughput']['direct_per_s'] / a['throughput']['direct_per_s']:.3f}"
        )


if __name__ == "__main__":
    main()
