"""open_service on real Monarch processes: a process exiting inside an endpoint, and
every way of leaving the block leaves no process behind.

The autouse ``no_process_left`` fixture checks the whole test; the tests here also
check right after the block, and that the very processes the replicas ran in died.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest

from forge_sc import ReplicaState, open_service
from forge_sc.errors import NoHealthyReplicasError, ServiceFailedError

from ..conftest import wait_for
from ._support import STEADY_HEALTH_TIMEOUT, live_descendants, pid_alive, wait_until
from .monarch_actors import BoomError, Worker
from .service_actors import Doomed, SlowInit

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]


def _assert_all_gone(before: set[int], pids: list[int]) -> None:
    assert pids, "the test saw no replica process"
    assert wait_until(lambda: not (live_descendants() - before)), (
        f"processes left behind: {sorted(live_descendants() - before)}"
    )
    assert not [p for p in pids if pid_alive(p)]


def _init_pids(marker_dir: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in marker_dir.glob("init-*")]


async def test_os_exit_inside_an_endpoint_during_traffic() -> None:
    answered = 0
    doomed: int | None = None  # the pid that exits on its next echo_or_exit
    async with open_service(
        Doomed, num_replicas=2, restart_backoff=0.05, health_timeout=STEADY_HEALTH_TIMEOUT
    ) as svc:
        pids = await svc.pid.fanout()
        assert len(set(pids)) == 2

        async def caller(c: int) -> None:
            nonlocal answered
            for i in range(40):
                x = 1000 * c + i
                assert await svc.echo_or_exit.route(x, doomed) == x
                answered += 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for c in range(8):
                    tg.start_soon(caller, c)
                await wait_for(lambda: answered >= 40)
                doomed = pids[0]  # the next request replica 0 runs calls os._exit(3)
            await wait_for(lambda: all(r.healthy for r in svc.replicas), timeout=15)
        assert answered == 8 * 40  # every request answered, the fatal one included
        assert not pid_alive(pids[0])
        new_pids = await svc.pid.fanout()
        assert new_pids[0] not in pids  # replica 0 is back, in a new process
        assert new_pids[1] == pids[1]  # replica 1 was not touched
        assert [r.restarts for r in svc.replicas] == [1, 0]
        stats = svc.statistics()
        assert stats.retries >= 1  # at least the request that killed replica 0
        assert stats.failed_requests == 0
        assert stats.restarts == 1


async def test_normal_exit_stops_every_process() -> None:
    before = live_descendants()
    async with open_service(Worker, num_replicas=2) as svc:
        pids = await svc.pid.fanout()
        assert set(pids) <= live_descendants() - before
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)
    _assert_all_gone(before, pids)


async def test_body_exception_comes_out_bare_and_stops_every_process() -> None:
    before = live_descendants()
    pids: list[int] = []
    raised: list[BaseException] = []
    with pytest.raises(BoomError) as info:
        async with open_service(Worker, num_replicas=2) as svc:
            pids.extend(await svc.pid.fanout())
            try:
                await svc.fail.route("from the body")  # a user error, not caught
            except BoomError as exc:
                raised.append(exc)
                raise
    assert type(info.value) is BoomError  # not an ExceptionGroup
    assert info.value is raised[0]
    assert str(info.value) == "from the body"
    _assert_all_gone(before, pids)


async def test_cancelled_enclosing_scope_stops_every_process() -> None:
    before = live_descendants()
    pids: list[int] = []
    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            async with open_service(Worker, num_replicas=2) as svc:
                pids.extend(await svc.pid.fanout())
                scope.deadline = anyio.current_time() + 0.3
                cancelled_at = time.monotonic()
                await svc.nap.route(60)  # in flight on a replica when the scope expires
                pytest.fail("the body must have been cancelled")
        left_at = time.monotonic()
    assert scope.cancelled_caught
    # The abandoned 60 s call held neither the caller nor the close.
    assert left_at - cancelled_at < 10
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)
    _assert_all_gone(before, pids)


async def test_escalation_stops_every_process() -> None:
    """A poison request: every replica it reaches exits. Retried on each new
    incarnation, it uses up the restart budget; the service escalates: its body is
    cancelled, ``ServiceFailedError`` comes out, the caller (outside the block) gets
    ``NoHealthyReplicasError``."""
    before = live_descendants()
    pids: list[int] = []
    outside: list[BaseException] = []
    body_cancelled = False
    with anyio.fail_after(60):
        async with anyio.create_task_group() as outer:
            with pytest.raises(ServiceFailedError, match="restart budget") as info:
                async with open_service(
                    Doomed,
                    num_replicas=1,
                    max_restarts=1,
                    restart_backoff=0.05,
                    max_attempts=5,
                    health_timeout=STEADY_HEALTH_TIMEOUT,
                ) as svc:
                    pids.append(await svc.pid.route())

                    async def poison() -> None:
                        try:
                            await svc.exit_now.route(3)
                        except NoHealthyReplicasError as exc:
                            outside.append(exc)

                    outer.start_soon(poison)
                    try:
                        await anyio.sleep_forever()
                    finally:
                        body_cancelled = True
    assert body_cancelled
    assert type(info.value) is ServiceFailedError
    assert "code 3" in str(info.value.__cause__)  # the death that used up the budget
    assert len(outside) == 1
    replica = svc.replicas[0]
    assert replica.state is ReplicaState.FAILED and replica.restarts == 1
    _assert_all_gone(before, pids)


async def test_escalation_while_the_body_awaits_the_poison_request() -> None:
    before = live_descendants()
    pids: list[int] = []
    with anyio.fail_after(60):
        with pytest.raises(ServiceFailedError, match="restart budget") as info:
            async with open_service(
                Doomed, num_replicas=1, max_restarts=1, restart_backoff=0.05, max_attempts=5
            ) as svc:
                pids.append(await svc.pid.route())
                await svc.exit_now.route(3)
                pytest.fail("the body must have been cancelled")
    assert type(info.value) is ServiceFailedError
    _assert_all_gone(before, pids)


async def test_cancel_while_a_replica_is_half_spawned_at_start(tmp_path: Path) -> None:
    before = live_descendants()
    (tmp_path / "delay").write_text("60")  # __init__ blocks for a minute

    async def open_it() -> None:
        async with open_service(SlowInit, str(tmp_path), num_replicas=2):
            pytest.fail("the body must not run")

    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(open_it)
                # Both processes are up and inside the actor's constructor.
                await wait_for(lambda: len(_init_pids(tmp_path)) == 2, timeout=20)
                pids = _init_pids(tmp_path)
                assert all(pid_alive(p) for p in pids)
                cancelled_at = time.monotonic()
                scope.cancel()
        left_at = time.monotonic()
    assert scope.cancelled_caught
    assert left_at - cancelled_at < 10  # the constructor was not waited for
    _assert_all_gone(before, pids)


async def test_leaving_while_a_replica_is_half_respawned(tmp_path: Path) -> None:
    before = live_descendants()
    with anyio.fail_after(30):
        async with open_service(
            SlowInit, str(tmp_path), num_replicas=1, restart_backoff=0.01
        ) as svc:
            first = await svc.pid.route()
            (tmp_path / "delay").write_text("60")  # the next constructor blocks
            os.kill(first, signal.SIGKILL)
            await wait_for(lambda: len(_init_pids(tmp_path)) == 2, timeout=20)
            pids = _init_pids(tmp_path)
            assert svc.replicas[0].state is ReplicaState.RECOVERING
            leaving_at = time.monotonic()
        left_at = time.monotonic()
    assert left_at - leaving_at < 10  # the constructor was not waited for
    assert svc.replicas[0].state is ReplicaState.STOPPED
    _assert_all_gone(before, pids)
