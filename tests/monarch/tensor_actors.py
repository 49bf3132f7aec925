"""An actor that receives and returns tensors (imported by its replicas' processes:
torch is imported here, at the top, so that no call pays for importing it)."""

from __future__ import annotations

import os
from typing import Any

import anyio
import torch
from monarch.actor import concurrent_endpoint

from forge_sc import ForgeActor, endpoint, service_endpoint


class Tensors(ForgeActor):
    def __init__(self) -> None:
        self.kept: Any = None

    @endpoint
    async def echo(self, x: Any) -> Any:
        return x

    @endpoint
    async def total(self, x: torch.Tensor) -> float:
        return float(x.double().sum())

    @endpoint
    async def make(self, n: int) -> torch.Tensor:
        return torch.arange(n, dtype=torch.float32)

    @endpoint
    async def pid(self) -> int:
        return os.getpid()

    @service_endpoint(batch_size=8, batch_timeout=0.02)
    async def rows(self, xs: Any) -> Any:
        # The default contract: the rows arrive as a list of tensors.
        assert type(xs) is list and all(type(x) is torch.Tensor for x in xs), type(xs)
        return [x * 2 for x in xs]

    @service_endpoint(batch_size=8, batch_timeout=0.02, collate="stack", split="unbind")
    async def stacked(self, xs: Any) -> Any:
        assert type(xs) is torch.Tensor and xs.dim() == 2, type(xs)  # opt-in: stacked
        return xs * 2

    @concurrent_endpoint
    async def check(self, t: torch.Tensor, i: int, delay: float) -> Any:
        """Calls overlap: what the argument held on arrival and after ``delay``."""
        first = (float(t[0]), float(t[-1]))
        await anyio.sleep(delay)
        return first, (float(t[0]), float(t[-1])), torch.full_like(t, float(2 * i))
