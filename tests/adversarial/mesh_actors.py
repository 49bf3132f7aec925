"""Actors of the mesh adversarial tests, one class per endpoint kind Monarch accepts.

Shared by the FakeMesh tests (``tests/adversarial``) and their Monarch halves
(``tests/monarch/test_monarch_adversarial.py``): the replicas' processes import this
module too, so its top level stays light.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import anyio
import anyio.lowlevel
from monarch.actor import concurrent_endpoint
from monarch.actor import endpoint as monarch_endpoint

from forge_sc import ForgeActor, endpoint, service_endpoint

# When this module is imported in a replica's process (by the thread that builds the
# user's actor), were forge_sc and the health actor's module (forge_sc.mesh._health,
# whose import imports the forge_sc package first) fully imported already, by the
# health actor's build, which must finish before the user's actor is built?
_spec = getattr(sys.modules.get("forge_sc.mesh._health"), "__spec__", None)
FORGE_SC_WAS_IMPORTED = _spec is not None and not getattr(_spec, "_initializing", True)


class Boom(BaseException):
    """A custom ``BaseException`` that is not an ``Exception``."""


#: What an endpoint raises, by name (``Poison.poison(kind)``): none is an Exception.
BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "custom": Boom,
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
}


class Poison(ForgeActor):
    """``poison(kind)`` raises a BaseException that is not an Exception; ``echo`` and
    ``slow_echo`` answer; ``pid`` tells the incarnation (a process on Monarch, an
    object on FakeMesh)."""

    @endpoint
    async def pid(self) -> int:
        return os.getpid() * 1_000_000 + id(self) % 1_000_000

    @endpoint
    async def os_pid(self) -> int:
        return os.getpid()

    @endpoint
    async def echo(self, x: int) -> int:
        return x

    @endpoint
    async def slow_echo(self, x: int, seconds: float) -> int:
        await anyio.sleep(seconds)
        return x

    @endpoint
    async def poison(self, kind: str, seconds: float = 0.0) -> int:
        await anyio.sleep(seconds)
        raise BASE_EXCEPTIONS[kind](f"poison: {kind}")

    @service_endpoint(batch_size=4, batch_timeout=0.05)
    async def batch(self, xs: list[int]) -> list[int]:
        if any(x < 0 for x in xs):
            raise Boom(f"poison in batch {xs}")
        return xs


class AsyncKinds(ForgeActor):
    @endpoint
    async def value(self, x: int) -> int:
        return x + 1

    @endpoint
    async def fails(self) -> int:
        raise ValueError("async endpoint failed")

    @endpoint
    async def boom(self) -> int:
        raise Boom("async boom")

    @endpoint
    async def own_cancel(self) -> int:
        raise asyncio.CancelledError  # as from a future it awaited, cancelled by another


class SyncKinds(ForgeActor):
    """Plain ``def`` endpoints (a sync actor on Monarch)."""

    @endpoint
    def value(self, x: int) -> int:
        return x + 1

    @endpoint
    def fails(self) -> int:
        raise ValueError("sync endpoint failed")

    @endpoint
    def boom(self) -> int:
        raise Boom("sync boom")

    @endpoint
    def coroutine(self) -> Any:
        return _later()  # forgot async def and await: a coroutine cannot be sent back


async def _later() -> int:
    return 1


class _NotAnActor:
    """A mixin that is not a ForgeActor: its endpoints must get what a ForgeActor's
    own get (here: the wrapper that turns an endpoint's own CancelledError into an
    error of that call, where Monarch would let the actor go silent)."""

    @endpoint
    async def mixin_own_cancel(self) -> int:
        raise asyncio.CancelledError

    @monarch_endpoint
    async def mixin_plain(self, x: int) -> int:
        return x * 10


class MixinKinds(_NotAnActor, ForgeActor):
    @endpoint
    async def value(self, x: int) -> int:
        return x + 1


class ConcurrentKinds(ForgeActor):
    """``monarch.actor.concurrent_endpoint``: calls overlap; whatever the body raises,
    BaseException included, goes to the caller and the actor lives."""

    def __init__(self) -> None:
        self.waiting = 0

    @concurrent_endpoint
    async def value(self, x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x + 1

    @concurrent_endpoint
    async def fails(self) -> int:
        raise ValueError("concurrent endpoint failed")

    @concurrent_endpoint
    async def boom(self) -> int:
        raise Boom("concurrent boom")

    @concurrent_endpoint
    async def meet(self, n: int, patience: float) -> int:
        """Returns once ``n`` calls are inside it at the same time (only possible if
        they overlap), or after ``patience`` seconds with how many it saw."""
        self.waiting += 1
        with anyio.move_on_after(patience):
            while self.waiting < n:  # noqa: ASYNC110 - no event crosses calls here
                await anyio.sleep(0.005)
        return self.waiting


class PortKinds(ForgeActor):
    """``@endpoint(explicit_response_port=True)``: answers through its port."""

    @monarch_endpoint(explicit_response_port=True)
    async def value(self, port: Any, x: int) -> None:
        port.send(x + 1)

    @monarch_endpoint(explicit_response_port=True)
    async def refuses(self, port: Any) -> None:
        port.exception(ValueError("sent through the port"))

    @monarch_endpoint(explicit_response_port=True)
    async def first_wins(self, port: Any) -> None:
        port.send(1)
        port.send(2)

    @monarch_endpoint(explicit_response_port=True)
    async def fails(self, port: Any) -> None:
        raise ValueError("raised, not sent: this ends the actor")

    @monarch_endpoint(explicit_response_port=True)
    async def silent(self, port: Any) -> None:
        return None


class GeneratorKinds(ForgeActor):
    """A generator endpoint in a sync actor: Monarch cannot send its result."""

    @endpoint
    def value(self, x: int) -> int:
        return x + 1

    @endpoint
    def gen(self, n: int) -> Any:
        yield from range(n)


class AsyncGeneratorKinds(ForgeActor):
    """An async generator is not a coroutine function: alone, a sync actor's endpoint."""

    @endpoint
    async def agen(self, n: int) -> Any:
        for i in range(n):
            yield i


class MixedKinds(ForgeActor):
    """Sync and async endpoints together: Monarch refuses to spawn it."""

    @endpoint
    def sync_one(self) -> int:
        return 1

    @endpoint
    async def async_one(self) -> int:
        return 2


class InitBoom(ForgeActor):
    """A constructor raising a BaseException that is not an Exception."""

    def __init__(self) -> None:
        raise Boom("constructor boom")

    @endpoint
    async def value(self) -> int:
        return 0


class Reader(ForgeActor):
    @endpoint
    async def read(self, f: Any) -> str:
        return f"{type(f).__name__}: {f.read()}"

    @endpoint
    async def forge_sc_was_imported(self) -> bool:
        return FORGE_SC_WAS_IMPORTED
