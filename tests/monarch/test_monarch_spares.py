"""Warm spares on real processes: a SIGKILLed replica's place is taken by a spare."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

from forge_sc import open_service

from ..conftest import wait_for
from .service_actors import Doomed

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]


async def test_a_killed_replica_is_replaced_by_the_spare() -> None:
    async with open_service(Doomed, num_replicas=2, spare_replicas=1) as svc:
        await wait_for(lambda: svc.statistics().ready_spares == 1, timeout=30)
        pids = await svc.pid.fanout()
        replica = svc.replicas[0]
        os.kill(pids[0], signal.SIGKILL)
        with anyio.fail_after(30):
            await wait_for(lambda: replica.healthy and replica.restarts == 1, timeout=30)
            new = await svc.pid.fanout()
            assert new[1] == pids[1] and new[0] not in pids
            assert svc.statistics().healthy_replicas == 2
            # ... and a new spare is started.
            await wait_for(lambda: svc.statistics().spares_started == 2, timeout=30)
            await wait_for(lambda: svc.statistics().ready_spares == 1, timeout=30)
