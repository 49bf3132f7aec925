"""Concurrent scale_to (issue 10, item 7): calls are serialized and the latest call's
target wins, deterministically; cancelling a scale-down never leaves a replica draining
in the pool."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from forge_sc import ReplicaState
from forge_sc.errors import ServiceClosedError, ServiceOverloadedError
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


@pytest.mark.parametrize("what", ["restart_replica", "scale_up"])
async def test_requests_do_not_wait_behind_a_replica_being_started(what: str) -> None:
    """restart_replica() and scale_to() wait for their replica to be healthy; a
    request meanwhile runs at once on the idle healthy replica (it is not queued
    behind them, nor refused by a zero-length queue or a short request_timeout)."""
    mesh = FakeMesh(seed=1)
    n = 2 if what == "restart_replica" else 1
    async with checked_service(
        mesh=mesh, num_replicas=n, max_queued_requests=0, request_timeout=0.5
    ) as svc:
        mesh.spawn_delay = 30.0
        async with anyio.create_task_group() as tg:
            if what == "restart_replica":
                tg.start_soon(svc.restart_replica, 0)
            else:
                tg.start_soon(svc.scale_to, 2)
            await wait_for(lambda: len(svc.replicas) == 2)
            await wait_for(lambda: svc.statistics().healthy_replicas == 1)
            outcomes: list[Any] = []
            with anyio.fail_after(5):
                for _ in range(3):
                    try:
                        outcomes.append(await svc.value.route())
                    except ServiceOverloadedError as exc:
                        outcomes.append(exc)
            assert outcomes == [1, 1, 1]
            assert svc.statistics().failed_requests == 0
            tg.cancel_scope.cancel()


async def test_restarting_a_replica_that_scale_to_removes_is_refused() -> None:
    """Its in-flight requests finish first (scale_to's promise): restart_replica()
    must not interrupt them, nor return as if it had restarted a replica that is
    going away."""
    mesh = FakeMesh(seed=1)
    async with checked_service(mesh=mesh, num_replicas=2, graceful_shutdown_timeout=5.0) as svc:
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 0.3)
            tg.start_soon(svc.nap.route, 0.3)
            await wait_for(lambda: all(r.active_requests for r in svc.replicas))
            tg.start_soon(svc.scale_to, 1)
            await wait_for(lambda: svc._replicas[1]._draining)  # scale_to() began
            with pytest.raises(ValueError, match="being removed by scale_to"):
                await svc.restart_replica(1)
        assert len(svc.replicas) == 1
        assert svc.statistics().retries == 0
        assert svc.statistics().successful_requests == 2


async def test_scaling_down_removes_a_replica_failed_for_good_first() -> None:
    """Replica 0 is out of restart budget, replica 1 serves: scale_to(1) keeps the one
    that serves (a replica failed for good counts for nothing), never the reverse."""
    mesh = FakeMesh(seed=1)
    async with checked_service(mesh=mesh, num_replicas=2, max_restarts=0) as svc:
        mesh.crash(0)
        await wait_for(lambda: svc.replicas[0].state is ReplicaState.FAILED)
        await svc.scale_to(1)
        assert [(r.idx, r.state) for r in svc.replicas] == [(1, ReplicaState.HEALTHY)]
        with anyio.fail_after(5):
            assert await svc.value.route() == 1


async def test_scale_to_replaces_a_replica_failed_for_good() -> None:
    mesh = FakeMesh(seed=1)
    async with checked_service(mesh=mesh, num_replicas=2, max_restarts=0) as svc:
        mesh.crash(0)
        await wait_for(lambda: svc.replicas[0].state is ReplicaState.FAILED)
        await svc.scale_to(2)
        assert [r.state for r in svc.replicas] == [ReplicaState.HEALTHY] * 2
        assert 0 not in [r.idx for r in svc.replicas]


async def test_the_autoscaler_does_not_count_a_replica_failed_for_good() -> None:
    """Load that wants 2 replicas, with min 2: replica 0 failed for good is replaced,
    so that 2 replicas serve."""
    mesh = FakeMesh(seed=1)
    async with checked_service(
        mesh=mesh,
        num_replicas=2,
        max_restarts=0,
        min_replicas=2,
        max_replicas=3,
        upscale_delay=0.05,
        downscale_delay=60.0,
    ) as svc:
        mesh.crash(0)
        await wait_for(lambda: svc.replicas[0].state is ReplicaState.FAILED)
        await wait_for(lambda: 0 not in [r.idx for r in svc.replicas], 5.0)
        await wait_for(lambda: [r.healthy for r in svc.replicas] == [True, True], 5.0)
        assert svc.statistics().scaling_events >= 1


async def test_scale_to_outside_the_autoscaling_bounds_is_refused() -> None:
    async with checked_service(num_replicas=2, min_replicas=2, max_replicas=3) as svc:
        for bad in (1, 4):
            with pytest.raises(ValueError, match="min_replicas=2 and max_replicas=3"):
                await svc.scale_to(bad)
        assert len(svc.replicas) == 2


async def test_restart_replica_whose_replica_scale_to_removed_meanwhile_says_so() -> None:
    """It returns once the replica is healthy again or failed for good; removed
    while it waited is neither, and is not a success."""
    mesh = FakeMesh(seed=1)
    async with checked_service(mesh=mesh, num_replicas=2, restart_backoff=0.3) as svc:
        mesh.fail_spawns(1, 2)
        outcome: list[Any] = []

        async def restart() -> None:
            try:
                await svc.restart_replica(1)
                outcome.append("returned")
            except ValueError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart)
            await wait_for(lambda: svc.replicas[1].state is not ReplicaState.HEALTHY)
            await svc.scale_to(1)
        assert len(outcome) == 1 and "removed by scale_to()" in str(outcome[0])


async def test_the_autoscaler_waits_for_the_start_up_to_end() -> None:
    """Replicas slower to start than the downscale delay: the autoscaler, seeing no
    load, must not remove one that open_service waits for (it waited forever)."""
    mesh = FakeMesh(seed=1, spawn_delay=0.2)
    with anyio.fail_after(30):
        async with checked_service(
            mesh=mesh, num_replicas=2, min_replicas=1, max_replicas=2,
            health_poll_rate=0.05, downscale_delay=0.0,
        ) as svc:  # fmt: skip
            assert [r.state for r in svc.replicas] == [ReplicaState.HEALTHY] * 2
            # Then it scales down as configured.
            await wait_for(lambda: len(svc.replicas) == 1, 10.0)
