"""Cancelled callers on real processes: the abandoned remote calls stay counted on
their replica until they resolve there, then free their slot exactly once."""

from __future__ import annotations

import anyio
import pytest

from forge_sc import open_service

from ..conftest import wait_for
from .monarch_actors import Worker

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]


async def test_cancelled_route_and_fanout_release_each_slot_once() -> None:
    async with open_service(Worker, num_replicas=2) as svc:
        seen: list[int] = []

        def loads() -> list[int]:
            now = [r.active_requests for r in svc.replicas]
            seen.extend(now)
            return now

        # The naps outlast both deadlines by 1.6 s: on a busy machine the second
        # check still finds the first two running (with 0.6 s naps it had 0.2 s).
        with anyio.move_on_after(0.2) as scope:
            await svc.nap.fanout(2.0)
        assert scope.cancelled_caught
        assert loads() == [1, 1]  # abandoned, still running remotely
        with anyio.move_on_after(0.2):
            await svc.nap.route(2.0)
        assert sum(loads()) == 3
        await wait_for(lambda: loads() == [0, 0], timeout=10)
        assert min(seen) >= 0
        assert await svc.nap.fanout(0.0) == [0.0, 0.0]
        assert loads() == [0, 0]
