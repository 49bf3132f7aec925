"""Ownership: after open_service exits, by any path, nothing it started runs."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from forge_sc import ReplicaState, open_service
from forge_sc.errors import NoHealthyReplicasError, ServiceClosedError, ServiceFailedError
from forge_sc.mesh import SpawnSpec
from forge_sc.testing import FakeMesh
from forge_sc.testing._fake import FakeReplica

from .actors import Counter
from .conftest import running_tasks, wait_for

pytestmark = pytest.mark.anyio

FAST = dict(health_poll_rate=0.01, health_timeout=0.05, restart_backoff=0.001)


async def busy_service(svc: object) -> None:
    """Exercise every kind of internal task: batcher, pollers, sessions."""
    await svc.predict.route(1)  # type: ignore[attr-defined]
    async with svc.session():  # type: ignore[attr-defined]
        await svc.incr.route()  # type: ignore[attr-defined]


async def test_normal_exit_leaves_nothing_running() -> None:
    before = running_tasks()
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=3, mesh=mesh, **FAST) as svc:
        await busy_service(svc)
        assert len(running_tasks() - before) > 3  # supervisors, pollers, batcher...
    assert running_tasks() == before
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)
    with pytest.raises(ServiceClosedError):
        await svc.value.route()


async def test_body_exception_comes_out_bare_and_nothing_runs() -> None:
    before = running_tasks()
    with pytest.raises(KeyError, match="from the body"):
        async with open_service(Counter, num_replicas=2, mesh=FakeMesh(), **FAST) as svc:
            await busy_service(svc)
            raise KeyError("from the body")
    assert running_tasks() == before


async def test_cancellation_exit_leaves_nothing_running() -> None:
    before = running_tasks()
    # Cancelled from inside the body, once it runs: a wall-clock deadline could fire
    # during start-up instead on a busy machine (and test something else).
    with anyio.CancelScope() as scope:
        async with open_service(Counter, num_replicas=2, mesh=FakeMesh(), **FAST) as svc:
            await busy_service(svc)
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert running_tasks() == before
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)


async def test_escalation_exit_leaves_nothing_running() -> None:
    before = running_tasks()
    mesh = FakeMesh()
    with pytest.raises(ServiceFailedError):
        async with open_service(Counter, num_replicas=2, mesh=mesh, max_restarts=0, **FAST):
            mesh.crash(0)
            mesh.crash(1)
            await anyio.sleep_forever()
    assert running_tasks() == before


async def test_startup_failure_exit_leaves_nothing_running() -> None:
    before = running_tasks()
    mesh = FakeMesh()
    mesh.fail_spawns(1, 1)
    with pytest.raises(ServiceFailedError, match="replica 1 failed to start") as info:
        async with open_service(Counter, num_replicas=3, mesh=mesh):
            pass  # pragma: no cover
    assert "injected" in str(info.value.__cause__)
    assert running_tasks() == before


async def test_exit_while_a_replica_is_being_respawned() -> None:
    before = running_tasks()
    mesh = FakeMesh(spawn_delay=0.0)
    async with open_service(Counter, num_replicas=2, mesh=mesh, **FAST) as svc:
        mesh.spawn_delay = 10.0  # the respawn will hang in spawn
        mesh.crash(0)
        await wait_for(lambda: mesh.spawn_count(0) == 2)
    assert running_tasks() == before
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)


async def test_shutdown_is_idempotent_and_stop_is_an_alias() -> None:
    async with open_service(Counter, num_replicas=1, mesh=FakeMesh()) as svc:
        await svc.shutdown()
        await svc.stop()
        with pytest.raises(ServiceClosedError):
            await svc.value.route()
        assert svc.replicas[0].state is ReplicaState.STOPPED


async def test_restart_backoff_doubles_and_budget_counts_failed_spawns() -> None:
    mesh = FakeMesh(seed=3)
    async with open_service(
        Counter, num_replicas=2, mesh=mesh, max_restarts=3, restart_window=60.0,
        health_poll_rate=0.01, health_timeout=0.05, restart_backoff=0.02,
    ) as svc:  # fmt: skip
        mesh.fail_spawns(0, 2)
        t0 = anyio.current_time()
        mesh.crash(0)
        await wait_for(lambda: svc.replicas[0].healthy and svc.replicas[0].restarts == 3)
        elapsed = anyio.current_time() - t0
        # delays 0.02, 0.04, 0.08, each jittered by U(0.5, 1): between 0.07 and 0.14 s
        assert 0.07 <= elapsed < 1.0
        assert mesh.spawn_count(0) == 4
        mesh.crash(0)  # budget: 3 restarts in the window already used
        await wait_for(lambda: svc.replicas[0].state is ReplicaState.FAILED)
        await wait_for(lambda: mesh.spawn_count(0) == 4)
        assert svc.statistics().restarts == 3


async def test_restart_replica_is_the_hard_cancel() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=1, mesh=mesh, **FAST) as svc:
        old = mesh.actor(0)
        async with anyio.create_task_group() as tg:
            results: list[float] = []

            async def long_call() -> None:
                results.append(await svc.nap.route(0.05))

            tg.start_soon(long_call)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
            await svc.restart_replica(0)
            assert mesh.actor(0) is not old
        assert results == [0.05]  # interrupted, then retried on the new incarnation
        assert svc.replicas[0].restarts == 1
        with pytest.raises(ValueError, match="no replica"):
            await svc.restart_replica(9)


async def test_scale_up_and_down() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh) as svc:
        await svc.scale_to(4)
        assert [r.idx for r in svc.replicas] == [0, 1, 2, 3]
        assert all(r.healthy for r in svc.replicas)
        assert len(await svc.value.fanout()) == 4
        async with svc.session():
            for _ in range(4):
                await svc.incr.route()
            await svc.scale_to(1)
            assert await svc.value.route() in (0, 4)
        assert [r.idx for r in svc.replicas] == [0]
        stats = svc.statistics()
        assert stats.scaling_events == 2
        assert stats.total_replicas == 1
        with pytest.raises(ValueError):
            await svc.scale_to(0)


async def test_autoscaler_with_a_tiny_target_scales_to_the_bound() -> None:
    # ongoing / target overflows to inf: that means "as many as allowed", not a crash.
    async with open_service(
        Counter, num_replicas=1, mesh=FakeMesh(), min_replicas=1, max_replicas=2,
        target_ongoing_requests=1e-309, upscale_delay=0.0, health_poll_rate=0.01,
    ) as svc:  # fmt: skip
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 0.3)
            await wait_for(lambda: len(svc.replicas) == 2, timeout=5)
        assert await svc.value.route() == 0


async def test_autoscaler_follows_load() -> None:
    mesh = FakeMesh()
    async with open_service(
        Counter, num_replicas=1, mesh=mesh, min_replicas=1, max_replicas=3,
        target_ongoing_requests=1, upscale_delay=0.0, downscale_delay=0.05,
        health_poll_rate=0.01,
    ) as svc:  # fmt: skip
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(svc.nap.route, 0.3)
            await wait_for(lambda: len(svc.replicas) == 3, timeout=5)
        await wait_for(lambda: len(svc.replicas) == 1, timeout=5)
        assert svc.statistics().scaling_events >= 2


async def test_outside_caller_after_escalation_gets_no_healthy() -> None:
    mesh = FakeMesh()
    errors: list[BaseException] = []
    async with anyio.create_task_group() as outer:
        with pytest.raises(ServiceFailedError):
            async with open_service(
                Counter, num_replicas=1, mesh=mesh, max_restarts=0, **FAST
            ) as svc:

                async def outside() -> None:
                    try:
                        await svc.nap.route(10.0)
                    except (NoHealthyReplicasError, ServiceClosedError) as exc:
                        errors.append(exc)

                outer.start_soon(outside)
                await wait_for(lambda: svc.replicas[0].active_requests == 1)
                mesh.crash(0)
                await anyio.sleep_forever()
    assert len(errors) == 1
    assert type(errors[0]) is NoHealthyReplicasError


async def test_restart_replica_returns_when_the_replica_fails_for_good() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh, max_restarts=0, **FAST) as svc:
        with anyio.fail_after(5):  # it used to wait forever: another replica still lives
            with pytest.raises(NoHealthyReplicasError, match="replica 0 could not be"):
                await svc.restart_replica(0)
        assert svc.replicas[0].state is ReplicaState.FAILED
        assert await svc.value.route() == 0  # replica 1 serves on


async def test_scale_up_returns_when_the_new_replica_cannot_start() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=1, mesh=mesh, max_restarts=1, **FAST) as svc:
        mesh.fail_spawns(1, 10)
        with anyio.fail_after(5), pytest.raises(NoHealthyReplicasError, match="replica 1"):
            await svc.scale_to(2)
        assert [r.state for r in svc.replicas] == [ReplicaState.HEALTHY, ReplicaState.FAILED]
        assert await svc.value.route() == 0


class GatedMesh(FakeMesh):
    """Replica 1's spawn waits for ``gate``; ``first_up`` is set once replica 0 spawned."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.first_up = anyio.Event()

    async def spawn(self, spec: SpawnSpec) -> FakeReplica:
        if spec.idx == 1:
            await self.gate.wait()
        replica = await super().spawn(spec)
        if spec.idx == 0:
            self.first_up.set()
        return replica


