"""The bridge that awaits Monarch futures on asyncio and trio, and its pitfalls:
a late wake-up of a cancelled trio task, exceptions nobody retrieves, callbacks on
the wrong thread, and the private Monarch API it relies on."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
import sniffio

from forge_sc.mesh import ReplicaGone
from forge_sc.mesh._bridge import CallGroup, loop_poster, pending_relays, wait
from forge_sc.mesh.monarch import MonarchMesh, MonarchReplica

from ..conftest import wait_for
from ._support import spawn
from .monarch_actors import BoomError, Worker

pytestmark = [pytest.mark.monarch]


@pytest.fixture
async def actor(mesh: MonarchMesh) -> AsyncIterator[Any]:
    """The raw Monarch actor mesh of one replica: the bridge is tested underneath
    MonarchReplica."""
    replica: MonarchReplica = await spawn(mesh, Worker, 3)
    try:
        yield replica._actor
    finally:
        await replica.stop()


@pytest.fixture
def unretrieved() -> list[str]:
    """Messages about exceptions never retrieved (asyncio reports them through the
    loop's exception handler when the future is collected)."""
    return []


async def _watch_unretrieved(unretrieved: list[str]) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio: no such report exists
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        unretrieved.append(str(context.get("message")))

    loop.set_exception_handler(handler)


def test_private_monarch_api_is_still_there() -> None:
    """Fails loudly when a Monarch upgrade changes what forge_sc relies on."""
    import monarch.actor
    from monarch._rust_bindings.monarch_hyperactor.pytokio import PythonTask
    from monarch._rust_bindings.monarch_hyperactor.supervision import SupervisionError
    from monarch._src.actor import supervision
    from monarch._src.actor.actor_mesh import ActorMesh, MethodSpecifier
    from monarch.actor import ActorError, Future

    # _bridge: one-shot task of a future, relayed on Monarch's Tokio runtime.
    assert callable(Future._take_inner) and callable(Future.as_asyncio)
    assert callable(PythonTask.from_coroutine) and callable(PythonTask.spawn)
    # monarch.py: readiness through object.__sizeof__ as an endpoint.
    assert list(inspect.signature(ActorMesh._endpoint).parameters) == [
        "self",
        "name",
        "impl",
        "propagator",
    ]
    assert MethodSpecifier.ReturnsResponse("__sizeof__") is not None
    # Errors: user exception inside ActorError; SupervisionError for dead replicas.
    err = ActorError(ValueError("x"))
    assert isinstance(err.exception, ValueError)
    assert "ValueError: x" in err.exception_formatted
    assert issubclass(SupervisionError, RuntimeError)
    # _faults: the hook is looked up on monarch.actor; the default exits.
    assert hasattr(monarch.actor, "unhandled_fault_hook")
    assert callable(supervision.unhandled_fault_hook)
    assert {"mesh_name", "report"} <= set(dir(monarch.actor.MeshFailure))


@pytest.mark.anyio
async def test_wait_round_trip(actor: Any) -> None:
    # Relays of earlier tests' calls to a SIGSTOPped process never resolve (Monarch
    # drops them when it stops that mesh): count only this test's.
    before = pending_relays()
    assert await wait(actor.value.call_one()) == 3
    assert await wait(actor.echo.call_one(None)) is None
    values = await wait(actor.value.call())
    assert list(values.values()) == [3]
    with pytest.raises(Exception) as info:
        await wait(actor.fail.call_one("no"))
    assert isinstance(getattr(info.value, "exception", None), BoomError)
    assert pending_relays() == before


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cancelled_waits_settle_once_on_the_loop_thread(backend: str) -> None:
    """Cancel waits at many points around their completion: a late result must never
    wake a cancelled task, and every abandoned call reports its settlement exactly
    once, on the event loop thread.

    A run of its own (not the anyio plugin's): on trio, waking a cancelled task
    crashes the run with ``TrioInternalError``, which must fail here, not hang.
    """
    settled: list[int] = []
    counts = {"cancelled": 0, "answered": 0}
    before = pending_relays()  # only this test's (see test_wait_round_trip)

    async def storm() -> None:
        mesh = MonarchMesh()
        replica = await spawn(mesh, Worker)
        try:
            actor = replica._actor

            async def one(delay: float) -> None:
                with anyio.move_on_after(delay) as scope:
                    await wait(actor.echo.call_one(1), None, on_abandoned)
                    counts["answered"] += 1
                if scope.cancelled_caught:
                    counts["cancelled"] += 1

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(120):
                        tg.start_soon(one, i * 0.001)
                await wait_for(lambda: len(settled) >= counts["cancelled"])
        finally:
            await replica.stop()

    def on_abandoned() -> None:
        settled.append(threading.get_ident())

    anyio.run(storm, backend=backend)
    assert counts["cancelled"] > 0 and counts["answered"] > 0
    assert len(settled) == counts["cancelled"]
    assert set(settled) == {threading.get_ident()}
    assert pending_relays() == before


@pytest.mark.anyio
@pytest.mark.parametrize("with_callback", [True, False])
async def test_abandoned_failures_are_retrieved(
    actor: Any, unretrieved: list[str], with_callback: bool
) -> None:
    await _watch_unretrieved(unretrieved)
    done = anyio.Event()
    with anyio.move_on_after(0.02):
        await wait(actor.fail.call_one("late", 0.2), None, done.set if with_callback else None)
    # The actor's mailbox is serial: this answer comes after the failure settled.
    assert await wait(actor.value.call_one()) == 3
    if with_callback:
        with anyio.fail_after(10):
            await done.wait()
    gc.collect()
    await anyio.lowlevel.checkpoint()  # let asyncio run the reports gc scheduled
    assert unretrieved == []


@pytest.mark.anyio
async def test_group_close_interrupts_every_wait(actor: Any) -> None:
    group = CallGroup()
    failures: list[BaseException] = []

    async def one() -> None:
        try:
            await wait(actor.nap.call_one(30), group)
        except ReplicaGone as exc:
            failures.append(exc)
        # On asyncio the group interrupted the wait by cancelling this task: no
        # cancellation may be left pending.
        if sniffio.current_async_library() == "asyncio":
            assert cast(asyncio.Task[Any], asyncio.current_task()).cancelling() == 0
        await anyio.sleep(0.01)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
            await wait_for(lambda: len(group) == 3)
            group.close(lambda: ReplicaGone("closed"))
    assert len(failures) == 3 and len({id(e) for e in failures}) == 3
    assert len(group) == 0 and group.closed
    fut = actor.value.call_one()
    with pytest.raises(ReplicaGone, match="closed"):
        await wait(fut, group)  # refused before anything is sent


@pytest.mark.anyio
async def test_close_and_cancel_in_the_same_tick(actor: Any, unretrieved: list[str]) -> None:
    """The group's error and the caller's cancellation land together: either may win,
    but nothing is lost, crashes, or is left unretrieved. On asyncio the cancel is a
    native ``Task.cancel()`` (anyio's own scopes avoid this interleaving)."""
    await _watch_unretrieved(unretrieved)
    group = CallGroup()
    settled = anyio.Event()
    outcome: list[str] = []
    tasks: list[Any] = []
    scope = anyio.CancelScope()

    async def one() -> None:
        if sniffio.current_async_library() == "asyncio":
            tasks.append(asyncio.current_task())
        with scope:
            try:
                await wait(actor.nap.call_one(0.3), group, settled.set)
            except ReplicaGone:
                outcome.append("gone")
            except asyncio.CancelledError:
                cast(asyncio.Task[Any], asyncio.current_task()).uncancel()
                outcome.append("cancelled")
        if scope.cancelled_caught:
            outcome.append("cancelled")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await wait_for(lambda: len(group) == 1)
            group.close(lambda: ReplicaGone("closed"))
            if tasks:
                tasks[0].cancel()
            else:
                scope.cancel()
        if outcome == ["cancelled"]:
            await settled.wait()  # abandoned: settles once the nap ends
    assert outcome in (["gone"], ["cancelled"])
    gc.collect()
    await anyio.lowlevel.checkpoint()
    assert unretrieved == []


def test_poster_after_the_loop_ended_is_harmless() -> None:
    for backend in ("asyncio", "trio"):

        async def grab() -> Any:
            return loop_poster()

        post = anyio.run(grab, backend=backend)
        post(lambda: None)  # the loop is gone: nothing happens, nothing raises
