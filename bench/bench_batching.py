"""Batching: a small CPU torch MLP served with batch_size=32 against batch_size=1,
same replicas, same callers; throughput ratio (DESIGN §8 target: >= 5x).

    pip install -e '.[torch]'
    python bench/bench_batching.py [--mesh monarch|fake] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio

from forge_sc import ForgeActor, LeastLoadedRouter, open_service, service_endpoint

D_IN, D_HIDDEN, D_OUT = 64, 256, 16


class MLP(ForgeActor):
    def __init__(self, seed: int = 0) -> None:
        import torch

        torch.manual_seed(seed)
        torch.set_num_threads(1)
        self.torch = torch
        self.model = torch.nn.Sequential(
            torch.nn.Linear(D_IN, D_HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(D_HIDDEN, D_HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(D_HIDDEN, D_OUT),
        ).eval()

    def _run(self, rows: Any) -> list[int]:
        with self.torch.inference_mode():
            out = self.model(rows)
        return [int(i) for i in out.argmax(dim=1).tolist()]

    @service_endpoint(router=LeastLoadedRouter)
    async def one(self, x: Any) -> int:
        return self._run(x.unsqueeze(0))[0]

    @service_endpoint(router=LeastLoadedRouter, batch_size=32, batch_timeout=0.005)
    async def batched(self, xs: list[Any]) -> list[int]:
        return self._run(self.torch.stack(xs))


async def measure(mesh_kind: str, replicas: int, callers: int, seconds: float) -> None:
    import torch

    mesh: Any = None
    if mesh_kind == "fake":
        from forge_sc.testing import FakeMesh

        mesh = FakeMesh(seed=0)
    torch.manual_seed(0)
    inputs = list(torch.randn(64, D_IN))  # callers send tensor rows
    async with open_service(
        MLP, num_replicas=replicas, mesh=mesh, replica_max_concurrent_requests=callers
    ) as svc:

        async def rate(endpoint: Any) -> float:
            done = 0
            stop_at = time.perf_counter() + seconds

            async def caller(k: int) -> None:
                nonlocal done
                i = k
                while time.perf_counter() < stop_at:
                    await endpoint.route(inputs[i % len(inputs)])
                    done += 1
                    i += 1

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for k in range(callers):
                    tg.start_soon(caller, k)
            return done / (time.perf_counter() - t0)

        await rate(svc.one)  # warm-up both paths
        await rate(svc.batched)
        unbatched = await rate(svc.one)
        batched = await rate(svc.batched)
        b = next(s for s in svc.statistics().batchers if s.endpoint == "batched")
    print(
        f"[{mesh_kind}] MLP {D_IN}-{D_HIDDEN}-{D_HIDDEN}-{D_OUT}, {replicas} replicas, "
        f"{callers} callers: batch 1 {unbatched:,.0f}/s, batch 32 {batched:,.0f}/s = "
        f"{batched / unbatched:.1f}x (target >= 5x; mean batch {b.mean_batch_size:.1f})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mesh", choices=["monarch", "fake"], default="monarch")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--callers", type=int, default=128)
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()
    anyio.run(measure, a.mesh, a.replicas, a.callers, a.seconds, backend=a.backend)


if __name__ == "__main__":
    main()
