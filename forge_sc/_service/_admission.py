"""Admission and waiting: the service queue, replica queues, sessions' replicas.

A request that finds no free slot waits here, in arrival order, bounded by what is
left of its ``request_timeout``; the wake-ups pass a baton so that a slot freed is
taken by the first waiter that can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NoReturn

import anyio

from .._replica import Replica
from .._routing import Router
from .._waiters import Waiter
from ..errors import NoHealthyReplicasError, ServiceClosedError, ServiceOverloadedError
from ._context import BlockSession
from ._state import HEALTHY, ServiceState

__all__ = ["Admission", "Moved", "SessionEnded"]


class Moved(Exception):
    """Internal: the replica a session request waited for is gone; pick again.
    ``waited``: the request's wait so far, this wait included (request_timeout)."""

    def __init__(self, waited: float) -> None:
        super().__init__(waited)
        self.waited = waited


class SessionEnded(Exception):
    """Internal: the request's session was terminated while the request was pending."""


class Admission(ServiceState):
    """Waiting for a slot: in the service queue, or in a session replica's queue."""

    async def _wait_for_slot(
        self, router: Router, waited: float, admitted: bool = False
    ) -> tuple[Replica, float]:
        """Queue until some healthy replica has a free slot, then let the router pick.
        ``admitted``: the request is placed again after its replica died (it was let
        in already: ``max_queued_requests`` does not shed it)."""
        return await self._wait(
            lambda: self._pick_available(router), waited, None, admitted=admitted
        )

    def _pick_available(self, router: Router) -> Replica | None:
        if self._dirty:
            self._rebuild()
        avail = self._available
        if not avail:
            return None
        replica = router.get_replica(avail)
        if type(replica) is not Replica or replica not in avail:  # see _requests
            self._bad_router(router, replica)
        return replica

    async def _wait(
        self,
        attempt: Callable[[], Replica | None],
        waited: float,
        target: Replica | None,
        claims: bool = True,
        admitted: bool = False,
    ) -> tuple[Replica, float]:
        """Wait in the service queue (or ``target``'s queue) until ``attempt`` yields
        a replica (on which the caller takes a slot, if ``claims``); bounded by what is
        left of ``request_timeout``. Waiters are served in the order they queued.
        A request ``admitted`` before (placed again after a death) is not refused by
        ``max_queued_requests``: the bound sheds new work, not work already taken."""
        config = self._config
        if self._failed:
            await self._escalated()
        if self._forced:
            raise ServiceClosedError("the service closed before the request could run")
        limit = config.max_queued_requests
        if limit is not None and self._queued >= limit and not admitted:
            raise ServiceOverloadedError(
                f"the service queue is full (max_queued_requests={limit}); retry later, "
                "add replicas, or raise max_queued_requests"
            )
        timeout = config.request_timeout
        remaining = float("inf") if timeout is None else max(timeout - waited, 0.0)
        queue = self._waiters if target is None else target._waiters
        start = anyio.current_time()
        waiter = Waiter()
        queue.push(waiter)
        self._queued += 1
        try:
            with anyio.move_on_after(remaining):
                while True:
                    await waiter.event.wait()
                    if self._failed:
                        await self._escalated()
                    if self._forced:
                        raise ServiceClosedError("the service closed before the request could run")
                    if target is not None and target._state is not HEALTHY:
                        raise Moved(waited + anyio.current_time() - start)
                    replica = attempt()
                    if replica is not None:
                        waiter.woken = False
                        if self._waiters and self._room_after(replica if claims else None):
                            self._waiters.wake_one()  # more room: pass the baton on
                        return replica, waited + anyio.current_time() - start
                    waiter = Waiter(waiter.ticket)  # keeps its place in the queue
                    queue.push(waiter, front=True)
            self._timed_out()
        finally:
            self._queued -= 1
            queue.discard(waiter)
            # Woken but leaving without using the wake-up: pass it on.
            if waiter.woken and not queue.wake_one() and queue is not self._waiters:
                self._waiters.wake_one()

    def _room_after(self, taken: Replica | None) -> bool:
        """Whether a slot is still free once ``taken`` got one more request: only
        then is waking the next waiter of any use (a wake-up it cannot use would let
        it race the waiter that is owed the next free slot)."""
        if self._dirty:
            self._rebuild()
        for r in self._available:
            inc = r._inc
            if inc is not None and (r is not taken or inc.active + 1 < self._cap):
                return True
        return False

    def _if_free_slot(self, replica: Replica) -> Replica | None:
        """``replica`` if its incarnation has a free slot (a session's wait)."""
        inc = replica._inc
        return replica if inc is not None and inc.active < self._cap else None

    def _timed_out(self) -> NoReturn:
        timeout = self._config.request_timeout
        if any(r._state is HEALTHY for r in self._replicas):
            raise ServiceOverloadedError(
                f"every healthy replica stayed at capacity (replica_max_concurrent_requests="
                f"{self._cap}) for request_timeout={timeout}s; add replicas or raise the "
                "capacity or the timeout"
            )
        raise NoHealthyReplicasError(
            f"no replica became healthy within request_timeout={timeout}s "
            f"(states: {', '.join(r._state.name for r in self._replicas)})"
        )

    async def _session_replica(
        self, sess_id: str, waited: float, may_create: bool
    ) -> tuple[Replica, float]:
        """The replica of session ``sess_id``: its own while that incarnation lives,
        else a new one chosen by the session router (a migration).

        An unknown id starts a session (as in TorchForge), but only on a request's
        first placement (``may_create``): a session terminated while its request was
        pending (waiting, or to be re-sent after a death) raises ``SessionEnded``
        rather than coming back.
        """
        sessions = self._sessions
        known = sess_id in sessions
        if not known:
            if type(sess_id) is BlockSession and sess_id.ended:
                raise RuntimeError(
                    "this task inherited the session of an `async with svc.session()` "
                    f"block that has ended (session {str(sess_id)!r} was terminated when "
                    "the block exited), so this request has no session to go to. Route "
                    "it inside the block, open a new session() in this task, or pass "
                    "sess_id= explicitly."
                )
            if not may_create:
                raise SessionEnded
        while True:
            if known and sess_id not in sessions:
                raise SessionEnded
            inc = sessions.get(sess_id)
            if inc is not None:
                replica = inc.replica
                if replica._inc is inc and replica._state is HEALTHY:
                    if inc.active < self._cap and not replica._waiters:
                        return replica, waited
                    try:
                        return await self._wait(
                            partial(self._if_free_slot, replica),
                            waited,
                            replica,
                            admitted=not may_create,
                        )
                    except Moved as moved:
                        waited = moved.waited
                        continue
            healthy = [r for r in self._replicas if r._state is HEALTHY]
            if not healthy:
                _, waited = await self._wait(
                    self._any_healthy, waited, None, claims=False, admitted=not may_create
                )
                continue
            replica = self._session_router.get_replica(healthy, sess_id, self._session_view)
            if type(replica) is not Replica or replica not in healthy:
                self._bad_router(self._session_router, replica)
            self._assign(sess_id, replica)
            known = True

    def _assign(self, sess_id: str, replica: Replica) -> None:
        sess_id = str(sess_id)  # a BlockSession is not kept: only the id
        # Still placed (on a replica that stopped taking it, e.g. one scale_to()
        # removed): it moves now. One whose replica died left it then (counted then).
        old = self._session_idx.get(sess_id) if self._sessions.get(sess_id) is not None else None
        if old is not None:
            self._migrations += 1
            prev = self._by_idx.get(old)
            if prev is not None:
                prev._drop_session()
        self._sessions[sess_id] = replica._inc
        self._session_idx[sess_id] = replica.idx
        replica._add_session()
