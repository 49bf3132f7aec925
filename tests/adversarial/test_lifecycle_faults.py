"""Faults at start, in traffic and at close, and misuse of the handle and its scope
(issue 10, items 2, 9 and 13)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from forge_sc import ForgeActor, ReplicaState, endpoint, open_service
from forge_sc.errors import (
    NoHealthyReplicasError,
    ServiceClosedError,
    ServiceFailedError,
)
from forge_sc.testing import FakeMesh

from ..gated import Gated
from ._support import FAST, Hostile, assert_idle, checked_service, running_tasks, wait_for

pytestmark = pytest.mark.anyio


class BadInit(ForgeActor):
    def __init__(self, how: str) -> None:
        if how == "raise":
            raise ValueError("constructor says no")

    @endpoint
    async def value(self) -> int:
        return 1


# ------------------------------------------------------------------- close


async def test_a_close_that_raises_still_leaves_its_task_group_in_order() -> None:
    """Item 2: if the close itself raises (here the drain's timeout overflows, a value
    validation now refuses, planted after construction), the service's task group is
    still exited in order: the error comes out, nothing is left running, and the loop's
    cancel-scope stack is intact."""
    before = running_tasks()
    outcome: list[BaseException] = []

    async def caller(svc: Any) -> None:
        try:
            await svc.nap.route(0.3)
        except ServiceClosedError as exc:
            outcome.append(exc)

    with pytest.RaisesGroup(OverflowError):
        async with anyio.create_task_group() as tg:
            async with open_service(Hostile, mesh=FakeMesh(), **FAST) as svc:
                object.__setattr__(svc.config, "graceful_shutdown_timeout", 10**400)
                tg.start_soon(caller, svc)
                await wait_for(lambda: svc.statistics().active_requests == 1)
    assert len(outcome) == 1
    assert running_tasks() == before
    # The cancel-scope stack of this task is intact: scopes work as usual.
    with anyio.move_on_after(0.01) as scope:
        await anyio.sleep(1)
    assert scope.cancelled_caught
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)


def _build(backend: str) -> Any:
    async def build() -> Any:
        return open_service(Hostile, mesh=FakeMesh())

    return anyio.run(build, backend=backend)


@pytest.mark.parametrize(("built", "entered"), [("asyncio", "trio"), ("trio", "asyncio")])
def test_entering_a_service_from_another_backend_is_a_clear_error(built: str, entered: str) -> None:
    """Item 2: a scope made under one backend, entered under the other."""
    scope = _build(built)

    async def enter() -> None:
        async with scope:
            pass  # pragma: no cover - refused

    with pytest.raises(RuntimeError, match="call open_service\\(\\) where you enter it"):
        anyio.run(enter, backend=entered)


def test_open_service_outside_an_event_loop_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="inside a running event loop"):
        open_service(Hostile, mesh=FakeMesh())


async def test_leaving_the_block_from_another_task_is_a_clear_error() -> None:
    scope = open_service(Hostile, mesh=FakeMesh(), **FAST)
    svc = await scope.__aenter__()
    errors: list[BaseException] = []

    async def leave() -> None:
        try:
            await scope.__aexit__(None, None, None)
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(leave)
    assert errors and "left by the task that entered it" in str(errors[0])
    assert await svc.value.route() == 1  # untouched
    await scope.__aexit__(None, None, None)


async def test_entering_a_scope_twice_is_refused() -> None:
    scope = open_service(Hostile, mesh=FakeMesh(), **FAST)
    async with scope:
        with pytest.raises(RuntimeError, match="only once"):
            await scope.__aenter__()


async def test_a_replica_dying_during_the_graceful_close_is_not_restarted() -> None:
    """Item 13: a replica that dies while the service drains is stopped, not respawned
    first. Its in-flight request is still in-flight work of the drain (DESIGN §3): it
    is re-sent to the replica that is still healthy and completes there."""
    mesh = FakeMesh()
    outcome: list[Any] = []

    async def caller(svc: Any, seconds: float) -> None:
        try:
            outcome.append(await svc.nap.route(seconds))
        except ServiceClosedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        async with checked_service(mesh=mesh, num_replicas=2) as svc:
            tg.start_soon(caller, svc, 0.5)
            await wait_for(lambda: svc.statistics().active_requests == 1)
            doomed = next(r.idx for r in svc.replicas if r.active_requests)
            tg.start_soon(caller, svc, 0.3)
            await wait_for(lambda: svc.statistics().active_requests == 2)

            async def crash_during_close() -> None:
                await wait_for(lambda: svc._closing, 2.0)
                mesh.crash(doomed)

            tg.start_soon(crash_during_close)
    assert sorted(outcome) == [0.3, 0.5]
    assert svc.statistics().retries == 1
    assert mesh.spawn_count(doomed) == 1, "the dead replica was respawned during the close"
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)


async def test_the_last_replica_dying_during_the_graceful_close_ends_its_requests() -> None:
    """With no healthy replica left to finish it on (none is restarted while the
    service closes), a request whose replica died during the drain gets
    ServiceClosedError at once, not at the end of graceful_shutdown_timeout."""
    mesh = FakeMesh()
    outcome: list[Any] = []

    async def caller(svc: Any) -> None:
        try:
            outcome.append(await svc.nap.route(30.0))
        except ServiceClosedError as exc:
            outcome.append(exc)

    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        async with checked_service(mesh=mesh, graceful_shutdown_timeout=30.0) as svc:
            tg.start_soon(caller, svc)
            await wait_for(lambda: svc.statistics().active_requests == 1)

            async def crash_during_close() -> None:
                await wait_for(lambda: svc._closing, 2.0)
                mesh.crash(0)

            tg.start_soon(crash_during_close)
    assert len(outcome) == 1 and isinstance(outcome[0], ServiceClosedError)
    assert anyio.current_time() - t0 < 10.0
    assert mesh.spawn_count(0) == 1


async def test_a_replica_hanging_at_close_is_stopped_within_the_grace() -> None:
    mesh = FakeMesh()
    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        async with checked_service(mesh=mesh, graceful_shutdown_timeout=0.2) as svc:

            async def caller() -> None:
                with pytest.raises(ServiceClosedError):
                    await svc.nap.route(5.0)

            tg.start_soon(caller)
            await wait_for(lambda: svc.statistics().active_requests == 1)
            mesh.hang(0)
    assert anyio.current_time() - t0 < 2.0


async def test_restart_replica_after_close_is_service_closed() -> None:
    """Item 13: ServiceClosedError, not ValueError."""
    async with checked_service() as svc:
        pass
    with pytest.raises(ServiceClosedError):
        await svc.restart_replica(0)


async def test_restart_replica_waiting_when_the_service_closes_is_service_closed() -> None:
    mesh = FakeMesh()
    outcome: list[Any] = []

    async def restart(svc: Any) -> None:
        try:
            outcome.append(await svc.restart_replica(0))
        except ServiceClosedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        async with checked_service(mesh=mesh, max_restarts=1000, restart_backoff=0.05) as svc:
            mesh.fail_spawns(0, 1000)  # the restart never gets a healthy replica
            tg.start_soon(restart, svc)
            await wait_for(lambda: mesh.spawn_count(0) >= 2)
    assert len(outcome) == 1 and isinstance(outcome[0], ServiceClosedError), outcome


async def test_statistics_keep_working_after_close() -> None:
    async with checked_service() as svc:
        await svc.value.route()
    s = svc.statistics()
    assert s.total_requests == 1 and s.healthy_replicas == 0
    assert svc.get_metrics_summary()["service"]["total_requests"] == 1


async def test_statistics_of_an_as_service_handle_keep_working_after_shutdown() -> None:
    """Item 13: the as_service() handle's statistics() after shutdown, like the
    open_service handle's."""
    svc = await Hostile.options(**FAST).as_service(mesh=FakeMesh())
    try:
        assert await svc.value.route() == 1
    finally:
        await svc.shutdown()
    s = svc.statistics()
    assert s.total_requests == 1
    assert svc.get_metrics().total_requests == 1
    assert svc.get_metrics_summary()["service"]["total_requests"] == 1
    assert [r.state for r in svc.replicas] == [ReplicaState.STOPPED]


