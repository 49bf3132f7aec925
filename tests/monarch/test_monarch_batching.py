"""Batched endpoints (``@service_endpoint(batch_size=...)``) on real Monarch processes:
merging, order, positional and keyword arguments, and a replica killed while it runs
batches."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from forge_sc import open_service

from ..conftest import wait_for
from ._support import STEADY_HEALTH_TIMEOUT
from .service_actors import Scaler

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]


async def test_concurrent_callers_are_merged_in_order() -> None:
    results: dict[int, tuple[int, int, int]] = {}
    async with open_service(Scaler, num_replicas=2) as svc:
        pids = set(await svc.pid.fanout())

        async def caller(c: int) -> None:
            for i in range(10):
                x = 100 * c + i
                # positional ``xs`` and keyword ``factor`` are each transposed to a list
                results[x] = await svc.mul.route(x, factor=c + 2)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for c in range(16):
                    tg.start_soon(caller, c)
        stats = svc.statistics()
    assert len(results) == 160
    for x, (value, size, pid) in results.items():
        assert value == x * (x // 100 + 2)  # each caller got its own row's result back
        assert 1 <= size <= 8 and pid in pids
    (batcher,) = [b for b in stats.batchers if b.endpoint == "mul"]
    assert batcher.items_sent == 160
    assert batcher.max_batch_size <= 8
    assert batcher.mean_batch_size > 2  # 16 concurrent callers: calls were merged
    assert max(size for _, size, _ in results.values()) > 1
    assert stats.successful_requests == 160 + 2  # per caller, plus the fan-out on each replica
    assert stats.failed_requests == 0


async def test_replica_killed_while_running_batches(tmp_path: Path) -> None:
    answered = 0
    async with open_service(
        Scaler,
        0.2,
        str(tmp_path),
        num_replicas=2,
        restart_backoff=0.05,
        health_timeout=STEADY_HEALTH_TIMEOUT,
    ) as svc:
        pids = await svc.pid.fanout()
        busy = tmp_path / f"busy-{pids[0]}"

        async def caller(c: int) -> None:
            nonlocal answered
            for i in range(6):
                x = 100 * c + i
                value, _, _ = await svc.mul.route(x, factor=3)
                assert value == 3 * x
                answered += 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for c in range(16):
                    tg.start_soon(caller, c)
                # Replica 0 is inside a batch (it sleeps 0.2 s in it): kill it there.
                await wait_for(busy.exists, timeout=20)
                os.kill(pids[0], signal.SIGKILL)
            await wait_for(lambda: all(r.healthy for r in svc.replicas), timeout=15)
        assert answered == 16 * 6  # every caller of the killed batch answered too
        stats = svc.statistics()
        assert stats.retries >= 1  # the batch running on replica 0 was sent again
        assert stats.failed_requests == 0
        new_pids = await svc.pid.fanout()
        assert new_pids[0] not in pids and new_pids[1] == pids[1]
        assert [r.restarts for r in svc.replicas] == [1, 0]
