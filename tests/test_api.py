"""The public surface: names, defaults, and misuse that fails at once."""

from __future__ import annotations

import ast
import pathlib
from typing import Any

import attrs
import pytest

import forge_sc
import forge_sc.errors as errors
from forge_sc import (
    ForgeActor,
    LeastLoadedRouter,
    PowerOfTwoRouter,
    ReplicaMetrics,
    ReplicaState,
    RoundRobinRouter,
    Router,
    ServiceConfig,
    ServiceMetrics,
    SessionRouter,
    endpoint,
    open_service,
    service_endpoint,
)
from forge_sc._spec import collect_endpoints
from forge_sc.testing import FakeMesh

from .actors import Counter, Failing
from .conftest import wait_for

pytestmark = pytest.mark.anyio


def test_public_names_are_exported_as_designed() -> None:
    for name in [
        "ForgeActor", "endpoint", "service_endpoint", "open_service", "Router",
        "RoundRobinRouter", "LeastLoadedRouter", "SessionRouter", "PowerOfTwoRouter",
        "ServiceConfig", "ServiceMetrics", "ReplicaMetrics", "ReplicaState",
    ]:  # fmt: skip
        assert name in forge_sc.__all__
        assert getattr(forge_sc, name).__module__ == "forge_sc"
    for name in [
        "ServiceError", "NoHealthyReplicasError", "ServiceClosedError", "ReplicaDiedError",
        "ServiceOverloadedError", "FanoutError", "ServiceFailedError",
    ]:  # fmt: skip
        exc = getattr(errors, name)
        assert issubclass(exc, errors.ServiceError)
    assert issubclass(errors.FanoutError, ExceptionGroup)
    assert {s.name for s in ReplicaState} == {
        "STARTING", "HEALTHY", "FAILED", "RECOVERING", "STOPPING", "STOPPED",
    }  # fmt: skip
    assert (pathlib.Path(forge_sc.__file__).parent / "py.typed").exists()


def test_service_config_defaults() -> None:
    c = ServiceConfig()
    assert (c.num_replicas, c.procs, c.hosts, c.with_gpus) == (1, 1, None, False)
    assert c.health_poll_rate == 0.2
    assert c.replica_max_concurrent_requests == 10
    assert c.return_first_rank_result is True
    assert c.health_timeout == 1.0
    assert c.max_queued_requests is None
    assert c.request_timeout is None
    assert c.max_attempts == 3
    assert (c.max_restarts, c.restart_window, c.restart_backoff) == (5, 60.0, 0.1)
    assert c.graceful_shutdown_timeout == 10.0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.num_replicas = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_replicas", 0),
        ("procs", -1),
        ("health_poll_rate", 0),
        ("health_timeout", -2.0),
        ("replica_max_concurrent_requests", 0),
        ("max_attempts", 0),
        ("max_restarts", -1),
        ("restart_window", 0),
        ("with_gpus", "yes"),
        ("request_timeout", -1),
        ("max_queued_requests", -1),
        ("num_replicas", 1.5),
        ("max_replicas", 0),
    ],
)
def test_bad_config_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ServiceConfig(**{field: value})  # type: ignore[arg-type]


def test_autoscaling_bounds_are_checked_together() -> None:
    with pytest.raises(ValueError, match="min_replicas must be an int >= 1"):
        ServiceConfig(min_replicas=0, max_replicas=2)  # a pool of none would serve nothing
    with pytest.raises(ValueError, match="min_replicas needs max_replicas"):
        ServiceConfig(min_replicas=1)
    with pytest.raises(ValueError, match=r"min_replicas \(3\) must be <= max_replicas"):
        ServiceConfig(num_replicas=3, min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="must lie between"):
        ServiceConfig(num_replicas=5, min_replicas=1, max_replicas=4)
    assert ServiceConfig(num_replicas=2, max_replicas=4).effective_min_replicas == 2


async def test_open_service_validates_before_anything_starts() -> None:
    mesh = FakeMesh()
    with pytest.raises(ValueError, match="num_replicas"):
        async with open_service(Counter, num_replicas=0, mesh=mesh):
            pass  # pragma: no cover
    assert mesh.spawn_count(0) == 0

    class NotAnActor:
        pass

    with pytest.raises(TypeError, match="ForgeActor"):
        open_service(NotAnActor, mesh=mesh)  # type: ignore[arg-type]


def test_endpoint_defaults_are_torchforge_defaults() -> None:
    specs = collect_endpoints(Counter)
    plain = specs["incr"]
    assert plain.router is RoundRobinRouter
    assert (plain.batch_size, plain.batch_timeout, plain.idempotent) == (1, 0.01, True)
    assert specs["once"].idempotent is False
    assert specs["predict"].batch_size == 8


@pytest.mark.parametrize("name", ["session", "replicas", "statistics", "stop", "shutdown"])
def test_endpoint_names_that_clash_with_the_handle_are_rejected(name: str) -> None:
    async def fn(self: object) -> int:
        return 1

    fn.__name__ = name
    with pytest.raises(TypeError, match=name):
        type("Clash", (ForgeActor,), {name: endpoint(fn)})


