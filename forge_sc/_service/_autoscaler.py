"""The autoscaler task: keeps ongoing requests per replica near the target."""

from __future__ import annotations

import math
from typing import Any, Protocol

import anyio

from .._config import ServiceConfig
from ..errors import NoHealthyReplicasError, PlacementError, ServiceClosedError

__all__ = ["ScalingHost", "autoscale", "desired_replicas"]


class ScalingHost(Protocol):
    """What the autoscaler reads and drives (the service is one)."""

    _config: ServiceConfig
    _closing: bool
    _inflight: int  # requests admitted and not yet ended
    _started: anyio.Event  # every first replica healthy: open_service's body runs

    @property
    def replicas(self) -> list[Any]: ...

    def _usable_replicas(self) -> int:
        """Replicas that are not failed for good."""
        ...

    async def scale_to(self, num_replicas: int) -> None: ...


def desired_replicas(ongoing: int, target: float, low: int, high: int) -> int:
    """Replicas needed for ``ongoing`` requests at ``target`` each, within bounds."""
    need = ongoing / target  # inf for a tiny target: ceil() of it would raise
    return max(low, high if need >= high else math.ceil(need))


async def autoscale(svc: ScalingHost) -> None:
    """Sample the load every ``health_poll_rate`` s once the service has started;
    scale when the desired count has differed from the current one for
    ``upscale_delay`` / ``downscale_delay`` s."""
    config = svc._config
    assert config.max_replicas is not None
    low, high = config.effective_min_replicas, config.max_replicas
    since: float | None = None
    direction = 0
    # Not while the service starts: replicas still starting carry no load, and
    # removing one would leave open_service waiting for it to become healthy.
    await svc._started.wait()
    while True:
        await anyio.sleep(config.health_poll_rate)
        if svc._closing:
            return
        current = svc._usable_replicas()  # (one failed for good is no capacity)
        want = desired_replicas(svc._inflight, config.target_ongoing_requests, low, high)
        step = (want > current) - (want < current)
        now = anyio.current_time()
        if step != direction:
            direction, since = step, now
        if step == 0 or since is None:
            continue
        delay = config.upscale_delay if step > 0 else config.downscale_delay
        if now - since >= delay:
            direction, since = 0, None
            try:
                await svc.scale_to(want)
            except ServiceClosedError:
                return
            except PlacementError:
                # The mesh's pool of hosts has no room for more: stay at this size.
                continue
            except NoHealthyReplicasError:
                # A new replica could not start: it stays FAILED in the pool (visible
                # in statistics()); the requests go on being served by the others.
                continue
