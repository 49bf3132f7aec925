"""Replica state: the read-only view users and routers see, and its incarnations.

A :class:`Replica` lives as long as its index is part of the service; every spawn of
it is an :class:`Incarnation`. In-flight calls are registered with the incarnation
that runs them (its ``active`` count) so that a late call of a dead incarnation can
never disturb the accounting of the next one.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import anyio

from .._metrics import Recorder
from .._waiters import WaitQueue
from ..mesh._protocol import CallNotSent, DirectCalls, MeshReplica

__all__ = ["Incarnation", "Replica", "ReplicaEvents", "ReplicaState"]


class ReplicaState(enum.Enum):
    """``STARTING → HEALTHY → FAILED → RECOVERING → HEALTHY … → STOPPING → STOPPED``.
    A replica out of restart budget stays ``FAILED``."""

    STARTING = "STARTING"
    HEALTHY = "HEALTHY"
    FAILED = "FAILED"
    RECOVERING = "RECOVERING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


HEALTHY = ReplicaState.HEALTHY


class ReplicaEvents(Protocol):
    """What a replica's transitions are reported to (the service implements it)."""

    def _replica_healthy(self, replica: Replica) -> None:
        """``replica`` took traffic with a new incarnation."""

    def _replica_died(self, replica: Replica) -> None:
        """``replica``'s incarnation died while it was healthy."""

    def _replica_exhausted(self, replica: Replica) -> None:
        """``replica`` used up its restart budget (it may raise to escalate)."""

    def _slot_freed(self, replica: Replica) -> None:
        """A request slot of ``replica`` became free."""

    def _replica_finished(self, replica: Replica) -> None:
        """``replica``'s supervisor ended (it is STOPPED, or FAILED for good)."""


