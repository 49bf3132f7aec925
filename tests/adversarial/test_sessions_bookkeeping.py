"""Session bookkeeping under misuse (issue 10, item 10). Rules (docs/fault_model.md):
a task that inherited ``svc.session()`` and routes after the block ended gets a clear
``RuntimeError``; a session terminated while its requests are pending stays
terminated (those requests finish without it); leaving ``session()`` from another task
terminates the session."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from ._support import Hostile, checked_service, wait_for

pytestmark = pytest.mark.anyio


async def test_a_task_that_inherited_an_ended_session_gets_a_clear_error() -> None:
    async with checked_service(num_replicas=2) as svc:
        go = anyio.Event()
        outcome: list[Any] = []

        async def late() -> None:
            assert await svc.value.route() == 1  # inside the block: in the session
            await go.wait()
            try:
                outcome.append(await svc.value.route())
            except RuntimeError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            async with svc.session():
                tg.start_soon(late)
                await wait_for(lambda: svc.statistics().successful_requests == 1)
            go.set()
        assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError), outcome
        assert "has ended" in str(outcome[0]) and "session()" in str(outcome[0])
        assert svc.statistics().active_sessions == 0
        assert await svc.value.route() == 1  # this task is not in a session


async def test_terminating_a_session_with_a_request_waiting_then_a_crash() -> None:
    """The waiting request moves (the replica died) and the in-flight one is re-sent:
    both without the session, which stays terminated."""
    async with checked_service(num_replicas=2, replica_max_concurrent_requests=1) as svc:
        sid = await svc.start_session()
        await svc.value.route(sess_id=sid)
        home = next(r.idx for r in svc.replicas if r.assigned_sessions)
        results: list[Any] = []

        async def call(seconds: float) -> None:
            results.append(await svc.nap.route(seconds, sess_id=sid))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0.2)  # runs on the session's replica
            await wait_for(lambda: svc.statistics().active_requests == 1)
            tg.start_soon(call, 0.01)  # waits for that replica's slot
            await wait_for(lambda: svc.statistics().queue_depth == 1)
            await svc.terminate_session(sid)
            assert svc.statistics().active_sessions == 0
            svc._mesh.crash(home)  # type: ignore[attr-defined]
        assert sorted(results) == [0.01, 0.2]
        s = svc.statistics()
        assert s.active_sessions == 0, "the terminated session came back"
        assert all(r.assigned_sessions == 0 for r in s.replicas)


async def test_leaving_session_from_another_task_terminates_it() -> None:
    async with checked_service(num_replicas=2) as svc:
        cm = svc.session()
        await cm.__aenter__()
        assert svc.statistics().active_sessions == 1
        errors: list[BaseException] = []

        async def leave() -> None:
            try:
                await cm.__aexit__(None, None, None)
            except BaseException as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(leave)
        assert errors == []
        assert svc.statistics().active_sessions == 0
        # The entering task still holds the ended session in its context.
        with pytest.raises(RuntimeError, match="has ended"):
            await svc.value.route()


async def test_an_unknown_session_id_still_starts_a_session_implicitly() -> None:
    """The TorchForge behaviour is kept for explicit ids."""
    async with checked_service(num_replicas=2) as svc:
        assert await svc.value.route(sess_id="mine") == 1
        assert svc.statistics().active_sessions == 1
        await svc.terminate_session("mine")
        assert svc.statistics().active_sessions == 0


async def test_sessions_of_a_closed_service() -> None:
    async with checked_service() as svc:
        sid = await svc.start_session()
    from forge_sc.errors import ServiceClosedError

    with pytest.raises(ServiceClosedError):
        await svc.value.route(sess_id=sid)
    with pytest.raises(ServiceClosedError):
        async with svc.session():
            pass  # pragma: no cover
    await svc.terminate_session(sid)  # idempotent, also after close


async def test_the_as_service_handle_keeps_the_same_session_rules() -> None:
    from forge_sc.testing import FakeMesh

    from ._support import FAST

    svc = await Hostile.options(num_replicas=2, **FAST).as_service(mesh=FakeMesh())
    try:
        go = anyio.Event()
        outcome: list[Any] = []

        async def late() -> None:
            await go.wait()
            try:
                outcome.append(await svc.value.route())
            except RuntimeError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            async with svc.session():
                tg.start_soon(late)
                assert await svc.value.route() == 1
            go.set()
        assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError), outcome
        assert svc.statistics().active_sessions == 0

        cm = svc.session()
        await cm.__aenter__()
        async with anyio.create_task_group() as tg:
            tg.start_soon(cm.__aexit__, None, None, None)
        assert svc.statistics().active_sessions == 0
    finally:
        await svc.shutdown()
