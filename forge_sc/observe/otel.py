"""OpenTelemetry metrics and traces for forge_sc services.

Needs ``opentelemetry-api`` (the ``otel`` extra; Monarch depends on it too). forge_sc
uses only the API: the SDK, its readers and exporters are yours to configure.

Metrics (:func:`enable_metrics`): observable counters and gauges whose callbacks
read each live service's ``statistics()`` snapshot when your reader collects, so
they add nothing per request; and, with ``latency_histogram=True``, the
``forge_sc.request.duration`` histogram, recorded per routed request by services
opened afterwards (the SDK's ``record`` costs ~8 µs a request: see
``bench/bench_observe.py``).

Traces (:func:`enable_tracing`): services opened afterwards open one span per routed
request (``<Service>.<endpoint> route``, kind CLIENT, with the endpoint, the replica
that answered and the number of attempts) and one per batch a batcher sends
(``<Service>.<endpoint> batch``, with its size and replica). The span's context is
carried into the replica, so spans your endpoint opens are its children: in-process
through the task's context, on Monarch with the call (see
:mod:`forge_sc.observe._carry`).

Services opened before these calls keep running without the per-request features;
:func:`disable` turns everything off for services opened later and empties the
observable instruments.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Iterable
from contextvars import ContextVar
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import _carry, _registry
from ._samples import FAMILIES, Family

__all__ = ["DURATION_BUCKETS", "disable", "enable_metrics", "enable_tracing"]

#: Bucket boundaries (seconds) advised for ``forge_sc.request.duration``.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_clock = time.perf_counter
_tracer: trace.Tracer | None = None
_histogram: metrics.Histogram | None = None
# id(meter provider) -> (the provider, its instruments); the provider is kept so that
# its id cannot be reused by another one.
_hooks: dict[int, tuple[metrics.MeterProvider, _MeterHook]] = {}


def _version() -> str:
    from .. import __version__

    return __version__


# --------------------------------------------------------------------- metrics


class _MeterHook:
    """The observable instruments registered on one meter provider. The first
    instrument's callback takes a fresh snapshot of every live service; the others of
    the same collection reuse it, so one collection reads each service once."""

    def __init__(self, meter: metrics.Meter) -> None:
        #: Off after disable(), on again with enable_metrics() on the same provider:
        #: the SDK keeps an instrument once registered (a second registration of the
        #: name returns the first, with its callbacks), so the hook itself stays.
        self.enabled = True
        self._snapshots: list[tuple[str, Any]] = []
        self._taken = 0.0
        for i, family in enumerate(FAMILIES):
            callback = self._callback(family, first=i == 0)
            if family.kind == "counter":
                meter.create_observable_counter(
                    family.otel_name,
                    callbacks=[callback],
                    unit=family.unit,
                    description=family.help,
                )
            else:
                meter.create_observable_gauge(
                    family.otel_name,
                    callbacks=[callback],
                    unit=family.unit,
                    description=family.help,
                )

    def _refresh(self) -> None:
        snaps = []
        for live in _registry.live_services():
            stats = live.statistics()
            if stats is not None:
                snaps.append((live.name, stats))
        self._snapshots = snaps
        self._taken = _clock()

    def _callback(self, family: Family, *, first: bool) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not self.enabled:
                return []
            if first or _clock() - self._taken > 1.0:
                self._refresh()
            return [
                Observation(value, {f"forge_sc.{k}": v for k, v in attrs.items()})
                for name, stats in self._snapshots
                for attrs, value in family.points(name, stats)
            ]

        return callback


def enable_metrics(
    meter_provider: metrics.MeterProvider | None = None, *, latency_histogram: bool = False
) -> None:
    """Export every live service's metrics through ``meter_provider`` (default: the
    global one), on meter ``forge_sc``.

    Counters (cumulative): ``forge_sc.requests`` (attributes ``forge_sc.service``,
    ``forge_sc.outcome``), ``forge_sc.replica.calls`` (``forge_sc.replica`` too),
    ``forge_sc.retries``, ``forge_sc.restarts``, ``forge_sc.replica.restarts``,
    ``forge_sc.session.migrations``, ``forge_sc.scaling.events``, ``forge_sc.batches``
    and ``forge_sc.batch.items`` (``forge_sc.endpoint``). Gauges: ``forge_sc.replicas``
    (``forge_sc.state``), ``forge_sc.queue.depth``, ``forge_sc.active_requests``,
    ``forge_sc.replica.active_requests``, ``forge_sc.sessions``,
    ``forge_sc.replica.sessions``, ``forge_sc.replica.queue.depth``,
    ``forge_sc.capacity.utilization``, ``forge_sc.replica.capacity.utilization``,
    ``forge_sc.request.latency.mean``, ``forge_sc.replica.latency.mean``,
    ``forge_sc.uptime``. They cost nothing per
    request: the callbacks read ``statistics()`` when the reader collects, on each
    service's own event loop thread.

    ``latency_histogram=True``: also record ``forge_sc.request.duration`` (seconds,
    attributes service, endpoint, outcome; from ``route()`` to its end, queueing and
    retries included) for services opened from now on. That one is recorded per
    request: ~8 µs each with the OpenTelemetry SDK (docs/performance.md), against a
    route() overhead of ~2 µs; a Monarch call takes ~700 µs.

    Calling it again with the same provider only changes ``latency_histogram``.
    """
    global _histogram
    provider = meter_provider or metrics.get_meter_provider()
    meter = provider.get_meter("forge_sc", _version())
    known = _hooks.get(id(provider))
    if known is None:
        _hooks[id(provider)] = (provider, _MeterHook(meter))
    else:
        known[1].enabled = True
    if latency_histogram:
        _histogram = meter.create_histogram(
            "forge_sc.request.duration",
            unit="s",
            description="Duration of routed requests, from route() to their end.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
    else:
        _histogram = None
    _update_attach()


# ---------------------------------------------------------------------- traces


def enable_tracing(tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace the routed requests of services opened from now on, with
    ``tracer_provider`` (default: the global one), tracer ``forge_sc``."""
    global _tracer
    provider = tracer_provider or trace.get_tracer_provider()
    _tracer = provider.get_tracer("forge_sc", _version())
    _update_attach()


