"""Tensors to and from real replica processes: exact round trips, shared memory for
large ones (released after use and after a crash), batched tensor rows (as a list by
default, stacked when the endpoint asks)."""

from __future__ import annotations

import gc
import os
import signal
import threading
from typing import Any

import anyio
import pytest

from forge_sc import open_service

from ..conftest import wait_for

torch = pytest.importorskip("torch")

from forge_sc._tensors import SHM_MIN_BYTES  # noqa: E402

from .tensor_actors import Tensors  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]

BIG = SHM_MIN_BYTES // 4 * 3  # float32 elements: 3 MiB, through shared memory


def ours() -> set[str]:
    """The shared-memory segments of this process's replicas."""
    prefix = f"forge_sc-{os.getpid()}-"
    return {f for f in os.listdir("/dev/shm") if f.startswith(prefix)}


def made_by_replicas() -> set[str]:
    """Segments the replicas' processes wrote (their results): named with their pid."""
    return {f for f in ours() if f.rsplit("-", 2)[-2] != str(os.getpid())}


def same(a: Any, b: Any) -> None:
    assert type(b) is torch.Tensor and a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b)


async def test_tensors_round_trip_exactly_through_a_replica() -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    cases = [
        torch.randn(3, 4),
        torch.tensor(7, dtype=torch.int64),
        torch.zeros(0, 3),
        base.t(),
        base[2:5, 1:9],
        torch.randn(4).to(torch.bfloat16),
        torch.tensor([True, False]),
        torch.randn(2, dtype=torch.complex128),
        torch.randn(BIG),  # shared memory, both ways
        torch.randn(BIG // 2, 2).t(),  # large and non-contiguous
    ]
    async with open_service(Tensors, num_replicas=1) as svc:
        out = await svc.echo.route(cases)
        for a, b in zip(cases, out, strict=True):
            same(a, b)
        nested = await svc.echo.route({"k": (cases[0], [cases[3]])})
        same(cases[0], nested["k"][0])
        same(cases[3], nested["k"][1][0])
        assert await svc.total.route(cases[8]) == pytest.approx(float(cases[8].double().sum()))
        made = await svc.make.route(BIG)
        same(torch.arange(BIG, dtype=torch.float32), made)
        assert made_by_replicas()  # a large result came back through shared memory
        assert ours() - made_by_replicas()  # ... and a large argument went out through it
        del out, made
        gc.collect()
        for _ in range(8):  # 16 large transfers: segments are reused, not made per call
            same(cases[8], await svc.echo.route(cases[8]))
            gc.collect()
        assert len(ours()) <= 6
    assert ours() == set()  # released with the replica


async def test_segments_of_a_killed_replica_are_removed() -> None:
    async with open_service(Tensors, num_replicas=1, restart_backoff=0.05) as svc:
        big = torch.randn(BIG)
        same(big, await svc.echo.route(big))
        before = ours()
        assert before
        pid = await svc.pid.route()
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(30):
            await wait_for(
                lambda: svc.replicas[0].healthy and svc.replicas[0].restarts == 1, timeout=30
            )
            # The dead incarnation's segments go when its stop ran (in the background).
            await wait_for(lambda: not (before & ours()), timeout=15)
        same(big, await svc.echo.route(big))
    assert ours() == set()


@pytest.mark.parametrize("endpoint", ["rows", "stacked"])
async def test_batched_tensor_rows_arrive_as_a_list_or_stacked_if_asked(endpoint: str) -> None:
    # ``rows``: the default, a list of tensors; ``stacked``: collate="stack",
    # split="unbind" (the actor asserts what it receives).
    async with open_service(Tensors, num_replicas=1) as svc:
        ep = getattr(svc, endpoint)
        rows = [torch.full((4,), float(i)) for i in range(8)]
        out: list[Any] = [None] * 8

        async def one(i: int) -> None:
            out[i] = await ep.route(rows[i])

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        for r, o in zip(rows, out, strict=True):
            same(r * 2, o)
        (batcher,) = [b for b in svc.statistics().batchers if b.endpoint == endpoint]
        assert batcher.items_sent == 8


async def test_more_large_tensors_in_flight_than_a_pool_tracks_all_arrive() -> None:
    """20 large tensors of different sizes (each its own segment) in one call, both
    ways, and 20 callers at once: none of the segments on their way is lost."""
    xs = {f"t{i}": torch.full((BIG + 1024 * i,), float(i)) for i in range(20)}
    async with open_service(Tensors, num_replicas=1, replica_max_concurrent_requests=20) as svc:
        out = await svc.echo.route(xs)
        for k, x in xs.items():
            same(x, out[k])
        got: dict[int, Any] = {}

        async def one(i: int) -> None:
            got[i] = await svc.echo.route(xs[f"t{i}"])

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
        for i in range(20):
            same(xs[f"t{i}"], got[i])
    assert ours() == set()


async def test_a_call_whose_arguments_fail_to_pickle_leaves_no_segment_held() -> None:
    big = torch.randn(BIG)
    async with open_service(Tensors, num_replicas=1) as svc:
        same(big, await svc.echo.route(big))
        gc.collect()
        held = len(ours())
        for _ in range(4):
            with pytest.raises(TypeError, match="pickle"):
                await svc.echo.route([big, threading.Lock()])
        same(big, await svc.echo.route(big))
        gc.collect()
        assert len(ours()) == held  # the failed calls' segments were reused


async def test_concurrent_large_tensors_each_arrive_as_sent() -> None:
    """Segments are reused between calls as their receivers release them: with many
    overlapping calls, no call's data is overwritten by another's, on its way or
    while its endpoint holds it (a late release of one call once freed a segment that
    another call had reused and was sending)."""
    n = 200
    wrong: list[Any] = []
    async with open_service(Tensors, num_replicas=2, replica_max_concurrent_requests=20) as svc:

        async def one(i: int) -> None:
            t = torch.full((SHM_MIN_BYTES // 2,), float(i))  # 2 MiB
            seen, later, out = await svc.check.route(t, i, (0.0, 0.02, 0.2)[i % 3])
            if seen != (i, i) or later != (i, i) or not torch.equal(out, t * 2):
                wrong.append((i, seen, later, float(out[0]) / 2))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
                    if i % 25 == 0:  # in waves: releases and new sends interleave
                        await anyio.sleep(0.05)
    assert wrong == []
