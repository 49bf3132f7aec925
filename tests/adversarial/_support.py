"""Shared pieces of the adversarial suite: a hostile actor, and the checks run after
every case (no task left, every counter back at zero)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from forge_sc import ForgeActor, Service, endpoint, open_service, service_endpoint
from forge_sc.errors import ServiceError
from forge_sc.testing import FakeMesh

from ..conftest import running_tasks, wait_for

__all__ = [
    "FAST",
    "Abort",
    "Hostile",
    "assert_idle",
    "carries",
    "checked_service",
    "running_tasks",
    "wait_for",
]

#: Fast health checks and recovery, so that faults resolve in milliseconds.
FAST: dict[str, Any] = dict(health_poll_rate=0.01, health_timeout=0.2, restart_backoff=0.001)


class Abort(BaseException):
    """A BaseException that is not an Exception, raised by user code."""


class Hostile(ForgeActor):
    """An actor whose endpoints misbehave on request."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @endpoint
    async def value(self) -> int:
        return 1

    @endpoint
    async def nap(self, seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    @endpoint
    async def record(self, tag: Any, seconds: float = 0.0) -> Any:
        if seconds:
            await anyio.sleep(seconds)
        self.seen.append(tag)
        return tag

    @endpoint
    async def throw(self, kind: str = "abort") -> None:
        raise _base_exception(kind)

    @service_endpoint(batch_size=4, batch_timeout=0.01)
    async def bthrow(self, kinds: list[str]) -> list[None]:
        raise _base_exception(kinds[0])

    @service_endpoint(batch_size=4, batch_timeout=0.001)
    async def brecord(self, tags: list[Any]) -> list[Any]:
        self.seen.extend(tags)
        return tags

    @service_endpoint(batch_size=4, batch_timeout=0.005)
    async def bnap(self, seconds: list[float]) -> list[float]:
        await anyio.sleep(max(seconds))
        return seconds

    # A batch that stays pending long enough to be seen pending on a busy machine.
    @service_endpoint(batch_size=4, batch_timeout=0.5)
    async def bnap_patient(self, seconds: list[float]) -> list[float]:
        await anyio.sleep(max(seconds))
        return seconds

    @service_endpoint(batch_size=4, batch_timeout=0.001)
    async def bshape(self, kinds: list[str]) -> Any:
        kind = kinds[0]
        if kind == "short":
            return kinds[:-1]
        if kind == "long":
            return [*kinds, "extra"]
        if kind == "none":
            return None
        if kind == "dict":
            return {i: k for i, k in enumerate(kinds)}
        if kind == "generator":
            return (k for k in kinds)
        return kinds


def _base_exception(kind: str) -> BaseException:
    if kind == "keyboard":
        return KeyboardInterrupt("from an endpoint")
    if kind == "exit":
        return SystemExit(3)
    if kind == "generator_exit":
        return GeneratorExit("from an endpoint")
    return Abort("from an endpoint")


def carries(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` is ``kind``, or a forge_sc error caused by one (a backend may report a
    request that killed its replica as a typed error with the cause chained)."""
    if isinstance(exc, kind):
        return True
    if not isinstance(exc, ServiceError):
        return False
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__
    return False


def assert_idle(svc: Service) -> None:
    """Every counter of work in progress is back at zero."""
    s = svc.statistics()
    assert s.active_requests == 0, s
    assert s.queue_depth == 0, s
    assert all(r.active_requests == 0 and r.queue_depth == 0 for r in s.replicas), s
    assert all(b.pending == 0 for b in s.batchers), s.batchers
    assert s.total_requests == s.successful_requests + s.failed_requests
    assert svc._inflight == 0
    assert not svc._waiters


@asynccontextmanager
async def checked_service(
    actor: Any = Hostile, *, mesh: FakeMesh | None = None, **config: Any
) -> AsyncIterator[Service]:
    """``open_service`` on a FakeMesh; after the block: nothing left running and every
    counter at zero."""
    before = running_tasks()
    svc: Service | None = None
    try:
        async with open_service(actor, mesh=mesh or FakeMesh(seed=1), **{**FAST, **config}) as svc:
            yield svc
    finally:
        if svc is not None:
            await wait_for(lambda: not (running_tasks() - before), 2.0, "tasks left running")
            assert_idle(svc)
