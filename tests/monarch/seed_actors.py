"""The seed documents' actors, for the tests on real Monarch processes.

The classes travel to the replicas' processes by reference, so they live in a module
the children import (keep its top level light). Each quotes the seed it comes from;
only the ``forge.controller...`` imports are changed to ``forge_sc``, and the
stand-ins the seeds leave undefined (``heavy_model``, ``model``) are defined here.
"""

from __future__ import annotations

import os
from typing import Any

from monarch.actor import current_rank, endpoint

# Seed 002, "Usage > Defining an Actor": the three imports, forge.controller -> forge_sc.
from forge_sc import ForgeActor
from forge_sc.service import RoundRobinRouter, service_endpoint


def heavy_model(x: list[int]) -> list[int]:
    """Stand-in for the seed's ``heavy_model``: a batched endpoint gets a list."""
    return [10 * v for v in x]


def model(x: list[int]) -> list[tuple[int, int, int]]:
    """Stand-in for the seed's ``model``: each result says which process and which
    batch size computed it."""
    return [(v, os.getpid(), len(x)) for v in x]


# Seed 002, "Usage > Defining an Actor" (``def __init__(self, ...)`` made concrete).
class MyForgeActor(ForgeActor):
    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    @endpoint
    async def foo(self, x):
        return x + 1

    @service_endpoint(router=RoundRobinRouter(), batch_size=8, batch_timeout=0.01)
    async def bar(self, x):
        return heavy_model(x)

    # Not in the seed: what the tests observe the actor with.
    @endpoint
    async def pid(self) -> int:
        return os.getpid()

    @endpoint
    async def set_offset(self, offset: int) -> None:
        self.offset = offset

    @endpoint
    async def get_offset(self) -> int:
        return self.offset

    # Seed 002, "Calling Endpoints > Actor Endpoints" calls ``predict``.
    @endpoint
    async def predict(self, x: int) -> tuple[int, int, int]:
        return (x * 2, os.getpid(), int(current_rank().rank))


# Seed 002, "Usage > Batch Routing".
class MyActor(ForgeActor):
    @service_endpoint(router=RoundRobinRouter(), batch_size=8, batch_timeout=0.01)
    async def predict(self, x):
        return model(x)


# Seed 002, "Actor vs Service > Actor": the class attributes as defaults.
class TwoByTwo(ForgeActor):
    num_replicas = 2
    procs = 2

    @endpoint
    async def pid(self) -> int:
        return os.getpid()


class SetupError(Exception):
    """Raised by a setup() that was told to fail."""


class WithSetup(ForgeActor):
    """An actor that initialises in an async ``setup()`` (TorchForge's convention).

    ``report()`` says how many times setup ran in this process and whether it ran
    before the first request. With ``fail_in`` set to a folder, setup raises
    :class:`SetupError` once that folder is not empty.
    """

    def __init__(self, fail_in: str | None = None) -> None:
        self.fail_in = fail_in
        self.setups = 0
        self.requests = 0
        self.setups_before_first_request: int | None = None

    @endpoint
    async def setup(self) -> None:
        if self.fail_in is not None and os.listdir(self.fail_in):
            raise SetupError(f"setup failed in process {os.getpid()}")
        self.setups += 1

    @endpoint
    async def report(self) -> dict[str, Any]:
        if self.setups_before_first_request is None:
            self.setups_before_first_request = self.setups
        self.requests += 1
        return {
            "pid": os.getpid(),
            "setups": self.setups,
            "setups_before_first_request": self.setups_before_first_request,
        }
