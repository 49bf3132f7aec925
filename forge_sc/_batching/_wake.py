"""A one-shot wake-up for one waiting task, on the running backend's own primitives.

A batched call waits for its batch's answer; with an ``anyio.Event`` per call that
wait cost more than the rest of the call (the event is made through anyio's backend
lookup, wraps an ``asyncio.Event`` or a ``trio.Event``, and each of those wraps a
future or a parking lot). Here a wait is one asyncio future, or one trio
``wait_task_rescheduled``, and the backend is looked up once per batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import sniffio

__all__ = ["Wake", "WakeKit", "wake_kit"]


class Wake(Protocol):
    """One waiter's wake-up: ``set()`` once (later calls do nothing)."""

    def set(self) -> None: ...

    def is_set(self) -> bool:
        """Whether ``set()`` was called (a waiter cancelled first does not count)."""
        ...

    def wait(self) -> Awaitable[None]:
        """Wait until ``set()`` (cancellable; at most one waiter)."""
        ...


class WakeKit(Protocol):
    """What a batcher takes from the running backend, looked up once."""

    #: A new :class:`Wake`.
    new: Callable[[], Wake]
    #: The backend's clock (``anyio.current_time()``, virtual clocks included).
    now: Callable[[], float]


class _AsyncioWake:
    __slots__ = ("_fut",)

    def __init__(self, fut: asyncio.Future[None]) -> None:
        self._fut = fut

    def set(self) -> None:
        fut = self._fut
        if not fut.done():  # (cancelled with its waiter: nothing to wake)
            fut.set_result(None)

    def is_set(self) -> bool:
        fut = self._fut
        return fut.done() and not fut.cancelled()

    def wait(self) -> Awaitable[None]:
        # The future itself: a cancelled waiter cancels it, as asyncio.Event's does.
        return self._fut


class _TrioWake:
    __slots__ = ("_set", "_task")

    #: ``trio.lowlevel``, set by the first ``_TrioKit`` (trio is imported only on trio).
    lowlevel: Any = None

    def __init__(self) -> None:
        self._set = False
        self._task: Any = None

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        task = self._task
        if task is not None:
            self._task = None
            self.lowlevel.reschedule(task)

    def is_set(self) -> bool:
        return self._set

    def _abort(self, _raise_cancel: Any) -> Any:
        self._task = None
        return self.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> None:
        if self._set:
            return
        lowlevel = self.lowlevel
        self._task = lowlevel.current_task()
        await lowlevel.wait_task_rescheduled(self._abort)


class _AsyncioKit:
    __slots__ = ("new", "now")

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        create = loop.create_future

        def new() -> Wake:
            return _AsyncioWake(create())

        self.new: Callable[[], Wake] = new
        self.now: Callable[[], float] = loop.time  # what anyio.current_time() reads


class _TrioKit:
    __slots__ = ("new", "now")

    def __init__(self) -> None:
        import trio  # (running on trio: imported already)

        _TrioWake.lowlevel = trio.lowlevel
        self.new: Callable[[], Wake] = _TrioWake
        self.now: Callable[[], float] = trio.current_time


def wake_kit() -> WakeKit:
    """The kit of the running backend (call from inside the event loop)."""
    if sniffio.current_async_library() == "trio":
        return _TrioKit()
    return _AsyncioKit()
