"""Replica deaths at awkward moments: a full queue, a cancelled caller, several deaths
at once, a death the service has not heard of yet; and what the metrics count."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from forge_sc import Router, open_service
from forge_sc.errors import (
    NoHealthyReplicasError,
    ReplicaDiedError,
    ServiceClosedError,
    ServiceOverloadedError,
)
from forge_sc.testing import FakeMesh

from ._support import FAST, Hostile, assert_idle, checked_service, wait_for

pytestmark = pytest.mark.anyio


async def test_a_running_request_is_retried_even_when_the_queue_is_full() -> None:
    """max_queued_requests sheds new requests; one already running whose replica died
    is placed again (DESIGN §3: retried, up to max_attempts), not refused as
    'queue full'."""
    mesh = FakeMesh(seed=1)
    async with checked_service(
        mesh=mesh, replica_max_concurrent_requests=1, max_queued_requests=1
    ) as svc:
        out: dict[str, Any] = {}

        async def call(tag: str, seconds: float) -> None:
            try:
                out[tag] = await svc.record.route(tag, seconds)
            except Exception as exc:
                out[tag] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "running", 0.3)
            await wait_for(lambda: svc.statistics().active_requests == 1)
            tg.start_soon(call, "queued", 0.0)
            await wait_for(lambda: svc.statistics().queue_depth == 1)
            mesh.crash(0)
        assert out == {"running": "running", "queued": "queued"}
        assert svc.statistics().retries == 1


@pytest.mark.parametrize("order", ["crash_then_cancel", "cancel_then_crash"])
async def test_a_caller_cancelled_as_its_replica_dies_is_not_sent_again(order: str) -> None:
    mesh = FakeMesh(seed=1)
    async with checked_service(mesh=mesh, num_replicas=2) as svc:
        scope = anyio.CancelScope()
        finished = False

        async def call() -> None:
            nonlocal finished
            with scope:
                await svc.record.route("c", 0.3)
                finished = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_for(lambda: svc.statistics().active_requests == 1)
            busy = next(r.idx for r in svc.replicas if r.active_requests)
            if order == "crash_then_cancel":
                mesh.crash(busy)
                scope.cancel()
            else:
                scope.cancel()
                mesh.crash(busy)
        await wait_for(lambda: all(r.healthy for r in svc.replicas))
        assert not finished
        assert mesh.actor(1 - busy).seen == [], "re-sent after its caller was cancelled"
        stats = svc.statistics()
        assert stats.retries == 0
        assert stats.total_requests == 0  # a cancelled caller is not counted


async def test_two_replicas_dying_at_once_cost_one_send_not_two() -> None:
    """The second replica died before the re-send: the backend refuses that call
    unsent (CallNotSent), so max_attempts=2 still has its re-send for a replica
    that lives, and the message never blames a replica that was never sent to."""
    mesh = FakeMesh(seed=1)
    async with checked_service(mesh=mesh, num_replicas=2, max_attempts=2) as svc:
        result: list[Any] = []

        async def call() -> None:
            result.append(await svc.record.route("r", 0.3))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_for(lambda: svc.statistics().active_requests == 1)
            busy = next(r.idx for r in svc.replicas if r.active_requests)
            mesh.crash(busy)
            mesh.crash(1 - busy)
        assert result == ["r"]
        assert svc.statistics().retries == 1


async def test_a_death_the_service_has_not_heard_of_is_not_a_send() -> None:
    """Routed in the same step as the crash (before the service learned of it): the
    request is placed on the healthy replica, also with max_attempts=1 and for an
    endpoint that may not be re-sent."""
    mesh = FakeMesh(seed=1)
    async with checked_service(mesh=mesh, num_replicas=2, max_attempts=1) as svc:
        mesh.crash(0)
        # Round robin: one of the two goes to replica 0 first.
        outcomes: list[Any] = []
        for tag in ("a", "b"):
            try:
                outcomes.append(await svc.record.route(tag))
            except ReplicaDiedError as exc:
                outcomes.append(exc)
        assert outcomes == ["a", "b"]
        assert mesh.actor(1).seen == ["a", "b"]
        assert svc.statistics().retries == 0


async def test_refusals_by_a_closed_service_count_as_failed_requests() -> None:
    """ServiceClosedError is one of the service's own errors: counted, as an overload
    refusal is (ServiceMetrics: 'so do the service's own errors')."""
    async with open_service(Hostile, mesh=FakeMesh(seed=1), **FAST) as svc:
        assert await svc.value.route() == 1
    for _ in range(2):
        with pytest.raises(ServiceClosedError):
            await svc.value.route()
    stats = svc.statistics()
    assert (stats.successful_requests, stats.failed_requests) == (1, 2)


async def test_a_queue_full_refusal_is_counted_once() -> None:
    mesh = FakeMesh(seed=1)
    async with checked_service(
        mesh=mesh, replica_max_concurrent_requests=1, max_queued_requests=0
    ) as svc:
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 0.2)
            await wait_for(lambda: svc.statistics().active_requests == 1)
            with pytest.raises(ServiceOverloadedError):
                await svc.value.route()
        stats = svc.statistics()
        assert (stats.successful_requests, stats.failed_requests) == (1, 1)


