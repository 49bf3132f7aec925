"""Actor classes shared by the tests (a module the children can import, too)."""

from __future__ import annotations

import anyio

from forge_sc import (
    ForgeActor,
    LeastLoadedRouter,
    endpoint,
    service_endpoint,
)


class Counter(ForgeActor):
    def __init__(self, v: int = 0) -> None:
        self.v = v
        self.calls: list[str] = []

    @endpoint
    async def incr(self) -> None:
        self.v += 1

    @endpoint
    async def value(self) -> int:
        return self.v

    @endpoint
    async def checked(self) -> int:
        if self.v < 0:
            raise ValueError(f"negative value {self.v}")
        return self.v

    @endpoint
    async def whoami(self) -> int:
        return id(self)

    @endpoint
    async def boom(self, msg: str = "boom") -> None:
        raise KeyError(msg)

    @endpoint
    async def nap(self, seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    @endpoint
    async def record(self, tag: str, seconds: float = 0.0) -> str:
        if seconds:
            await anyio.sleep(seconds)
        self.calls.append(tag)
        return tag

    @service_endpoint(idempotent=False)
    async def once(self, tag: str, seconds: float = 0.0) -> str:
        self.calls.append(tag)
        if seconds:
            await anyio.sleep(seconds)
        return tag

    @service_endpoint(router=LeastLoadedRouter, batch_size=8, batch_timeout=0.01)
    async def predict(self, xs: list[int]) -> list[int]:
        return [x * 2 for x in xs]


class Failing(ForgeActor):
    def __init__(self) -> None:
        raise ValueError("constructor says no")

    @endpoint
    async def ping(self) -> int:
        return 1
