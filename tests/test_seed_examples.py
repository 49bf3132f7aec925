"""The seed documents' code, run as a TorchForge user would copy it (FakeMesh).

The seeds are the TorchForge documents this project re-implements: ``000_*``
(module map of ``forge.controller``), ``001_*`` (the Service API page) and
``002_*`` (the Service user guide). Each test names the seed and the section it
quotes; the quoted lines are kept as written, with only the ``forge.controller...``
imports changed to ``forge_sc``. The seeds leave the service
and the argument values to the reader: here the service comes from ``open_service(...,
mesh=FakeMesh())`` (or ``as_service(mesh=FakeMesh())``) and the values are bound just
before the quoted lines. The examples that spawn with ``as_service()`` / ``as_actor()``
without a mesh start real Monarch processes: they are in
``tests/monarch/test_seed_examples_monarch.py``.

Every test runs on asyncio and on trio.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import anyio
import pytest
from monarch.actor import endpoint

# Seed 002, "Usage > Defining an Actor": the seed's three imports, forge.controller ->
# forge_sc (``from forge.controller import ForgeActor``, ``from monarch.actor import
# endpoint``, ``from forge.controller.service import service_endpoint``).
from forge_sc import ForgeActor
from forge_sc.service import service_endpoint

# The routers the seeds use by name live in forge.controller.service, as here.
from forge_sc.service import LeastLoadedRouter, RoundRobinRouter, Router  # isort: skip

import forge_sc
from forge_sc import open_service
from forge_sc.errors import NoHealthyReplicasError
from forge_sc.testing import FakeMesh

from .conftest import wait_for

pytestmark = pytest.mark.anyio


def heavy_model(x: list[int]) -> list[int]:
    """Stand-in for the seed's ``heavy_model`` (a batched endpoint gets a list)."""
    return [10 * v for v in x]


def model(x: Any) -> Any:
    """Stand-in for the seed's ``model``: a batched endpoint gets a list, an unbatched
    one a value."""
    return [2 * v for v in x] if isinstance(x, list) else 2 * x


# ---------------------------------------------------------------- seed 002: actors


# Seed 002, "Usage > Defining an Actor" (``def __init__(self, ...)`` made concrete).
class MyForgeActor(ForgeActor):
    def __init__(self, offset: int = 0):
        self.offset = offset

    @endpoint
    async def foo(self, x):
        return x + 1

    @service_endpoint(router=RoundRobinRouter(), batch_size=8, batch_timeout=0.01)
    async def bar(self, x):
        return heavy_model(x)


async def test_002_defining_an_actor() -> None:
    """Seed 002, "Usage > Defining an Actor": a plain Monarch ``@endpoint`` gets the
    default router (round robin), and ``@service_endpoint`` takes a router *instance*
    with batching."""
    mesh = FakeMesh()
    async with open_service(MyForgeActor, num_replicas=2, mesh=mesh) as service:
        assert await service.foo.route(1) == 2
        results: list[Any] = [None] * 16

        async def one(i: int) -> None:
            results[i] = await service.bar.route(i)

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(one, i)
        assert results == heavy_model(list(range(16)))
        stats = service.get_metrics().batchers[0]
        assert (stats.endpoint, stats.batch_size, stats.batches_sent) == ("bar", 8, 2)
        assert {await service.foo.route(0) for _ in range(2)} == {1}
        # Each endpoint has its own round robin: foo went to replicas 0, 1, 0 and the
        # two batches of bar (one call each on its replica) to replicas 0 and 1.
        assert [r.total_requests for r in service.get_metrics().replicas] == [3, 2]
        assert isinstance(service.bar.router, RoundRobinRouter)


