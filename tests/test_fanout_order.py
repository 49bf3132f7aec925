"""``fanout`` answers in replica-index order, whatever order the replicas finish in."""

from __future__ import annotations

import anyio
import pytest

from forge_sc import open_service
from forge_sc.testing import FakeMesh

from .conftest import wait_for
from .gated import Gated

pytestmark = pytest.mark.anyio


async def test_fanout_results_in_index_order_when_replicas_finish_in_reverse() -> None:
    mesh = FakeMesh()
    async with open_service(Gated, num_replicas=4, mesh=mesh) as svc:
        for i in range(4):
            mesh.actor(i).name = i
        got: list[object] = []

        async def fan() -> None:
            got.extend(await svc.hold.fanout("go"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(fan)
            await wait_for(lambda: all(mesh.actor(i).started == ["go"] for i in range(4)))
            for i in (3, 1, 2, 0):  # finish order: not the index order
                mesh.actor(i).gate("go").set()
                await wait_for(lambda i=i: svc.replicas[i].active_requests == 0)  # type: ignore[misc]
        assert got == [(0, "go"), (1, "go"), (2, "go"), (3, "go")]


async def test_fanout_results_in_index_order_with_unequal_delays() -> None:
    mesh = FakeMesh()
    async with open_service(Gated, num_replicas=3, mesh=mesh) as svc:
        for i in range(3):
            mesh.actor(i).name = i
        for i, seconds in enumerate([0.06, 0.0, 0.03]):
            mesh.slow(i, seconds)  # replica 1 answers first, then 2, then 0
        assert await svc.nap.fanout(0.0) == [0, 1, 2]
        stats = svc.statistics()
        assert stats.successful_requests == 3 and stats.failed_requests == 0
