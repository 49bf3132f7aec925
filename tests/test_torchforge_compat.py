"""The guarantees behind the seeds' TorchForge API (FakeMesh; asyncio and trio).

Router instances are prototypes (never shared between endpoints or services), the
``ForgeActor`` class attributes are defaults, ``setup()`` runs once per incarnation
before traffic and fails like a constructor, TorchForge's metric readers compute
what they say, and the errors a TorchForge user catches keep their base class. The
seed examples themselves are in ``test_seed_examples.py``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import attrs
import pytest

from forge_sc import ForgeActor, RoundRobinRouter, Router, endpoint, open_service, service_endpoint
from forge_sc.errors import (
    NoHealthyReplicasError,
    ReplicaDiedError,
    ServiceClosedError,
    ServiceError,
    ServiceFailedError,
    ServiceOverloadedError,
)
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------- router instances


class Counting(Router):
    """Counts its own decisions; picks replicas in turn."""

    def __init__(self) -> None:
        self.calls = 0

    def get_replica(
        self,
        healthy_replicas: Sequence[Any],
        sess_id: str | None = None,
        session_map: Any = None,
    ) -> Any:
        self.calls += 1
        return healthy_replicas[(self.calls - 1) % len(healthy_replicas)]


PROTOTYPE = Counting()


class TwoEndpoints(ForgeActor):
    @service_endpoint(router=PROTOTYPE)
    async def f(self) -> int:
        return id(self)

    @service_endpoint(router=PROTOTYPE)
    async def g(self) -> int:
        return id(self)

    @service_endpoint(router=RoundRobinRouter())
    async def rr(self) -> int:
        return id(self)


async def test_a_router_instance_is_a_prototype_copied_per_endpoint_per_service() -> None:
    async with (
        open_service(TwoEndpoints, num_replicas=2, mesh=FakeMesh()) as s1,
        open_service(TwoEndpoints, num_replicas=2, mesh=FakeMesh()) as s2,
    ):
        routers = [s1.f.router, s1.g.router, s2.f.router, s2.g.router]
        assert all(isinstance(r, Counting) for r in routers)
        assert len({id(r) for r in routers}) == 4  # never the same object twice
        assert all(r is not PROTOTYPE for r in routers)
        for _ in range(3):
            await s1.f.route()
        assert [r.calls for r in routers] == [3, 0, 0, 0]  # no state leaks
        assert PROTOTYPE.calls == 0  # the user's own object is never used


async def test_router_state_does_not_leak_between_services() -> None:
    """The first call of each service goes to its replica 0. One shared round-robin
    router would send the second service's first call to replica 1."""
    m1, m2 = FakeMesh(), FakeMesh()
    async with (
        open_service(TwoEndpoints, num_replicas=2, mesh=m1) as s1,
        open_service(TwoEndpoints, num_replicas=2, mesh=m2) as s2,
    ):
        assert await s1.rr.route() == id(m1.actor(0))
        assert await s2.rr.route() == id(m2.actor(0))
        assert await s1.rr.route() == id(m1.actor(1))
        assert await s2.rr.route() == id(m2.actor(1))


async def test_the_prototype_is_snapshotted_at_decoration() -> None:
    proto = Counting()

    class Late(ForgeActor):
        @service_endpoint(router=proto)
        async def f(self) -> int:
            return 1

    proto.calls = 100  # changed after the class was defined: no effect on services
    async with open_service(Late, mesh=FakeMesh()) as svc:
        await svc.f.route()
        assert svc.f.router.calls == 1


def test_an_uncopyable_router_instance_fails_at_decoration() -> None:
    class Locked(Router):
        def __init__(self) -> None:
            self.lock = threading.Lock()

    async def f(self: object) -> int:
        return 1

    with pytest.raises(TypeError, match=r"cannot be copied.*factory"):
        service_endpoint(router=Locked())(f)
    service_endpoint(router=Locked)(f)  # the class (or a factory) is fine


