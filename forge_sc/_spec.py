"""Endpoint specifications, read off an actor class without importing any runtime."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ._config import finite_float, show
from ._routing import RoundRobinRouter, RouterFactory, make_router_factory
from ._tensors import stack_rows, unbind_result

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
    #: Batched endpoints, opt-in (None: DESIGN §3's lists): one parameter's values
    #: across a batch -> what the endpoint receives; the endpoint's result -> one
    #: result per call, in order.
    collate: Callable[[list[Any]], Any] | None = None
    split: Callable[[Any], Sequence[Any]] | None = None

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
    collate: Any = None,
    split: Any = None,
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
    collate_fn = _batch_option(where, "collate", collate, COLLATE_CHOICES)
    split_fn = _batch_option(where, "split", split, SPLIT_CHOICES)
    if batch_size == 1 and (collate_fn is not None or split_fn is not None):
        raise ValueError(
            f"{where}: collate and split apply to batched endpoints only; set "
            "batch_size > 1, or leave them unset"
        )
    return EndpointSpec(
        name=name,
        fn=fn,
        router=make_router_factory(router, where=where),
        batch_size=batch_size,
        batch_timeout=timeout,
        idempotent=idempotent,
        collate=collate_fn,
        split=split_fn,
    )


#: The named ``collate`` / ``split`` of ``@service_endpoint`` (opt-in; unset is
#: DESIGN §3's list transposition).
COLLATE_CHOICES: Mapping[str, Callable[[list[Any]], Any]] = {"stack": stack_rows}
SPLIT_CHOICES: Mapping[str, Callable[[Any], Sequence[Any]]] = {"unbind": unbind_result}


def _batch_option(
    where: str, what: str, value: Any, choices: Mapping[str, Callable[..., Any]]
) -> Any:
    """``collate`` / ``split`` as a callable, or None when unset."""
    if value is None:
        return None
    named = " or ".join(repr(c) for c in choices)
    if isinstance(value, str):
        fn = choices.get(value)
        if fn is None:
            raise ValueError(
                f"{where}: {what} must be None, {named}, or a callable; got {show(value)}"
            )
        return fn
    if not callable(value):
        raise TypeError(f"{where}: {what} must be None, {named}, or a callable; got {show(value)}")
    return value


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
