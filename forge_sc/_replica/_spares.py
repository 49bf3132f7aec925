"""Warm spares: started replicas kept out of rotation, promoted when one dies.

A new replica takes the time its processes and its actor need to start (a second
here; a GPU model's load time in real life). With ``spare_replicas=N`` the service
keeps ``N`` of them started and idle; when a replica dies, its supervisor takes a
spare and serves it at once, as the replica's next incarnation (the same ``idx``:
sessions and metrics see the same replica), while the dead one is stopped in the
background and a new spare starts.

One keeper task per spare slot owns the spare it started until a supervisor takes it
(then the supervisor owns it, as any incarnation) or it fails a health check (then the
keeper stops it and starts another). The keeper pings its spare every
``health_poll_rate`` (a ping slower than ``health_timeout`` is a failure, so a hung
spare is replaced too) rather than waiting on ``wait_dead``: the supervisor that takes
the spare calls ``wait_dead`` at once, and a backend may watch a replica's death from
one task at a time. A spare that cannot be started is retried with the restart
backoff, capped; a spare's death or failure never touches the replicas in rotation.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable

import anyio

from ..mesh._protocol import MeshReplica

__all__ = ["Relay", "Spare", "SparePool"]


def _noop() -> None:
    return None


class Relay:
    """A spare's ``on_abandoned_settled``: forwards to the incarnation it becomes."""

    __slots__ = ("target",)

    def __init__(self) -> None:
        self.target: Callable[[], None] = _noop

    def __call__(self) -> None:
        self.target()


class Spare:
    """A started replica waiting out of rotation."""

    __slots__ = ("done", "handle", "relay", "taken")

    def __init__(self, handle: MeshReplica, relay: Relay) -> None:
        self.handle = handle
        self.relay = relay
        self.taken = False
        #: Set when it was taken or failed: its keeper moves on.
        self.done = anyio.Event()


class SparePool:
    """Keeps ``size`` warm spares (see the module docstring)."""

    def __init__(
        self,
        size: int,
        start: Callable[[Relay], Awaitable[MeshReplica]],
        *,
        backoff: float,
        max_backoff: float,
        rng: random.Random,
        poll: float,
        timeout: float,
        on_failure: Callable[[str, BaseException], None] = lambda stage, exc: None,
    ) -> None:
        self.size = size
        #: Told of a spare that failed to start (``"start"``) or a health check
        #: (``"health"``): the service logs it.
        self._on_failure = on_failure
        self._start = start
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._rng = rng
        self._poll = poll
        self._timeout = timeout
        self._ready: deque[Spare] = deque()
        #: Spares started since the service started (for statistics and tests).
        self.started = 0

    @property
    def ready(self) -> int:
        """Spares started and waiting now (not known dead)."""
        return sum(1 for spare in self._ready if _usable(spare))

    def take(self) -> Spare | None:
        """A ready spare, now owned by the caller, or None. One whose death the
        backend has reported is never handed out (promoted, it would die at once
        and cost the replica a second restart): its keeper replaces it."""
        while self._ready:
            spare = self._ready.popleft()
            if not _usable(spare):
                if not spare.done.is_set():  # then dead: its death is known
                    self._failed(spare, spare.handle.death)  # type: ignore[attr-defined]
                continue
            spare.taken = True
            spare.done.set()
            return spare
        return None

    def _failed(self, spare: Spare, exc: BaseException) -> None:
        if not spare.taken and not spare.done.is_set():
            self._on_failure("health", exc)
            if spare in self._ready:  # no longer offered, from now on
                self._ready.remove(spare)
            spare.done.set()

    async def run(self) -> None:
        """Keep the spares (a task of the service, until it is cancelled)."""
        async with anyio.create_task_group() as tg:
            for _ in range(self.size):
                tg.start_soon(self._keep)

    async def _keep(self) -> None:
        failures = 0
        while True:
            relay = Relay()
            try:
                handle = await self._start(relay)
            except Exception as exc:
                failures += 1
                delay = min(self._backoff * 2 ** (failures - 1), self._max_backoff)
                self._on_failure("start", exc)
                await anyio.sleep(delay * self._rng.uniform(0.5, 1.0))
                continue
            failures = 0
            self.started += 1
            await self._hold(Spare(handle, relay))

    async def _hold(self, spare: Spare) -> None:
        """Offer ``spare`` until it is taken; stop it when it fails a health check
        or the pool is cancelled. (A death the backend reported already keeps it
        from being taken: see ``take``. Its keeper does not wait for deaths itself:
        a backend may watch a replica's processes for one waiter at a time, and
        that is the supervisor's once the spare is promoted.)"""
        self._ready.append(spare)
        try:
            while not spare.done.is_set():
                with anyio.move_on_after(self._poll):
                    await spare.done.wait()
                if spare.done.is_set():
                    break
                try:
                    with anyio.fail_after(self._timeout):
                        await spare.handle.ping()
                except Exception as exc:  # dead (ReplicaGone), hung (TimeoutError), ...
                    self._failed(spare, exc)
        finally:
            if not spare.taken:
                if spare in self._ready:
                    self._ready.remove(spare)
                with anyio.CancelScope(shield=True):
                    await spare.handle.stop()


def _usable(spare: Spare) -> bool:
    """Not taken, not failed, and not dead as far as the backend knows (``death``
    is optional in the mesh protocol)."""
    return not spare.done.is_set() and getattr(spare.handle, "death", None) is None