# ------------------------------------------------------------------- start


async def test_a_constructor_that_raises_fails_the_start_and_leaves_nothing() -> None:
    before = running_tasks()
    with pytest.raises(ServiceFailedError, match="constructor says no"):
        async with open_service(BadInit, "raise", mesh=FakeMesh(), num_replicas=3):
            pytest.fail("entered")  # pragma: no cover
    assert running_tasks() == before


async def test_spawn_failures_in_recovery_exhaust_the_budget_cleanly() -> None:
    mesh = FakeMesh()
    before = running_tasks()
    with pytest.raises(ServiceFailedError):
        async with open_service(Hostile, mesh=mesh, max_restarts=2, **FAST) as svc:
            mesh.fail_spawns(0, 10)
            mesh.crash(0)
            await anyio.sleep_forever()
    assert running_tasks() == before
    with pytest.raises(NoHealthyReplicasError):
        await svc.value.route()


async def test_a_huge_start_up_is_cancellable() -> None:
    """Item 9: the largest pool accepted starts in chunks, so a cancelled start-up
    ends promptly and leaves nothing."""
    before = running_tasks()
    t0, cpu0 = anyio.current_time(), time.process_time()
    with anyio.move_on_after(0.05) as scope:
        async with open_service(
            Hostile, mesh=FakeMesh(spawn_delay=60.0), num_replicas=10_000, **FAST
        ):
            pytest.fail("entered")  # pragma: no cover
    assert scope.cancelled_caught
    # It did not wait for the spawns (60 s each) ...
    assert anyio.current_time() - t0 < 30.0
    # ... and the work was small: CPU time, which a busy machine does not stretch
    # (wall time does: 5.5 s was seen with both cores busy).
    assert time.process_time() - cpu0 < 5.0
    assert running_tasks() == before


