"""Endpoint specifications, read off an actor class without importing any runtime."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._config import finite_float, show
from ._routing import RoundRobinRouter, RouterFactory, make_router_factory

__all__ = [
    "RESERVED_NAMES",
    "SETUP_ENDPOINT",
    "EndpointSpec",
    "collect_endpoints",
    "make_spec",
    "setup_endpoint",
]

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

#: The largest ``batch_size`` accepted.
MAX_BATCH_SIZE = 1_000_000

#: The endpoint a backend runs once per incarnation, after construction and before
#: the replica takes traffic (TorchForge's ``setup``), if the actor defines it.
SETUP_ENDPOINT = "setup"


@attrs.frozen
class EndpointSpec:
    """How the service treats one endpoint (TorchForge's defaults)."""

    name: str
    fn: Callable[..., Any]
    router: RouterFactory = RoundRobinRouter
    batch_size: int = 1
    batch_timeout: float = 0.01
    idempotent: bool = True

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
) -> EndpointSpec:
    """Validate ``@service_endpoint`` options (bad input fails at decoration)."""
    name = getattr(fn, "__name__", repr(fn))
    where = f"@service_endpoint on {name}"
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= MAX_BATCH_SIZE
    ):
        raise ValueError(
            f"{where}: batch_size must be an int >= 1 and <= {MAX_BATCH_SIZE}, "
            f"got {show(batch_size)}"
        )
    timeout = finite_float(batch_timeout)
    if timeout is None or timeout < 0:
        raise ValueError(
            f"{where}: batch_timeout must be a finite number >= 0 (seconds), "
            f"got {show(batch_timeout)}"
        )
    if not isinstance(idempotent, bool):
        raise ValueError(f"{where}: idempotent must be True or False, got {show(idempotent)}")
    return EndpointSpec(
        name=name,
        fn=fn,
        router=make_router_factory(router, where=where),
        batch_size=batch_size,
        batch_timeout=timeout,
        idempotent=idempotent,
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


def setup_endpoint(actor_cls: type[Any]) -> Callable[..., Any] | None:
    """The function of ``actor_cls``'s ``setup`` endpoint, or None if it has none.

    A backend calls it with the actor instance (each rank) and no arguments, after
    ``__init__`` and before the replica is handed to the service; if it raises, the
    spawn fails with that error (a constructor failure)."""
    spec = collect_endpoints(actor_cls).get(SETUP_ENDPOINT)
    return None if spec is None else spec.fn