# ------------------------------------------------------ ForgeActor class attributes


def test_invalid_class_attributes_fail_at_class_definition() -> None:
    with pytest.raises(ValueError, match=r"BadProcs.*procs must be an int >= 1"):

        class BadProcs(ForgeActor):
            procs = 0

    with pytest.raises(TypeError, match="_extra_config has unknown option"):

        class BadExtra(ForgeActor):
            _extra_config = {"mesh_name": "x"}  # noqa: RUF012

    with pytest.raises(TypeError, match="configuration default"):

        class Clash(ForgeActor):
            @endpoint
            async def num_replicas(self) -> int:
                return 1


def test_options_are_validated_with_the_class_defaults() -> None:
    class Three(ForgeActor):
        num_replicas = 3

    with pytest.raises(ValueError, match=r"num_replicas \(3\) must be <= max_replicas \(2\)"):
        Three.options(max_replicas=2)
    assert Three.options(max_replicas=4).config_options()["num_replicas"] == 3


async def test_a_subclass_inherits_the_class_defaults() -> None:
    class Base(ForgeActor):
        num_replicas = 2

        @endpoint
        async def one(self) -> int:
            return 1

    class Child(Base):
        procs = 2

    async with open_service(Child, mesh=FakeMesh()) as svc:
        assert (len(svc.replicas), svc.config.procs) == (2, 2)


# --------------------------------------------------------------------- setup()


class Staged(ForgeActor):
    """Logs its life into ``log`` (FakeMesh: the same list in-process). ``gates``
    holds one event per incarnation that setup() waits for (none: no wait)."""

    def __init__(self, log: list[str], gates: list[anyio.Event] | None = None) -> None:
        self.log = log
        self.gates = gates
        self.ready = False
        log.append("init")

    @endpoint
    async def setup(self) -> None:
        if self.gates:
            await self.gates.pop(0).wait()
        else:
            await anyio.lowlevel.checkpoint()
        self.ready = True
        self.log.append("setup")

    @endpoint
    async def work(self) -> bool:
        self.log.append("call")
        return self.ready


async def test_setup_runs_once_per_incarnation_before_traffic() -> None:
    log: list[str] = []
    mesh = FakeMesh()
    async with open_service(Staged, log, mesh=mesh, restart_backoff=0.01) as svc:
        assert log == ["init", "setup"]  # the body starts after setup()
        assert await svc.work.route() is True
        mesh.crash(0)
        assert await svc.work.route() is True  # waited for the new incarnation
        assert log == ["init", "setup", "call", "init", "setup", "call"]
        assert mesh.spawn_count(0) == 2


async def test_a_recovering_replica_takes_no_request_until_its_setup_returned() -> None:
    log: list[str] = []
    first, second = anyio.Event(), anyio.Event()
    first.set()  # the first incarnation sets up at once
    mesh = FakeMesh()
    async with open_service(Staged, log, [first, second], mesh=mesh, restart_backoff=0.01) as svc:
        mesh.crash(0)
        answers: list[bool] = []
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                answers.append(await svc.work.route())

            tg.start_soon(call)
            await wait_for(lambda: log.count("init") == 2)  # constructed, in setup()
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert log == ["init", "setup", "init"] and answers == []
            assert svc.replicas[0].state.name == "RECOVERING"
            second.set()
        assert answers == [True]
        assert log == ["init", "setup", "init", "setup", "call"]


async def test_setup_runs_on_every_rank() -> None:
    log: list[str] = []
    async with open_service(Staged, log, procs=3, mesh=FakeMesh()):
        assert log == ["init"] * 3 + ["setup"] * 3


class SetupError(Exception):
    pass