async def test_cancelled_while_starting_and_while_closing() -> None:
    before = running_tasks()
    with anyio.move_on_after(0.02):
        async with open_service(Hostile, mesh=FakeMesh(spawn_delay=1.0), num_replicas=3):
            pytest.fail("entered")  # pragma: no cover
    assert running_tasks() == before
    # Cancelled while closing: the close is shielded and completes. The cancel comes
    # when the close has begun draining a request (its "service.closing" record), not
    # at a wall-clock deadline, which a busy machine can let pass during start-up.
    closing = anyio.Event()
    outer = anyio.CancelScope()

    async def cancel_once_closing() -> None:
        await closing.wait()
        outer.cancel()

    with _on_event("service.closing", closing.set), outer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_once_closing)
            async with open_service(
                Hostile, mesh=FakeMesh(seed=1), **{**FAST, "graceful_shutdown_timeout": 0.3}
            ) as svc:
                tg.start_soon(svc.nap.route, 10.0)  # in flight when the body is left
                await wait_for(lambda: svc.statistics().active_requests == 1)
    assert closing.is_set() and outer.cancel_called
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)
    await wait_for(lambda: running_tasks() == before, 2.0, "tasks left running")
    assert_idle(svc)


async def test_a_cancelled_block_still_drains_the_requests_of_tasks_outside_it() -> None:
    """DESIGN §3, service closing: in-flight requests, also from tasks outside the
    block, run to completion (up to graceful_shutdown_timeout), however the block is
    left; a cancellation of the scope around it too (the replicas under them live
    on until the drain is over)."""
    mesh = FakeMesh(seed=1)
    outer = anyio.CancelScope()
    closing = anyio.Event()
    got: list[Any] = []
    config = {**FAST, "graceful_shutdown_timeout": 60.0}
    async with anyio.create_task_group() as tg:  # the tasks outside the block
        with _on_event("service.closing", closing.set), outer:
            async with open_service(Gated, mesh=mesh, **config) as svc:

                async def outside() -> None:
                    got.append(await svc.hold.route("x"))

                async def answer_once_closing() -> None:
                    await closing.wait()
                    mesh.actor(0).gate("x").set()

                tg.start_soon(outside)
                await wait_for(lambda: mesh.actor(0).started == ["x"])
                tg.start_soon(answer_once_closing)
                outer.cancel()
                await anyio.sleep_forever()
    assert outer.cancelled_caught
    assert got == [(None, "x")]
    assert all(r.state is ReplicaState.STOPPED for r in svc.replicas)
    assert_idle(svc)


async def test_a_shielded_request_in_a_cancelled_block_runs_to_its_end() -> None:
    mesh = FakeMesh(seed=1)
    got: list[Any] = []
    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as outer:
            async with open_service(Gated, mesh=mesh, **FAST) as svc:

                async def cancel_then_answer() -> None:
                    await wait_for(lambda: mesh.actor(0).started == ["y"])
                    outer.cancel()
                    for _ in range(20):  # turns for the cancellation to act, if it did
                        await anyio.lowlevel.checkpoint()
                    mesh.actor(0).gate("y").set()

                tg.start_soon(cancel_then_answer)
                with anyio.CancelScope(shield=True):
                    got.append(await svc.hold.route("y"))
    assert got == [(None, "y")]
    assert svc.statistics().restarts == 0


async def test_escalation_with_a_shielded_request_in_the_body_is_one_bare_error() -> None:
    """The request gets the escalation's NoHealthyReplicasError (its shield keeps the
    body's cancellation out); open_service still raises ServiceFailedError alone."""
    mesh = FakeMesh(seed=1)
    got: list[BaseException] = []
    with pytest.raises(ServiceFailedError):
        async with open_service(Hostile, mesh=mesh, max_restarts=1, **FAST) as svc:
            mesh.fail_spawns(0, 10)

            async def crash_when_running() -> None:
                await wait_for(lambda: svc.statistics().active_requests == 1)
                mesh.crash(0)

            async with anyio.create_task_group() as tg:
                tg.start_soon(crash_when_running)
                with anyio.CancelScope(shield=True):
                    try:
                        await svc.nap.route(60.0)
                    except NoHealthyReplicasError as exc:
                        got.append(exc)
                        raise
    assert len(got) == 1


@contextlib.contextmanager
def _on_event(kind: str, call: Callable[[], object]) -> Iterator[None]:
    """Call ``call()`` when forge_sc's service logger emits a record of ``kind``
    (records are emitted in the service's own thread, so it may touch the loop)."""

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == kind:
                call()

    logger = logging.getLogger("forge_sc.service")
    handler, level = Handler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("hosted", [False, True])
async def test_a_start_up_cancelled_before_it_began_ends_at_once(hosted: bool) -> None:
    """The scope is cancelled before the service's task reaches a checkpoint: it
    must end by that cancellation, not shield itself and wait forever."""
    before = running_tasks()
    entered = False
    with anyio.fail_after(30):
        with anyio.move_on_after(0) as scope:
            if hosted:
                await Hostile.as_service(mesh=FakeMesh(seed=1))
                entered = True
            else:
                async with open_service(Hostile, mesh=FakeMesh(seed=1)):
                    entered = True
    assert scope.cancelled_caught and not entered
    await wait_for(lambda: running_tasks() == before, 2.0, "tasks left running")