async def test_002_actor_vs_service_actor_class_attributes() -> None:
    """Seed 002, "Actor vs Service > Actor": ``ForgeActor``'s configuration knobs
    ``procs: int = 1, hosts: int | None = None, with_gpus: bool = False,
    num_replicas: int = 1, _extra_config: dict[str, Any] = {}`` are defaults."""
    assert ForgeActor.procs == 1
    assert ForgeActor.hosts is None
    assert ForgeActor.with_gpus is False
    assert ForgeActor.num_replicas == 1
    assert ForgeActor._extra_config == {}

    class Three(ForgeActor):
        num_replicas = 3
        procs = 2
        _extra_config: ClassVar[dict[str, Any]] = {"replica_max_concurrent_requests": 4}

        @endpoint
        async def ident(self):
            return id(self)

    mesh = FakeMesh()
    async with open_service(Three, mesh=mesh, return_first_rank_result=False) as svc:
        assert len(svc.replicas) == 3
        assert svc.config.procs == 2 and svc.config.replica_max_concurrent_requests == 4
        ranks = await svc.ident.fanout()
        assert [len(r) for r in ranks] == [2, 2, 2]  # procs=2: two ranks per replica
    # options() and explicit keywords override the class attributes.
    async with open_service(Three.options(num_replicas=2), mesh=FakeMesh()) as svc:
        assert len(svc.replicas) == 2 and svc.config.procs == 2
    async with open_service(Three.options(num_replicas=2), mesh=FakeMesh(), num_replicas=1) as svc:
        assert len(svc.replicas) == 1
    hosted = await Three.as_service(mesh=FakeMesh())
    try:
        assert len(hosted.replicas) == 3 and hosted.config.procs == 2
        # Seed 002: "Service Endpoints (.as_service()) ... exposed as ServiceEndpoint
        # objects"; they carry the endpoint's router, as a ServiceEndpoint does.
        assert isinstance(hosted.ident, forge_sc.service.ServiceEndpoint)
        assert isinstance(hosted.ident.router, forge_sc.RoundRobinRouter)
    finally:
        await hosted.shutdown()


async def test_002_actor_vs_service_service() -> None:
    """Seed 002, "Actor vs Service > Service": ``class Service`` "orchestrates a pool
    of actor replicas with routing, health monitoring, and fault tolerance"."""
    async with open_service(MyForgeActor, num_replicas=2, mesh=FakeMesh()) as service:
        assert isinstance(service, forge_sc.Service)
        assert [r.healthy for r in service.replicas] == [True, True]


# ------------------------------------------------------ seed 002: spawning (FakeMesh)


async def test_002_spawning_as_a_service_on_fakemesh() -> None:
    """Seed 002, "Usage > Spawning as a Service", with ``mesh=FakeMesh()`` added (the
    literal code, on real processes, is in the Monarch file)."""
    # With explicit options
    service = await MyForgeActor.options(num_replicas=2, procs=2).as_service(mesh=FakeMesh())
    assert len(service.replicas) == 2 and service.config.procs == 2
    assert await service.foo.route(1) == 2
    # Graceful shutdown
    await service.shutdown()

    # Default (1 replica, 1 process)
    service = await MyForgeActor.as_service(mesh=FakeMesh())
    assert len(service.replicas) == 1 and service.config.procs == 1
    # Graceful shutdown
    await service.shutdown()


async def test_002_options_for_services_table() -> None:
    """Seed 002, "Usage > Spawning as a Service", the ``options`` table: every key is
    accepted, with the defaults the table gives (``procs`` and ``num_replicas`` are
    1, as the seed's own "Default (1 replica, 1 process)" example says)."""
    defaults = forge_sc.ServiceConfig()
    assert defaults.procs == 1
    assert defaults.num_replicas == 1
    assert defaults.with_gpus is False
    assert defaults.hosts is None
    assert defaults.health_poll_rate == 0.2
    assert defaults.replica_max_concurrent_requests == 10
    assert defaults.return_first_rank_result is True
    configured = MyForgeActor.options(
        procs=2,
        num_replicas=2,
        with_gpus=False,
        hosts=None,
        health_poll_rate=0.5,
        replica_max_concurrent_requests=3,
        return_first_rank_result=False,
    )
    service = await configured.as_service(mesh=FakeMesh())
    try:
        c = service.config
        assert (c.procs, c.num_replicas, c.with_gpus, c.hosts) == (2, 2, False, None)
        assert (c.health_poll_rate, c.replica_max_concurrent_requests) == (0.5, 3)
        assert await service.foo.route(1) == [2, 2]  # return_first_rank_result=False
    finally:
        await service.shutdown()


# ------------------------------------------------------- seed 002: calling endpoints


class Predictor(ForgeActor):
    @endpoint
    async def predict(self, x):
        return model(x)

    @endpoint
    async def ident(self):
        return id(self)


