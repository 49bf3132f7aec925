"""FIFO wait queue for requests that found no replica they could run on."""

from __future__ import annotations

import contextlib
import itertools
from collections import deque

import anyio

__all__ = ["WaitQueue", "Waiter"]


_tickets = itertools.count()


class Waiter:
    """One waiting request. ``woken`` is set when it was handed a wake-up, so that a
    waiter cancelled after its wake-up can pass it on instead of losing it.
    ``ticket`` orders waiters by arrival: a waiter that was woken but could not
    proceed queues again with its old ticket, in its old place."""

    __slots__ = ("event", "ticket", "woken")

    def __init__(self, ticket: int | None = None) -> None:
        self.event = anyio.Event()
        self.woken = False
        self.ticket = next(_tickets) if ticket is None else ticket

    def wake(self) -> None:
        self.woken = True
        self.event.set()


class WaitQueue(deque[Waiter]):
    """A deque of waiters with wake-one (a slot freed) and wake-all (the set of
    usable replicas changed). A ``deque`` subclass so that the hot path's "is anyone
    waiting?" is a C-level truth test."""

    __slots__ = ()

    def push(self, waiter: Waiter, *, front: bool = False) -> None:
        """Queue ``waiter`` at the back, or (``front``: one queueing again) before
        every waiter that arrived after it."""
        if not front:
            self.append(waiter)
            return
        ticket = waiter.ticket
        for i, other in enumerate(self):
            if other.ticket > ticket:
                self.insert(i, waiter)
                return
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
