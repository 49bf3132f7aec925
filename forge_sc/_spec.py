"""Endpoint specifications, read off an actor class without importing any runtime."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ._routing import RoundRobinRouter, RouterFactory, make_router_factory
from ._tensors import default_collate, default_split

__all__ = ["RESERVED_NAMES", "EndpointSpec", "collect_endpoints", "make_spec"]

#: Names an endpoint may not take: they are attributes of the service handle.
RESERVED_NAMES = frozenset(
    {
        "session",
        "start_session",
        "terminate_session",
        "replicas",
        "statistics",
        "stop",
        "shutdown",
        "get_metrics",
        "get_metrics_summary",
        "call_all",
        "scale_to",
        "restart_replica",
        "config",
        "options",
        "as_service",
        "as_actor",
        "launch",
    }
)

SPEC_ATTR = "_forge_spec"


@attrs.frozen
class EndpointSpec:
    """How the service treats one endpoint (TorchForge's defaults)."""

    name: str
    fn: Callable[..., Any]
    router: RouterFactory = RoundRobinRouter
    batch_size: int = 1
    batch_timeout: float = 0.01
    idempotent: bool = True
    #: Batched endpoints: one parameter's values across a batch -> what the endpoint
    #: receives; the endpoint's result -> one result per call, in order.
    collate: Callable[[list[Any]], Any] = default_collate
    split: Callable[[Any], Sequence[Any]] = default_split

    @property
    def batched(self) -> bool:
        return self.batch_size > 1


def make_spec(
    fn: Callable[..., Any],
    *,
    router: Any = RoundRobinRouter,
    batch_size: int = 1,
    batch_timeout: float = 0.01,
    idempotent: bool = True,
    collate: Callable[[list[Any]], Any] = default_collate,
    split: Callable[[Any], Sequence[Any]] = default_split,
) -> EndpointSpec:
    """Validate ``@service_endpoint`` options (bad input fails at decoration)."""
    name = getattr(fn, "__name__", repr(fn))
    where = f"@service_endpoint on {name}"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be an int >= 1, got {batch_size!r}")
    if (
        isinstance(batch_timeout, bool)
        or not isinstance(batch_timeout, int | float)
        or not batch_timeout >= 0
    ):
        raise ValueError(f"{where}: batch_timeout must be a number >= 0, got {batch_timeout!r}")
    if not isinstance(idempotent, bool):
        raise ValueError(f"{where}: idempotent must be True or False, got {idempotent!r}")
    for what, value in (("collate", collate), ("split", split)):
        if not callable(value):
            raise TypeError(f"{where}: {what} must be a callable, got {value!r}")
    return EndpointSpec(
        name=name,
        fn=fn,
        router=make_router_factory(router, where=where),
        batch_size=batch_size,
        batch_timeout=float(batch_timeout),
        idempotent=idempotent,
        collate=collate,
        split=split,
    )


def collect_endpoints(actor_cls: type[Any]) -> Mapping[str, EndpointSpec]:
    """Every endpoint of ``actor_cls`` (its own and inherited), by name."""
    found: dict[str, EndpointSpec] = {}
    for klass in reversed(actor_cls.__mro__):
        for attr_name, value in vars(klass).items():
            spec = getattr(value, SPEC_ATTR, None)
            if isinstance(spec, EndpointSpec):
                found[attr_name] = attrs.evolve(spec, name=attr_name)
            else:
                found.pop(attr_name, None)
    return found
