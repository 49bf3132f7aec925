"""The actor the state machines drive, and the ledger that makes its work checkable.

Every request carries a request id (``rid``). The actor writes each execution into a
:class:`Ledger` shared by every incarnation of every replica of one service (FakeMesh
builds actors in-process, so a constructor argument is shared, not copied): which
incarnation (``token``) started and finished which rid, in what order, and how long
each execution ran (until it returned or was interrupted). Tokens are never reused, so
a token names one incarnation of one replica for the whole run.
"""

from __future__ import annotations

from typing import Any

import anyio

from forge_sc import ForgeActor, endpoint, service_endpoint
from forge_sc.mesh import SpawnSpec
from forge_sc.testing import FakeMesh

__all__ = ["Abort", "Ledger", "LedgerMesh", "UserError", "Worker"]


class UserError(Exception):
    """The endpoint's own exception (user code raised)."""

    def __init__(self, rid: str) -> None:
        super().__init__(rid)
        self.rid = rid


class Abort(BaseException):
    """A BaseException that is not an Exception, raised by the endpoint (user code)."""


class Ledger:
    """What every incarnation of one service's replicas executed."""

    def __init__(self) -> None:
        self._next = 0
        self.idx_of: dict[int, int] = {}  # token -> replica index
        self.incarnations: dict[int, list[int]] = {}  # replica index -> tokens, in order
        self.starts: dict[str, list[int]] = {}  # rid -> tokens that started it, in order
        self.finishes: dict[str, list[int]] = {}  # rid -> tokens that finished it
        self.order: list[tuple[str, int]] = []  # (rid, token) of every start, in order
        self.ran: dict[str, float] = {}  # rid -> seconds its executions took, together
        self.gates: dict[str, anyio.Event] = {}  # rid -> what Worker.held waits for

    def new_token(self) -> int:
        self._next += 1
        return self._next

    def born(self, token: int, idx: int) -> None:
        self.idx_of[token] = idx
        self.incarnations.setdefault(idx, []).append(token)

    def start(self, rid: str, token: int) -> None:
        self.starts.setdefault(rid, []).append(token)
        self.order.append((rid, token))

    def span(self, rid: str, seconds: float) -> None:
        self.ran[rid] = self.ran.get(rid, 0.0) + seconds

    def finish(self, rid: str, token: int) -> None:
        self.finishes.setdefault(rid, []).append(token)


class Worker(ForgeActor):
    """Records every request it executes; counts calls per session id."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.token = ledger.new_token()
        self.per_session: dict[str, int] = {}

    @endpoint
    async def work(self, rid: str, delay: float = 0.0, fail: bool = False) -> tuple[int, str]:
        self.ledger.start(rid, self.token)
        t0 = anyio.current_time()
        try:
            if delay:
                await anyio.sleep(delay)
        finally:
            self.ledger.span(rid, anyio.current_time() - t0)
        self.ledger.finish(rid, self.token)
        if fail:
            raise UserError(rid)
        return self.token, rid

    @endpoint
    async def held(self, rid: str) -> tuple[int, str]:
        """Runs until the test sets ``ledger.gates[rid]`` (it holds a slot till then)."""
        self.ledger.start(rid, self.token)
        t0 = anyio.current_time()
        try:
            await self.ledger.gates[rid].wait()
        finally:
            self.ledger.span(rid, anyio.current_time() - t0)
        self.ledger.finish(rid, self.token)
        return self.token, rid

    @service_endpoint(idempotent=False)
    async def once(self, rid: str, delay: float = 0.0) -> tuple[int, str]:
        self.ledger.start(rid, self.token)
        t0 = anyio.current_time()
        try:
            if delay:
                await anyio.sleep(delay)
        finally:
            self.ledger.span(rid, anyio.current_time() - t0)
        self.ledger.finish(rid, self.token)
        return self.token, rid

    @endpoint
    async def step(self, sid: str, rid: str, delay: float = 0.0) -> tuple[int, str, int]:
        """The ``n``-th call of session ``sid`` on this incarnation (no await after the
        increment, so an interrupted call never counts)."""
        self.ledger.start(rid, self.token)
        t0 = anyio.current_time()
        try:
            if delay:
                await anyio.sleep(delay)
        finally:
            self.ledger.span(rid, anyio.current_time() - t0)
        n = self.per_session.get(sid, 0) + 1
        self.per_session[sid] = n
        self.ledger.finish(rid, self.token)
        return self.token, rid, n

    @service_endpoint(batch_size=4, batch_timeout=0.005)
    async def batched(self, rid: list[str], delay: list[float]) -> list[tuple[int, str]]:
        for r in rid:
            self.ledger.start(r, self.token)
        t0 = anyio.current_time()
        longest = max(delay)
        try:
            if longest:
                await anyio.sleep(longest)
        finally:
            for r in rid:
                self.ledger.span(r, anyio.current_time() - t0)
        for r in rid:
            self.ledger.finish(r, self.token)
        return [(self.token, r) for r in rid]

    @endpoint
    async def abort(self, rid: str) -> None:
        """Raises a BaseException (not an Exception)."""
        self.ledger.start(rid, self.token)
        raise Abort(rid)

    @service_endpoint(batch_size=4, batch_timeout=0.005)
    async def babort(self, rid: list[str]) -> list[None]:
        for r in rid:
            self.ledger.start(r, self.token)
        raise Abort(rid[0])

    @endpoint
    async def snapshot(self) -> int:
        return self.token


class LedgerMesh(FakeMesh):
    """FakeMesh that tells the ledger which replica index each new incarnation got."""

    def __init__(self, ledger: Ledger, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger

    async def spawn(self, spec: SpawnSpec) -> Any:
        replica = await super().spawn(spec)
        self.ledger.born(self.actor(spec.idx).token, spec.idx)
        return replica
