"""Every row of the request-semantics table (docs/user_guide.md), on FakeMesh."""

from __future__ import annotations

import anyio
import pytest

from forge_sc import ReplicaState, open_service
from forge_sc.errors import (
    FanoutError,
    NoHealthyReplicasError,
    ReplicaDiedError,
    ServiceClosedError,
    ServiceFailedError,
    ServiceOverloadedError,
)
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for

pytestmark = pytest.mark.anyio

FAST = dict(health_poll_rate=0.01, health_timeout=0.05, restart_backoff=0.001)


async def test_user_exception_is_reraised_and_replica_stays_healthy() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=1, mesh=mesh) as svc:
        with pytest.raises(KeyError, match="bad input"):
            await svc.boom.route("bad input")
        assert svc.replicas[0].state is ReplicaState.HEALTHY
        assert svc.replicas[0].restarts == 0
        assert mesh.spawn_count(0) == 1
        assert await svc.value.route() == 0
        stats = svc.statistics()
        assert (stats.failed_requests, stats.successful_requests) == (1, 1)


async def test_replica_death_retries_elsewhere_and_replica_recovers() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh, **FAST) as svc:
        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call(tag: str) -> None:
                results.append(await svc.record.route(tag, 0.2))

            for i in range(4):
                tg.start_soon(call, f"r{i}")
            await wait_for(lambda: svc.replicas[0].active_requests > 0)
            mesh.crash(0)
        assert sorted(results) == ["r0", "r1", "r2", "r3"]
        stats = svc.statistics()
        assert stats.retries >= 1
        await wait_for(lambda: svc.replicas[0].state is ReplicaState.HEALTHY)
        assert svc.replicas[0].restarts == 1
        assert mesh.spawn_count(0) == 2


async def test_death_on_every_attempt_gives_replica_died_error() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=1, mesh=mesh, max_attempts=2, **FAST) as svc:

        async def killer() -> None:
            for n in range(2):  # kill each incarnation once the request runs on it
                await wait_for(
                    lambda n=n: (
                        svc.replicas[0].restarts == n  # type: ignore[misc]
                        and svc.replicas[0].healthy
                        and svc.replicas[0].active_requests > 0
                    )
                )
                mesh.crash(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            with pytest.raises(ReplicaDiedError, match="max_attempts=2"):
                await svc.nap.route(5.0)
        assert svc.statistics().retries == 1


async def test_non_idempotent_endpoint_is_never_resent() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh, **FAST) as svc:
        async with anyio.create_task_group() as tg:

            async def crash_when_running() -> None:
                await wait_for(lambda: any(r.active_requests for r in svc.replicas))
                busy = next(r.idx for r in svc.replicas if r.active_requests)
                mesh.crash(busy)

            tg.start_soon(crash_when_running)
            with pytest.raises(ReplicaDiedError, match="idempotent=False"):
                await svc.once.route("only-once", 5.0)
        executed = [
            mesh.actor(r.idx).calls.count("only-once")
            for r in svc.replicas
            if r.state is ReplicaState.HEALTHY
        ]
        assert sum(executed) == 0  # the survivor never saw it: not re-sent
        assert svc.statistics().retries == 0


async def test_request_queued_on_a_dead_replica_moves_and_runs_once() -> None:
    # A session pins its requests to one replica; with capacity 1 the second waits
    # queued there. The replica dies: the queued one moves, and runs exactly once.
    mesh = FakeMesh()
    async with open_service(
        Counter, num_replicas=2, mesh=mesh, replica_max_concurrent_requests=1, **FAST
    ) as svc:
        async with svc.session():
            await svc.record.route("warm")
            home = next(r for r in svc.replicas if r.assigned_sessions == 1)
            results: list[str] = []
            async with anyio.create_task_group() as tg:

                async def call(tag: str, seconds: float) -> None:
                    try:
                        results.append(await svc.record.route(tag, seconds))
                    except ReplicaDiedError:
                        results.append(f"{tag}:died")

                tg.start_soon(call, "running", 0.3)
                await wait_for(lambda: home.active_requests == 1)
                tg.start_soon(call, "queued", 0.0)
                await wait_for(lambda: home.queue_depth == 1)
                mesh.crash(home.idx)
            assert "queued" in results
            other = next(r for r in svc.replicas if r is not home)
            assert mesh.actor(other.idx).calls.count("queued") == 1
            assert svc.statistics().session_migrations == 1


async def test_no_healthy_replica_waits_for_recovery() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=1, mesh=mesh, **FAST) as svc:
        mesh.fail_spawns(0, 2)
        mesh.crash(0)
        # The replica needs three spawns to come back; the request waits for it.
        assert await svc.value.route() == 0
        assert mesh.spawn_count(0) == 4


