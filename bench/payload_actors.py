"""Actors of bench_payload.py (imported by the replicas' processes: torch at the top,
so that no timed call pays for importing it)."""

from __future__ import annotations

from typing import Any

import torch
from monarch.actor import Actor, endpoint

from forge_sc import ForgeActor
from forge_sc import endpoint as forge_endpoint

#: float32 elements per 4 KiB page: reading one element per page touches them all.
PAGE = 1024


def touch(t: Any) -> float:
    """Read one element of every page of ``t`` (what any use of it costs at least)."""
    return float(t.reshape(-1)[::PAGE].sum())


class Payload(ForgeActor):
    """Behind a forge_sc service."""

    def __init__(self) -> None:
        self.cached: dict[int, torch.Tensor] = {}

    @forge_endpoint
    async def put(self, t: torch.Tensor) -> float:
        return touch(t)

    @forge_endpoint
    async def get(self, n: int) -> torch.Tensor:
        if n not in self.cached:
            self.cached[n] = torch.randn(n)
        return self.cached[n]

    @forge_endpoint
    async def echo(self, t: torch.Tensor) -> torch.Tensor:
        return t


class PlainPayload(Actor):  # type: ignore[misc]
    """The same endpoints on a plain Monarch actor: Monarch's own pickling (the
    baseline: what a tensor cost before forge_sc encoded it)."""

    def __init__(self) -> None:
        self.cached: dict[int, torch.Tensor] = {}

    @endpoint  # type: ignore[untyped-decorator]
    async def put(self, t: torch.Tensor) -> float:
        return touch(t)

    @endpoint  # type: ignore[untyped-decorator]
    async def get(self, n: int) -> torch.Tensor:
        if n not in self.cached:
            self.cached[n] = torch.randn(n)
        return self.cached[n]

    @endpoint  # type: ignore[untyped-decorator]
    async def echo(self, t: torch.Tensor) -> torch.Tensor:
        return t