class _Interrupting(Router):
    def get_replica(
        self, healthy_replicas: Any, sess_id: Any = None, session_map: Any = None
    ) -> Any:
        raise KeyboardInterrupt


async def test_a_router_raising_a_base_exception_is_a_failed_request() -> None:
    """A BaseException that is not a cancellation fails the request and is counted,
    unbatched as batched."""
    async with checked_service() as svc:
        svc.value.router = _Interrupting()
        with pytest.raises(KeyboardInterrupt):
            await svc.value.route()
        assert svc.statistics().failed_requests == 1


async def test_batched_callers_that_left_after_the_batch_was_sent_are_not_counted() -> None:
    """As an unbatched cancelled caller is not: the answered callers are the batch's
    requests in the service totals."""
    async with checked_service() as svc:
        scopes = [anyio.CancelScope() for _ in range(4)]
        answered: list[float] = []

        async def one(scope: anyio.CancelScope) -> None:
            with scope:
                answered.append(await svc.bnap.route(0.2))

        async with anyio.create_task_group() as tg:
            for scope in scopes:
                tg.start_soon(one, scope)
            await wait_for(lambda: svc.statistics().active_requests == 1)  # sent
            scopes[0].cancel()
            scopes[1].cancel()
        assert answered == [0.2, 0.2]
        stats = svc.statistics()
        assert (stats.total_requests, stats.successful_requests) == (2, 2)
        assert_idle(svc)


@pytest.mark.parametrize("ends", ["cancelled", "request_timeout"])
async def test_a_request_that_ends_before_it_is_placed_again_is_no_retry(ends: str) -> None:
    """``retries`` counts re-sends: a request whose replica died, and whose caller
    gave up (or whose request_timeout ran out) while it waited for the recovery, was
    never sent again."""
    mesh = FakeMesh(seed=1)
    config: dict[str, Any] = {**FAST, "restart_backoff": 30.0, "request_timeout": 0.2}
    async with checked_service(mesh=mesh, **config) as svc:
        scope = anyio.CancelScope()
        got: list[BaseException] = []

        async def call() -> None:
            with scope:
                try:
                    await svc.record.route("r", 60.0)
                except NoHealthyReplicasError as exc:
                    got.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_for(lambda: svc.statistics().active_requests == 1)
            mesh.crash(0)
            await wait_for(lambda: svc.statistics().queue_depth == 1)  # waits for recovery
            if ends == "cancelled":
                scope.cancel()
        assert (len(got) == 1) is (ends == "request_timeout")
        stats = svc.statistics()
        assert stats.retries == 0, stats
        await svc.restart_replica(0)  # not to wait 30 s for the back-off to end