async def test_002_service_endpoints_route_and_fanout() -> None:
    """Seed 002, "Calling Endpoints > Service Endpoints (.as_service())": ``route`` to
    one replica, ``fanout`` to all; "Other Monarch actor APIs (call, call_one,
    choose, etc.) are not supported on services"."""
    x = 21
    async with open_service(Predictor, num_replicas=3, mesh=FakeMesh()) as service:
        # Route to one replica (load-balanced)
        result = await service.predict.route(x)

        # Broadcast to all replicas
        results = await service.predict.fanout(x)

        assert result == 42
        assert results == [42, 42, 42]
        for verb in ("call", "call_one", "choose"):
            with pytest.raises(NotImplementedError, match="Services only support route"):
                getattr(service.predict, verb)(x)


class SessionActor(ForgeActor):
    @endpoint
    async def my_endpoint(self, arg1, arg2):
        return (id(self), arg1 + arg2)

    @endpoint
    async def another_endpoint(self, arg3):
        return (id(self), arg3)


async def test_002_session_based_calls() -> None:
    """Seed 002, "Usage > Session-Based Calls": the context manager and the manual
    session, each sticking to one replica."""
    arg1, arg2, arg3 = 1, 2, 3
    async with open_service(SessionActor, num_replicas=3, mesh=FakeMesh()) as service:
        # Context manager for session lifecycle
        async with service.session() as session:
            result1 = await service.my_endpoint.route(arg1, arg2)
            result2 = await service.another_endpoint.fanout(arg3)
            # Session automatically terminated on exit

            assert session in service._sessions
            again = [await service.my_endpoint.route(arg1, arg2) for _ in range(3)]
            assert {r[0] for r in again} == {result1[0]}  # sticky
        assert result1[1] == 3
        assert sorted(r[1] for r in result2) == [3, 3, 3]
        assert service.get_metrics().active_sessions == 0

        # Manual session management
        session_id = await service.start_session()
        result = await service.my_endpoint.route(arg1, arg2, sess_id=session_id)
        await service.terminate_session(session_id)

        assert result[1] == 3 and service.get_metrics().active_sessions == 0


async def test_002_stateless_calls() -> None:
    """Seed 002, "Usage > Stateless Calls": without a session, the default router
    (round robin) spreads the calls."""
    arg1, arg2 = 1, 2
    async with open_service(SessionActor, num_replicas=3, mesh=FakeMesh()) as service:
        seen = set()
        for _ in range(3):
            # Direct calls without sessions (uses the default router unless overridden)
            result = await service.my_endpoint.route(arg1, arg2)
            seen.add(result[0])
            assert result[1] == 3
        assert len(seen) == 3


# ---------------------------------------------------------- seed 002: batch routing


# Seed 002, "Usage > Batch Routing".
class MyActor(ForgeActor):
    @service_endpoint(router=RoundRobinRouter(), batch_size=8, batch_timeout=0.01)
    async def predict(self, x):
        return model(x)


async def test_002_batch_routing(anyio_backend: str) -> None:
    """Seed 002, "Usage > Batch Routing": 16 requests are grouped into 2 batches of
    8, routed round-robin across replicas. ``open_service(..., mesh=FakeMesh())``
    stands for the seed's ``MyActor.options(num_replicas=4).as_service()`` (that line
    runs on real processes in the Monarch file). ``asyncio.gather`` exists only on
    asyncio; on trio the same 16 concurrent calls run in a task group."""
    inputs = list(range(16))
    async with open_service(MyActor.options(num_replicas=4), mesh=FakeMesh()) as service:
        # 16 requests → grouped into 2 batches of 8, routed round-robin across replicas
        if anyio_backend == "asyncio":
            out = await asyncio.gather(*(service.predict.route(data) for data in inputs))
        else:
            out = [None] * len(inputs)

            async def one(i: int, data: int) -> None:
                out[i] = await service.predict.route(data)

            async with anyio.create_task_group() as tg:
                for i, data in enumerate(inputs):
                    tg.start_soon(one, i, data)
        assert list(out) == [2 * d for d in inputs]
        metrics = service.get_metrics()
        (batcher,) = metrics.batchers
        assert (batcher.batches_sent, batcher.items_sent, batcher.flushes_by_size) == (2, 16, 2)
        # A merged batch is one call on its replica: one batch on replica 0, one on 1.
        assert [r.total_requests for r in metrics.replicas] == [1, 1, 0, 0]
        assert metrics.total_requests == 16  # one per caller in the service totals


