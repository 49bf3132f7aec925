"""Concurrent scale_to (issue 10, item 7): calls are serialized and the latest call's
target wins, deterministically; cancelling a scale-down never leaves a replica draining
in the pool."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from forge_sc import ReplicaState
from forge_sc.errors import ServiceClosedError
from forge_sc.testing import FakeMesh

from ._support import checked_service, wait_for

pytestmark = pytest.mark.anyio


async def _concurrently(svc: Any, first: int, second: int) -> list[BaseException]:
    """``scale_to(first)``, then (while it runs) ``scale_to(second)``."""
    errors: list[BaseException] = []

    async def scale(n: int) -> None:
        try:
            await svc.scale_to(n)
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        before = len(svc.replicas)
        tg.start_soon(scale, first)
        # The first call is under way: replicas added, or being drained.
        await wait_for(
            lambda: (
                len(svc.replicas) != before
                or any(r.state is ReplicaState.STOPPING for r in svc.replicas)
            ),
            1.0,
        )
        tg.start_soon(scale, second)
    return errors


@pytest.mark.parametrize(("first", "second"), [(1, 1), (1, 4), (4, 1), (4, 2), (2, 4)])
async def test_two_concurrent_scale_to_end_at_the_latest_target(first: int, second: int) -> None:
    mesh = FakeMesh(spawn_delay=0.02)
    async with checked_service(mesh=mesh, num_replicas=3) as svc:
        async with anyio.create_task_group() as tg:
            for _ in range(3):  # one on each replica: a scale-down has to drain
                tg.start_soon(svc.nap.route, 0.1)
            await wait_for(lambda: svc.statistics().active_requests == 3)
            errors = await _concurrently(svc, first, second)
        assert errors == []
        assert len(svc.replicas) == second
        assert all(r.state is ReplicaState.HEALTHY for r in svc.replicas)
        assert [r.idx for r in svc.replicas] == sorted(r.idx for r in svc.replicas)
        assert await svc.value.route() == 1


async def test_many_concurrent_scale_to_the_last_one_wins() -> None:
    async with checked_service(mesh=FakeMesh(spawn_delay=0.005), num_replicas=2) as svc:
        targets = [3, 1, 4, 1, 5, 2, 6, 3]
        async with anyio.create_task_group() as tg:
            for n in targets:
                tg.start_soon(svc.scale_to, n)
                await anyio.sleep(0.001)
        assert len(svc.replicas) == targets[-1]


async def test_a_cancelled_scale_down_still_removes_its_replicas() -> None:
    async with checked_service(num_replicas=3, graceful_shutdown_timeout=5.0) as svc:
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 0.2)
            tg.start_soon(svc.nap.route, 0.2)
            tg.start_soon(svc.nap.route, 0.2)
            await wait_for(lambda: svc.statistics().active_requests == 3)
            with anyio.move_on_after(0.02):
                await svc.scale_to(1)
        assert len(svc.replicas) == 1
        assert svc.replicas[0].state is ReplicaState.HEALTHY


async def test_scale_to_after_close_and_bad_targets() -> None:
    async with checked_service() as svc:
        for bad in (0, -1, 1.5, True, "2", None, 10**400):
            with pytest.raises(ValueError, match="scale_to"):
                await svc.scale_to(bad)
    with pytest.raises(ServiceClosedError):
        await svc.scale_to(2)
