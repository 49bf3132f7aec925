"""Bad values for every ServiceConfig field and every @service_endpoint option: each is
refused at construction, with ValueError or TypeError naming the field (issue 10,
item 9: numbers too large for a float, infinities, sizes without a bound)."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from forge_sc import ForgeActor, ServiceConfig, open_service, service_endpoint
from forge_sc._config import (
    MAX_ATTEMPTS,
    MAX_CONCURRENT_REQUESTS,
    MAX_HOSTS,
    MAX_PROCS,
    MAX_QUEUED_REQUESTS,
    MAX_REPLICAS,
    MAX_RESTARTS,
)
from forge_sc._spec import MAX_BATCH_SIZE
from forge_sc.testing import FakeMesh

from ._support import Hostile

HUGE = 10**400  # an int too large for a float
NAN, INF = math.nan, math.inf

#: Values no field accepts: wrong types, NaN, infinities, numbers too large for a float.
ALWAYS_BAD: list[Any] = ["1", b"1", [1], {}, object(), 1j, NAN, INF, -INF, HUGE, -HUGE]

INT_FIELDS = {  # name: (lowest accepted, highest accepted, None accepted)
    "num_replicas": (1, MAX_REPLICAS, False),
    "spare_replicas": (0, MAX_REPLICAS, False),
    "procs": (1, MAX_PROCS, False),
    "hosts": (1, MAX_HOSTS, True),
    "replica_max_concurrent_requests": (1, MAX_CONCURRENT_REQUESTS, False),
    "max_queued_requests": (0, MAX_QUEUED_REQUESTS, True),
    "max_attempts": (1, MAX_ATTEMPTS, False),
    "max_restarts": (0, MAX_RESTARTS, False),
    "min_replicas": (1, MAX_REPLICAS, True),
    "max_replicas": (1, MAX_REPLICAS, True),
}
FLOAT_FIELDS = {  # name: (zero accepted, None accepted)
    "health_poll_rate": (False, False),
    "health_timeout": (False, False),
    "request_timeout": (False, True),
    "restart_window": (False, False),
    "restart_backoff": (True, False),
    "graceful_shutdown_timeout": (True, False),
    "target_ongoing_requests": (False, False),
    "upscale_delay": (True, False),
    "downscale_delay": (True, False),
}
BOOL_FIELDS = ("with_gpus", "return_first_rank_result")


def test_the_table_covers_every_field() -> None:
    names = {a.name for a in attrs.fields(ServiceConfig)}
    assert names == set(INT_FIELDS) | set(FLOAT_FIELDS) | set(BOOL_FIELDS)


def _bad_values() -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = []
    for name, (low, high, _) in INT_FIELDS.items():
        for v in [*ALWAYS_BAD, True, False, 1.0, 2.5, low - 1, -1, high + 1, 10**30]:
            cases.append((name, v))
    for name, (zero_ok, _) in FLOAT_FIELDS.items():
        for v in [*ALWAYS_BAD, True, False, -1, -0.001, -HUGE, 1e309]:
            cases.append((name, v))
        if not zero_ok:
            cases += [(name, 0), (name, 0.0)]
    for name in BOOL_FIELDS:
        for v in [*ALWAYS_BAD, 0, 1, "True", None]:
            cases.append((name, v))
    for name, (_, _, none_ok) in INT_FIELDS.items():
        if not none_ok:
            cases.append((name, None))
    for name, (_, none_ok) in FLOAT_FIELDS.items():
        if not none_ok:
            cases.append((name, None))
    return cases


def _config(name: str, value: Any) -> dict[str, Any]:
    """The config under test: the other fields made consistent with ``value``."""
    if name == "min_replicas":
        return {"min_replicas": value, "max_replicas": 4}
    return {name: value}


@pytest.mark.parametrize(("name", "value"), _bad_values(), ids=lambda v: repr(v)[:20])
def test_a_bad_config_value_is_refused_naming_the_field(name: str, value: Any) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        ServiceConfig(**_config(name, value))
    message = str(info.value)
    assert f"ServiceConfig.{name}" in message
    assert len(message) < 400  # a huge int is described, not printed in full


@pytest.mark.parametrize(("name", "value"), _bad_values()[::7], ids=lambda v: repr(v)[:20])
def test_open_service_and_options_refuse_it_before_anything_starts(name: str, value: Any) -> None:
    # No event loop is needed: validation comes first.
    with pytest.raises((ValueError, TypeError), match=name):
        open_service(Hostile, mesh=FakeMesh(), **_config(name, value))
    with pytest.raises((ValueError, TypeError), match=name):
        Hostile.options(**_config(name, value))


def test_the_bounds_themselves_are_accepted() -> None:
    for name, (low, high, none_ok) in INT_FIELDS.items():
        for v in (low, high, *([None] if none_ok else [])):
            if name == "min_replicas" and v is not None:
                ServiceConfig(min_replicas=v, max_replicas=MAX_REPLICAS, num_replicas=v)
            elif name == "max_replicas" and v is not None:
                ServiceConfig(max_replicas=v, num_replicas=1, min_replicas=1)
            else:
                ServiceConfig(**{name: v})
    for name, (zero_ok, none_ok) in FLOAT_FIELDS.items():
        for v in (1e-9, 1, 1e300, 1.7e308, *([0] if zero_ok else []), *([None] if none_ok else [])):
            ServiceConfig(**{name: v})


# ----------------------------------------------------------- @service_endpoint


ENDPOINT_BAD: list[tuple[str, Any]] = [
    *[("batch_size", v) for v in [*ALWAYS_BAD, True, False, 0, -1, 1.0, 2.5, MAX_BATCH_SIZE + 1]],
    *[("batch_timeout", v) for v in [*ALWAYS_BAD, True, False, -1, -0.001, 1e309, None]],
    *[("idempotent", v) for v in [*ALWAYS_BAD, 0, 1, None, "yes"]],
    *[("router", v) for v in [1, "RoundRobinRouter", None, object(), int, FakeMesh]],
    *[("collate", v) for v in [*ALWAYS_BAD, True, 3, "list", "stacked", "Stack"]],
    *[("split", v) for v in [*ALWAYS_BAD, True, 3, "list", "split", "stack"]],
]


@pytest.mark.parametrize(("option", "value"), ENDPOINT_BAD, ids=lambda v: repr(v)[:20])
def test_a_bad_endpoint_option_is_refused_at_decoration(option: str, value: Any) -> None:
    with pytest.raises((ValueError, TypeError)) as info:

        @service_endpoint(**{option: value})
        async def ep(self: Any, x: Any) -> Any:
            return x

    message = str(info.value)
    assert option in message and "ep" in message
    assert len(message) < 400


@pytest.mark.parametrize(("option", "value"), [("collate", "stack"), ("split", "unbind")])
def test_collate_and_split_on_an_unbatched_endpoint_are_refused(option: str, value: str) -> None:
    with pytest.raises(ValueError, match="batched endpoints only"):

        @service_endpoint(**{option: value})
        async def ep(self: Any, x: Any) -> Any:
            return x

    # Accepted on a batched endpoint, and so is a callable.
    @service_endpoint(batch_size=2, **{option: value})
    async def ok(self: Any, xs: Any) -> Any:
        return xs

    @service_endpoint(batch_size=2, **{option: list})
    async def ok_callable(self: Any, xs: Any) -> Any:
        return xs


def test_a_router_factory_that_returns_no_router_fails_clearly() -> None:
    class Actor(ForgeActor):
        @service_endpoint(router=lambda: 42)
        async def ep(self) -> int:
            return 1

    with pytest.raises(TypeError, match="router factory returned 42"):
        open_service(Actor, mesh=FakeMesh())