def test_endpoint_names_that_clash_with_monarch_actor_are_rejected() -> None:
    with pytest.raises(TypeError, match="logger"):

        class Clash(ForgeActor):
            @endpoint
            async def logger(self) -> int:
                return 1


def test_bad_service_endpoint_options_fail_at_decoration() -> None:
    async def f(self: object, xs: list[int]) -> list[int]:
        return xs

    with pytest.raises(ValueError, match="batch_size"):
        service_endpoint(batch_size=0)(f)
    with pytest.raises(ValueError, match="batch_timeout"):
        service_endpoint(batch_timeout=-1)(f)
    with pytest.raises(TypeError, match="Router"):
        service_endpoint(router=int)(f)
    # A Router instance is accepted as a prototype (see test_torchforge_compat.py).
    service_endpoint(router=RoundRobinRouter())(f)


async def test_router_factory_gives_each_service_its_own_router() -> None:
    made: list[Router] = []

    def factory() -> Router:
        r = SessionRouter(LeastLoadedRouter())
        made.append(r)
        return r

    class A(ForgeActor):
        @service_endpoint(router=factory)
        async def f(self) -> int:
            return 1

    async with open_service(A, mesh=FakeMesh()) as s1, open_service(A, mesh=FakeMesh()) as s2:
        assert await s1.f.route() == 1
        assert await s2.f.route() == 1
    assert len(made) == 2 and made[0] is not made[1]


async def test_unknown_endpoint_and_actor_only_verbs() -> None:
    async with open_service(Counter, mesh=FakeMesh()) as svc:
        with pytest.raises(AttributeError, match="no endpoint 'nope'"):
            svc.nope
        for verb in ["call", "call_one", "choose", "broadcast", "generate"]:
            with pytest.raises(NotImplementedError) as info:
                getattr(svc.value, verb)()
            assert str(info.value) == (
                f"You tried to use {verb}() on a service, not an actor. "
                "Services only support route() and fanout()."
            )


async def test_replica_views_are_read_only() -> None:
    async with open_service(Counter, mesh=FakeMesh(), num_replicas=2) as svc:
        view = svc.replicas[1]
        public = [n for n in dir(view) if not n.startswith("_")]
        assert "idx" in public
        for name in public:
            with pytest.raises(AttributeError):
                setattr(view, name, 0)
        assert [r.idx for r in svc.replicas] == [0, 1]
        assert sorted(svc.get_metrics_summary()["replicas"]) == [0, 1]


async def test_options_are_defaults_that_keywords_override() -> None:
    mesh = FakeMesh()
    configured = Counter.options(num_replicas=3, max_attempts=2)
    async with open_service(configured, 7, mesh=mesh, num_replicas=2) as svc:
        assert len(svc.replicas) == 2
        assert svc.config.max_attempts == 2
        assert await svc.value.route() == 7
    with pytest.raises(TypeError, match="unknown option"):
        Counter.options(replicas=2)
    with pytest.raises(ValueError, match="procs"):
        Counter.options(procs=0)


async def test_actor_kwargs_go_to_the_constructor() -> None:
    async with open_service(Counter, mesh=FakeMesh(), v=41) as svc:
        await svc.incr.route()
        assert await svc.value.route() == 42


async def test_constructor_failure_fails_open_service_with_the_cause() -> None:
    with pytest.raises(errors.ServiceFailedError) as info:
        async with open_service(Failing, num_replicas=2, mesh=FakeMesh()):
            pass  # pragma: no cover
    assert isinstance(info.value.__cause__, ValueError)
    assert "constructor says no" in str(info.value)


def test_metric_snapshots_are_frozen_attrs() -> None:
    assert attrs.has(ServiceMetrics) and attrs.has(ReplicaMetrics)
    names = {a.name for a in attrs.fields(ServiceMetrics)}
    assert {
        "total_requests", "successful_requests", "failed_requests", "retries", "restarts",
        "session_migrations", "active_sessions", "healthy_replicas", "total_replicas",
        "scaling_events", "replicas",
    } <= names  # fmt: skip


def test_routers_have_the_designed_constructors() -> None:
    assert isinstance(SessionRouter().fallback_router, LeastLoadedRouter)
    PowerOfTwoRouter(seed=3)
    PowerOfTwoRouter()


def test_service_core_never_imports_monarch() -> None:
    root = pathlib.Path(forge_sc.__file__).parent
    core = [*root.glob("service/*.py"), *root.glob("replica/*.py"), *root.glob("routing/*.py"),
            *root.glob("batching/*.py"), root / "_metrics.py", root / "_waiters.py"]  # fmt: skip
    for path in core:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level and node.module and node.module.startswith("mesh.monarch"):
                    names.append("monarch")
            assert not any(n.split(".")[0] == "monarch" for n in names), f"{path}: {names}"


class Chores(ForgeActor):
    """Endpoints named like the service's former internals (all legal names)."""

    @endpoint
    async def run(self) -> str:
        return "ran"

    @endpoint
    async def slot_freed(self) -> str:
        return "freed"

    @endpoint
    async def replica_died(self) -> str:
        return "died"

    @endpoint
    async def wait_started(self) -> str:
        return "started"


