"""Tracing on real Monarch processes: the trace context travels with the call, so a
span opened inside a Monarch endpoint is a child of the caller's request span."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from forge_sc import open_service
from forge_sc.observe import otel, service_name

from ..observe_actors import Traced

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]


@pytest.fixture(autouse=True)
def _otel_off() -> Iterator[None]:
    yield
    otel.disable()


async def test_a_span_inside_a_monarch_endpoint_has_the_callers_span_as_parent() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.enable_tracing(provider)
    tracer = provider.get_tracer("tests")
    async with open_service(Traced, num_replicas=1) as svc:
        name = service_name(svc)
        with anyio.fail_after(30):
            with tracer.start_as_current_span("caller") as caller:
                inside = await svc.work.route()
            assert await svc.add.route(2, b=3) == 4 + 1  # plain arguments still arrive
            untraced = await svc.work.route()  # no span around it: a trace of its own
    spans = {s.name: s for s in exporter.get_finished_spans()}
    routes = [s for s in exporter.get_finished_spans() if s.name == f"{name}.work route"]
    assert len(routes) == 2
    route = routes[0]
    assert route.parent is not None
    assert route.parent.span_id == caller.get_span_context().span_id
    # (trace id, parent span id) of the span the endpoint opened in the replica process:
    assert inside == (route.context.trace_id, route.context.span_id)
    assert route.context.trace_id == caller.get_span_context().trace_id
    assert f"{name}.add route" in spans
    assert untraced[1] is not None and untraced[0] != route.context.trace_id


async def test_with_tracing_off_no_context_reaches_the_replica() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    async with open_service(Traced, num_replicas=1) as svc:
        with anyio.fail_after(30), tracer.start_as_current_span("caller"):
            _, parent = await svc.work.route()
    assert parent is None  # the replica's span is a root: nothing was carried
    assert [s.name for s in exporter.get_finished_spans()] == ["caller"]