async def test_no_healthy_replica_past_request_timeout() -> None:
    mesh = FakeMesh()
    async with open_service(
        Counter, num_replicas=1, mesh=mesh, request_timeout=0.1, max_restarts=50,
        health_poll_rate=0.01, health_timeout=0.05, restart_backoff=0.2,
    ) as svc:  # fmt: skip
        mesh.fail_spawns(0, 50)
        mesh.crash(0)
        await wait_for(lambda: not svc.replicas[0].healthy)
        with pytest.raises(NoHealthyReplicasError, match="request_timeout"):
            await svc.value.route()


async def test_all_at_capacity_waits_then_overloaded_past_timeout() -> None:
    mesh = FakeMesh()
    async with open_service(
        Counter, num_replicas=1, mesh=mesh, replica_max_concurrent_requests=1,
        request_timeout=0.1,
    ) as svc:  # fmt: skip
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 0.3)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
            with pytest.raises(ServiceOverloadedError, match="capacity"):
                await svc.value.route()
        # and a waiting request is served once a slot frees
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 0.05)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
            assert await svc.value.route() == 0


async def test_queue_full_is_overloaded_at_once() -> None:
    mesh = FakeMesh()
    async with open_service(
        Counter, num_replicas=1, mesh=mesh, replica_max_concurrent_requests=1,
        max_queued_requests=1,
    ) as svc:  # fmt: skip
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 0.2)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
            tg.start_soon(svc.value.route)
            await wait_for(lambda: svc.statistics().queue_depth == 1)
            with anyio.fail_after(0.05):  # "at once": no waiting
                with pytest.raises(ServiceOverloadedError, match="max_queued_requests=1"):
                    await svc.value.route()


async def test_every_replica_out_of_budget_escalates() -> None:
    mesh = FakeMesh()
    body_cancelled = False
    with pytest.raises(ServiceFailedError, match="restart budget"):
        async with open_service(Counter, num_replicas=2, mesh=mesh, max_restarts=1, **FAST) as svc:
            mesh.fail_spawns(0, 10)
            mesh.fail_spawns(1, 10)
            mesh.crash(0)
            mesh.crash(1)
            try:
                await anyio.sleep_forever()
            finally:
                body_cancelled = True
    assert body_cancelled
    assert all(r.state is ReplicaState.FAILED for r in svc.replicas)
    # calls from outside the block after escalation: NoHealthyReplicasError
    with pytest.raises(NoHealthyReplicasError):
        await svc.value.route()


async def test_one_replica_out_of_budget_stays_failed_others_serve() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh, max_restarts=1, **FAST) as svc:
        mesh.fail_spawns(0, 10)
        mesh.crash(0)
        await wait_for(
            lambda: svc.replicas[0].restarts == 1 and svc.replicas[0].state is ReplicaState.FAILED
        )
        for _ in range(5):
            assert await svc.value.route() == 0
        assert svc.replicas[0].state is ReplicaState.FAILED
        assert svc.replicas[1].state is ReplicaState.HEALTHY


async def test_cancelled_caller_leaves_replica_healthy() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=1, mesh=mesh, **FAST) as svc:
        with anyio.move_on_after(0.05) as scope:
            await svc.nap.route(5.0)
        assert scope.cancelled_caught
        assert svc.replicas[0].state is ReplicaState.HEALTHY
        assert svc.replicas[0].active_requests == 0
        assert svc.replicas[0].restarts == 0
        assert await svc.value.route() == 0


async def test_cancelled_caller_is_withdrawn_from_the_queue() -> None:
    mesh = FakeMesh()
    async with open_service(
        Counter, num_replicas=1, mesh=mesh, replica_max_concurrent_requests=1
    ) as svc:
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 0.2)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
            with anyio.move_on_after(0.02):
                await svc.record.route("withdrawn")
            assert svc.statistics().queue_depth == 0
        assert "withdrawn" not in mesh.actor(0).calls
        assert svc.replicas[0].restarts == 0


async def test_closing_refuses_new_requests_and_drains_in_flight() -> None:
    mesh = FakeMesh()
    finished: list[float] = []
    async with anyio.create_task_group() as outer:
        async with open_service(Counter, num_replicas=1, mesh=mesh) as svc:

            async def outside() -> None:  # a task outside the block
                finished.append(await svc.nap.route(0.1))

            outer.start_soon(outside)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
        assert finished == [0.1]  # ran to completion before the replicas stopped
    with pytest.raises(ServiceClosedError):
        await svc.value.route()
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)


