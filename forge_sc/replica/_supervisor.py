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
from typing import Protocol

import anyio

from .._config import ServiceConfig
from ..errors import ServiceFailedError
from ..mesh import Mesh, MeshReplica, SpawnSpec
from ..observe import _events
from ._replica import Incarnation, Replica, ReplicaState

__all__ = ["MAX_BACKOFF", "SupervisorHost", "supervise"]

#: Cap of the restart backoff, seconds.
MAX_BACKOFF = 5.0


class SupervisorHost(Protocol):
    """What a supervisor needs from its service."""

    _config: ServiceConfig
    _mesh: Mesh
    _rng: random.Random
    _starting: bool
    _restarts: int

    def _spawn_spec(self, replica: Replica, inc: Incarnation) -> SpawnSpec: ...
    def _replica_healthy(self, replica: Replica) -> None: ...
    def _replica_died(self, replica: Replica) -> None: ...
    def _replica_exhausted(self, replica: Replica) -> None: ...
    def _slot_freed(self, replica: Replica) -> None: ...


class ReplicaStopped(Exception):
    """The incarnation ended because the replica was stopped, not because it died."""


class HealthCheckFailed(Exception):
    """A health ping failed or took longer than ``health_timeout``."""


async def supervise(host: SupervisorHost, replica: Replica) -> None:
    """Run ``replica`` until its scope is cancelled or its restart budget runs out."""
    config = host._config
    restarts_at: deque[float] = deque()
    first = True
    try:
        with replica._scope:
            while True:
                inc = Incarnation(host, replica)
                n = replica._restarts + 1  # the incarnation's number, for the logs
                _events.replica_starting(host, replica.idx, n)
                handle: MeshReplica | None = None
                try:
                    handle = await host._mesh.spawn(host._spawn_spec(replica, inc))
                except Exception as exc:
                    if first and host._starting:
                        raise ServiceFailedError(
                            f"replica {replica.idx} failed to start: {exc!r}. The service "
                            "refuses to start when an actor cannot be built; fix the cause "
                            "(constructor arguments, importable module) and retry."
                        ) from exc
                    replica._last_error = exc
                    _events.replica_spawn_failed(host, replica.idx, n, exc)
                else:
                    await _serve(host, replica, inc, handle)
                    # The cause, if this escalates: the backend's own account of the
                    # death is the fullest (a call may have seen it first, tersely).
                    replica._last_error = getattr(handle, "death", None) or inc.reason
                    _events.replica_died(host, replica.idx, n, replica._last_error)
                first = False
                replica._state = ReplicaState.FAILED
                now = anyio.current_time()
                while restarts_at and restarts_at[0] <= now - config.restart_window:
                    restarts_at.popleft()
                if len(restarts_at) >= config.max_restarts:
                    replica._exhausted = True
                    _events.replica_exhausted(
                        host,
                        replica.idx,
                        config.max_restarts,
                        config.restart_window,
                        replica._last_error,
                    )
                    host._replica_exhausted(replica)
                    return
                delay = min(config.restart_backoff * 2 ** len(restarts_at), MAX_BACKOFF)
                replica._state = ReplicaState.RECOVERING
                delay *= host._rng.uniform(0.5, 1.0)
                _events.replica_restarting(
                    host, replica.idx, n + 1, len(restarts_at) + 1, config.max_restarts, delay
                )
                await anyio.sleep(delay)
                restarts_at.append(anyio.current_time())
                replica._restarts += 1
                host._restarts += 1
    finally:
        if not replica._exhausted:
            replica._state = ReplicaState.STOPPED
        replica._done.set()


async def _serve(
    host: SupervisorHost, replica: Replica, inc: Incarnation, handle: MeshReplica
) -> None:
    inc.handle = handle
    inc.call = handle.call
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_poll_health, host._config, inc, handle)
            tg.start_soon(_watch_death, inc, handle)
            replica._inc = inc
            replica._state = ReplicaState.HEALTHY
            _events.replica_healthy(host, replica.idx, replica._restarts + 1)
            host._replica_healthy(replica)
            await inc.dead.wait()
            tg.cancel_scope.cancel()
    finally:
        if inc.reason is None:  # stopped or cancelled rather than dead
            inc.reason = ReplicaStopped(f"replica {replica.idx} stopped")
            inc.dead.set()
        if replica._state is ReplicaState.HEALTHY:
            replica._state = ReplicaState.FAILED
            host._replica_died(replica)
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
