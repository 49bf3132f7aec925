"""OpenTelemetry: metrics read back through the SDK's in-memory reader, traces through
its in-memory exporter (FakeMesh; tests/monarch/test_monarch_observe.py for Monarch)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from forge_sc import open_service
from forge_sc.observe import otel, service_name
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for
from .observe_actors import Traced

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _otel_off() -> Iterator[None]:
    yield
    otel.disable()


def _points(reader: InMemoryMetricReader, service: str) -> dict[str, dict[Any, Any]]:
    """metric name -> {attributes other than the service (as a sorted tuple): value};
    a histogram point's value is its count."""
    data = reader.get_metrics_data()
    out: dict[str, dict[Any, Any]] = {}
    if data is None:  # nothing observed
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    attrs = dict(p.attributes or {})
                    if attrs.pop("forge_sc.service", None) != service:
                        continue
                    value = p.count if hasattr(p, "count") else p.value
                    out.setdefault(metric.name, {})[tuple(sorted(attrs.items()))] = value
    return out


async def test_metrics_after_a_known_workload_are_exact() -> None:
    reader = InMemoryMetricReader()
    otel.enable_metrics(MeterProvider(metric_readers=[reader]), latency_histogram=True)
    mesh = FakeMesh(seed=1)
    async with open_service(
        Counter, num_replicas=2, mesh=mesh, restart_backoff=0.01
    ) as svc, anyio.create_task_group() as tg:
        name = service_name(svc)
        with anyio.fail_after(10):
            for _ in range(10):
                await svc.incr.route()  # round robin: 5 on each replica
            with pytest.raises(KeyError):
                await svc.boom.route()  # a user error, on replica 0 (boom's own router)
            sid = await svc.start_session()
            # A session call in flight when its replica dies: retried on the other one,
            # and the session migrates with it.
            tg.start_soon(lambda: svc.nap.route(0.2, sess_id=sid))
            await wait_for(lambda: any(r.active_requests for r in svc.replicas))
            victim = next(r.idx for r in svc.replicas if r.active_requests)
            other = 1 - victim
            mesh.crash(victim)
            await wait_for(
                lambda: all(r.healthy for r in svc.replicas) and svc.statistics().restarts == 1
            )
        await wait_for(lambda: svc.statistics().successful_requests == 11)
        await svc.scale_to(3)
        # Read back from another thread, as a periodic exporter would.
        got = await anyio.to_thread.run_sync(_points, reader, name)

    ok, err = ("forge_sc.outcome", "ok"), ("forge_sc.outcome", "error")
    assert got["forge_sc.requests"] == {(err,): 1, (ok,): 11}
    calls = {
        (err, ("forge_sc.replica", "0")): 1,  # boom
        (ok, ("forge_sc.replica", str(victim))): 5,
        (ok, ("forge_sc.replica", str(other))): 6,  # 5 incr + the retried nap
        (err, ("forge_sc.replica", "1")): 0,
        (ok, ("forge_sc.replica", "2")): 0,
        (err, ("forge_sc.replica", "2")): 0,
    }
    assert got["forge_sc.replica.calls"] == calls
    assert got["forge_sc.retries"] == {(): 1}
    assert got["forge_sc.restarts"] == {(): 1}
    assert got["forge_sc.replica.restarts"] == {
        (("forge_sc.replica", str(victim)),): 1,
        (("forge_sc.replica", str(other)),): 0,
        (("forge_sc.replica", "2"),): 0,
    }
    assert got["forge_sc.session.migrations"] == {(): 1}
    assert got["forge_sc.scaling.events"] == {(): 1}
    assert got["forge_sc.replicas"] == {
        (("forge_sc.state", s),): (3 if s == "HEALTHY" else 0)
        for s in ("STARTING", "HEALTHY", "FAILED", "RECOVERING", "STOPPING", "STOPPED")
    }
    assert got["forge_sc.sessions"] == {(): 1}
    assert got["forge_sc.queue.depth"] == {(): 0}
    assert got["forge_sc.active_requests"] == {(): 0}
    ep = "forge_sc.endpoint"
    assert got["forge_sc.request.duration"] == {
        ((ep, "boom"), err): 1,
        ((ep, "incr"), ok): 10,
        ((ep, "nap"), ok): 1,
    }
    # A closed service is no longer reported.
    assert _points(reader, name).get("forge_sc.requests") is None


