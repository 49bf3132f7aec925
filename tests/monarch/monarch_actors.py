"""Actors for the Monarch tests. This module lives in the tests folder, which only
pytest's run-time ``sys.path`` insertion makes importable: the children must import
it too (forge_sc passes the parent's import path to them)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import anyio
from monarch.actor import current_rank

from forge_sc import ForgeActor, endpoint


class BoomError(Exception):
    """A user exception type the parent must see again, by type."""


class LockedError(Exception):
    """Holds a lock: cannot be pickled."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt from its args."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class Worker(ForgeActor):
    def __init__(self, v: int = 0, *, tag: str = "") -> None:
        self.v = v
        self.tag = tag

    @endpoint
    async def pid(self) -> int:
        return os.getpid()

    @endpoint
    async def value(self) -> int:
        return self.v

    @endpoint
    async def incr(self) -> int:
        self.v += 1
        return self.v

    @endpoint
    async def get_tag(self) -> str:
        return self.tag

    @endpoint
    async def rank(self) -> int:
        return int(current_rank().rank)

    @endpoint
    async def env(self, name: str) -> str | None:
        return os.environ.get(name)

    @endpoint
    async def echo(self, x: object) -> object:
        return x

    @endpoint
    async def nap(self, seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    @endpoint
    async def start_child(self) -> int:
        """Start a process of the endpoint's own (left running); return its pid."""
        return subprocess.Popen(["sleep", "300"]).pid  # noqa: ASYNC220 - returns at once

    @endpoint
    async def fail_unsendable(self, kind: str) -> None:
        raise LockedError("locked") if kind == "lock" else TwoArgError("a", "b")

    @endpoint
    async def fail(self, msg: str, after: float = 0.0) -> None:
        if after:
            await anyio.sleep(after)
        raise BoomError(msg)

    @endpoint
    async def exit_now(self, code: int) -> None:
        os._exit(code)

    @endpoint
    async def kill_self(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class SyncWorker(ForgeActor):
    """All endpoints plain ``def``: Monarch runs it without an event loop."""

    def __init__(self, v: int) -> None:
        self.v = v

    @endpoint
    def value(self) -> int:
        return self.v

    @endpoint
    def pid(self) -> int:
        return os.getpid()


class BadInit(ForgeActor):
    def __init__(self, why: str) -> None:
        raise ValueError(f"bad init: {why}")

    @endpoint
    async def value(self) -> int:
        return 0
