"""The service's state and the small operations every part of it shares.

:class:`ServiceState` holds every field of a running service (one owner: the
:class:`~forge_sc._service._service.Service` object), and the helpers that the
request path, fan-out, admission and lifecycle modules all use: admission and
leaving, the slot release, the cache of replicas with a free slot, and the errors
of a closed or failed service. Each part of the service is a class in its own
module deriving from this one; ``Service`` combines them.
"""

from __future__ import annotations

import inspect
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import anyio
import anyio.abc
import anyio.lowlevel

from .._batching import Batcher
from .._config import ServiceConfig
from .._metrics import Recorder
from .._replica import ChildSpec, Incarnation, Replica, ReplicaState, SparePool
from .._routing import Router, SessionRouter
from .._spec import EndpointSpec
from .._waiters import WaitQueue
from ..errors import NoHealthyReplicasError, ServiceClosedError, ServiceError
from ..mesh._protocol import Mesh
from ._handle import ServiceEndpoint

__all__ = ["HEALTHY", "ServiceState", "get_ident"]

HEALTHY = ReplicaState.HEALTHY

#: ``threading.get_ident``: the service's methods compare it with the service's own
#: thread (a service is used from its own event loop only).
get_ident = threading.get_ident


class ServiceState:
    """Every field of a service (set by ``Service.__init__``) and shared helpers."""

    # Where it runs: the async library and the thread of the event loop that made it.
    _backend: str
    _thread: int
    # What the service runs.
    _actor_cls: type[Any]
    _args: tuple[Any, ...]
    _kwargs: dict[str, Any]
    _config: ServiceConfig
    _mesh: Mesh
    _specs: dict[str, EndpointSpec]
    _endpoints: dict[str, ServiceEndpoint]
    _batchers: dict[str, Batcher]
    _rng: random.Random
    _child: ChildSpec
    _spares: SparePool | None  # warm spares (spare_replicas > 0)
    _cap: int  # replica_max_concurrent_requests
    _max_attempts: int
    # The pool: replicas in index order, and the cache of those with a free slot
    # (rebuilt when ``_dirty``: a slot filled or freed, a replica came or went).
    _replicas: list[Replica]
    _by_idx: dict[int, Replica]
    _next_idx: int
    # A tuple: routers get it as is, and cannot corrupt it by mutating it.
    _available: tuple[Replica, ...]
    _dirty: bool
    # Requests waiting for any replica, and how many wait in all (service + replicas).
    _waiters: WaitQueue
    #: restart_replica() and scale_to() waiting for a replica's next state (kept out
    #: of the request queue: a request must not wait behind them).
    _watchers: WaitQueue
    _queued: int
    # Requests admitted and not ended (``_admit``/``_leave``).
    _inflight: int
    _clock: Callable[[], float]
    # Lifecycle: closing (no new requests), forced (queued requests cancelled),
    # failed (escalated), starting (until every replica was healthy once).
    _closing: bool
    _forced: bool
    _failed: bool
    # The request path's one admission check: the event loop's thread while the
    # service takes requests, None once it closes or fails (set with those flags).
    _gate: int | None
    _starting: bool
    _start_pending: set[int]  # replicas not yet healthy once, while starting
    _started: anyio.Event
    _close_started: bool
    _closed: anyio.Event
    _drained: anyio.Event
    # The cancel scope of the open_service body, cancelled on escalation.
    _body_scope: anyio.CancelScope | None
    # The service's own task group (replica supervisors, batchers, autoscaler).
    _itg: anyio.abc.TaskGroup | None
    # Counters and recorders.
    _retries: int
    _migrations: int
    _scaling_events: int
    _rec: Recorder  # failures the service itself raised
    _retired: Recorder  # counts of replicas removed by scaling
    _retired_restarts: int
    _t0: float
    # Sessions: id -> the incarnation it is bound to (None until its first call),
    # id -> replica index (what routers see, read-only).
    _sessions: dict[str, Incarnation | None]
    _session_blocks: bool  # an ``async with svc.session()`` was ever entered
    _session_idx: dict[str, int]
    _session_view: Mapping[str, int]
    _session_router: SessionRouter
    # scale_to: calls are serialized; the latest call's target wins.
    _scale_lock: anyio.Lock
    _scale_target: int

    def _admit(self, counted: bool = True) -> None:
        """Count a request in flight (refused once the service closes or failed, or
        from another thread). ``_request`` inlines the same on its hot path.
        ``counted``: a refusal counts as a failed request (see ``_refuse``)."""
        if get_ident() != self._gate:
            if counted:
                self._refuse()
            else:
                self._check_open()
        self._inflight += 1

    def _refuse(self) -> None:
        """``_check_open`` for a request: a refusal by the closed or failed service is a
        failed request in the metrics (one of the service's own errors); one from
        another thread is not counted (the counters belong to the loop's thread)."""
        try:
            self._check_open()
        except ServiceError:
            if get_ident() == self._thread:
                now = self._clock()
                self._rec.record(now, 0.0, False)
            raise

    def _leave(self) -> None:
        """A request counted by ``_admit`` ended; the last one out ends the drain."""
        self._inflight -= 1
        if self._closing and self._inflight == 0:
            self._drained.set()

    def _release(self, replica: Replica, inc: Incarnation) -> None:
        inc.active -= 1
        if inc.active == self._cap - 1:
            self._dirty = True
        if self._waiters or replica._waiters:
            self._slot_freed(replica)

    def _slot_freed(self, replica: Replica) -> None:
        """A slot of ``replica`` became free: wake who may take it (a draining
        replica's waiter is ``scale_to`` waiting for its last request)."""
        self._dirty = True
        if replica._draining:
            replica._waiters.wake_all()
        elif _has_free_slot(replica, self._cap) and not replica._waiters.wake_one():
            self._waiters.wake_one()

    def _rebuild(self) -> None:
        cap = self._cap
        self._available = tuple(
            [
                r
                for r in self._replicas
                if r._state is HEALTHY and r._inc is not None and r._inc.active < cap
            ]
        )
        self._dirty = False

    def _any_healthy(self) -> Replica | None:
        for r in self._replicas:
            if r._state is HEALTHY:
                return r
        return None

    def _wake_everyone(self) -> None:
        self._waiters.wake_all()
        self._watchers.wake_all()
        for r in self._replicas:
            r._waiters.wake_all()

    def _closed_error(self, message: str) -> ServiceError:
        """For a request the closing service cancelled: after an escalation, callers
        outside the block learn that the service failed; otherwise, that it closed."""
        if self._failed:
            return self._failed_error()
        return ServiceClosedError(message)

    def _check_open(self) -> None:
        if get_ident() != self._thread:
            self._wrong_thread("a request")
        if self._failed:  # escalated: that, not the close that followed, is the news
            self._raise_no_healthy()
        if self._closing:
            raise ServiceClosedError(
                "the service is closed; open a new one with open_service() to send requests"
            )

    def _wrong_thread(self, what: str) -> NoReturn:
        here = threading.current_thread().name
        owner = next((t.name for t in threading.enumerate() if t.ident == self._thread), "(ended)")
        raise RuntimeError(
            f"{what} on a {self._actor_cls.__name__} service from thread {here!r}, but the "
            f"service runs in the {self._backend} event loop of thread {owner!r}. A service "
            "is not thread-safe: call it from its own event loop. From another thread, go "
            "through that loop: in a thread started with anyio.to_thread.run_sync(), use "
            "anyio.from_thread.run(svc.<endpoint>.route, ...); elsewhere, use a "
            "BlockingPortal opened in the service's loop (portal.call(...))."
        )

    def _raise_no_healthy(self) -> NoReturn:
        raise self._failed_error()

    def _failed_error(self) -> NoHealthyReplicasError:
        """What a request of a service that escalated gets. Marked: one that reaches
        ``open_service``'s exit (a request shielded in the body) is that failure's
        echo, and ServiceFailedError comes out alone (``_scope.single_exception``)."""
        error = NoHealthyReplicasError(
            "every replica of the service used up its restart budget "
            f"(max_restarts={self._config.max_restarts} within "
            f"restart_window={self._config.restart_window}s); the service has failed"
        )
        error._forge_sc_escalation = True  # type: ignore[attr-defined]
        return error

    async def _escalated(self) -> NoReturn:
        # A caller inside the open_service block was cancelled with the body when the
        # service escalated: let that cancellation out. Callers outside get the error.
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._raise_no_healthy()

    def _bad_router(self, router: Router, replica: Any) -> NoReturn:
        if inspect.isawaitable(replica):
            if inspect.iscoroutine(replica):
                replica.close()  # never awaited: no warning on top of the error
            raise TypeError(
                f"router {type(router).__name__}.get_replica() returned an awaitable; "
                "routers are synchronous: make get_replica a plain def that returns one "
                "of the healthy_replicas it was given"
            )
        raise TypeError(
            f"router {type(router).__name__}.get_replica() returned {replica!r}, which is not "
            "one of the healthy_replicas it was given; a router must return one of them"
        )


def _has_free_slot(replica: Replica, cap: int) -> bool:
    inc = replica._inc
    return inc is not None and inc.active < cap and replica._state is HEALTHY
