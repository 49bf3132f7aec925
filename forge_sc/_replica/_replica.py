"""Replica state: the read-only view users and routers see, and its incarnations.

A :class:`Replica` lives as long as its index is part of the service; every spawn of
it is an :class:`Incarnation`. In-flight calls are registered with the incarnation
that runs them (its ``active`` count) so that a late call of a dead incarnation can
never disturb the accounting of the next one.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import anyio

from .._metrics import Recorder
from .._waiters import WaitQueue

if TYPE_CHECKING:
    from ..mesh._protocol import MeshReplica

__all__ = ["Incarnation", "Replica", "ReplicaState"]


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


class _Owner:
    """What an incarnation reports to (the service); kept abstract to avoid a cycle."""

    def _replica_died(self, replica: Replica) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _slot_freed(self, replica: Replica) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Incarnation:
    """One spawn of a replica: its mesh handle, its in-flight count, its death."""

    __slots__ = ("active", "call", "dead", "handle", "owner", "reason", "replica")

    def __init__(self, owner: Any, replica: Replica) -> None:
        self.owner = owner
        self.replica = replica
        self.handle: MeshReplica | None = None
        #: ``handle.call``, bound once (the hot path awaits it directly).
        self.call: Any = None
        self.active = 0
        self.dead = anyio.Event()
        self.reason: BaseException | None = None

    def die(self, reason: BaseException) -> None:
        """Record this incarnation's death (idempotent). The replica stops taking
        requests at once; its supervisor then stops the handle, which interrupts
        every call still registered here."""
        if self.reason is not None:
            return
        self.reason = reason
        self.dead.set()
        replica = self.replica
        if replica._inc is self and replica._state is HEALTHY:
            replica._state = ReplicaState.FAILED
            self.owner._replica_died(replica)

    def settle_abandoned(self) -> None:
        """A call abandoned by a cancelled caller resolved on the replica."""
        self.active -= 1
        self.owner._slot_freed(self.replica)


class Replica:
    """A read-only view of one replica, as users (``svc.replicas``) and routers see it.

    ``idx`` is stable across restarts. ``current_load`` counts requests in flight,
    including calls abandoned by cancelled callers that still run on the replica.
    """

    __slots__ = (
        "_capacity",
        "_done",
        "_draining",
        "_exhausted",
        "_inc",
        "_last_error",
        "_rec",
        "_restarts",
        "_scope",
        "_sessions",
        "_state",
        "_waiters",
        "idx",
    )

    def __init__(self, idx: int, capacity: int) -> None:
        self.idx = idx
        self._capacity = capacity
        self._state = ReplicaState.STARTING
        self._restarts = 0
        self._inc: Incarnation | None = None
        self._rec = Recorder()
        self._sessions = 0
        self._waiters = WaitQueue()
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._exhausted = False
        self._draining = False
        self._last_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Replica idx={self.idx} state={self._state.name} load={self.current_load}>"

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
