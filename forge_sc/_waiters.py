"""FIFO wait queue for requests that found no replica they could run on."""

from __future__ import annotations

import contextlib
from collections import deque

import anyio

__all__ = ["WaitQueue", "Waiter"]


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


class WaitQueue(deque[Waiter]):
    """A deque of waiters with wake-one (a slot freed) and wake-all (the set of
    usable replicas changed). A ``deque`` subclass so that the hot path's "is anyone
    waiting?" is a C-level truth test."""

    __slots__ = ()

    def push(self, waiter: Waiter, *, front: bool = False) -> None:
        if front:
            self.appendleft(waiter)
        else:
            self.append(waiter)

    def discard(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):  # already popped by a wake-up
            self.remove(waiter)

    def wake_one(self) -> bool:
        if self:
            self.popleft().wake()
            return True
        return False

    def wake_all(self) -> None:
        while self:
            self.popleft().wake()