async def test_endpoints_may_use_any_public_name_outside_the_handle_api() -> None:
    mesh = FakeMesh()
    async with open_service(Chores, num_replicas=2, mesh=mesh, restart_backoff=0.01) as svc:
        assert await svc.run.route() == "ran"
        assert await svc.slot_freed.route() == "freed"
        mesh.crash(0)  # the supervisor's death and restart path still works
        assert [await svc.replica_died.route() for _ in range(4)] == ["died"] * 4
        await wait_for(lambda: all(r.healthy for r in svc.replicas))
        assert await svc.wait_started.fanout() == ["started", "started"]


@pytest.mark.parametrize("name", ["statistics", "replicas", "session", "_hidden"])
def test_endpoint_named_like_the_handle_api_fails_at_class_definition(name: str) -> None:
    async def method(self: object) -> None:
        return None

    method.__name__ = name
    with pytest.raises(TypeError, match="cannot be named"):
        type("Clash", (ForgeActor,), {name: endpoint(method)})


@pytest.mark.parametrize("name", ["session", "shutdown", "_hidden", "procs"])
def test_an_inherited_endpoint_named_like_the_handle_api_fails_too(name: str) -> None:
    # From a mixin that is not a ForgeActor (whose own class check never ran).
    async def method(self: object) -> None:
        return None

    method.__name__ = name
    mixin = type("Mixin", (), {name: endpoint(method)})
    with pytest.raises(TypeError, match="cannot be named"):
        type("Clash", (mixin, ForgeActor), {})


def test_an_endpoint_of_a_mixin_is_the_subclass_own_and_the_mixin_is_untouched() -> None:
    from forge_sc._tensors import WIRE_ATTR

    async def shared(self: object) -> int:
        return 1

    prop = endpoint(shared)
    mixin = type("Mixin", (), {"shared": prop})
    actor = type("WithMixin", (mixin, ForgeActor), {})
    assert "shared" in collect_endpoints(actor)
    # What Monarch runs on the subclass is wrapped for the trip back (an exception
    # that cannot travel, an own CancelledError); the mixin's own object is not.
    assert getattr(actor.__dict__["shared"]._method, WIRE_ATTR, False)
    assert mixin.__dict__["shared"] is prop and prop._method is shared
    # A subclass of that actor inherits the adopted endpoint as any other.
    sub = type("Sub", (actor,), {})
    assert "shared" not in vars(sub) and "shared" in collect_endpoints(sub)


def _method(name: str = "ep") -> Any:
    async def method(self: object) -> int:
        return 1

    method.__name__ = name
    return method


@pytest.mark.parametrize(
    ("decorate", "match"),
    [
        (lambda: endpoint(staticmethod(_method())), "staticmethod: an endpoint is an instance"),
        (lambda: endpoint(classmethod(_method())), "classmethod: an endpoint is an instance"),
        (lambda: endpoint(endpoint(_method())), "endpoint already"),
        (lambda: service_endpoint(batch_size=2)(endpoint(_method())), "endpoint already"),
        (lambda: endpoint(42), "decorates a method"),
        (lambda: service_endpoint(8), "options are keyword-only"),  # type: ignore[arg-type]
        (lambda: service_endpoint(RoundRobinRouter), "options are keyword-only"),
        (lambda: service_endpoint(RoundRobinRouter()), "options are keyword-only"),
    ],
)
def test_what_cannot_be_an_endpoint_fails_at_the_decorator(decorate: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        decorate()


@pytest.mark.parametrize("wrapper", [staticmethod, classmethod])
def test_an_endpoint_hidden_under_static_or_classmethod_fails_at_class_definition(
    wrapper: Any,
) -> None:
    with pytest.raises(TypeError, match=f"@{wrapper.__name__} over an endpoint"):
        type("Hidden", (ForgeActor,), {"ep": wrapper(endpoint(_method()))})


async def test_handle_misuse_fails_at_once_with_a_type_error() -> None:
    async with open_service(Counter, mesh=FakeMesh(), num_replicas=2) as svc:
        for bad in (123, b"s", [1], ("s",)):
            with pytest.raises(TypeError, match="session id is a str"):
                await svc.value.route(sess_id=bad)
            with pytest.raises(TypeError, match="session id"):
                await svc.terminate_session(bad)
        for bad_idx in (True, 1.0, "0", None):
            with pytest.raises(TypeError, match="replica index is an int"):
                await svc.restart_replica(bad_idx)
        with pytest.raises(ValueError, match="no replica with index 7"):
            await svc.restart_replica(7)
        with pytest.raises(TypeError, match="endpoint's name"):
            await svc.call_all(123)
        block = svc.session()
        async with block:
            pass
        with pytest.raises(RuntimeError, match="entered already"):
            async with block:
                pass  # pragma: no cover
        stats = svc.statistics()
        assert stats.total_requests == 0 and stats.active_sessions == 0
        assert [r.restarts for r in svc.replicas] == [0, 0]
        assert await svc.value.route(sess_id="mine") == 0  # a str of one's own is fine