async def test_batches_are_counted_per_endpoint() -> None:
    reader = InMemoryMetricReader()
    otel.enable_metrics(MeterProvider(metric_readers=[reader]))  # no histogram by default
    async with open_service(Traced, num_replicas=1, mesh=FakeMesh(seed=1)) as svc:
        name = service_name(svc)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(svc.links.route, i)
        got = _points(reader, name)
    endpoint = (("forge_sc.endpoint", "links"),)
    assert got["forge_sc.batches"] == {endpoint: 2}
    assert got["forge_sc.batch.items"] == {endpoint: 8}
    assert got["forge_sc.requests"][(("forge_sc.outcome", "ok"),)] == 8
    assert "forge_sc.request.duration" not in got


async def test_metrics_turned_off_and_on_again_on_one_provider_report_again() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.enable_metrics(provider)
    async with open_service(Counter, num_replicas=1, mesh=FakeMesh(seed=1)) as svc:
        name = service_name(svc)
        for _ in range(3):
            await svc.incr.route()
        assert _points(reader, name)["forge_sc.requests"][(("forge_sc.outcome", "ok"),)] == 3
        otel.disable()
        assert _points(reader, name) == {}
        otel.enable_metrics(provider)
        await svc.incr.route()
        assert _points(reader, name)["forge_sc.requests"][(("forge_sc.outcome", "ok"),)] == 4


def _tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.enable_tracing(provider)
    return provider, exporter


def _one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_a_routed_request_is_a_span_and_the_endpoints_spans_are_its_children() -> None:
    provider, exporter = _tracing()
    tracer = provider.get_tracer("tests")
    async with open_service(Traced, num_replicas=2, mesh=FakeMesh(seed=1)) as svc:
        name = service_name(svc)
        with anyio.fail_after(5), tracer.start_as_current_span("caller") as caller:
            inside = await svc.work.route()
    route = _one(exporter.get_finished_spans(), f"{name}.work route")
    assert route.parent is not None
    assert route.parent.span_id == caller.get_span_context().span_id
    assert inside == (route.context.trace_id, route.context.span_id)
    assert route.attributes is not None
    assert dict(route.attributes) == {
        "forge_sc.service": name,
        "forge_sc.endpoint": "work",
        "forge_sc.batched": False,
        "forge_sc.batch_size": 1,
        "forge_sc.attempts": 1,
        "forge_sc.replica": 0,
    }


async def test_a_retried_request_counts_its_attempts_and_a_failure_is_an_error_span() -> None:
    _, exporter = _tracing()
    mesh = FakeMesh(seed=1)
    async with open_service(Traced, num_replicas=2, mesh=mesh, restart_backoff=0.01) as svc:
        name = service_name(svc)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(svc.nap_then_work.route, 0.2)
                await wait_for(lambda: svc.replicas[0].active_requests == 1)
                mesh.crash(0)
            with pytest.raises(TypeError):
                await svc.add.route("a", 1)
    spans = exporter.get_finished_spans()
    retried = _one(spans, f"{name}.nap_then_work route")
    assert retried.attributes is not None
    assert (retried.attributes["forge_sc.attempts"], retried.attributes["forge_sc.replica"]) == (
        2,
        1,
    )
    failed = _one(spans, f"{name}.add route")
    assert not failed.status.is_ok
    assert [e.name for e in failed.events] == ["exception"]


async def test_a_batch_has_its_own_span_with_its_size() -> None:
    _, exporter = _tracing()
    async with open_service(Traced, num_replicas=1, mesh=FakeMesh(seed=1)) as svc:
        name = service_name(svc)
        with anyio.fail_after(5):
            results: list[Any] = []

            async def call(i: int) -> None:
                results.append(await svc.links.route(i))

            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(call, i)
    spans = exporter.get_finished_spans()
    batch = _one(spans, f"{name}.links batch")
    assert batch.attributes is not None
    assert batch.attributes["forge_sc.batch_size"] == 4
    assert batch.attributes["forge_sc.replica"] == 0
    # The endpoint's span is a child of the batch's; each caller has its own span.
    assert results == [(batch.context.trace_id, batch.context.span_id)] * 4
    callers = [s for s in spans if s.name == f"{name}.links route"]
    assert len(callers) == 4
    assert all(s.attributes is not None and s.attributes["forge_sc.batched"] for s in callers)


async def test_with_tracing_off_no_span_is_made() -> None:
    _, exporter = _tracing()
    otel.disable()
    async with open_service(Traced, num_replicas=1, mesh=FakeMesh(seed=1)) as svc:
        with anyio.fail_after(5):
            assert await svc.add.route(1, b=2) == 3
        assert svc.add._obs is None
    assert exporter.get_finished_spans() == ()
