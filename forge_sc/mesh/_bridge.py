"""Awaiting Monarch futures from anyio code, on asyncio and on trio.

A Monarch ``Future`` is awaitable only on an asyncio loop. On asyncio, :func:`wait`
awaits the ``asyncio.Future`` that Monarch's handle gives, directly. On trio, the future's
one-shot task is handed to Monarch's own Tokio runtime inside a small relay coroutine;
when the task resolves, the relay (on a Tokio thread) stores the outcome and wakes the
trio run through its ``TrioToken``. Wake-ups are coalesced: completions that arrive
while a wake-up is pending ride along with it, so 200 concurrent calls cost far fewer
than 200 wake-ups. The relay runs only forge_sc's bookkeeping, never user code: user
callbacks (``on_abandoned``) run on the trio thread.

This relay needs no thread of its own. Measured against the other candidates
(docs/backends.md, "The trio bridge") on the same 2-core machine (1-process
actor, echo endpoint, 3 runs):

==========================================  ===================  ===================
approach                                    sequential p50       200 concurrent
==========================================  ===================  ===================
asyncio, plain ``await`` (reference)        584-665 us           5,230-5,620 calls/s
trio, Tokio relay, coalesced (this module)  682-736 us           4,230-4,730 calls/s
trio, asyncio loop thread, coalesced        730-756 us           4,090-4,770 calls/s
trio, ``to_thread.run_sync(handle.get)``    759-793 us           2,850-3,210 calls/s
==========================================  ===================  ===================

Both waits are interruptible as a group (:class:`CallGroup`): when a replica dies or is
stopped, every wait registered with its group raises at once, without a cancel scope
per call (on asyncio the group cancels the waiting task, which then raises the group's
exception instead, unless a real cancellation is pending too). A cancelled wait
leaves the remote work running (Monarch cannot abort it);
its ``on_abandoned`` callback runs exactly once, on the event loop thread, after that
work resolved.

The module relies on two private Monarch APIs, ``Future._take_inner`` and
``PythonTask.from_coroutine(...).spawn()`` (plus ``Future.as_asyncio`` on asyncio);
``tests/monarch/test_monarch_bridge.py`` fails loudly if either changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

import outcome
import trio
from monarch.actor import Future

from .._shims._monarch import PythonTask

__all__ = ["CallGroup", "LoopPoster", "loop_poster", "pending_relays", "wait"]

T = TypeVar("T")

log = logging.getLogger(__name__)

_in_trio_run = trio.lowlevel.in_trio_run


class CallGroup:
    """The waits of one replica, interrupted together.

    ``close(make_exc)`` (on the event loop thread) makes every registered wait raise
    ``make_exc()`` now, and every later :func:`wait` with this group raise it at once.
    The remote calls keep running; their outcomes are read and dropped.
    """

    __slots__ = ("_make_exc", "_waiters")

    def __init__(self) -> None:
        self._waiters: set[Any] = set()
        self._make_exc: Callable[[], BaseException] | None = None

    @property
    def closed(self) -> bool:
        return self._make_exc is not None

    def close(self, make_exc: Callable[[], BaseException]) -> None:
        """Interrupt every wait of this group; idempotent (the first reason wins)."""
        if self._make_exc is not None:
            return
        self._make_exc = make_exc
        waiters, self._waiters = self._waiters, set()
        for w in waiters:
            w.interrupt(make_exc())

    def _raise_if_closed(self) -> None:
        if self._make_exc is not None:
            raise self._make_exc()

    def __len__(self) -> int:
        return len(self._waiters)


async def wait(
    fut: Future[T],
    group: CallGroup | None = None,
    on_abandoned: Callable[[], None] | None = None,
) -> T:
    """Await a fresh (never awaited) Monarch future from asyncio or trio code.

    Returns the future's value or raises its exception. If ``group`` is closed, or
    closes while waiting, raises the group's exception instead. If the caller is
    cancelled, the remote work is abandoned (it keeps running) and ``on_abandoned``
    is called exactly once, on the event loop thread, after the work resolved.
    """
    if _in_trio_run():
        return await _wait_trio(fut, group, on_abandoned)
    return await _wait_asyncio(fut, group, on_abandoned)


# ---------------------------------------------------------------- asyncio


class _AsyncioWaiter:
    """One asyncio task awaiting one Monarch call's future directly: no extra future
    (and no extra event-loop iteration) per call. A group interrupts it by cancelling
    the task and telling it why; the task turns that into the group's exception."""

    __slots__ = ("exc", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.exc: BaseException | None = None

    def interrupt(self, exc: BaseException) -> None:
        if self.exc is None:
            self.exc = exc
            self.task.cancel()


def _call_abandoned(on_abandoned: Callable[[], None], done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()  # read, so asyncio never logs "exception never retrieved"
    on_abandoned()


async def _wait_asyncio(
    fut: Future[T], group: CallGroup | None, on_abandoned: Callable[[], None] | None
) -> T:
    if group is not None:
        group._raise_if_closed()
    done: asyncio.Future[T] = fut.as_asyncio()  # sends the call
    if group is None:
        waiter = None
    else:
        task = asyncio.current_task()
        assert task is not None
        waiter = _AsyncioWaiter(task)
        group._waiters.add(waiter)
    try:
        return await done
    except asyncio.CancelledError:
        # Cancelling the task cancelled ``done``, a loop-local observer of the call;
        # the call itself runs on (Monarch cannot abort it).
        if waiter is not None and waiter.exc is not None and waiter.task.uncancel() == 0:
            raise waiter.exc from None  # interrupted by the group, and only by it
        if on_abandoned is not None:
            # A fresh observer of the same call tells when the remote work resolved.
            observer: asyncio.Future[T] = fut.as_asyncio()
            observer.add_done_callback(partial(_call_abandoned, on_abandoned))
        raise
    finally:
        if group is not None:
            group._waiters.discard(waiter)


# ---------------------------------------------------------------- trio


class _TrioWaiter:
    """One trio task waiting for one relayed Monarch task."""

    __slots__ = ("abandoned", "on_abandoned", "result", "task", "token")

    def __init__(
        self,
        task: trio.lowlevel.Task,
        token: trio.lowlevel.TrioToken,
        on_abandoned: Callable[[], None] | None,
    ) -> None:
        self.task: trio.lowlevel.Task | None = task
        self.token = token
        self.on_abandoned = on_abandoned
        self.abandoned = False
        self.result: outcome.Outcome[Any] | None = None

    def interrupt(self, exc: BaseException) -> None:
        # Trio thread only. Clearing ``task`` first means a later wake-up finds no one.
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task, outcome.Error(exc))


class _TrioDelivery:
    """Completed waiters per trio run, delivered in one wake-up per batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[trio.lowlevel.TrioToken, list[_TrioWaiter]] = {}
        self.pending = 0  # relays spawned and not yet resolved (for tests)

    def deliver(self, w: _TrioWaiter) -> None:
        """Any thread: queue ``w`` and wake its trio run unless a wake-up is pending."""
        token = w.token
        with self._lock:
            self.pending -= 1
            batch = self._ready.get(token)
            if batch is not None:
                batch.append(w)
                return
            self._ready[token] = [w]
        try:
            token.run_sync_soon(self._drain, token)
        except trio.RunFinishedError:
            # The run is over: nobody is waiting any more.
            with self._lock:
                self._ready.pop(token, None)

    def _drain(self, token: trio.lowlevel.TrioToken) -> None:
        """Trio thread: wake every task whose call resolved."""
        with self._lock:
            batch = self._ready.pop(token, ())
        for w in batch:
            task = w.task
            if task is not None:
                w.task = None
                assert w.result is not None
                trio.lowlevel.reschedule(task, w.result)
            elif w.abandoned and w.on_abandoned is not None:
                try:
                    w.on_abandoned()
                except Exception:  # raising here would crash the whole trio run
                    log.exception("forge_sc: on_abandoned callback failed")


_delivery = _TrioDelivery()


async def _relay(task: Any, w: _TrioWaiter) -> None:
    # Runs on a Tokio thread: only bookkeeping here, never user code.
    try:
        w.result = outcome.Value(await task)
    except BaseException as exc:  # the outcome is handed over, never lost
        w.result = outcome.Error(exc)
    _delivery.deliver(w)


async def _wait_trio(
    fut: Future[T], group: CallGroup | None, on_abandoned: Callable[[], None] | None
) -> T:
    if group is not None:
        group._raise_if_closed()
    w = _TrioWaiter(trio.lowlevel.current_task(), trio.lowlevel.current_trio_token(), on_abandoned)
    coro: Coroutine[Any, Any, None] = _relay(fut._take_inner(), w)
    with _delivery._lock:
        _delivery.pending += 1
    try:
        PythonTask.from_coroutine(coro).spawn()  # the Shared is dropped; the task runs on
    except BaseException:
        coro.close()
        with _delivery._lock:
            _delivery.pending -= 1
        raise
    if group is not None:
        group._waiters.add(w)

    def abort(_: Any) -> trio.lowlevel.Abort:
        # The remote call goes on; its outcome now settles the abandonment instead.
        w.task = None
        w.abandoned = True
        return trio.lowlevel.Abort.SUCCEEDED

    try:
        value: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return value
    finally:
        if group is not None:
            group._waiters.discard(w)


def pending_relays() -> int:
    """How many trio waits are still relayed and unresolved (a leak check for tests)."""
    return _delivery.pending


# ---------------------------------------------------------------- helpers


LoopPoster = Callable[[Callable[[], None]], None]


def loop_poster() -> LoopPoster:
    """A thread-safe ``post(fn)`` that runs ``fn()`` soon on the current event loop
    thread, and does nothing once that loop has ended."""
    if _in_trio_run():
        token = trio.lowlevel.current_trio_token()

        def post_trio(fn: Callable[[], None]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(fn)

        return post_trio
    loop = asyncio.get_running_loop()

    def post_asyncio(fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(fn)

    return post_asyncio
