"""The replica supervisor: one task per replica index, running its incarnations.

spawn → serve until death → cancel the incarnation's task group (health poller, death
watcher) → stop the handle, which interrupts the calls registered with it (they go
back to the service for retry) → back off (exponential, jittered, capped) → spawn
again, within the restart budget. Stopping is cancelling ``replica._scope``; every
handle is stopped inside a shielded scope, so a half-built replica is torn down too.

A dead handle is stopped by a task of the supervisor's own (the reaper) while the
supervisor goes on: the next incarnation starts while the old processes are reaped,
not after. With warm spares (:mod:`._spares`), the next incarnation is a spare taken
at once, without backoff (a spare that became ready during a backoff is taken too);
a promotion counts as a restart, within the same budget.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import attrs

from .._config import ServiceConfig
from ..errors import ServiceFailedError
from ..mesh._protocol import MeshReplica
from ..observe import _events
from ._replica import Incarnation, Replica, ReplicaEvents
from ._spares import Spare, SparePool

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
    #: Warm spares to promote instead of spawning (``spare_replicas``), if any.
    spares: SparePool | None = None
    #: The backend's seed (FakeMesh's), if any: each replica then draws its backoff
    #: jitter from a generator of its own, seeded with it and its index, so that
    #: replicas dying together get the same delays whichever runs first (trio
    #: shuffles the order of runnable tasks).
    seed: object = None


class ReplicaStopped(Exception):
    """The incarnation ended because the replica was stopped, not because it died."""


class HealthCheckFailed(Exception):
    """A health ping failed or took longer than ``health_timeout``."""


async def supervise(child: ChildSpec, replica: Replica) -> None:
    """Run ``replica`` until its scope is cancelled or its restart budget runs out."""
    failure: ServiceFailedError | None = None
    try:
        async with anyio.create_task_group() as reaper:
            try:
                await _incarnations(child, replica, reaper)
            except ServiceFailedError as exc:
                # Raised bare once the reaping is done; the service starts closing
                # meanwhile, and that must not cancel the failure away.
                failure = exc
                reaper.cancel_scope.shield = True
        if failure is not None:
            raise failure
    finally:
        replica._finished()
        child.events._replica_finished(replica)


def _take_spare(child: ChildSpec) -> Spare | None:
    return None if child.spares is None else child.spares.take()


async def _incarnations(child: ChildSpec, replica: Replica, reaper: anyio.abc.TaskGroup) -> None:
    config = child.config
    rng = child.rng if child.seed is None else random.Random(f"{child.seed}/{replica.idx}")
    svc = child.events  # the service, as the logs name it
    restarts_at: deque[float] = deque()
    first = True
    spare: Spare | None = None
    with replica._scope:
        while True:
            inc = Incarnation(child.events, replica)
            n = replica._restarts + 1  # the incarnation's number, for the logs
            if first and not child.starting():  # a replica added by scaling up
                spare = _take_spare(child)
            handle: MeshReplica | None = None
            if spare is not None:
                handle = spare.handle
                spare.relay.target = inc.settle_abandoned
                promote = getattr(handle, "promote", None)
                if promote is not None:
                    promote(replica.idx)
                spare = None
                _events.replica_promoted(svc, replica.idx, n)
            else:
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
            if handle is not None:
                try:
                    await _serve(child, replica, inc, handle)
                finally:
                    # The old processes are stopped while the next incarnation starts
                    # (by the reaper, a task of this supervisor), except with GPUs
                    # (free only once the processes holding them stopped) or when the
                    # backend asks for it (on a pool of hosts, a dead replica's hosts
                    # are known suspect only once its stop ran).
                    if config.with_gpus or getattr(handle, "stop_before_respawn", False):
                        await _reap(handle)
                    else:
                        reaper.start_soon(_reap, handle)
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
            replica._recovering()
            # A warm spare, if one is ready, takes the replica's place at once (no
            # backoff: it is already started); a promotion counts as a restart.
            spare = _take_spare(child)
            if spare is None:
                # (The exponent is capped: 2**n of a large budget overflows a float.)
                exponent = min(len(restarts_at), 64)
                delay = min(config.restart_backoff * 2.0**exponent, MAX_BACKOFF)
                delay *= rng.uniform(0.5, 1.0)
                _events.replica_restarting(
                    svc, replica.idx, n + 1, len(restarts_at) + 1, config.max_restarts, delay
                )
                await anyio.sleep(delay)
                spare = _take_spare(child)  # one may have become ready meanwhile
            restarts_at.append(anyio.current_time())
            replica._restarted()


async def _reap(handle: MeshReplica) -> None:
    with anyio.CancelScope(shield=True):
        await handle.stop()


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
