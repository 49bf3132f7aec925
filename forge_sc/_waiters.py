"""FIFO wait queue for requests that found no replica they could run on."""

from __future__ import annotations

import contextlib
from collections import deque

import anyio

__all__ = ["Waiter", "WaitQueue"]


class Waiter:
    """One waiting request. ``woken`` is set when it was handed a wake-up, so that a
    waiter cancelled after its wake-up can pass it on instead of losing it."""

    __slots__ = ("event", "woken")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.woken = False

    def wake(self) -> None:
        self.woken = True
        self.event.set()


class WaitQueue:
    """A deque of waiters with wake-one (a slot freed) and wake-all (the set of
    usable replicas changed)."""

    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: deque[Waiter] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    def push(self, waiter: Waiter, *, front: bool = False) -> None:
        if front:
            self._q.appendleft(waiter)
        else:
            self._q.append(waiter)

    def discard(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):  # already popped by a wake-up
            self._q.remove(waiter)

    def wake_one(self) -> bool:
        if self._q:
            self._q.popleft().wake()
            return True
        return False

    def wake_all(self) -> None:
        q = self._q
        while q:
            q.popleft().wake()
