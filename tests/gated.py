"""An actor whose calls finish when the test says so: ordering tests without timing."""

from __future__ import annotations

import anyio

from forge_sc import ForgeActor, endpoint


class Gated(ForgeActor):
    """``hold(tag)`` waits until the test opens the gate ``tag`` (``gate(tag).set()``);
    ``run(tag)`` does not wait. Both record the tags they started and finished, in
    order (``log``, if given, is shared by every replica: FakeMesh builds actors
    in-process, so it records the starts of the whole service in order), and answer
    ``(name, tag)`` where ``name`` is what the test set on this instance."""

    def __init__(self, log: list[str] | None = None) -> None:
        self.name: object = None
        self.log = log if log is not None else []
        self.gates: dict[str, anyio.Event] = {}
        self.started: list[str] = []
        self.finished: list[str] = []

    def gate(self, tag: str) -> anyio.Event:
        """The gate ``hold(tag)`` waits for (made on first use, by either side)."""
        return self.gates.setdefault(tag, anyio.Event())

    @endpoint
    async def hold(self, tag: str) -> tuple[object, str]:
        self.started.append(tag)
        self.log.append(tag)
        await self.gate(tag).wait()
        self.finished.append(tag)
        return self.name, tag

    @endpoint
    async def run(self, tag: str) -> tuple[object, str]:
        self.started.append(tag)
        self.log.append(tag)
        self.finished.append(tag)
        return self.name, tag

    @endpoint
    async def nap(self, seconds: float) -> object:
        await anyio.sleep(seconds)
        return self.name
