"""Batches under hostile conditions: orphan batches (issue 10, item 4), bad batch
results, callers cancelled at every stage of a batch, many random timeouts."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

from forge_sc.errors import BatchResultError, ServiceOverloadedError

from ._support import assert_idle, checked_service, wait_for

pytestmark = pytest.mark.anyio


async def test_a_batch_whose_callers_all_left_leaves_the_queue_and_never_runs() -> None:
    """Item 4: batches formed while the only slot is busy wait for it; when their
    callers are all cancelled they must leave the service queue (and stop counting
    against max_queued_requests) and never run."""
    async with checked_service(replica_max_concurrent_requests=1, max_queued_requests=2) as svc:
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 60)  # holds the only slot until cancelled below
            await wait_for(lambda: svc.statistics().active_requests == 1)
            refused = 0
            for i in range(6):
                with anyio.move_on_after(0.03):
                    try:
                        await svc.brecord.route(i)
                    except ServiceOverloadedError:
                        refused += 1
                # The batch is withdrawn at its task's next turn.
                await wait_for(lambda: svc.statistics().queue_depth == 0, 1.0, f"batch {i}")
            assert refused == 0  # nothing counted against max_queued_requests
            tg.cancel_scope.cancel()
        # The slot is free again: the orphan batches did not run.
        await svc.value.route()
        assert svc._mesh.actor(0).seen == []  # type: ignore[attr-defined]
        assert await svc.brecord.route("after") == "after"
        assert svc._mesh.actor(0).seen == ["after"]  # type: ignore[attr-defined]


async def test_many_callers_with_random_timeouts_leave_no_batch_behind() -> None:
    """100 callers x 20 random timeouts while capacity is short: once every caller
    returned, nothing is queued, pending or in flight."""
    rng = random.Random(7)
    async with checked_service(num_replicas=2, replica_max_concurrent_requests=1) as svc:

        async def caller(n: int) -> None:
            for _ in range(20):
                with anyio.move_on_after(rng.choice([0.0, 0.001, 0.003, 0.01, 0.03])):
                    await svc.bnap.route(rng.choice([0.0, 0.002, 0.01]))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(100):
                    tg.start_soon(caller, n)
        await wait_for(lambda: svc.statistics().active_requests == 0)
        assert_idle(svc)


@pytest.mark.parametrize("kind", ["short", "long", "none", "dict", "generator"])
async def test_a_wrong_batch_result_fails_every_caller_of_that_batch_clearly(kind: str) -> None:
    async with checked_service() as svc:
        out: list[Any] = []

        async def one() -> None:
            try:
                await svc.bshape.route(kind)
            except BatchResultError as exc:
                out.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        assert len(out) == 3 and "one result per call" in str(out[0])
        assert await svc.bshape.route("ok") == "ok"  # the service goes on
        assert svc.statistics().failed_requests == 3


@pytest.mark.parametrize("in_session", [False, True])
async def test_a_wrong_batch_result_is_a_failure_of_the_replica_that_gave_it(
    in_session: bool,
) -> None:
    """The caller's BatchResultError is a failed request in every count: the
    service's, and the replica's that returned it (as a fan-out counts it), also for
    a session's call, which goes alone as a batch of one."""
    async with checked_service() as svc:
        if in_session:
            async with svc.session():
                with pytest.raises(BatchResultError, match="one result per call"):
                    await svc.bshape.route("short")
                assert await svc.bshape.route("ok") == "ok"
        else:
            with pytest.raises(BatchResultError, match="one result per call"):
                await svc.bshape.route("short")
            assert await svc.bshape.route("ok") == "ok"
        stats = svc.statistics()
        assert (stats.successful_requests, stats.failed_requests) == (1, 1)
        (replica,) = stats.replicas
        assert (replica.successful_requests, replica.failed_requests) == (1, 1)
        assert_idle(svc)


@pytest.mark.parametrize("stage", ["pending", "queued", "running"])
async def test_a_cancelled_batched_caller_at_every_stage_leaves_nothing(stage: str) -> None:
    """Cancel batched callers while their batch is pending (not yet sent), queued for
    a slot, or running: the other callers of the batch are answered, counters return to
    zero."""
    async with checked_service(replica_max_concurrent_requests=1) as svc:
        results: list[Any] = []
        async with anyio.create_task_group() as tg:
            if stage == "queued":
                tg.start_soon(svc.nap.route, 0.1)
                await wait_for(lambda: svc.statistics().active_requests == 1)
            scopes = [anyio.CancelScope() for _ in range(3)]
            # "pending" must see the batch before its timeout sends it: a 5 ms one can
            # go out while the test is not scheduled.
            batched = svc.bnap_patient if stage == "pending" else svc.bnap

            async def caller(i: int) -> None:
                with scopes[i]:
                    results.append(await batched.route(0.05))

            for i in range(3):
                tg.start_soon(caller, i)
            if stage == "pending":
                await wait_for(lambda: any(b.pending == 3 for b in svc.statistics().batchers))
            elif stage == "running":
                await wait_for(lambda: svc.statistics().active_requests == 1)
            else:
                await wait_for(lambda: svc.statistics().queue_depth == 1)
            scopes[0].cancel()
            scopes[1].cancel()
        assert results == [0.05]
        assert_idle(svc)


async def test_a_batched_call_admitted_before_the_close_is_answered_in_the_drain() -> None:
    """DESIGN §3, service closing: in-flight requests (from tasks outside the block
    too) run to completion; a call waiting in its batch when the block is left is
    one of them: its batch is sent during the drain, and it counts once."""
    got: list[Any] = []
    async with anyio.create_task_group() as tg:
        async with checked_service(graceful_shutdown_timeout=30.0) as svc:

            async def outside() -> None:
                got.append(await svc.bnap_patient.route(0.0))

            tg.start_soon(outside)
            await wait_for(
                lambda: any(
                    b.endpoint == "bnap_patient" and b.pending == 1
                    for b in svc.statistics().batchers
                )
            )
    assert got == [0.0]
    stats = svc.statistics()
    assert (stats.total_requests, stats.successful_requests, stats.failed_requests) == (1, 1, 0)
