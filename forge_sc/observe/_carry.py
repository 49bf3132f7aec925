"""Carrying the caller's trace context into a replica's process (Monarch).

In-process backends need nothing: the endpoint runs in the caller's task, whose
context (OpenTelemetry's current span included) it sees. A Monarch endpoint runs in
another process, so the context has to travel with the call. It does so without
touching the plain call path: every endpoint of a :class:`~forge_sc.ForgeActor` gets a
hidden twin, ``_forge_sc_traced_<name>``, of the same kind (sync, async, concurrent),
which takes one extra keyword argument, the W3C trace context as a dict, makes it
current in the replica, and runs the endpoint. Only a traced service calls the twins
(see :mod:`forge_sc.observe.otel`); with tracing off nothing here runs per call.

OpenTelemetry is imported only when a context is actually carried.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["CARRIER_KW", "TWIN_PREFIX", "add_twins", "inject", "twin_name"]

TWIN_PREFIX = "_forge_sc_traced_"
CARRIER_KW = "_forge_sc_trace_context"

_propagator: Any = None


def _get_propagator() -> Any:
    """W3C trace context and baggage, whatever the process's global propagator is
    (both ends of a call must agree)."""
    global _propagator
    if _propagator is None:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    return _propagator


def twin_name(endpoint: str) -> str:
    return TWIN_PREFIX + endpoint


def inject(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """``kwargs`` plus the current context, or None when there is none to carry."""
    carrier: dict[str, str] = {}
    _get_propagator().inject(carrier)
    if not carrier:
        return None
    return {**kwargs, CARRIER_KW: carrier}


def _attach(carrier: Any) -> Any:
    if not carrier:
        return None
    try:
        from opentelemetry import context
    except ImportError:  # pragma: no cover - the replica's environment lacks it
        return None
    return context.attach(_get_propagator().extract(carrier))


def _detach(token: Any) -> None:
    if token is not None:
        from opentelemetry import context

        context.detach(token)


def _with_carrier(sig: inspect.Signature) -> inspect.Signature:
    params = list(sig.parameters.values())
    if CARRIER_KW in sig.parameters:
        return sig
    extra = inspect.Parameter(CARRIER_KW, inspect.Parameter.KEYWORD_ONLY, default=None)
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        params.insert(len(params) - 1, extra)
    else:
        params.append(extra)
    return sig.replace(parameters=params)


def _make_twin(method: Callable[..., Any], name: str) -> Callable[..., Any] | None:
    if inspect.isasyncgenfunction(method) or inspect.isgeneratorfunction(method):
        return None
    twin: Any
    if inspect.iscoroutinefunction(method):

        async def async_twin(self: Any, *args: Any, **kwargs: Any) -> Any:
            token = _attach(kwargs.pop(CARRIER_KW, None))
            try:
                return await method(self, *args, **kwargs)
            finally:
                _detach(token)

        twin = async_twin
    else:

        def sync_twin(self: Any, *args: Any, **kwargs: Any) -> Any:
            token = _attach(kwargs.pop(CARRIER_KW, None))
            try:
                return method(self, *args, **kwargs)
            finally:
                _detach(token)

        twin = sync_twin
    try:
        twin.__signature__ = _with_carrier(inspect.signature(method))
    except (TypeError, ValueError):  # pragma: no cover - no signature to extend
        return None
    twin.__name__ = twin.__qualname__ = twin_name(name)
    made: Callable[..., Any] = twin
    return made


def add_twins(
    cls: type[Any],
    make_endpoint: Callable[..., Any],
    endpoint_method: Callable[[object], Callable[..., Any] | None],
    endpoint_options: Callable[[object], dict[str, Any]],
) -> None:
    """Give each endpoint defined on ``cls`` its traced twin (see the module docstring).

    ``make_endpoint`` is Monarch's ``endpoint`` decorator; ``endpoint_method`` and
    ``endpoint_options`` read a Monarch endpoint (``forge_sc._shims._monarch``). They
    are passed in: this module does not import Monarch.
    """
    for name, value in list(vars(cls).items()):
        method = endpoint_method(value)
        if method is None or name.startswith(TWIN_PREFIX):
            continue
        twin = _make_twin(method, name)
        if twin is None:
            continue
        prop = make_endpoint(twin, **endpoint_options(value))
        setattr(cls, twin_name(name), prop)