async def test_budget_used_up_during_startup_fails_the_service() -> None:
    """A replica that started, died and could not come back while another was still
    starting: the service refuses to start instead of waiting forever."""
    before = running_tasks()
    mesh = GatedMesh()
    async with anyio.create_task_group() as tg:

        async def kill_first() -> None:
            await mesh.first_up.wait()
            mesh.crash(0)

        tg.start_soon(kill_first)
        with anyio.fail_after(5), pytest.raises(ServiceFailedError) as info:
            async with open_service(Counter, num_replicas=2, mesh=mesh, max_restarts=0, **FAST):
                pytest.fail("the body must not run")  # pragma: no cover
    assert "replica 0 used up its restart budget while the service was starting" in str(
        info.value
    )
    assert "crashed" in str(info.value.__cause__)  # the death is the cause
    assert running_tasks() == before


async def test_escalation_names_the_death_that_caused_it() -> None:
    mesh = FakeMesh()
    with pytest.raises(ServiceFailedError, match="last error") as info:
        async with open_service(Counter, num_replicas=1, mesh=mesh, max_restarts=0, **FAST):
            mesh.crash(0)
            await anyio.sleep_forever()
    assert info.value.__cause__ is not None
    assert "crashed" in str(info.value.__cause__)


async def test_escalation_while_the_body_awaits_a_request() -> None:
    """The body's own request, in flight or queued when the service escalates, is
    cancelled with the body: ``ServiceFailedError`` comes out alone, not in a group
    with the request's ``NoHealthyReplicasError``."""
    before = running_tasks()
    mesh = FakeMesh()
    with anyio.fail_after(10):
        with pytest.raises(ServiceFailedError, match="restart budget") as info:
            async with open_service(
                Counter, num_replicas=1, mesh=mesh, max_restarts=0, **FAST
            ) as svc:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(svc.nap.route, 10.0)  # in flight
                    await wait_for(lambda: svc.replicas[0].active_requests == 1)
                    mesh.crash(0)
                    await svc.value.route()  # waits for a replica that never returns
                pytest.fail("the body must have been cancelled")  # pragma: no cover
    assert type(info.value) is ServiceFailedError
    assert running_tasks() == before


