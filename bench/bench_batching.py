"""Batching: a small CPU torch MLP served with batch_size=32 against batch_size=1,
same replicas, same callers; throughput ratio (DESIGN §8 target: >= 5x).

    pip install -e '.[torch]'
    python bench/bench_batching.py [--mesh monarch|fake] [--backend asyncio|trio]
                                   [--payload list|tensor] [--replicas 2] [--callers 128]

Each caller sends one row of 64 features: a list of floats by default, or a torch
tensor with ``--payload tensor``. On Monarch every argument is pickled, and a tensor
row costs ~130 us to pickle against ~2 us for a list, so with tensor rows the client's
pickling bounds the batched figure. On FakeMesh the callers, the batcher and the model
share one thread, so the callers' own per-call cost bounds it (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import sniffio

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

    def _rows(self, xs: list[Any]) -> Any:
        # A row is a tensor, or a plain list of floats (what a caller without torch,
        # an environment or a tokenizer, usually has).
        if isinstance(xs[0], self.torch.Tensor):
            return self.torch.stack(xs)
        return self.torch.tensor(xs)

    @service_endpoint(router=LeastLoadedRouter)
    async def one(self, x: Any) -> int:
        return self._run(self._rows([x]))[0]

    @service_endpoint(router=LeastLoadedRouter, batch_size=32, batch_timeout=0.005)
    async def batched(self, xs: list[Any]) -> list[int]:
        return self._run(self._rows(xs))


async def measure(
    mesh_kind: str, replicas: int, callers: int, seconds: float, payload: str
) -> None:
    import torch

    mesh: Any = None
    if mesh_kind == "fake":
        from forge_sc.testing import FakeMesh

        mesh = FakeMesh(seed=0)
    torch.manual_seed(0)
    rows = torch.randn(64, D_IN)
    inputs: list[Any] = list(rows) if payload == "tensor" else rows.tolist()
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
        f"[{mesh_kind}, {sniffio.current_async_library()}, rows as {payload}s] "
        f"MLP {D_IN}-{D_HIDDEN}-{D_HIDDEN}-{D_OUT}, {replicas} replicas, "
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
    p.add_argument(
        "--payload",
        choices=["list", "tensor"],
        default="list",
        help="each caller's row: a list of floats (default) or a torch tensor, which "
        "Monarch pickles in ~130 us per row",
    )
    a = p.parse_args()
    anyio.run(measure, a.mesh, a.replicas, a.callers, a.seconds, a.payload, backend=a.backend)


if __name__ == "__main__":
    main()