async def test_002_batch_routing_note() -> None:
    """Seed 002, "Usage > Batch Routing", the note: ``batch_size=1`` or no
    ``batch_size`` disables batching; supported routers: ``RoundRobinRouter()``,
    ``LeastLoadedRouter()`` or customized routers."""

    class Unbatched(ForgeActor):
        @service_endpoint(router=LeastLoadedRouter(), batch_size=1)
        async def one(self, x):
            return model(x)

        @service_endpoint(router=RoundRobinRouter())
        async def two(self, x):
            return model(x)

    async with open_service(Unbatched, num_replicas=2, mesh=FakeMesh()) as service:
        assert await service.one.route(3) == 6  # a value, not a list: no batching
        assert await service.two.route(4) == 8
        assert service.get_metrics().batchers == ()
        assert isinstance(service.one.router, LeastLoadedRouter)


# --------------------------------------------------------- seed 002: custom routing


# Seed 002, "Usage > Custom Routing".
class MyCustomRouter(Router):
    """Example custom router: always picks the first replica."""

    def get_replica(self, healthy_replicas, sess_id=None, session_map=None):
        if not healthy_replicas:
            raise RuntimeError("No healthy replicas available")
        return healthy_replicas[0]


class MyCustomActor(ForgeActor):  # the seed names it MyActor (taken above)
    @service_endpoint(router=MyCustomRouter())
    async def predict(self, x):
        return model(x)


async def test_002_custom_routing() -> None:
    """Seed 002, "Usage > Custom Routing": a ``Router`` subclass overriding
    ``get_replica``, passed as an instance to ``@service_endpoint``."""
    async with open_service(MyCustomActor, num_replicas=3, mesh=FakeMesh()) as service:
        assert [await service.predict.route(i) for i in range(6)] == [0, 2, 4, 6, 8, 10]
        assert [r.total_requests for r in service.get_metrics().replicas] == [6, 0, 0]
        assert isinstance(service.predict.router, MyCustomRouter)


# ------------------------------------------------------ seed 002: metrics (FakeMesh)


class Gate(ForgeActor):
    def __init__(self, gate: anyio.Event):
        self.gate = gate

    @endpoint
    async def predict(self, x):
        return model(x)

    @endpoint
    async def held(self):
        await self.gate.wait()


def _seed_monitoring_block(service: Any) -> None:
    # Seed 002, "Usage > Monitoring and Metrics", verbatim.
    # Get detailed metrics
    metrics = service.get_metrics()
    print(f"Total request rate: {metrics.get_total_request_rate()}")
    print(f"Average queue depth: {metrics.get_avg_queue_depth()}")
    print(f"Capacity utilization: {metrics.get_avg_capacity_utilization(service._replicas)}")
    print(f"Average sessions per replica: {metrics.get_sessions_per_replica()}")

    # Get summary for monitoring dashboards
    summary = service.get_metrics_summary()
    print(f"Healthy replicas: {summary['service']['healthy_replicas']}")
    print(f"Total sessions: {summary['service']['total_sessions']}")

    # Per-replica metrics
    for replica_idx, replica_metrics in summary["replicas"].items():
        print(f"Replica {replica_idx}: {replica_metrics['request_rate']:.1f} req/s")