class FailingSetup(ForgeActor):
    """setup() raises from incarnation ``fail_from`` on (counted in ``seen``)."""

    def __init__(self, seen: list[BaseException], fail_from: int = 1) -> None:
        self.seen = seen
        self.fail_from = fail_from

    @endpoint
    async def setup(self) -> None:
        self.seen.append(SetupError(f"setup #{len(self.seen) + 1} failed"))
        if len(self.seen) >= self.fail_from:
            raise self.seen[-1]
        self.seen[-1] = RuntimeError("not raised")

    @endpoint
    async def ok(self) -> int:
        return 1


async def test_a_raising_setup_fails_open_service_with_that_cause() -> None:
    seen: list[BaseException] = []
    mesh = FakeMesh()
    with pytest.raises(ServiceFailedError) as info:
        async with open_service(FailingSetup, seen, mesh=mesh, num_replicas=2):
            pytest.fail("the body must not run")
    assert isinstance(info.value.__cause__, SetupError)
    assert info.value.__cause__ in seen  # the very exception setup() raised
    assert mesh.spawn_count(0) == 1  # no retry loop at start-up


async def test_a_raising_setup_in_recovery_counts_against_the_restart_budget() -> None:
    seen: list[BaseException] = []
    mesh = FakeMesh()
    with pytest.raises(ServiceFailedError, match="restart budget") as info:
        with anyio.fail_after(5):
            async with open_service(
                FailingSetup, seen, 2, mesh=mesh, max_restarts=2, restart_backoff=0.01
            ) as svc:
                assert await svc.ok.route() == 1
                mesh.crash(0)
                await anyio.sleep_forever()  # cancelled when the service gives up
    assert isinstance(info.value.__cause__, SetupError)
    assert info.value.__cause__ is seen[-1]
    assert mesh.spawn_count(0) == 3  # the first spawn and the two restarts allowed


def test_a_setup_that_is_not_an_endpoint_fails_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"setup is not an endpoint.*@endpoint"):

        class Forgot(ForgeActor):
            async def setup(self) -> None:
                pass


# --------------------------------------------------------- TorchForge's metrics


class Held(ForgeActor):
    def __init__(self, gate: anyio.Event) -> None:
        self.gate = gate

    @endpoint
    async def hold(self) -> None:
        await self.gate.wait()


async def test_metric_readers_under_load() -> None:
    """2 replicas of capacity 1: 2 calls run, 2 wait in the queue, 3 sessions."""
    gate = anyio.Event()
    async with open_service(
        Held, gate, num_replicas=2, replica_max_concurrent_requests=1, mesh=FakeMesh()
    ) as svc:
        for _ in range(3):
            await svc.start_session()
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(svc.hold.route)
            await wait_for(lambda: svc.get_metrics().queue_depth == 2)
            m = svc.get_metrics()
            assert m.get_total_request_rate() == m.request_rate
            assert m.get_avg_queue_depth() == 1.0  # 2 waiting / 2 replicas
            assert m.get_avg_queue_depth(svc._replicas) == 1.0
            assert m.get_avg_capacity_utilization(svc._replicas) == 1.0
            assert m.get_avg_capacity_utilization([1]) == 1.0  # indices work too
            assert m.get_sessions_per_replica() == 1.5
            summary = m.summary()["service"]
            assert summary["avg_queue_depth"] == m.get_avg_queue_depth()
            assert summary["sessions_per_replica"] == m.get_sessions_per_replica()
            gate.set()


async def test_metric_readers_count_only_the_healthy_replicas_given() -> None:
    gate = anyio.Event()
    async with open_service(Held, gate, num_replicas=2, mesh=FakeMesh()) as svc:
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.hold.route)  # round robin: replica 0
            await wait_for(lambda: svc.get_metrics().active_requests == 1)
            m = svc.get_metrics()
            gate.set()
    r0, r1 = m.replicas
    assert (r0.capacity_utilization, r1.capacity_utilization) == (0.1, 0.0)
    assert m.get_avg_capacity_utilization([r0, r1]) == pytest.approx(0.05)
    assert m.get_avg_capacity_utilization([r0]) == pytest.approx(0.1)
    sick = attrs.evolve(m, replicas=(r0, attrs.evolve(r1, healthy=False)))
    assert sick.get_avg_capacity_utilization([r0, r1]) == pytest.approx(0.1)
    assert sick.get_avg_capacity_utilization([r1]) == 0.0
    assert sick.get_avg_queue_depth([r1]) == 0.0
    assert attrs.evolve(m, replicas=()).get_sessions_per_replica() == 0.0


