"""End to end: open_service on real Monarch processes (the default mesh), and the
TorchForge-compatible as_service / as_actor."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import anyio
import pytest
import sniffio

from forge_sc import open_service
from forge_sc.errors import ServiceClosedError, ServiceFailedError
from forge_sc.mesh.monarch import MonarchMesh, ReplicaStartError

from ..conftest import wait_for
from ._support import STEADY_HEALTH_TIMEOUT, live_descendants, pid_alive, wait_until
from .monarch_actors import BadInit, BoomError, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]


def threads_left(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` and still alive, except those the caller's own
    event loop keeps for later ``to_thread`` calls (anyio's idle workers on asyncio,
    trio's thread cache) and Monarch's process-wide runtime threads (started once, on
    first use). What is left belongs to a hosted service: its host thread, or a worker
    thread of the host's loop."""
    if sniffio.current_async_library() == "asyncio":
        loop = asyncio.get_running_loop()

        def callers(t: threading.Thread) -> bool:
            return getattr(t, "loop", None) is loop  # anyio's WorkerThread of this loop

    else:

        def callers(t: threading.Thread) -> bool:
            return t.name.startswith("Trio thread ")  # trio's thread cache

    return [
        t
        for t in threading.enumerate()
        if t not in before and not callers(t) and not t.name.startswith("monarch-")
    ]


async def test_route_fanout_sessions() -> None:
    async with open_service(Worker, 5, num_replicas=2) as svc:  # MonarchMesh by default
        assert await svc.value.route() == 5
        pids = await svc.pid.fanout()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        async with svc.session():
            first = await svc.incr.route()
            assert [await svc.incr.route() for _ in range(3)] == [first + 1, first + 2, first + 3]
        with pytest.raises(BoomError):
            await svc.fail.route("nope")
        assert svc.statistics().healthy_replicas == 2


async def test_kill_during_traffic_loses_no_request() -> None:
    answered = 0
    async with open_service(
        Worker,
        num_replicas=2,
        health_poll_rate=0.2,
        restart_backoff=0.05,
        health_timeout=STEADY_HEALTH_TIMEOUT,
    ) as svc:
        pids = await svc.pid.fanout()

        async def caller() -> None:
            nonlocal answered
            for i in range(40):
                assert await svc.echo.route(i) == i
                answered += 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(caller)
                await wait_for(lambda: answered >= 20)
                os.kill(pids[0], signal.SIGKILL)
            await wait_for(lambda: all(r.healthy for r in svc.replicas), timeout=15)
        assert answered == 8 * 40
        new_pids = await svc.pid.fanout()
        assert new_pids[1] == pids[1] and new_pids[0] not in pids
        assert svc.replicas[0].restarts == 1


async def test_constructor_failure_fails_the_service_at_start() -> None:
    with pytest.raises(ServiceFailedError) as info:
        async with open_service(BadInit, "missing", num_replicas=1, mesh=MonarchMesh()):
            pytest.fail("the body must not run")
    cause = info.value.__cause__
    assert isinstance(cause, ReplicaStartError)
    assert "ValueError: bad init: missing" in str(cause)


async def test_as_service_and_shutdown() -> None:
    before = set(threading.enumerate())
    svc = await Worker.options(num_replicas=2, procs=1).as_service(5)
    try:
        assert await svc.value.route() == 5
        assert sorted(await svc.call_all("value")) == [5, 5]
        assert len(await svc.pid.fanout()) == 2
        async with svc.session():
            first = await svc.incr.route()
            assert await svc.incr.route() == first + 1
        with pytest.raises(BoomError):
            await svc.fail.route("x")
        with anyio.move_on_after(0.05) as scope:  # a cancelled caller cancels its request
            await svc.nap.route(5)
        assert scope.cancelled_caught
        assert svc.get_metrics_summary()["service"]["healthy_replicas"] == 2
        assert [r.idx for r in svc.replicas] == [0, 1]
        with pytest.raises(NotImplementedError, match="route"):
            svc.value.call()
        with pytest.raises(AttributeError, match="no endpoint"):
            _ = svc.nonexistent
    finally:
        await svc.shutdown()
    await svc.shutdown()  # idempotent
    with pytest.raises(ServiceClosedError):
        await svc.value.route()
    # shutdown() joined the host thread and every thread the host's loop started.
    assert threads_left(before) == []


async def test_as_service_start_failure_leaves_nothing() -> None:
    before = set(threading.enumerate())
    with pytest.raises(ServiceFailedError):
        await BadInit.options(num_replicas=1).as_service("x")
    assert threads_left(before) == []


async def test_as_actor_and_shutdown() -> None:
    actor = await Worker.options(procs=2).as_actor(7)
    try:
        values = await actor.value.call()  # awaitable on asyncio and trio
        assert list(values.values()) == [7, 7]
    finally:
        await Worker.shutdown(actor)
    await Worker.shutdown(actor)  # idempotent
    with pytest.raises(TypeError, match="as_actor"):
        await Worker.shutdown(object())


async def test_two_hosts_per_replica() -> None:
    """``hosts=2``: each replica is a Monarch ProcessJob of two local hosts, one
    process each. ``return_first_rank_result=False`` shows every rank."""
    before = live_descendants()
    async with open_service(
        Worker, 2, num_replicas=2, hosts=2, procs=1, return_first_rank_result=False
    ) as svc:
        assert await svc.value.route() == [2, 2]  # one value per host
        assert await svc.rank.route() == [0, 1]
        pids = await svc.pid.fanout()  # every replica, every rank
        assert len(pids) == 2 and all(len(p) == 2 for p in pids)
        flat = [p for per_replica in pids for p in per_replica]
        assert len(set(flat)) == 4 and os.getpid() not in flat
        assert set(flat) <= live_descendants() - before
        # route() round-robins over both replicas.
        routed = {tuple(await svc.pid.route()) for _ in range(4)}
        assert routed == {tuple(p) for p in pids}
        async with svc.session():
            first = await svc.incr.route()
            assert first[0] == first[1]
            assert await svc.incr.route() == [first[0] + 1] * 2
        assert svc.statistics().healthy_replicas == 2
    assert wait_until(lambda: not (live_descendants() - before))
    assert not [p for p in flat if pid_alive(p)]


async def test_two_hosts_first_rank_result() -> None:
    async with open_service(Worker, 3, num_replicas=1, hosts=2) as svc:
        assert await svc.value.route() == 3  # the first rank's value only
        assert await svc.rank.route() == 0
        assert len(await svc.pid.fanout()) == 1


async def test_two_hosts_replica_recovers_from_a_killed_rank() -> None:
    before = live_descendants()
    async with open_service(
        Worker,
        num_replicas=1,
        hosts=2,
        return_first_rank_result=False,
        restart_backoff=0.05,
    ) as svc:
        pids = await svc.pid.route()
        os.kill(pids[1], signal.SIGKILL)  # the second host's process
        with anyio.fail_after(30):
            await wait_for(lambda: svc.replicas[0].restarts == 1, timeout=20)
            await wait_for(lambda: svc.replicas[0].healthy, timeout=20)
        new_pids = await svc.pid.route()
        assert len(new_pids) == 2 and not set(new_pids) & set(pids)
        assert await svc.echo.route(5) == [5, 5]
    assert wait_until(lambda: not (live_descendants() - before))
    assert not [p for p in [*pids, *new_pids] if pid_alive(p)]
