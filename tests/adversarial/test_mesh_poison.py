"""A request whose endpoint raises a BaseException that is not an Exception ends the
actor on Monarch, so it must never be re-sent: its caller gets
RequestKilledReplicaError, the replica is restarted once, and the other requests in
flight there are retried as after any death. FakeMesh does the same (the Monarch
half is ``tests/monarch/test_monarch_adversarial.py``)."""

from __future__ import annotations

import anyio
import pytest

from forge_sc import open_service
from forge_sc.errors import FanoutError, RequestKilledReplicaError
from forge_sc.testing import FakeMesh

from ..conftest import wait_for
from .mesh_actors import BASE_EXCEPTIONS, Poison

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("kind", sorted(BASE_EXCEPTIONS))
async def test_a_request_that_kills_its_replica_is_not_re_sent(kind: str) -> None:
    mesh = FakeMesh(seed=1)
    async with open_service(Poison, mesh=mesh, max_restarts=2, restart_backoff=0.01) as svc:
        first = await svc.pid.route()
        with anyio.fail_after(10):
            with pytest.raises(RequestKilledReplicaError) as info:
                await svc.poison.route(kind)
            assert await svc.echo.route(7) == 7  # a new incarnation answers
        err = info.value
        assert f"{BASE_EXCEPTIONS[kind].__name__}: poison: {kind}," in str(err)
        assert "Raise an Exception subclass instead" in str(err)
        assert isinstance(err.__cause__.__cause__, BASE_EXCEPTIONS[kind])  # type: ignore[union-attr]
        assert await svc.pid.route() != first
        stats = svc.statistics()
        assert (stats.restarts, stats.retries, mesh.spawn_count(0)) == (1, 0, 2)
        assert stats.failed_requests == 1


async def test_the_other_requests_in_flight_are_retried() -> None:
    mesh = FakeMesh(seed=1)
    async with open_service(
        Poison, mesh=mesh, num_replicas=2, max_restarts=2, restart_backoff=0.01
    ) as svc:
        answers: list[int] = []
        errors: list[BaseException] = []

        async def innocent(x: int) -> None:
            answers.append(await svc.slow_echo.route(x, 0.2))

        async def poison() -> None:
            try:
                await svc.poison.route("custom", 0.05)
            except RequestKilledReplicaError as exc:
                errors.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for x in range(6):
                    tg.start_soon(innocent, x)
                tg.start_soon(poison)
        assert sorted(answers) == list(range(6))
        assert len(errors) == 1
        stats = svc.statistics()
        assert stats.restarts == 1
        assert stats.retries >= 1  # the poisoned replica's innocent calls went elsewhere
        assert stats.successful_requests == 6 and stats.failed_requests == 1


async def test_two_poison_requests_cost_two_restarts_not_the_budget() -> None:
    mesh = FakeMesh(seed=1)
    async with open_service(Poison, mesh=mesh, max_restarts=2, restart_backoff=0.01) as svc:
        with anyio.fail_after(10):
            for _ in range(2):
                with pytest.raises(RequestKilledReplicaError):
                    await svc.poison.route("SystemExit")
            assert await svc.echo.route(1) == 1
        assert svc.statistics().restarts == 2


async def test_a_poisoned_batch_fails_its_callers_once() -> None:
    mesh = FakeMesh(seed=1)
    async with open_service(Poison, mesh=mesh, max_restarts=2, restart_backoff=0.01) as svc:
        outcomes: list[object] = []

        async def one(x: int) -> None:
            try:
                outcomes.append(await svc.batch.route(x))
            except RequestKilledReplicaError as exc:
                outcomes.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for x in (1, 2, -1, 3):
                    tg.start_soon(one, x)
            assert await svc.batch.route(5) == 5
        assert len(outcomes) == 4
        assert all(isinstance(o, RequestKilledReplicaError) for o in outcomes), outcomes
        assert svc.statistics().restarts == 1


async def test_a_poisoned_fanout_reports_each_replica() -> None:
    mesh = FakeMesh(seed=1)
    async with open_service(
        Poison, mesh=mesh, num_replicas=2, max_restarts=2, restart_backoff=0.01
    ) as svc:
        with anyio.fail_after(10):
            with pytest.raises(FanoutError) as info:
                await svc.poison.fanout("GeneratorExit")
            await wait_for(lambda: all(r.healthy for r in svc.replicas))
            assert await svc.echo.fanout(3) == [3, 3]
        assert sorted(info.value.errors) == [0, 1]
        assert all(isinstance(e, RequestKilledReplicaError) for e in info.value.errors.values())
        assert svc.statistics().restarts == 2