async def test_closing_cancels_in_flight_past_graceful_timeout() -> None:
    mesh = FakeMesh()
    outcome: list[BaseException] = []
    async with anyio.create_task_group() as outer:
        async with open_service(
            Counter, num_replicas=1, mesh=mesh, graceful_shutdown_timeout=0.05
        ) as svc:

            async def outside() -> None:
                try:
                    await svc.nap.route(30.0)
                except ServiceClosedError as exc:
                    outcome.append(exc)

            outer.start_soon(outside)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
    assert len(outcome) == 1


@pytest.mark.parametrize("answered", [0, 1])
async def test_closing_cuts_off_a_fanout_past_graceful_timeout(answered: int) -> None:
    # A fan-out is one request: cut off by the close, it fails as a route() does,
    # even when some replicas had answered.
    mesh = FakeMesh()
    outcome: list[BaseException] = []
    async with anyio.create_task_group() as outer:
        async with open_service(
            Counter, num_replicas=2, mesh=mesh, graceful_shutdown_timeout=0.05
        ) as svc:
            for i in range(answered, 2):
                mesh.slow(i, 30.0)

            async def outside() -> None:
                try:
                    await svc.value.fanout()
                except ServiceClosedError as exc:
                    outcome.append(exc)

            outer.start_soon(outside)
            await wait_for(lambda: svc.replicas[1].active_requests == 1)
            if answered:
                await wait_for(lambda: svc.statistics().replicas[0].total_requests == 1)
    assert len(outcome) == 1
    assert isinstance(outcome[0], ServiceClosedError)


async def test_a_fanout_that_lost_a_replica_before_the_close_drains_normally() -> None:
    # A replica that crashed on its own is left out, also when the close began
    # meanwhile: the fan-out finishes within the drain; it was not cut off.
    mesh = FakeMesh()
    got: list[object] = []
    async with anyio.create_task_group() as outer:
        async with open_service(Counter, num_replicas=2, mesh=mesh) as svc:

            async def outside() -> None:
                got.append(await svc.nap.fanout(0.3))

            outer.start_soon(outside)
            await wait_for(lambda: all(r.active_requests == 1 for r in svc.replicas))
            mesh.crash(0)
            await wait_for(lambda: svc.replicas[0].active_requests == 0)
    assert got == [[0.3]]


async def test_fanout_returns_results_in_replica_order() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=3, mesh=mesh) as svc:
        for i in range(3):
            mesh.actor(i).v = 10 * i
        assert await svc.value.fanout() == [0, 10, 20]
        assert await svc.call_all("value") == [0, 10, 20]


async def test_fanout_error_carries_partial_results() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=3, mesh=mesh) as svc:
        mesh.actor(0).v = 4
        mesh.actor(1).v = -1
        mesh.actor(2).v = 6
        with pytest.raises(FanoutError) as info:
            await svc.checked.fanout()
        err = info.value
        assert err.results == {0: 4, 2: 6}
        assert list(err.errors) == [1]
        assert isinstance(err.errors[1], ValueError)
        assert [type(e) for e in err.exceptions] == [ValueError]
        assert all(r.healthy for r in svc.replicas)


async def test_fanout_leaves_out_replicas_that_die() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=3, mesh=mesh, **FAST) as svc:
        async with anyio.create_task_group() as tg:
            got: list[list[float]] = []

            async def fan() -> None:
                got.append(await svc.nap.fanout(0.2))

            tg.start_soon(fan)
            await wait_for(lambda: all(r.active_requests for r in svc.replicas))
            mesh.crash(1)
        assert got == [[0.2, 0.2]]
        assert svc.statistics().failed_requests == 1


async def test_hung_replica_is_detected_by_health_timeout() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh, **FAST) as svc:
        mesh.hang(0)
        results = [await svc.value.route() for _ in range(4)]
        assert results == [0, 0, 0, 0]
        await wait_for(lambda: svc.replicas[0].restarts == 1)
        await wait_for(lambda: svc.replicas[0].healthy)


async def test_replica_died_error_says_why_the_replica_died() -> None:
    # A hung replica is found by the health check; the caller hears that, not only
    # the "stopped" its interrupted call saw.
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=1, mesh=mesh, max_attempts=1, **FAST) as svc:
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                with pytest.raises(ReplicaDiedError, match="1 replica died") as info:
                    await svc.nap.route(30.0)
                assert "health ping took longer than 0.05s" in str(info.value)

            tg.start_soon(call)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
            mesh.hang(0)
