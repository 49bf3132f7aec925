"""Batching: a small CPU torch MLP served with batch_size=32 against batch_size=1,
same replicas, same callers; throughput ratio (DESIGN §8 target: >= 8x, lists and
tensors).

    pip install -e '.[torch]'
    python bench/bench_batching.py [--mesh monarch|fake] [--backend asyncio|trio]
                                   [--payload list tensor stacked] [--replicas 2]
                                   [--callers 128] [--sizes 1 2 4 8 16 32] [--json PATH]

Each caller sends one row of 64 features, as ``--payload``:

* ``list``: a list of floats; a batch arrives as a list of lists (the default
  batching contract), which the endpoint turns into one tensor;
* ``tensor``: a torch tensor; a batch arrives as a list of tensors (the default
  contract: each row travels in forge_sc's compact tensor form), which the endpoint
  stacks, and it returns a list;
* ``stacked``: a torch tensor, to endpoints declared with ``collate="stack",
  split="unbind"`` (opt-in): the batch is stacked before it is sent and travels as
  one tensor, and the endpoint returns one tensor, split per caller.

Batch 1 is the same unbatched endpoint for every payload. On FakeMesh the callers,
the batcher and the model share one thread, so the callers' own per-call cost bounds
the gain (see docs/performance.md). ``--sizes`` measures every batch size listed
(each against batch 1 of the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import anyio
import sniffio

from forge_sc import ForgeActor, LeastLoadedRouter, open_service, service_endpoint

D_IN, D_HIDDEN, D_OUT = 64, 256, 16
_ROWS = {"list": "rows as lists", "tensor": "tensor rows", "stacked": "tensor rows, stacked"}


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

    def _rows(self, xs: Any) -> Any:
        # A batch arrives as a list (the default contract): of tensors, or of plain
        # lists of floats (what a caller without torch, an environment or a
        # tokenizer, usually has).
        if isinstance(xs[0], self.torch.Tensor):
            return self.torch.stack(xs)
        return self.torch.tensor(xs)

    @service_endpoint(router=LeastLoadedRouter)
    async def b1(self, x: Any) -> int:
        return self._run(self._rows([x]) if not isinstance(x, self.torch.Tensor) else x[None])[0]

    def _batched(n: int) -> Any:  # type: ignore[misc]
        async def run(self: MLP, xs: Any) -> list[int]:
            return self._run(self._rows(xs))

        run.__name__ = run.__qualname__ = f"b{n}"
        return service_endpoint(router=LeastLoadedRouter, batch_size=n, batch_timeout=0.005)(run)

    b2 = _batched(2)
    b4 = _batched(4)
    b8 = _batched(8)
    b16 = _batched(16)
    b32 = _batched(32)
    del _batched

    def _stacked(n: int) -> Any:  # type: ignore[misc]
        async def run(self: MLP, x: Any) -> Any:
            with self.torch.inference_mode():
                return self.model(x).argmax(dim=1)  # one tensor, split per caller

        run.__name__ = run.__qualname__ = f"s{n}"
        return service_endpoint(
            router=LeastLoadedRouter,
            batch_size=n,
            batch_timeout=0.005,
            collate="stack",
            split="unbind",
        )(run)

    s2 = _stacked(2)
    s4 = _stacked(4)
    s8 = _stacked(8)
    s16 = _stacked(16)
    s32 = _stacked(32)
    del _stacked


async def measure(
    mesh_kind: str, replicas: int, callers: int, seconds: float, payload: str, sizes: list[int]
) -> dict[str, Any]:
    import torch

    mesh: Any = None
    if mesh_kind == "fake":
        from forge_sc.testing import FakeMesh

        mesh = FakeMesh(seed=0)
    torch.manual_seed(0)
    rows = torch.randn(64, D_IN)
    # Tensor rows: each its own tensor (as a caller that made it has), not a view.
    inputs: list[Any] = [r.clone() for r in rows] if payload != "list" else rows.tolist()
    family = "s" if payload == "stacked" else "b"
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

        await rate(svc.b1)  # warm-up both paths
        await rate(getattr(svc, f"{family}32"))
        by_size: dict[str, float] = {}
        for n in sorted(set(sizes) | {1}):
            by_size[str(n)] = await rate(getattr(svc, f"{family}{n}" if n > 1 else "b1"))
        stats = {
            s.endpoint[1:]: s.mean_batch_size
            for s in svc.statistics().batchers
            if s.endpoint[0] == family
        }
    backend = sniffio.current_async_library()
    base = by_size["1"]
    for n, r in by_size.items():
        mean = stats.get(n, 1.0)
        print(
            f"[{mesh_kind}, {backend}, {_ROWS[payload]}] MLP {D_IN}-{D_HIDDEN}-{D_HIDDEN}-"
            f"{D_OUT}, {replicas} replicas, {callers} callers: batch {n:2s} {r:8,.0f}/s = "
            f"{r / base:4.1f}x batch 1 (mean batch {mean:.1f})"
            + ("  (target >= 8x)" if n == "32" else "")
        )
    return {
        "mesh": mesh_kind,
        "backend": backend,
        "payload": payload,
        "replicas": replicas,
        "callers": callers,
        "per_s": by_size,
        "mean_batch": stats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mesh", choices=["monarch", "fake"], default="monarch")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--callers", type=int, default=128)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument(
        "--payload",
        choices=["list", "tensor", "stacked"],
        nargs="+",
        default=["list"],
        help="each caller's row: a list of floats (default), a torch tensor (batches "
        "arrive as lists of tensors), or a tensor to collate='stack' endpoints",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[32], choices=[1, 2, 4, 8, 16, 32])
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    a = p.parse_args()
    out: dict[str, Any] = {"bench": "batching", "load_1min": os.getloadavg()[0], "runs": []}
    print(f"load {os.getloadavg()[0]:.1f}")
    for payload in a.payload:
        out["runs"].append(
            anyio.run(
                measure,
                a.mesh,
                a.replicas,
                a.callers,
                a.seconds,
                payload,
                a.sizes,
                backend=a.backend,
            )
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
