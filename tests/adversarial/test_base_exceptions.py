"""Endpoints raising a BaseException that is not an Exception (issue 10, items 1 and
13). Rule: when a service ends, however it ends, every request it accepted ends too; a
batched caller learns what an unbatched one would, and such a request is counted."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from forge_sc import open_service
from forge_sc.errors import ServiceClosedError
from forge_sc.testing import FakeMesh

from ._support import (
    FAST,
    Abort,
    Hostile,
    assert_idle,
    carries,
    checked_service,
    running_tasks,
    wait_for,
)

pytestmark = pytest.mark.anyio

KINDS = {
    "abort": Abort,
    "keyboard": KeyboardInterrupt,
    "exit": SystemExit,
    "generator_exit": GeneratorExit,
}


async def _outcome(fn: Any, *args: Any, bound: float = 3.0) -> BaseException | Any:
    """How one call ended (its result or its exception); fails if it took > bound."""
    with anyio.fail_after(bound):
        try:
            return await fn(*args)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            return exc


@pytest.mark.parametrize("kind", list(KINDS))
async def test_batched_callers_outside_the_block_are_settled(kind: str) -> None:
    """Item 1: a batched endpoint raising a BaseException; its callers run in tasks
    outside the open_service block. They must end (not wait forever)."""
    before = running_tasks()
    outcomes: list[Any] = []
    entered = anyio.Event()
    box: dict[str, Any] = {}

    async def caller() -> None:
        await entered.wait()
        outcomes.append(await _outcome(box["svc"].bthrow.route, kind))

    async with anyio.create_task_group() as outside:
        for _ in range(3):
            outside.start_soon(caller)
        async with open_service(Hostile, mesh=FakeMesh(), **FAST) as svc:
            box["svc"] = svc
            entered.set()
            with anyio.fail_after(5):
                while len(outcomes) < 3:  # noqa: ASYNC110 - bounded
                    await anyio.sleep(0.005)
            # The service itself goes on serving.
            assert await svc.value.route() == 1
            assert_idle(svc)
    assert all(carries(o, KINDS[kind]) for o in outcomes), outcomes
    assert running_tasks() == before


@pytest.mark.parametrize("batched", [False, True])
async def test_a_base_exception_of_the_endpoint_is_counted_as_a_failure(batched: bool) -> None:
    """Item 13: a request whose endpoint raised a BaseException counts as a request
    and a failure (as any other exception of the endpoint)."""
    async with checked_service() as svc:
        ep = svc.bthrow if batched else svc.throw
        outcome = await _outcome(ep.route, "abort")
        assert carries(outcome, Abort), outcome
        s = svc.statistics()
        assert (s.total_requests, s.failed_requests) == (1, 1), s


async def test_fanout_with_a_base_exception_is_counted_and_ends() -> None:
    async with checked_service(num_replicas=2) as svc:
        outcome = await _outcome(svc.throw.fanout, "abort")
        assert isinstance(outcome, BaseException)
        assert svc.statistics().failed_requests >= 1


async def test_a_batch_in_flight_when_the_service_ends_by_an_error_settles_its_callers() -> None:
    """However the service ends (here: its body raises while a batch runs and callers
    of tasks outside the block wait), those callers end with ServiceClosedError."""
    before = running_tasks()
    outcomes: list[Any] = []
    box: dict[str, Any] = {}
    entered = anyio.Event()

    async def caller() -> None:
        await entered.wait()
        outcomes.append(await _outcome(box["svc"].bnap.route, 30.0, bound=5.0))

    async with anyio.create_task_group() as outside:
        for _ in range(2):
            outside.start_soon(caller)
        with pytest.raises(KeyError):
            async with open_service(
                Hostile, mesh=FakeMesh(), graceful_shutdown_timeout=0.05, **FAST
            ) as svc:
                box["svc"] = svc
                entered.set()
                await wait_for(lambda: svc.statistics().active_requests == 1)  # running
                raise KeyError("the body fails")
    assert len(outcomes) == 2 and all(isinstance(o, ServiceClosedError) for o in outcomes)
    assert running_tasks() == before
