"""Warm spares on real processes: a SIGKILLed replica's place is taken by a spare."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

from forge_sc import open_service
from forge_sc.mesh import monarch as monarch_mod

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


async def test_a_promoted_spare_is_watched_by_its_pidfds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the pidfds may notice a death here: Monarch's reports are dropped and the
    # health checks are 30 s apart. The spare's keeper watched it before it was
    # taken; the replica's supervisor must watch it once promoted.
    monkeypatch.setattr(monarch_mod.MonarchReplica, "_on_failure", lambda self, report: None)
    async with open_service(
        Doomed, num_replicas=1, spare_replicas=1, health_poll_rate=30.0, health_timeout=30.0
    ) as svc:
        replica = svc.replicas[0]
        for kill in (1, 2):
            await wait_for(lambda: svc.statistics().ready_spares == 1, timeout=30)
            pid = await svc.pid.route()
            os.kill(pid, signal.SIGKILL)
            # Noticed (by a pidfd: nothing else can here) and replaced.
            await wait_for(lambda k=kill: replica.restarts == k, timeout=10)  # type: ignore[misc]
