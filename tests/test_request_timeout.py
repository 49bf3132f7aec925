"""``request_timeout`` bounds the whole wait of a request for a replica to run on:
queueing, recovery and the waits after every re-send, added up (its execution time
is not counted). Under trio the runs use a ``MockClock`` (exact, in virtual time);
under asyncio, real time with margins that a loaded machine keeps."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import sniffio
from trio.testing import MockClock

from forge_sc import open_service
from forge_sc.errors import NoHealthyReplicasError
from forge_sc.testing import FakeMesh

from .conftest import wait_for
from .gated import Gated

pytestmark = pytest.mark.anyio

TIMEOUT = 2.0  # request_timeout
QUEUED = 1.5  # how long the request waits for capacity before it first runs


@pytest.fixture(params=["asyncio", "trio-virtual"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    if request.param == "asyncio":
        return "asyncio"
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


def _one_slot(mesh: FakeMesh) -> Any:
    """One replica with one slot, bounded by ``request_timeout=TIMEOUT``."""
    return open_service(
        Gated, num_replicas=1, mesh=mesh, replica_max_concurrent_requests=1,
        request_timeout=TIMEOUT, health_poll_rate=0.05, restart_backoff=0.01,
    )  # fmt: skip


def virtual() -> bool:
    return sniffio.current_async_library() == "trio"


async def test_request_timeout_counts_the_wait_before_a_resend() -> None:
    """A request waits QUEUED for capacity, runs, its replica dies, and no replica
    comes back: it gets ``NoHealthyReplicasError`` once its waits add up to
    ``request_timeout``, i.e. ``TIMEOUT - QUEUED`` after the death, not a whole
    ``request_timeout`` after it."""
    mesh = FakeMesh(seed=1)
    async with _one_slot(mesh) as svc:
        actor = mesh.actor(0)
        outcome: list[BaseException] = []
        died_at: list[float] = []

        async def request() -> None:
            try:
                await svc.hold.route("late")  # its gate never opens
            except NoHealthyReplicasError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.hold.route, "blocker")
            await wait_for(lambda: actor.started == ["blocker"])
            tg.start_soon(request)
            await wait_for(lambda: svc.statistics().queue_depth == 1)
            await anyio.sleep(QUEUED)  # the request waits this long for capacity
            actor.gate("blocker").set()
            await wait_for(lambda: actor.started == ["blocker", "late"])
            mesh.spawn_delay = 1000.0  # the replica will not come back
            mesh.crash(0)
            died_at.append(anyio.current_time())
        after_death = anyio.current_time() - died_at[0]
        assert len(outcome) == 1
        assert f"request_timeout={TIMEOUT}" in str(outcome[0])
        if virtual():
            assert after_death == pytest.approx(TIMEOUT - QUEUED, abs=0.05)
        else:
            # Per attempt it would be TIMEOUT (2.0 s) after the death.
            assert after_death < (TIMEOUT - QUEUED + TIMEOUT) / 2


async def test_request_timeout_adds_up_waits_over_several_deaths() -> None:
    """Three waits for recovery, with a death after each of the first two sends:
    together they are bounded by ``request_timeout``."""
    mesh = FakeMesh(seed=2)
    wait = 0.6  # each recovery takes this long (the spawn delay)
    log: list[str] = []  # every incarnation's starts
    async with open_service(
        Gated, log, num_replicas=1, mesh=mesh, request_timeout=TIMEOUT, max_attempts=10,
        max_restarts=100, health_poll_rate=0.05, restart_backoff=0.001,
    ) as svc:  # fmt: skip
        outcome: list[BaseException] = []
        t0: list[float] = []

        async def request() -> None:
            t0.append(anyio.current_time())
            try:
                await svc.hold.route("late")
            except NoHealthyReplicasError as exc:
                outcome.append(exc)

        mesh.spawn_delay = wait
        mesh.crash(0)
        await wait_for(lambda: not svc.replicas[0].healthy)
        async with anyio.create_task_group() as tg:
            tg.start_soon(request)  # waits ~wait for the first recovery
            for deaths in (1, 2):
                await wait_for(lambda d=deaths: len(log) == d, timeout=10)  # type: ignore[misc]
                if deaths == 2:
                    mesh.spawn_delay = 1000.0  # this time it will not come back
                mesh.crash(0)
        waited = anyio.current_time() - t0[0]
        assert len(outcome) == 1
        # Two recoveries of ~wait each, then the rest of the budget: TIMEOUT in all
        # (the request's executions took no time). Per attempt it would be
        # 2 * wait + TIMEOUT.
        if virtual():
            assert waited == pytest.approx(TIMEOUT, abs=0.1)
        else:
            assert waited < (TIMEOUT + 2 * wait + TIMEOUT) / 2


async def test_a_session_request_keeps_its_queue_wait_when_its_replica_dies() -> None:
    """A session request waits QUEUED behind its replica's capacity, then the
    replica dies and does not come back: the wait for recovery gets only what is
    left of ``request_timeout``, not a new one."""
    mesh = FakeMesh(seed=1)
    async with _one_slot(mesh) as svc:
        actor = mesh.actor(0)
        sid = await svc.start_session()
        outcome: list[BaseException] = []
        ended: list[float] = []

        async def request() -> None:
            try:
                await svc.hold.route("late", sess_id=sid)
            except NoHealthyReplicasError as exc:
                outcome.append(exc)
            ended.append(anyio.current_time())

        async def blocker() -> None:
            with pytest.raises(NoHealthyReplicasError):  # it has its own wait after
                await svc.hold.route("blocker")

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocker)
            await wait_for(lambda: actor.started == ["blocker"])
            t0 = anyio.current_time()
            tg.start_soon(request)
            await wait_for(lambda: svc.statistics().queue_depth == 1)
            await anyio.sleep(QUEUED)
            mesh.spawn_delay = 1000.0  # the replica will not come back
            mesh.crash(0)
        assert len(outcome) == 1, outcome
        waited = ended[0] - t0
        if virtual():
            assert waited == pytest.approx(TIMEOUT, abs=0.05)
        else:
            # With a new request_timeout after the death it would be QUEUED + TIMEOUT.
            assert waited < (TIMEOUT + QUEUED + TIMEOUT) / 2
