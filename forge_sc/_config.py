"""ServiceConfig: the validated, frozen configuration of one service."""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["ServiceConfig", "check_replica_index", "config_field_names"]


#: Upper bounds of the size fields: far above any real deployment, low enough that a
#: typo (``num_replicas=10**6``) fails here instead of stalling ``open_service()``.
MAX_REPLICAS = 10_000
MAX_PROCS = 1_024
MAX_HOSTS = 10_000
MAX_CONCURRENT_REQUESTS = 1_000_000
MAX_QUEUED_REQUESTS = 10_000_000
MAX_ATTEMPTS = 100
MAX_RESTARTS = 1_000_000


def show(value: Any) -> str:
    """``repr(value)``, shortened for huge ints (``10**400`` has 401 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"an int of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a real number (bool, str,
    NaN, an infinity, an int too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        as_float = float(value)
    except OverflowError:
        return None
    return as_float if math.isfinite(as_float) else None


def check_replica_index(idx: object) -> None:
    """A replica index (``Replica.idx``) is an int, not a bool: else ``TypeError``."""
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise TypeError(f"a replica index is an int (Replica.idx), got {idx!r}")


def _int_between(low: int, high: int, *, optional: bool = False) -> Any:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            extra = " or None" if optional else ""
            raise ValueError(
                f"ServiceConfig.{attr.name} must be an int >= {low} and <= {high}{extra}, "
                f"got {show(value)}"
            )

    return check


def _number(*, positive: bool, optional: bool = False, unit: str = "seconds") -> Any:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        as_float = finite_float(value)
        if as_float is not None and (as_float > 0 if positive else as_float >= 0):
            return
        what = "a finite number > 0" if positive else "a finite number >= 0"
        extra = " or None" if optional else ""
        raise ValueError(
            f"ServiceConfig.{attr.name} must be {what}{extra} ({unit}, as a float), "
            f"got {show(value)}"
        )

    return check


def _boolean(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"ServiceConfig.{attr.name} must be True or False, got {show(value)}")


@attrs.frozen(kw_only=True)
class ServiceConfig:
    """How a service runs its replicas. Every field is validated at construction; a
    bad value raises ``ValueError`` naming the field and the accepted range.

    ``health_poll_rate`` keeps TorchForge's name but is a period in seconds.
    Autoscaling is on when ``max_replicas`` is set: the service then keeps between
    ``min_replicas`` (default: ``num_replicas``) and ``max_replicas`` replicas, aiming
    at ``target_ongoing_requests`` requests per replica, and waits ``upscale_delay`` /
    ``downscale_delay`` seconds of sustained demand before it scales.
    """

    num_replicas: int = attrs.field(default=1, validator=_int_between(1, MAX_REPLICAS))
    #: Started replicas kept out of rotation; a dead replica's place is taken by one
    #: at once, and a new spare starts in the background.
    spare_replicas: int = attrs.field(default=0, validator=_int_between(0, MAX_REPLICAS))
    procs: int = attrs.field(default=1, validator=_int_between(1, MAX_PROCS))
    hosts: int | None = attrs.field(
        default=None, validator=_int_between(1, MAX_HOSTS, optional=True)
    )
    with_gpus: bool = attrs.field(default=False, validator=_boolean)
    health_poll_rate: float = attrs.field(default=0.2, validator=_number(positive=True))
    replica_max_concurrent_requests: int = attrs.field(
        default=10, validator=_int_between(1, MAX_CONCURRENT_REQUESTS)
    )
    return_first_rank_result: bool = attrs.field(default=True, validator=_boolean)
    health_timeout: float = attrs.field(default=1.0, validator=_number(positive=True))
    max_queued_requests: int | None = attrs.field(
        default=None, validator=_int_between(0, MAX_QUEUED_REQUESTS, optional=True)
    )
    request_timeout: float | None = attrs.field(
        default=None, validator=_number(positive=True, optional=True)
    )
    max_attempts: int = attrs.field(default=3, validator=_int_between(1, MAX_ATTEMPTS))
    max_restarts: int = attrs.field(default=5, validator=_int_between(0, MAX_RESTARTS))
    restart_window: float = attrs.field(default=60.0, validator=_number(positive=True))
    restart_backoff: float = attrs.field(default=0.1, validator=_number(positive=False))
    graceful_shutdown_timeout: float = attrs.field(default=10.0, validator=_number(positive=False))
    min_replicas: int | None = attrs.field(
        default=None, validator=_int_between(1, MAX_REPLICAS, optional=True)
    )
    max_replicas: int | None = attrs.field(
        default=None, validator=_int_between(1, MAX_REPLICAS, optional=True)
    )
    target_ongoing_requests: float = attrs.field(
        default=2.0, validator=_number(positive=True, unit="requests per replica")
    )
    upscale_delay: float = attrs.field(default=30.0, validator=_number(positive=False))
    downscale_delay: float = attrs.field(default=600.0, validator=_number(positive=False))

    def __attrs_post_init__(self) -> None:
        if self.min_replicas is not None and self.max_replicas is None:
            raise ValueError(
                "ServiceConfig.min_replicas needs max_replicas: autoscaling is on only "
                "when max_replicas is set"
            )
        if self.max_replicas is not None:
            low = self.effective_min_replicas
            if self.min_replicas is None and self.num_replicas > self.max_replicas:
                raise ValueError(
                    f"ServiceConfig.num_replicas ({self.num_replicas}) must be <= "
                    f"max_replicas ({self.max_replicas}) (it is also the autoscaler's "
                    "floor while min_replicas is unset)"
                )
            if low > self.max_replicas:
                raise ValueError(
                    f"ServiceConfig.min_replicas ({low}) must be <= max_replicas "
                    f"({self.max_replicas})"
                )
            if not low <= self.num_replicas <= self.max_replicas:
                raise ValueError(
                    f"ServiceConfig.num_replicas ({self.num_replicas}) must lie between "
                    f"min_replicas ({low}) and max_replicas ({self.max_replicas})"
                )

    @property
    def autoscaling(self) -> bool:
        """Whether the service runs an autoscaler (``max_replicas`` is set)."""
        return self.max_replicas is not None

    @property
    def effective_min_replicas(self) -> int:
        """The autoscaler's floor: ``min_replicas``, or ``num_replicas`` when unset."""
        return self.num_replicas if self.min_replicas is None else self.min_replicas


def config_field_names() -> frozenset[str]:
    """The names of every ServiceConfig field (the config keywords of open_service)."""
    return frozenset(a.name for a in attrs.fields(ServiceConfig))
