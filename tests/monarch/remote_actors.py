"""Actors for the tests on a pool of hosts. Imported by the replicas' processes on the
worker hosts too (the classes travel by reference): keep its top level light."""

from __future__ import annotations

import os

import anyio

from forge_sc import ForgeActor, endpoint, service_endpoint


class Where(ForgeActor):
    """Says where it runs: ``where()`` is ``(pid, parent pid)``; on a worker host the
    parent is the worker process, so the parent pid names the host."""

    def __init__(self) -> None:
        self.count = 0

    @endpoint
    async def where(self) -> tuple[int, int]:
        return os.getpid(), os.getppid()

    @endpoint
    async def echo(self, x: int) -> int:
        return x

    @endpoint
    async def env(self, name: str) -> str | None:
        return os.environ.get(name)

    @service_endpoint(idempotent=False)
    async def bump(self, x: int) -> tuple[int, int]:
        """Not idempotent: never re-sent after it reached a replica."""
        self.count += 1
        await anyio.sleep(0.001)
        return x, os.getppid()

    @endpoint
    async def incr(self) -> int:
        self.count += 1
        return self.count
