"""The service's lifecycle: its task, replica supervision events, scaling, close.

The service's own task (``_run``) owns the mesh lifespan and the task group of every
internal task: one supervisor per replica, one batcher per batched endpoint, the
autoscaler. The supervisors report replica transitions here (``ReplicaEvents``),
which wakes whoever waits for them and escalates when every replica is out of
restart budget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from functools import partial

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from .._config import check_replica_index
from .._replica import MAX_BACKOFF, Incarnation, Relay, Replica, SparePool, supervise
from .._waiters import Waiter
from ..errors import NoHealthyReplicasError, ServiceClosedError, ServiceFailedError
from ..mesh._protocol import MeshReplica, SpawnSpec
from ..observe import _events
from ._admission import Admission
from ._state import HEALTHY

__all__ = ["Lifecycle"]

#: start_soon this many replica supervisors, then let the loop run (and a cancelled
#: start-up end) before the next ones.
_START_CHUNK = 256


class Lifecycle(Admission):
    """Start, supervise, scale and close the replicas."""

    # -------------------------------------------------------- supervisor events

    def _spec(self, idx: int) -> SpawnSpec:
        """What the mesh spawns for this service (``idx=-1``: a spare, or a capacity
        question); callers ``attrs.evolve`` the per-spawn fields."""
        c = self._config
        return SpawnSpec(
            idx=idx,
            actor_cls=self._actor_cls,
            args=self._args,
            kwargs=self._kwargs,
            procs=c.procs,
            hosts=c.hosts,
            with_gpus=c.with_gpus,
            return_first_rank_result=c.return_first_rank_result,
        )

    def _spawn_spec(self, replica: Replica, inc: Incarnation) -> SpawnSpec:
        return attrs.evolve(self._spec(replica.idx), on_abandoned_settled=inc.settle_abandoned)

    def _check_capacity(self, count: int) -> None:
        """Ask the mesh whether ``count`` more replicas can ever be placed (an optional
        part of the protocol: a pool of hosts raises ``PlacementError``)."""
        check = getattr(self._mesh, "check_capacity", None)
        if check is not None:
            check(self._spec(-1), count)

    def _start_incarnation(self, inc: Incarnation) -> Awaitable[MeshReplica]:
        """The child spec's ``start``: spawn one incarnation on the mesh."""
        return self._mesh.spawn(self._spawn_spec(inc.replica, inc))

    # ------------------------------------------------------------ warm spares

    def _make_spares(self) -> SparePool | None:
        """The pool of ``spare_replicas`` warm spares (None without)."""
        c = self._config
        if not c.spare_replicas:
            return None
        return SparePool(
            c.spare_replicas,
            self._start_spare,
            backoff=max(c.restart_backoff, 0.01),
            max_backoff=MAX_BACKOFF,
            rng=self._rng,
            poll=c.health_poll_rate,
            timeout=c.health_timeout,
            on_failure=partial(_events.spare_failed, self),
        )

    def _start_spare(self, relay: Relay) -> Awaitable[MeshReplica]:
        spec = attrs.evolve(self._spec(-1), spare=True, on_abandoned_settled=relay)
        return self._mesh.spawn(spec)

    def _replica_healthy(self, replica: Replica) -> None:
        self._dirty = True
        # Requests waiting for any replica (and restart_replica/scale_to waiting for
        # this one) may go; requests queued on other replicas wait for those. (Not
        # every replica's queue: O(replicas) per event made a large start quadratic.)
        self._waiters.wake_all()
        replica._waiters.wake_all()
        self._watchers.wake_all()
        if self._starting:
            self._start_pending.discard(replica.idx)
            if not self._start_pending and all(r._state is HEALTHY for r in self._replicas):
                self._starting = False
                self._started.set()
                _events.service_started(self, len(self._replicas), self._clock() - self._t0)

    def _replica_died(self, replica: Replica) -> None:
        self._dirty = True
        if replica._sessions:
            self._unplace_sessions(replica)
        replica._waiters.wake_all()  # session requests queued there move elsewhere

    def _unplace_sessions(self, replica: Replica) -> None:
        """The sessions of ``replica``'s dead incarnation leave it now (DESIGN §3: when
        it dies the session moves, and ``session_migrations`` goes up): each is placed
        again by its next request (not all at once on the survivors), where the session
        router puts it: the same index if that replica is healthy again by then (its
        last index stays in the routers' ``session_map``)."""
        sessions = self._sessions
        for sess_id, inc in sessions.items():
            if inc is not None and inc.replica is replica and inc.reason is not None:
                sessions[sess_id] = None  # (a value replaced: the dict keeps its size)
                replica._drop_session()
                self._migrations += 1

    def _replica_finished(self, replica: Replica) -> None:
        self._dirty = True
        self._watchers.wake_all()  # restart_replica() or scale_to() waiting for it

    def _replica_exhausted(self, replica: Replica) -> None:
        self._dirty = True
        budget = (
            f"max_restarts={self._config.max_restarts} within "
            f"restart_window={self._config.restart_window}s"
        )
        cause = replica._last_error
        escalate = self._starting or all(r._exhausted for r in self._replicas)
        if escalate:
            self._failed = True
            self._gate = None
            _events.service_escalated(self, budget, cause)
            # The body is cancelled before anyone wakes, so the body's own requests
            # end by that cancellation (see _escalated), not by NoHealthyReplicasError.
            if not self._starting and self._body_scope is not None:
                self._body_scope.cancel()
        # Session requests queued there move elsewhere; restart_replica() and
        # scale_to() waiting for this replica learn it failed for good; after an
        # escalation, every waiting request learns the service failed.
        self._wake_everyone()
        if not escalate:
            return
        if self._starting:
            raise ServiceFailedError(
                f"replica {replica.idx} used up its restart budget while the service was "
                f"starting ({budget}); last error: {cause!r}. Fix the cause and retry."
            ) from cause
        raise ServiceFailedError(
            f"every replica used up its restart budget ({budget}); last error: {cause!r}"
        ) from cause

    # ------------------------------------------------------------------ the pool

    def _add_replica(self) -> Replica:
        replica = Replica(self._next_idx, self._cap)
        self._next_idx += 1
        self._replicas.append(replica)
        self._by_idx[replica.idx] = replica
        self._dirty = True
        return replica

    def _replica(self, idx: int) -> Replica:
        check_replica_index(idx)
        replica = self._by_idx.get(idx)
        if replica is None:
            raise ValueError(f"no replica with index {idx!r}; indices: {sorted(self._by_idx)}")
        return replica

    async def _wait_healthy_after(self, replica: Replica, old: Incarnation | None) -> None:
        while not (
            (replica._state is HEALTHY and replica._inc is not old)
            or replica._exhausted
            or replica._done.is_set()
        ):
            waiter = Waiter()
            self._watchers.push(waiter)
            try:
                await waiter.event.wait()
            finally:
                self._watchers.discard(waiter)
        if replica._exhausted:
            raise NoHealthyReplicasError(
                f"replica {replica.idx} could not be (re)started: {replica._last_error!r}"
            )
        if replica._state is not HEALTHY and self._closing and not replica._draining:
            raise ServiceClosedError(
                f"the service closed before replica {replica.idx} was healthy again"
            )
        if replica._done.is_set():  # stopped, not failed for good: removed meanwhile
            raise ValueError(
                f"replica {replica.idx} was removed by scale_to() before it was healthy again"
            )

    async def _retire(self, victims: Sequence[Replica]) -> None:
        for r in victims:
            r._drain()
            self._dirty = True
            r._waiters.wake_all()
        drained = False  # cancelled callers leave it undrained, as a timeout would
        try:
            with anyio.move_on_after(self._config.graceful_shutdown_timeout) as drain:
                for r in victims:
                    while r.active_requests and not r._done.is_set():
                        waiter = Waiter()
                        r._waiters.push(waiter)
                        try:
                            await waiter.event.wait()
                        finally:
                            r._waiters.discard(waiter)
            drained = not drain.cancelled_caught
        finally:
            # Also when the caller is cancelled: a replica marked for removal is
            # always stopped and removed, never left draining in the pool.
            with anyio.CancelScope(shield=True):
                _events.replicas_drained(self, [r.idx for r in victims], not drained)
                for r in victims:
                    r._stop()
                for r in victims:
                    await r._done.wait()
                for r in victims:
                    if self._by_idx.pop(r.idx, None) is None:
                        continue
                    self._replicas.remove(r)
                    self._retired.absorb(r._rec, self._clock())
                    self._retired_restarts += r._restarts
                self._dirty = True

    def _start_helpers(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the batchers and the autoscaler (the service, which they serve)."""
        raise NotImplementedError

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The service's own task: owns the mesh lifespan and every internal task."""
        try:
            with anyio.CancelScope() as scope:
                await self._serve(scope, task_status)
        finally:
            for r in self._replicas:
                if not r._done.is_set():  # its supervisor never ran
                    r._finished()
            self._closing = True
            self._gate = None
            self._forced = True
            self._wake_everyone()
            self._closed.set()
            _events.service_stopped(self)

    async def _serve(
        self, scope: anyio.CancelScope, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """The mesh's lifespan and the internal task group, until _close cancels it.

        Once started, ``scope`` is shielded: a cancellation of the scope around
        ``open_service`` ends the body, not the replicas under the requests that the
        close then drains (from tasks outside the block, or shielded in it). Before,
        it ends the start-up (a huge pool's too: see the chunks).
        """
        async with self._mesh.lifespan(), anyio.create_task_group() as tg:
            self._itg = tg
            # (Warm spares take room on the mesh like replicas.)
            self._check_capacity(len(self._replicas) + self._config.spare_replicas)
            for i, r in enumerate(list(self._replicas)):
                if i and i % _START_CHUNK == 0:
                    # A huge pool: let a cancelled start-up end here.
                    await anyio.lowlevel.checkpoint()
                tg.start_soon(supervise, self._child, r)
            if self._spares is not None:
                tg.start_soon(self._spares.run)
            self._start_helpers(tg)
            # Not shielded if the start-up is cancelled already (no checkpoint above
            # may have seen it): this task ends by that cancellation instead.
            await anyio.lowlevel.checkpoint_if_cancelled()
            task_status.started()
            scope.shield = True
            await anyio.sleep_forever()

    async def _wait_started(self) -> None:
        await self._started.wait()

    async def _close(self) -> None:
        """Graceful close: refuse new requests, drain, stop replicas, end tasks."""
        if self._close_started:
            await self._closed.wait()
            return
        self._close_started = True
        self._closing = True
        self._gate = None
        try:
            if self._inflight:
                timeout = self._config.graceful_shutdown_timeout
                _events.service_closing(self, self._inflight, timeout)
                with anyio.move_on_after(timeout):
                    await self._drained.wait()
                _events.service_drained(self, self._inflight)
        finally:
            # However the drain ended (also if it raised), the service stops.
            self._forced = True
            self._wake_everyone()
            for r in self._replicas:
                r._stopping()
            if self._itg is not None:
                self._itg.cancel_scope.cancel()
                await self._closed.wait()
            else:  # never started: nothing to stop
                self._closed.set()
