"""Actors for the service-level Monarch tests (exit paths, batching, several hosts).

Like ``monarch_actors``, this module is imported by the replicas' processes too (the
classes travel by reference): keep its top level light.
"""

from __future__ import annotations

import os
import time

import anyio

from forge_sc import ForgeActor, LeastLoadedRouter, endpoint, service_endpoint


class Doomed(ForgeActor):
    """``echo_or_exit(x, doomed_pid)`` answers ``x``, except in the process whose pid is
    ``doomed_pid``: there it exits at once with ``os._exit(3)``. A request that killed
    a replica is answered when retried on another one (whose pid differs)."""

    @endpoint
    async def pid(self) -> int:
        return os.getpid()

    @endpoint
    async def echo_or_exit(self, x: int, doomed_pid: int | None) -> int:
        if doomed_pid == os.getpid():
            os._exit(3)
        return x

    @endpoint
    async def exit_now(self, code: int) -> None:
        os._exit(code)

    @endpoint
    async def nap(self, seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds


class SlowInit(ForgeActor):
    """A constructor that announces itself (a file ``init-<pid>`` in ``marker_dir``)
    and then blocks for as many seconds as the file ``marker_dir/delay`` says (none
    if it is missing): a replica half spawned, at start-up or in recovery."""

    def __init__(self, marker_dir: str) -> None:
        with open(os.path.join(marker_dir, f"init-{os.getpid()}"), "w") as f:
            f.write("init\n")
        try:
            with open(os.path.join(marker_dir, "delay")) as f:
                delay = float(f.read())
        except FileNotFoundError:
            delay = 0.0
        time.sleep(delay)

    @endpoint
    async def pid(self) -> int:
        return os.getpid()


class Scaler(ForgeActor):
    """A batched endpoint with a positional and a keyword parameter. Each result says
    which batch (size, process) computed it, so tests can see the merging. With
    ``marker_dir``, a batch that is running has a file ``busy-<pid>`` there (created
    before its ``delay``, removed after it)."""

    def __init__(self, delay: float = 0.0, marker_dir: str | None = None) -> None:
        self.delay = delay
        self.marker_dir = marker_dir

    @endpoint
    async def pid(self) -> int:
        return os.getpid()

    @service_endpoint(router=LeastLoadedRouter, batch_size=8, batch_timeout=0.02)
    async def mul(self, xs: list[int], factor: list[int]) -> list[tuple[int, int, int]]:
        pid = os.getpid()
        busy = None if self.marker_dir is None else os.path.join(self.marker_dir, f"busy-{pid}")
        if busy is not None:
            os.close(os.open(busy, os.O_WRONLY | os.O_CREAT, 0o644))
        if self.delay:
            await anyio.sleep(self.delay)
        if busy is not None:
            os.remove(busy)
        return [(x * f, len(xs), pid) for x, f in zip(xs, factor, strict=True)]
