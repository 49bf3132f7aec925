"""Each router's behaviour, alone and behind a service."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import pytest

from forge_sc import (
    ForgeActor,
    LeastLoadedRouter,
    PowerOfTwoRouter,
    Replica,
    RoundRobinRouter,
    Router,
    SessionRouter,
    open_service,
    service_endpoint,
)
from forge_sc.testing import FakeMesh

from .conftest import wait_for

pytestmark = pytest.mark.anyio


class Fake:
    """Stands in for a Replica in router unit tests (routers read idx and load)."""

    def __init__(self, idx: int, load: int = 0, sessions: int = 0) -> None:
        self.idx = idx
        self.current_load = load
        self.assigned_sessions = sessions


def reps(*loads: int) -> list[Replica]:
    return [Fake(i, load) for i, load in enumerate(loads)]  # type: ignore[misc]


def test_round_robin_cycles_in_order() -> None:
    r = RoundRobinRouter()
    pool = reps(0, 0, 0)
    assert [r.get_replica(pool).idx for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert r.get_replica(pool[:1]).idx == 0  # a shrunk pool never indexes out of range


def test_least_loaded_picks_min_load_lowest_index_on_ties() -> None:
    r = LeastLoadedRouter()
    assert r.get_replica(reps(3, 1, 2)).idx == 1
    assert r.get_replica(reps(2, 0, 0)).idx == 1
    pool = [Fake(0, 0, 2), Fake(1, 0, 1), Fake(2, 1, 0)]
    assert r.get_replica(pool).idx == 1  # type: ignore[arg-type]


def test_power_of_two_is_seedable_and_prefers_less_loaded() -> None:
    a, b = PowerOfTwoRouter(seed=7), PowerOfTwoRouter(seed=7)
    pool = reps(5, 0, 5, 5)
    picks_a = [a.get_replica(pool).idx for _ in range(50)]
    picks_b = [b.get_replica(pool).idx for _ in range(50)]
    assert picks_a == picks_b
    # replica 1 (load 0) wins every draw it is part of: half the draws of 2 of 4
    assert Tally(picks_a)[1] >= 15
    assert PowerOfTwoRouter().get_replica(reps(0)).idx == 0


def test_session_router_is_sticky_and_does_not_mutate() -> None:
    r = SessionRouter(fallback_router=LeastLoadedRouter())
    pool = reps(0, 0, 0)
    smap = {"s": 2}
    frozen = dict(smap)
    assert r.get_replica(pool, "s", smap).idx == 2
    assert r.get_replica(pool, "new", smap).idx == 0  # fallback: least loaded
    assert smap == frozen
    assert r.get_replica(pool[:2], "s", smap).idx == 0  # its replica is gone: fallback


class Who(ForgeActor):
    @service_endpoint(router=RoundRobinRouter)
    async def rr(self) -> int:
        return id(self)

    @service_endpoint(router=LeastLoadedRouter)
    async def least(self, seconds: float = 0.0) -> int:
        if seconds:
            await anyio.sleep(seconds)
        return id(self)

    @service_endpoint(router=lambda: PowerOfTwoRouter(seed=1))
    async def p2(self) -> int:
        return id(self)


async def test_service_honours_each_endpoints_router() -> None:
    mesh = FakeMesh()
    async with open_service(Who, num_replicas=3, mesh=mesh) as svc:
        ids = [id(mesh.actor(i)) for i in range(3)]
        assert [await svc.rr.route() for _ in range(6)] == ids + ids
        # least loaded with nothing in flight: always the lowest index
        assert {await svc.least.route() for _ in range(4)} == {ids[0]}
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.least.route, 0.2)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
            assert await svc.least.route() == ids[1]
            tg.cancel_scope.cancel()
        assert {await svc.p2.route() for _ in range(30)} <= set(ids)


class Picky(Router):
    """A user router: always the highest index."""

    def get_replica(
        self,
        healthy_replicas: Sequence[Replica],
        sess_id: str | None = None,
        session_map: Mapping[str, int] | None = None,
    ) -> Replica:
        return max(healthy_replicas, key=lambda r: r.idx)


class Liar(Router):
    def get_replica(
        self,
        healthy_replicas: Sequence[Replica],
        sess_id: str | None = None,
        session_map: Mapping[str, int] | None = None,
    ) -> Replica:
        return "not a replica"  # type: ignore[return-value]


class Eager(Router):
    async def get_replica(  # type: ignore[override]
        self,
        healthy_replicas: Sequence[Replica],
        sess_id: str | None = None,
        session_map: Mapping[str, int] | None = None,
    ) -> Replica:
        return healthy_replicas[0]  # pragma: no cover - never awaited


class Custom(ForgeActor):
    @service_endpoint(router=Eager)
    async def h(self) -> int:
        return 1

    @service_endpoint(router=Picky)
    async def f(self) -> int:
        return id(self)

    @service_endpoint(router=Liar)
    async def g(self) -> int:
        return 1


async def test_user_router_subclass_is_used_and_validated() -> None:
    mesh = FakeMesh()
    async with open_service(Custom, num_replicas=3, mesh=mesh) as svc:
        assert await svc.f.route() == id(mesh.actor(2))
        with pytest.raises(TypeError, match=r"Liar\.get_replica"):
            await svc.g.route()
        with pytest.raises(TypeError, match=r"Eager\.get_replica\(\) returned an awaitable"):
            await svc.h.route()
        # Both ended in the router's error: failed requests, counted once each.
        stats = svc.statistics()
        assert (stats.total_requests, stats.failed_requests) == (3, 2)
        assert await svc.f.route() == id(mesh.actor(2))  # nothing was lost


async def test_router_only_sees_replicas_with_free_capacity() -> None:
    mesh = FakeMesh()
    async with open_service(
        Who, num_replicas=2, mesh=mesh, replica_max_concurrent_requests=1
    ) as svc:
        ids = [id(mesh.actor(i)) for i in range(2)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.least.route, 0.2)
            await wait_for(lambda: svc.replicas[0].active_requests == 1)
            assert [await svc.rr.route() for _ in range(3)] == [ids[1]] * 3
            tg.cancel_scope.cancel()


class _NeedsArgument(Router):
    def __init__(self, k: int) -> None:
        self.k = k

    def get_replica(
        self, healthy_replicas: Any, sess_id: Any = None, session_map: Any = None
    ) -> Any:
        return healthy_replicas[0]


class _TakesNothing(Router):
    def get_replica(self) -> Any:  # type: ignore[override]
        return None


def _decorate(router: Any) -> None:
    class _A(ForgeActor):
        @service_endpoint(router=router)
        async def ep(self) -> int:
            return 1


def test_a_router_class_that_needs_arguments_fails_at_the_decorator() -> None:
    with pytest.raises(
        TypeError, match=r"router=_NeedsArgument cannot be made without arguments.*lambda"
    ):
        _decorate(_NeedsArgument)
    _decorate(_NeedsArgument(3))  # an instance is a prototype: fine
    _decorate(lambda: _NeedsArgument(3))


@pytest.mark.parametrize("form", ["class", "instance"])
def test_a_get_replica_that_cannot_take_the_replicas_fails_at_the_decorator(form: str) -> None:
    with pytest.raises(TypeError, match="does not match the router protocol"):
        _decorate(_TakesNothing if form == "class" else _TakesNothing())


async def test_a_router_factory_that_raises_names_the_endpoint() -> None:
    def broken() -> Router:
        raise ValueError("factory broke")

    class _B(ForgeActor):
        @service_endpoint(router=broken)
        async def ep(self) -> int:
            return 1

    with pytest.raises(ValueError, match="factory broke") as info:
        async with open_service(_B, mesh=FakeMesh()):
            pass
    assert any("router=" in note and "ep" in note for note in info.value.__notes__)
