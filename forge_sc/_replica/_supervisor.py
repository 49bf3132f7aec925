"""The replica supervisor: one task per replica index, running its incarnations.

spawn → serve until death → cancel the incarnation's task group (health poller, death
watcher) → stop the handle, which interrupts the calls registered with it (they go
back to the service for retry) → back off (exponential, jittered, capped) → spawn
again, within the restart budget. Stopping is cancelling ``replica._scope``; every
handle is stopped inside a shielded scope, so a half-built replica is torn down too.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import attrs

from .._config import ServiceConfig
from ..errors import ServiceFailedError
from ..mesh._protocol import MeshReplica
from ..observe import _events
from ._replica import Incarnation, Replica, ReplicaEvents

__all__ = ["MAX_BACKOFF", "ChildSpec", "supervise"]

#: Cap of the restart backoff, seconds.
MAX_BACKOFF = 5.0


@attrs.frozen
class ChildSpec:
    """How to run the incarnations of a replica (OTP's child spec): how to start
    one, the restart policy and health checks (from ``config``), and whom to tell."""

    #: Spawn one incarnation on the backend; returns once it can answer.
    start: Callable[[Incarnation], Awaitable[MeshReplica]]
    events: ReplicaEvents
    config: ServiceConfig
    rng: random.Random
    #: True while the service is starting: a first spawn that fails then fails the
    #: service at once (as an OTP supervisor refuses to start) instead of retrying.
    starting: Callable[[], bool]
    #: True once the service is closing: an incarnation that ends then is not
    #: replaced (a replica that dies during the graceful close is only stopped).
    stopping: Callable[[], bool] = attrs.field(default=lambda: False)


class ReplicaStopped(Exception):
    """The incarnation ended because the replica was stopped, not because it died."""


class HealthCheckFailed(Exception):
    """A health ping failed or took longer than ``health_timeout``."""


async def supervise(child: ChildSpec, replica: Replica) -> None:
    """Run ``replica`` until its scope is cancelled or its restart budget runs out."""
    config = child.config
    svc = child.events  # the service, as the logs name it
    restarts_at: deque[float] = deque()
    first = True
    try:
        with replica._scope:
            while True:
                inc = Incarnation(child.events, replica)
                n = replica._restarts + 1  # the incarnation's number, for the logs
                _events.replica_starting(svc, replica.idx, n)
                try:
                    handle = await child.start(inc)
                except Exception as exc:
                    if first and child.starting():
                        raise ServiceFailedError(
                            f"replica {replica.idx} failed to start: {exc!r}. The service "
                            "refuses to start when an actor cannot be built; fix the cause "
                            "(constructor arguments, importable module) and retry."
                        ) from exc
                    replica._died(exc)
                    _events.replica_spawn_failed(svc, replica.idx, n, exc)
                else:
                    await _serve(child, replica, inc, handle)
                    # The cause, if this escalates: the backend's own account of the
                    # death is the fullest (a call may have seen it first, tersely).
                    replica._died(getattr(handle, "death", None) or inc.reason)
                    _events.replica_died(svc, replica.idx, n, replica._last_error)
                first = False
                if child.stopping() or replica._draining:
                    # The service (or this replica, scaled away) is stopping: an
                    # incarnation that ended now is not replaced, only stopped.
                    return
                now = anyio.current_time()
                while restarts_at and restarts_at[0] <= now - config.restart_window:
                    restarts_at.popleft()
                if len(restarts_at) >= config.max_restarts:
                    replica._exhaust()
                    _events.replica_exhausted(
                        svc,
                        replica.idx,
                        config.max_restarts,
                        config.restart_window,
                        replica._last_error,
                    )
                    child.events._replica_exhausted(replica)
                    return
                # (The exponent is capped: 2**n of a large budget overflows a float.)
                exponent = min(len(restarts_at), 64)
                delay = min(config.restart_backoff * 2.0**exponent, MAX_BACKOFF)
                replica._recovering()
                delay *= child.rng.uniform(0.5, 1.0)
                _events.replica_restarting(
                    svc, replica.idx, n + 1, len(restarts_at) + 1, config.max_restarts, delay
                )
                await anyio.sleep(delay)
                restarts_at.append(anyio.current_time())
                replica._restarted()
    finally:
        replica._finished()


async def _serve(child: ChildSpec, replica: Replica, inc: Incarnation, handle: MeshReplica) -> None:
    inc.attach(handle)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_poll_health, child.config, inc, handle)
            tg.start_soon(_watch_death, inc, handle)
            replica._serve(inc)
            _events.replica_healthy(child.events, replica.idx, replica._restarts + 1)
            child.events._replica_healthy(replica)
            await inc.dead.wait()
            tg.cancel_scope.cancel()
    finally:
        if inc.reason is None:  # stopped or cancelled rather than dead
            inc.reason = ReplicaStopped(f"replica {replica.idx} stopped")
            inc.dead.set()
        if replica._fail(inc):
            child.events._replica_died(replica)
        with anyio.CancelScope(shield=True):
            await handle.stop()


async def _poll_health(config: ServiceConfig, inc: Incarnation, handle: MeshReplica) -> None:
    while True:
        await anyio.sleep(config.health_poll_rate)
        try:
            with anyio.fail_after(config.health_timeout):
                await handle.ping()
        except TimeoutError:
            inc.die(HealthCheckFailed(f"health ping took longer than {config.health_timeout}s"))
            return
        except Exception as exc:  # ReplicaGone or any other failure of the ping
            inc.die(exc)
            return


async def _watch_death(inc: Incarnation, handle: MeshReplica) -> None:
    inc.die(await handle.wait_dead())