# ------------------------------------------------------------------------ errors


def test_errors_keep_torchforge_base_classes() -> None:
    """TorchForge raised RuntimeError for no healthy replica, a failed replica and a
    stopped service; those errors stay RuntimeErrors here."""
    for exc in (NoHealthyReplicasError, ReplicaDiedError, ServiceClosedError):
        assert issubclass(exc, RuntimeError) and issubclass(exc, ServiceError)
    assert not issubclass(ServiceError, RuntimeError)
    assert not issubclass(ServiceOverloadedError, RuntimeError)


async def test_except_runtime_error_catches_a_closed_service() -> None:
    async with open_service(Staged, [], mesh=FakeMesh()) as svc:
        pass
    try:
        await svc.work.route()
    except RuntimeError as exc:
        assert isinstance(exc, ServiceClosedError)
    else:
        pytest.fail("no error")


async def test_call_all_takes_the_endpoint_name_as_torchforge_spells_it() -> None:
    """TorchForge's signature is call_all(function, *args, **kwargs): the keyword form
    works too (and DESIGN's ``name``), and the endpoint's own keywords pass through."""
    async with open_service(_Echo, num_replicas=2, mesh=FakeMesh()) as svc:
        assert await svc.call_all("echo", 1) == [1, 1]
        assert await svc.call_all(function="echo", x=2) == [2, 2]
        assert await svc.call_all(name="echo", x=3) == [3, 3]
        with pytest.raises(TypeError, match="endpoint's name first"):
            await svc.call_all()


async def test_service_endpoint_verbs_of_monarch_are_refused_clearly() -> None:
    async with open_service(_Echo, mesh=FakeMesh()) as svc:
        for verb in ("call", "call_one", "choose", "broadcast", "generate", "stream", "rref"):
            with pytest.raises(NotImplementedError, match=f"use {verb}\\(\\) on a service"):
                getattr(svc.echo, verb)(1)


class _Echo(ForgeActor):
    @endpoint
    async def echo(self, x: int) -> int:
        return x


async def test_the_call_form_inside_a_session_block_is_sticky_on_as_service() -> None:
    """``await svc.ep(None, ...)`` is ``route(...)``: inside ``session()`` it goes to
    the block's replica, on the as_service() handle as on a Service."""
    svc = await Counter.options(num_replicas=3).as_service(mesh=FakeMesh(seed=1))
    try:
        async with svc.session():
            for _ in range(6):
                await svc.incr(None)
        values = sorted(await svc.value.fanout())
        assert values == [0, 0, 6], values
    finally:
        await svc.shutdown()


@pytest.mark.parametrize("body_raises", [False, True])
async def test_an_as_service_session_block_ends_quietly_after_shutdown(body_raises: bool) -> None:
    """The service was shut down inside the block: leaving it raises nothing of its
    own (the sessions ended with the service), and the body's error comes out as it
    is; terminate_session is a no-op then, as on a Service."""
    svc = await Counter.options(num_replicas=2).as_service(mesh=FakeMesh(seed=1))
    with pytest.raises(KeyError, match="the body's") if body_raises else _nothing():
        async with svc.session():
            await svc.incr.route()
            await svc.shutdown()
            if body_raises:
                raise KeyError("the body's")
    await svc.terminate_session("unknown")
    await svc.terminate_session("unknown")


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield
