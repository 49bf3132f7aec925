"""forge_sc demo: 4 replicas on real Monarch processes, a replica process killed
mid-traffic, live progress, and the metrics at the end.

    python examples/demo.py                       # asyncio, real processes
    python examples/demo.py --backend trio
    python examples/demo.py --mesh fake           # in-process FakeMesh, no processes
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import time
from typing import Any

import anyio

# forge_sc sets Monarch's supervision poll interval as it loads Monarch: import
# forge_sc before anything that imports monarch.
from forge_sc import ForgeActor, LeastLoadedRouter, endpoint, open_service, service_endpoint
from forge_sc.errors import ServiceError


class TinyModel(ForgeActor):
    """A model-like workload: a fixed random 2-layer MLP in pure Python."""

    def __init__(self, seed: int = 0, width: int = 32) -> None:
        rng = random.Random(seed)
        self.w1 = [[rng.gauss(0, 0.3) for _ in range(8)] for _ in range(width)]
        self.w2 = [rng.gauss(0, 0.3) for _ in range(width)]

    def _forward(self, x: list[float]) -> float:
        hidden = [max(0.0, sum(w * v for w, v in zip(row, x, strict=True))) for row in self.w1]
        return math.tanh(sum(w * h for w, h in zip(self.w2, hidden, strict=True)))

    @endpoint
    async def pid(self) -> int:
        return os.getpid()

    @service_endpoint(router=LeastLoadedRouter, batch_size=16, batch_timeout=0.005)
    async def predict(self, xs: list[list[float]]) -> list[float]:
        return [self._forward(x) for x in xs]


async def traffic(
    svc: Any, stop: anyio.Event, counts: dict[str, int], latencies: list[float]
) -> None:
    rng = random.Random()
    while not stop.is_set():
        x = [rng.uniform(-1, 1) for _ in range(8)]
        t0 = time.perf_counter()
        try:
            await svc.predict.route(x)
            counts["ok"] += 1
            latencies.append(time.perf_counter() - t0)
        except ServiceError as exc:
            counts["failed"] += 1
            counts.setdefault(type(exc).__name__, 0)
            counts[type(exc).__name__] += 1


async def replica_pids(svc: Any) -> dict[int, int]:
    """Each healthy replica's process id, by replica index. The fan-out picks its
    targets (the healthy replicas, in index order) before it first waits."""
    idxs = [r.idx for r in svc.replicas if r.healthy]
    pids = await svc.pid.fanout()
    return dict(zip(idxs, pids, strict=True))


async def main(mesh_kind: str, seconds: float, callers: int) -> int:
    mesh: Any = None
    if mesh_kind == "fake":
        from forge_sc.testing import FakeMesh

        mesh = FakeMesh(seed=1)
    print(
        f"forge_sc demo: backend={BACKEND}, mesh={mesh_kind}, 4 replicas, "
        f"{callers} callers, {seconds:.0f} s"
    )
    t_start = time.perf_counter()
    async with open_service(
        TinyModel, 7, num_replicas=4, mesh=mesh, health_poll_rate=0.2, health_timeout=1.0
    ) as svc:
        print(f"  service up in {time.perf_counter() - t_start:.2f} s: {svc!r}")
        pids = await replica_pids(svc)
        print(f"  replica pids: {pids}")
        counts = {"ok": 0, "failed": 0}
        latencies: list[float] = []
        stop = anyio.Event()
        victim = 1
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(traffic, svc, stop, counts, latencies)
            t0 = time.perf_counter()
            killed = False
            while (elapsed := time.perf_counter() - t0) < seconds:
                await anyio.sleep(0.5)
                if not killed and elapsed >= seconds / 3:
                    killed = True
                    if mesh is None:
                        os.kill(pids[victim], signal.SIGKILL)
                        print(f"  !! SIGKILL sent to replica {victim} (pid {pids[victim]})")
                    else:
                        mesh.crash(victim)
                        print(f"  !! replica {victim} crashed (FakeMesh)")
                states = " ".join(f"{r.idx}:{r.state.name[:4]}" for r in svc.replicas)
                s = svc.statistics()
                print(
                    f"  t={elapsed:4.1f}s answered={counts['ok']:6d} failed={counts['failed']} "
                    f"retries={s.retries} restarts={s.restarts} rate={s.request_rate:7.0f}/s "
                    f"[{states}]"
                )
            stop.set()
        new_pids = await replica_pids(svc)
        summary = svc.get_metrics_summary()
        stats = svc.statistics()
    print("\nreplica pids after:", new_pids)
    if mesh is None:
        after = new_pids.get(victim, "not healthy at the end")
        print(f"replica {victim}: pid {pids[victim]} -> {after}")
    print("\nmetrics summary (service):")
    for key, value in summary["service"].items():
        print(f"  {key:26s} {value:.4g}" if isinstance(value, float) else f"  {key:26s} {value}")
    print("per replica:")
    for idx, rep in summary["replicas"].items():
        print(
            f"  [{idx}] state={rep['state']:8s} restarts={rep['restarts']} "
            f"requests={rep['total_requests']} ok={rep['successful_requests']} "
            f"failed={rep['failed_requests']} avg_latency={rep['avg_latency'] * 1e3:.2f} ms"
        )
    lat = sorted(latencies)
    if lat:
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3  # noqa: E731
        print(
            f"\ncaller-side latency: p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, "
            f"max {lat[-1] * 1e3:.1f} ms over {len(lat)} requests"
        )
    print(
        f"requests answered {counts['ok']}, failed explicitly {counts['failed']}, "
        f"retries {stats.retries}, restarts {stats.restarts}, batches "
        f"{stats.batchers[0].batches_sent} (mean size {stats.batchers[0].mean_batch_size:.1f})"
    )
    return 0


BACKEND = "asyncio"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--mesh", choices=["monarch", "fake"], default="monarch")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--callers", type=int, default=32)
    args = parser.parse_args()
    BACKEND = args.backend
    sys.exit(anyio.run(main, args.mesh, args.seconds, args.callers, backend=args.backend))
