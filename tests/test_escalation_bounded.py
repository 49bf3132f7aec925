"""Escalation after start-up, each outcome awaited under a bound: when every replica
has used up its restart budget while the service runs, the body is cancelled and
``open_service`` raises ``ServiceFailedError``, within a bounded time (a service that
failed to escalate must fail the test, not hang it)."""

from __future__ import annotations

import anyio
import pytest

from forge_sc import ReplicaState, open_service
from forge_sc.errors import NoHealthyReplicasError, ServiceFailedError
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for

pytestmark = pytest.mark.anyio

FAST = dict(health_poll_rate=0.01, health_timeout=0.05, restart_backoff=0.001)
BOUND = 5.0  # seconds: the escalations here take milliseconds


@pytest.mark.parametrize("max_restarts", [0, 2])
async def test_budget_used_up_after_start_up_escalates(max_restarts: int) -> None:
    mesh = FakeMesh()
    failed: list[ServiceFailedError] = []
    body_ran = False
    with anyio.move_on_after(BOUND) as bound:
        try:
            async with open_service(
                Counter, num_replicas=2, mesh=mesh, max_restarts=max_restarts, **FAST
            ) as svc:
                assert await svc.value.fanout() == [0, 0]  # started and serving
                body_ran = True
                for idx in (0, 1):
                    mesh.fail_spawns(idx, 100)
                    mesh.crash(idx)
                await anyio.sleep_forever()  # the escalation cancels the body
        except ServiceFailedError as exc:
            failed.append(exc)
    assert body_ran
    assert not bound.cancelled_caught, (
        f"every replica used up its restart budget after start-up, but the service did "
        f"not escalate within {BOUND} s"
    )
    assert len(failed) == 1 and "every replica used up its restart budget" in str(failed[0])
    assert all(r.state is ReplicaState.FAILED for r in svc.replicas)
    with pytest.raises(NoHealthyReplicasError):
        await svc.value.route()


async def test_last_replica_out_of_budget_escalates_after_the_first_failed() -> None:
    """One replica fails for good and the service serves on; when the last one fails
    for good too, the service escalates."""
    mesh = FakeMesh()
    failed: list[ServiceFailedError] = []
    with anyio.move_on_after(BOUND) as bound:
        try:
            async with open_service(
                Counter, num_replicas=2, mesh=mesh, max_restarts=0, **FAST
            ) as svc:
                mesh.crash(0)
                await wait_for(lambda: svc.replicas[0].state is ReplicaState.FAILED)
                assert await svc.value.route() == 0  # replica 1 serves on
                mesh.crash(1)
                await anyio.sleep_forever()
        except ServiceFailedError as exc:
            failed.append(exc)
    assert not bound.cancelled_caught, f"the service did not escalate within {BOUND} s"
    assert len(failed) == 1
