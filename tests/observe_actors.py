"""Actors for the observability tests. Replica processes import this module too (the
classes travel by reference): keep its top level light."""

from __future__ import annotations

from typing import Any

from forge_sc import ForgeActor, endpoint, service_endpoint


class Traced(ForgeActor):
    """Opens a span inside each endpoint, with a tracer provider of its own process,
    and returns how that span is linked: ``(trace_id, parent_span_id or None)``."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        self._exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self._exporter))
        self._tracer = provider.get_tracer("tests.inside")

    def _inside(self) -> tuple[int, int | None]:
        with self._tracer.start_as_current_span("inside"):
            pass
        span: Any = self._exporter.get_finished_spans()[-1]
        parent = span.parent.span_id if span.parent is not None else None
        return span.context.trace_id, parent

    @endpoint
    async def work(self) -> tuple[int, int | None]:
        return self._inside()

    @endpoint
    async def nap_then_work(self, seconds: float) -> tuple[int, int | None]:
        import anyio

        await anyio.sleep(seconds)
        return self._inside()

    @endpoint
    async def add(self, a: int, b: int = 0) -> int:
        return a + b

    @service_endpoint(batch_size=4, batch_timeout=5.0)
    async def links(self, xs: list[int]) -> list[tuple[int, int | None]]:
        link = self._inside()
        return [link for _ in xs]