#: ``MeshReplica.call``: run an endpoint, return its result.
CallFn = Callable[[str, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]

#: ``Incarnation.direct`` of a backend without direct calls (``DirectCalls``).
_NO_DIRECT: Mapping[str, Callable[..., Any]] = MappingProxyType({})


def _no_task() -> None:
    return None


class Incarnation:
    """One spawn of a replica: its mesh handle, its in-flight count, its death.

    ``active`` is the incarnation's slot count, kept by the service's request path
    (``Service._release``); a call abandoned by a cancelled caller gives its slot
    back through :meth:`settle_abandoned` when the backend reports it resolved.

    ``direct``, ``calls`` and ``current_task`` are those of the handle's direct calls
    (``mesh._protocol.DirectCalls``), and ``direct_calls`` the handle as such, when
    it offers them; ``direct`` is empty when it does not.
    """

    __slots__ = (
        "active",
        "call",
        "calls",
        "current_task",
        "dead",
        "direct",
        "direct_calls",
        "events",
        "handle",
        "reason",
        "replica",
    )

    def __init__(self, events: ReplicaEvents, replica: Replica) -> None:
        self.events = events
        self.replica = replica
        self.handle: MeshReplica | None = None
        #: ``handle.call``, bound once (the hot path awaits it directly).
        self.call: CallFn = self._not_attached
        self.direct = _NO_DIRECT
        self.calls: set[Any] = set()
        self.current_task: Callable[[], Any] = _no_task
        self.direct_calls: DirectCalls | None = None
        self.active = 0
        self.dead = anyio.Event()
        self.reason: BaseException | None = None

    async def _not_attached(
        self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        raise CallNotSent(f"replica {self.replica.idx} has not started yet")

    def attach(self, handle: MeshReplica) -> None:
        """The backend built this incarnation: calls go to ``handle`` from now on."""
        self.handle = handle
        self.call = handle.call
        if getattr(handle, "direct", None) is not None:  # it offers direct calls
            direct: DirectCalls = handle  # type: ignore[assignment]
            self.direct_calls = direct
            self.direct = direct.direct
            self.calls = direct.calls
            self.current_task = direct.current_task

    def die(self, reason: BaseException) -> None:
        """Record this incarnation's death (idempotent). The replica stops taking
        requests at once; its supervisor then stops the handle, which interrupts
        every call still registered here."""
        if self.reason is not None:
            return
        self.reason = reason
        self.dead.set()
        if self.replica._fail(self):
            self.events._replica_died(self.replica)

    def settle_abandoned(self) -> None:
        """A call abandoned by a cancelled caller resolved on the replica."""
        self.active -= 1
        self.events._slot_freed(self.replica)


class Replica:
    """A read-only view of one replica, as users (``svc.replicas``) and routers see it.

    ``idx`` is stable across restarts. ``current_load`` counts requests in flight,
    including calls abandoned by cancelled callers that still run on the replica.

    The underscore members are forge_sc's own interface to the replica: the service
    and the supervisor read them, and change them only through the methods below,
    so every state transition is written here.
    """

    __slots__ = (
        "_capacity",
        "_done",
        "_draining",
        "_exhausted",
        "_idx",
        "_inc",
        "_last_error",
        "_rec",
        "_restarts",
        "_scope",
        "_sessions",
        "_state",
        "_waiters",
    )

    def __init__(self, idx: int, capacity: int) -> None:
        self._idx = idx
        self._capacity = capacity
        self._state = ReplicaState.STARTING
        self._restarts = 0
        self._inc: Incarnation | None = None
        self._rec = Recorder()
        self._sessions = 0
        self._waiters = WaitQueue()
        #: Cancelling it stops the replica's supervisor (scale-down, close).
        self._scope = anyio.CancelScope()
        #: Set when the supervisor has finished (every handle stopped).
        self._done = anyio.Event()
        self._exhausted = False
        self._draining = False
        self._last_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Replica idx={self.idx} state={self._state.name} load={self.current_load}>"

    @property
    def idx(self) -> int:
        """Stable across restarts; never reused after scale-down."""
        return self._idx

    @property
    def state(self) -> ReplicaState:
        return self._state

    @property
    def healthy(self) -> bool:
        return self._state is HEALTHY

    @property
    def restarts(self) -> int:
        """Spawn attempts after the first (successful or not)."""
        return self._restarts

    @property
    def active_requests(self) -> int:
        inc = self._inc
        return 0 if inc is None else inc.active

    @property
    def current_load(self) -> int:
        """Requests in flight plus requests queued for this replica."""
        inc = self._inc
        return (0 if inc is None else inc.active) + len(self._waiters)

    @property
    def queue_depth(self) -> int:
        """Requests of sessions waiting for a free slot on this replica."""
        return len(self._waiters)

    @property
    def capacity(self) -> int:
        """``replica_max_concurrent_requests``."""
        return self._capacity

    @property
    def assigned_sessions(self) -> int:
        return self._sessions

    # ------------------------------------------------ transitions (forge_sc's own)

    def _serve(self, inc: Incarnation) -> None:
        """The supervisor's new incarnation takes traffic."""
        self._inc = inc
        self._state = HEALTHY

    def _fail(self, inc: Incarnation | None = None) -> bool:
        """HEALTHY → FAILED (for ``inc`` only, if given: a late death of an older
        incarnation changes nothing). True when this call made the transition."""
        if self._state is not HEALTHY or (inc is not None and self._inc is not inc):
            return False
        self._state = ReplicaState.FAILED
        return True

    def _died(self, cause: BaseException | None) -> None:
        """An incarnation ended (or never started): FAILED, with its cause."""
        self._last_error = cause
        self._state = ReplicaState.FAILED

    def _recovering(self) -> None:
        self._state = ReplicaState.RECOVERING

    def _restarted(self) -> None:
        self._restarts += 1

    def _exhaust(self) -> None:
        """Out of restart budget: FAILED for good."""
        self._exhausted = True
        self._state = ReplicaState.FAILED

    def _stopping(self) -> None:
        """Leaving the pool: no new requests (a FAILED replica stays FAILED)."""
        if self._state is HEALTHY:
            self._state = ReplicaState.STOPPING

    def _drain(self) -> None:
        """Scale-down: finish in-flight requests, take no new ones."""
        self._draining = True
        self._stopping()

    def _stop(self) -> None:
        """Cancel the supervisor (the replica and its processes stop)."""
        self._state = ReplicaState.STOPPING
        self._scope.cancel()

    def _finished(self) -> None:
        """The supervisor ended: STOPPED, unless it failed for good."""
        if not self._exhausted:
            self._state = ReplicaState.STOPPED
        self._done.set()

    def _add_session(self) -> None:
        self._sessions += 1

    def _drop_session(self) -> None:
        self._sessions -= 1