def _printed(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    lines = capsys.readouterr().out.strip().splitlines()
    return dict(line.split(": ", 1) for line in lines)


async def test_002_monitoring_and_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    """Seed 002, "Usage > Monitoring and Metrics": the block runs as written on an
    ``open_service`` handle (``service._replicas`` included), and its figures are
    right: 5 requests held in flight on 2 replicas of capacity 10 (3 + 2 by round
    robin) is a capacity utilization of 0.25; 2 sessions over 2 replicas is 1.0."""
    gate = anyio.Event()
    async with open_service(Gate, gate, num_replicas=2, mesh=FakeMesh()) as service:
        for i in range(8):
            await service.predict.route(i)
        s1 = await service.start_session()
        s2 = await service.start_session()
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(service.held.route)
            await wait_for(lambda: service.get_metrics().active_requests == 5)
            _seed_monitoring_block(service)
            gate.set()
        out = _printed(capsys)
        assert float(out["Total request rate"]) > 0
        assert float(out["Average queue depth"]) == 0.0
        assert float(out["Capacity utilization"]) == pytest.approx(0.25)
        assert float(out["Average sessions per replica"]) == 1.0
        assert out["Healthy replicas"] == "2" and out["Total sessions"] == "2"
        assert out["Replica 0"].endswith(" req/s") and out["Replica 1"].endswith(" req/s")
        await service.terminate_session(s1)
        await service.terminate_session(s2)


async def test_002_monitoring_and_metrics_on_as_service_handle(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Seed 002, "Usage > Monitoring and Metrics" on the handle ``as_service()``
    returns (``mesh=FakeMesh()`` added), which has ``service._replicas`` too."""
    service = await Predictor.options(num_replicas=2).as_service(mesh=FakeMesh())
    try:
        assert await service.predict.route(1) == 2
        assert [r.idx for r in service._replicas] == [0, 1]
        _seed_monitoring_block(service)
        out = _printed(capsys)
        assert float(out["Total request rate"]) > 0
        assert float(out["Capacity utilization"]) == 0.0
        assert out["Healthy replicas"] == "2"
    finally:
        await service.shutdown()


async def test_002_metric_key_lists() -> None:
    """Seed 002, "Service-Level Metrics (summary['service'])" and "Replica-Level
    Metrics (summary['replicas'][replica.idx])": every key listed is there."""
    async with open_service(Predictor, num_replicas=2, mesh=FakeMesh()) as service:
        await service.predict.route(1)
        summary = service.get_metrics_summary()
        for key in ("total_sessions", "healthy_replicas", "total_replicas",
                    "total_request_rate", "avg_queue_depth", "avg_capacity_utilization",
                    "sessions_per_replica"):  # fmt: skip
            assert key in summary["service"], key
        for replica in service.replicas:
            for key in ("total_requests", "successful_requests", "failed_requests",
                        "request_rate", "avg_latency", "active_requests", "queue_depth",
                        "assigned_sessions", "capacity_utilization"):  # fmt: skip
                assert key in summary["replicas"][replica.idx], key


async def test_002_best_practices_configuration_names() -> None:
    """Seed 002, "Best Practices > Configuration": ``min_replicas`` and
    ``max_replicas`` are configuration options (autoscaling)."""
    async with open_service(
        Predictor.options(num_replicas=1, min_replicas=1, max_replicas=3), mesh=FakeMesh()
    ) as service:
        assert (service.config.min_replicas, service.config.max_replicas) == (1, 3)
        assert service.config.autoscaling


# ------------------------------------------------------- seed 001: Service API page


async def test_001_get_metrics_example(capsys: pytest.CaptureFixture[str]) -> None:
    """Seed 001, "get_metrics()", its Example."""
    async with open_service(Predictor, num_replicas=2, mesh=FakeMesh()) as service:
        await service.predict.route(1)
        metrics = service.get_metrics()
        print(f"Request rate: {metrics.get_total_request_rate():.1f} req/s")
        print(f"Queue depth: {metrics.get_avg_queue_depth():.1f}")
        out = _printed(capsys)
        assert out["Request rate"].endswith(" req/s") and float(out["Request rate"][:-6]) > 0
        assert out["Queue depth"] == "0.0"


async def test_001_get_metrics_summary_example(capsys: pytest.CaptureFixture[str]) -> None:
    """Seed 001, "get_metrics_summary()", its Example."""
    async with open_service(Predictor, num_replicas=2, mesh=FakeMesh()) as service:
        await service.predict.route(1)
        summary = service.get_metrics_summary()
        print(f"Healthy replicas: {summary['service']['healthy_replicas']}")
        for idx, metrics in summary["replicas"].items():
            print(f"Replica {idx}: {metrics['request_rate']:.1f} req/s")
        out = _printed(capsys)
        assert out == {
            "Healthy replicas": "2",
            "Replica 0": out["Replica 0"],
            "Replica 1": "0.0 req/s",
        }
        assert float(out["Replica 0"][:-6]) > 0


async def test_001_start_session_example() -> None:
    """Seed 001, "start_session()", its Example: ``await service.my_endpoint(
    session_id, arg1, arg2)``, the endpoint called with the session id first."""
    arg1, arg2 = 1, 2
    async with open_service(SessionActor, num_replicas=3, mesh=FakeMesh()) as service:
        session_id = await service.start_session()
        result = await service.my_endpoint(session_id, arg1, arg2)
        await service.terminate_session(session_id)

        assert result[1] == 3
        # The call was a session call: it assigned the session a replica.
        assert service.get_metrics().session_migrations == 0
        # A value that is not an open session is refused (it would be an argument).
        with pytest.raises(TypeError, match="not an open session"):
            await service.my_endpoint(session_id, arg1, arg2)
        with pytest.raises(TypeError, match=r"my_endpoint\.route"):
            await service.my_endpoint(arg1, arg2, 0)
        assert (await service.my_endpoint(None, arg1, arg2))[1] == 3  # None: stateless


async def test_001_start_session_example_on_as_service_handle() -> None:
    """Seed 001, "start_session()", its Example, on the ``as_service()`` handle."""
    arg1, arg2 = 1, 2
    service = await SessionActor.options(num_replicas=2).as_service(mesh=FakeMesh())
    try:
        session_id = await service.start_session()
        result = await service.my_endpoint(session_id, arg1, arg2)
        again = await service.my_endpoint(session_id, arg1, arg2)
        await service.terminate_session(session_id)
        assert result == again and result[1] == 3
        block = service.session()  # the block form, entered once as on a Service
        async with block as sid:
            assert isinstance(sid, str)
        with pytest.raises(RuntimeError, match="entered already"):
            async with block:
                pass  # pragma: no cover
    finally:
        await service.shutdown()


async def test_001_terminate_session_example() -> None:
    """Seed 001, "terminate_session(sess_id)", its Example."""
    async with open_service(SessionActor, num_replicas=2, mesh=FakeMesh()) as service:
        session_id = await service.start_session()
        # ... use session for requests ...
        await service.my_endpoint.route(1, 2, sess_id=session_id)
        assert service.get_metrics_summary()["service"]["total_sessions"] == 1
        await service.terminate_session(session_id)
        assert service.get_metrics_summary()["service"]["total_sessions"] == 0


async def test_001_call_all() -> None:
    """Seed 001, "call_all(function, *args, **kwargs)": broadcasts to all healthy
    replicas and returns a list; "Raises: RuntimeError - If no healthy replicas are
    available" (``NoHealthyReplicasError`` is a ``RuntimeError``)."""
    mesh = FakeMesh()
    async with open_service(
        Predictor, num_replicas=2, mesh=mesh, request_timeout=0.05, restart_backoff=30.0
    ) as service:
        assert await service.call_all("predict", 5) == [10, 10]
        mesh.crash(0)
        mesh.crash(1)
        await wait_for(lambda: not any(r.healthy for r in service.replicas))
        with pytest.raises(RuntimeError, match="no replica became healthy") as info:
            await service.call_all("predict", 5)
        assert isinstance(info.value, NoHealthyReplicasError)


async def test_001_stop() -> None:
    """Seed 001, "stop()": "Stops the service and all managed replicas"."""
    service = await Predictor.options(num_replicas=2).as_service(mesh=FakeMesh())
    assert await service.predict.route(1) == 2
    await service.stop()
    with pytest.raises(forge_sc.errors.ServiceClosedError):
        await service.predict.route(1)
    async with open_service(Predictor, mesh=FakeMesh()) as svc:
        await svc.stop()
        assert [r.state.name for r in svc.replicas] == ["STOPPED"]


def test_001_members_exist() -> None:
    """Seed 001, "Members: call_all, start_session, get_metrics, get_metrics_summary,
    terminate_session, stop": on both handles (``open_service``'s and
    ``as_service``'s)."""
    from forge_sc._compat import HostedService

    for handle in (forge_sc.Service, HostedService):
        for name in ("call_all", "start_session", "get_metrics", "get_metrics_summary",
                     "terminate_session", "stop"):  # fmt: skip
            assert callable(getattr(handle, name)), (handle, name)


# ------------------------------------------------------------- seed 000: module map


def test_000_module_map_import_paths() -> None:
    """Seed 000 (the module map of ``forge.controller``) has no code example. The
    names the guide's code imports from its modules import from forge_sc's
    counterparts with the same prefix change: ``forge.controller`` -> ``forge_sc``,
    ``forge.controller.service`` -> ``forge_sc.service``."""
    import forge_sc.service as service_module

    assert forge_sc.ForgeActor is ForgeActor
    assert service_module.service_endpoint is forge_sc.service_endpoint
    for name in ("Router", "RoundRobinRouter", "LeastLoadedRouter", "SessionRouter",
                 "Service", "ServiceConfig", "ServiceMetrics", "ReplicaMetrics",
                 "Replica", "ReplicaState"):  # fmt: skip
        assert getattr(service_module, name) is getattr(forge_sc, name), name
    with pytest.raises(AttributeError):
        service_module.ServiceInterface  # TorchForge-internal, not here