async def test_escalation_fails_outside_batched_callers_with_no_healthy() -> None:
    """A batch waiting for a replica when the service escalates: its callers outside
    the block get ``NoHealthyReplicasError``, like any request from outside."""
    mesh = FakeMesh()
    errors: list[BaseException] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as outer:
            with pytest.raises(ServiceFailedError):
                async with open_service(
                    Counter, num_replicas=1, mesh=mesh, max_restarts=1,
                    health_poll_rate=0.01, health_timeout=0.05, restart_backoff=0.2,
                ) as svc:  # fmt: skip

                    async def outside(x: int) -> None:
                        try:
                            await svc.predict.route(x)
                        except Exception as exc:
                            errors.append(exc)

                    mesh.fail_spawns(0, 5)
                    mesh.crash(0)  # recovers in 0.1-0.2 s, then its spawn fails
                    await wait_for(lambda: svc.replicas[0].state is ReplicaState.RECOVERING)
                    for x in range(3):
                        outer.start_soon(outside, x)
                    await anyio.sleep_forever()
    assert len(errors) == 3
    assert all(type(e) is NoHealthyReplicasError for e in errors), errors


class _Bare:
    """A third-party replica: the protocol's members only (no ``death``)."""

    def __init__(self, inner: FakeReplica) -> None:
        self.detaches_on_cancel = inner.detaches_on_cancel
        self.call = inner.call
        self.ping = inner.ping
        self.wait_dead = inner.wait_dead
        self.stop = inner.stop


class BareMesh:
    """A third-party mesh built on FakeMesh's replicas."""

    def __init__(self) -> None:
        self.fake = FakeMesh()

    def lifespan(self) -> Any:
        return self.fake.lifespan()

    async def spawn(self, spec: SpawnSpec) -> _Bare:
        return _Bare(await self.fake.spawn(spec))


async def test_third_party_mesh_without_death_attribute() -> None:
    mesh = BareMesh()
    with pytest.raises(ServiceFailedError, match="last error") as info:
        async with open_service(Counter, num_replicas=1, mesh=mesh, max_restarts=0, **FAST) as svc:
            assert await svc.value.route() == 0
            mesh.fake.crash(0)
            await anyio.sleep_forever()
    assert "crashed" in str(info.value.__cause__)
