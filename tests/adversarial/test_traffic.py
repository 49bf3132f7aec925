"""Hostile traffic: bad routers, bad endpoints, misuse of the handle, cancellation at
every stage of a request, faults under traffic, load shedding with 10,000 callers.
After each case nothing is left running and every counter is back at zero."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from unittest import mock

import anyio
import pytest

from forge_sc import ForgeActor, Router, endpoint, service_endpoint
from forge_sc.errors import (
    NoHealthyReplicasError,
    ReplicaDiedError,
    ServiceClosedError,
    ServiceOverloadedError,
)
from forge_sc.testing import FakeMesh

from ._support import assert_idle, checked_service, wait_for

pytestmark = pytest.mark.anyio


class _Stranger(Router):
    def get_replica(self, healthy_replicas: Sequence[Any], *_: Any) -> Any:
        return object()  # not one of them


class _Equal(Router):
    def get_replica(self, healthy_replicas: Sequence[Any], *_: Any) -> Any:
        return mock.ANY  # equal to everything, yet none of them


class _Raiser(Router):
    def get_replica(self, healthy_replicas: Sequence[Any], *_: Any) -> Any:
        raise ZeroDivisionError("the router broke")


class _Mutator(Router):
    def get_replica(self, healthy_replicas: Sequence[Any], *_: Any) -> Any:
        # Mutates what it was given: it must not corrupt the service's own state.
        del healthy_replicas[0]  # type: ignore[attr-defined]
        return healthy_replicas[0] if healthy_replicas else None


class BadRouters(ForgeActor):
    @service_endpoint(router=_Stranger)
    async def stranger(self) -> int:
        return 1

    @service_endpoint(router=_Equal)
    async def equal(self) -> int:
        return 1

    @service_endpoint(router=_Raiser)
    async def raiser(self) -> int:
        return 1

    @service_endpoint(router=_Mutator)
    async def mutator(self) -> int:
        return 1

    @service_endpoint(router=_Stranger, batch_size=2, batch_timeout=0.001)
    async def bstranger(self, xs: list[int]) -> list[int]:
        return xs

    @endpoint
    async def ok(self) -> int:
        return 1


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("stranger", TypeError),
        ("equal", TypeError),
        ("raiser", ZeroDivisionError),
        ("mutator", TypeError),
        ("bstranger", TypeError),
    ],
)
async def test_a_bad_router_fails_its_request_clearly_and_nothing_else(
    name: str, error: type[BaseException]
) -> None:
    async with checked_service(BadRouters, num_replicas=2) as svc:
        for _ in range(3):
            with pytest.raises(error):
                await getattr(svc, name).route(*([1] if name == "bstranger" else []))
        assert await svc.ok.route() == 1  # the service is unharmed
        assert all(r.healthy for r in svc.replicas)
        assert_idle(svc)


async def test_misuse_of_the_handle() -> None:
    async with checked_service(num_replicas=2) as svc:
        with pytest.raises(AttributeError, match="no endpoint 'nope'"):
            _ = svc.nope
        for verb in ("call", "call_one", "choose", "broadcast", "generate"):
            with pytest.raises(NotImplementedError, match="Services only support"):
                getattr(svc.value, verb)()
        with pytest.raises(ValueError, match="no replica with index 7"):
            await svc.restart_replica(7)
        with pytest.raises(TypeError):
            await svc.value.route(1, 2, 3)  # wrong arguments: the endpoint's own TypeError
        assert await svc.value.route() == 1
        await svc.terminate_session("never-started")  # idempotent
        await svc.shutdown()
        await svc.shutdown()  # idempotent
        with pytest.raises(ServiceClosedError):
            await svc.value.route()
        with pytest.raises(ServiceClosedError):
            await svc.value.fanout()
        with pytest.raises(ServiceClosedError):
            await svc.brecord.route(1)
        with pytest.raises(ServiceClosedError):
            await svc.start_session()


@pytest.mark.parametrize("stage", ["queued", "in_flight", "session_queued", "fanout"])
async def test_a_cancelled_caller_at_every_stage_leaves_nothing(stage: str) -> None:
    async with checked_service(num_replicas=2, replica_max_concurrent_requests=1) as svc:
        scope = anyio.CancelScope()
        sid = await svc.start_session()
        await svc.value.route(sess_id=sid)

        async def victim() -> None:
            with scope:
                if stage == "fanout":
                    await svc.nap.fanout(10.0)
                elif stage == "session_queued":
                    await svc.nap.route(10.0, sess_id=sid)
                else:
                    await svc.nap.route(10.0)

        async with anyio.create_task_group() as tg:
            if stage in ("queued", "session_queued"):
                for _ in range(2):  # fill both replicas
                    tg.start_soon(svc.nap.route, 0.2)
                await wait_for(lambda: svc.statistics().active_requests == 2)
            tg.start_soon(victim)
            if stage in ("queued", "session_queued"):
                await wait_for(lambda: svc.statistics().queue_depth == 1)
            else:
                await wait_for(lambda: svc.statistics().active_requests >= 1)
            scope.cancel()
        await svc.terminate_session(sid)
        assert all(r.healthy for r in svc.replicas)  # a cancelled caller kills nothing
        assert_idle(svc)


async def test_faults_under_traffic_end_every_request() -> None:
    mesh = FakeMesh(seed=3)
    async with checked_service(
        mesh=mesh, num_replicas=3, max_restarts=50, request_timeout=5.0, health_timeout=0.05
    ) as svc:
        outcomes: dict[str, int] = {}

        async def caller(i: int) -> None:
            for j in range(20):
                try:
                    if j % 3 == 0:
                        await svc.brecord.route((i, j))
                    else:
                        await svc.record.route((i, j), 0.001)
                    key = "ok"
                except (ReplicaDiedError, NoHealthyReplicasError) as exc:
                    key = type(exc).__name__
                outcomes[key] = outcomes.get(key, 0) + 1

        async def faults() -> None:
            for k in range(15):
                await anyio.sleep(0.005)
                idx = k % 3
                (mesh.crash if k % 2 else mesh.hang)(idx)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(caller, i)
                tg.start_soon(faults)
        assert sum(outcomes.values()) == 600
        assert outcomes.get("ok", 0) > 0
        await wait_for(lambda: svc.statistics().active_requests == 0)
        assert_idle(svc)


@pytest.mark.parametrize("batched", [False, True])
async def test_load_shedding_with_10000_callers(batched: bool) -> None:
    """10,000 callers at once on 2 replicas of capacity 2 with max_queued_requests=100:
    the excess is refused at once with ServiceOverloadedError; every admitted request
    is answered; afterwards every counter is back at zero."""
    async with checked_service(
        num_replicas=2, replica_max_concurrent_requests=2, max_queued_requests=100
    ) as svc:
        counts = {"ok": 0, "shed": 0}

        async def caller(i: int) -> None:
            try:
                if batched:
                    await svc.bnap.route(0.002)
                else:
                    await svc.nap.route(0.002)
                counts["ok"] += 1
            except ServiceOverloadedError:
                counts["shed"] += 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(10_000):
                    tg.start_soon(caller, i)
        assert counts["ok"] + counts["shed"] == 10_000
        assert counts["ok"] >= 100 and counts["shed"] > 0
        s = svc.statistics()
        assert s.total_requests == 10_000
        assert (s.successful_requests, s.failed_requests) == (counts["ok"], counts["shed"])
        assert_idle(svc)