def disable() -> None:
    """Services opened from now on have no per-request feature; the observable
    instruments registered so far report nothing more, until ``enable_metrics()``
    turns them on again."""
    global _tracer, _histogram
    _tracer = None
    _histogram = None
    for _, hook in _hooks.values():
        hook.enabled = False
    _update_attach()


def _update_attach() -> None:
    _registry.attach = _attach if (_tracer is not None or _histogram is not None) else None


def _attach(svc: Any) -> None:
    """Install the per-request observer on a service about to start."""
    observer = _Observer(svc, _tracer, _histogram)
    for ep in svc._endpoints.values():
        ep._observe(observer)
    if _tracer is not None:
        svc._mesh = _TracedMesh(svc._mesh, observer)


class _Attempts:
    __slots__ = ("attempts", "replica")

    def __init__(self) -> None:
        self.attempts = 0
        self.replica: int | None = None


#: The routed request the current task is running (set only while traced).
_REQUEST: ContextVar[_Attempts | None] = ContextVar("forge_sc_request", default=None)


class _Observer:
    """Wraps each routed request of one service: a span, the duration histogram."""

    __slots__ = ("_attrs", "_histogram", "_tracer", "name", "specs")

    def __init__(self, svc: Any, tracer: trace.Tracer | None, histogram: Any) -> None:
        from ._events import service_name

        self.name = service_name(svc)
        self.specs = svc._specs
        self._tracer = tracer
        self._histogram = histogram
        self._attrs = {
            (ep, outcome): {
                "forge_sc.service": self.name,
                "forge_sc.endpoint": ep,
                "forge_sc.outcome": outcome,
            }
            for ep in svc._specs
            for outcome in ("ok", "error")
        }

    def route(self, spec: Any, coro: Coroutine[Any, Any, Any], sess_id: str | None) -> Any:
        if self._tracer is not None:
            return self._traced(spec, coro, sess_id)
        return self._timed(spec, coro)

    async def _timed(self, spec: Any, coro: Coroutine[Any, Any, Any]) -> Any:
        t0 = _clock()
        try:
            result = await coro
        except Exception:
            self._histogram.record(_clock() - t0, self._attrs[spec.name, "error"])
            raise
        self._histogram.record(_clock() - t0, self._attrs[spec.name, "ok"])
        return result

    async def _traced(self, spec: Any, coro: Coroutine[Any, Any, Any], sess_id: str | None) -> Any:
        assert self._tracer is not None
        batched = spec.batch_size > 1 and sess_id is None
        attributes: dict[str, Any] = {
            "forge_sc.service": self.name,
            "forge_sc.endpoint": spec.name,
            "forge_sc.batched": batched,
        }
        if not batched:
            attributes["forge_sc.batch_size"] = 1
        if sess_id is not None:
            attributes["forge_sc.session"] = sess_id
        histogram = self._histogram
        with self._tracer.start_as_current_span(
            f"{self.name}.{spec.name} route",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            rec = _Attempts()
            token = _REQUEST.set(rec)
            t0 = _clock()
            try:
                result = await coro
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                if histogram is not None:
                    histogram.record(_clock() - t0, self._attrs[spec.name, "error"])
                raise
            except BaseException:
                span.set_attribute("forge_sc.cancelled", True)
                raise
            finally:
                _REQUEST.reset(token)
                if rec.attempts:
                    span.set_attribute("forge_sc.attempts", rec.attempts)
                if rec.replica is not None:
                    span.set_attribute("forge_sc.replica", rec.replica)
            if histogram is not None:
                histogram.record(_clock() - t0, self._attrs[spec.name, "ok"])
            return result


class _TracedMesh:
    """The service's mesh, handing out traced replica handles."""

    def __init__(self, mesh: Any, observer: _Observer) -> None:
        self._mesh = mesh
        self._observer = observer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mesh, name)

    def lifespan(self) -> Any:
        return self._mesh.lifespan()

    async def spawn(self, spec: Any) -> _TracedReplica:
        return _TracedReplica(await self._mesh.spawn(spec), spec, self._observer)


class _TracedReplica:
    """A replica handle whose calls count attempts of the traced request, give a
    batch (or fan-out leg) its own span, and carry the context to remote replicas."""

    #: No direct calls (``mesh._protocol.DirectCalls``), whatever the wrapped handle
    #: offers: every call goes through :meth:`call`, where it is counted and traced.
    direct = None

    def __init__(self, handle: Any, spec: Any, observer: _Observer) -> None:
        from ..mesh.monarch import MonarchReplica

        self._handle = handle
        self._idx = spec.idx
        self._observer = observer
        self._cls = spec.actor_cls
        self._remote = isinstance(handle, MonarchReplica)
        self._twins: dict[str, bool] = {}
        self.detaches_on_cancel = handle.detaches_on_cancel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __repr__(self) -> str:
        return f"<traced {self._handle!r}>"

    async def call(self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        rec = _REQUEST.get()
        if rec is not None:
            rec.attempts += 1
            rec.replica = self._idx
            return await self._send(endpoint, args, kwargs)
        # No routed request around this call: a batch sent by its batcher's task, or
        # one replica's share of a fan-out. It gets a span of its own.
        obs = self._observer
        spec = obs.specs.get(endpoint)
        batched = spec is not None and spec.batch_size > 1
        attributes: dict[str, Any] = {
            "forge_sc.service": obs.name,
            "forge_sc.endpoint": endpoint,
            "forge_sc.replica": self._idx,
        }
        if batched:
            first = args[0] if args else next(iter(kwargs.values()), [])
            attributes["forge_sc.batch_size"] = len(first)
        assert obs._tracer is not None
        with obs._tracer.start_as_current_span(
            f"{obs.name}.{endpoint} {'batch' if batched else 'call'}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
        ):
            return await self._send(endpoint, args, kwargs)

    async def _send(self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._remote:
            has_twin = self._twins.get(endpoint)
            if has_twin is None:
                has_twin = self._twins[endpoint] = hasattr(self._cls, _carry.twin_name(endpoint))
            if has_twin:
                carried = _carry.inject(kwargs)
                if carried is not None:
                    return await self._handle.call(_carry.twin_name(endpoint), args, carried)
        return await self._handle.call(endpoint, args, kwargs)

    async def ping(self) -> None:
        await self._handle.ping()

    async def wait_dead(self) -> BaseException:
        result: BaseException = await self._handle.wait_dead()
        return result

    async def stop(self) -> None:
        await self._handle.stop()
