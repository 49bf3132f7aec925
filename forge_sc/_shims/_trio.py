"""trio's private API that FakeMesh relies on (trio capped in pyproject.toml).

``Task._attempt_abort(raise_cancel)`` interrupts a task blocked in
``wait_task_rescheduled`` the way a cancellation does, but with an exception of our
choosing and without a cancel scope per call: it is how FakeMesh makes a crashed
replica's in-flight calls raise at once, for the price of nothing per call on the
hot path (a cancel scope per request costs ~1 µs). anyio's own trio backend touches
one private trio field in the same spirit.

``current_trio_task()`` gives ``trio.lowlevel.current_task`` without its Python
frame (a ``partial`` of ``getattr`` on trio's per-thread run context): the request
path asks for the current task once per in-process call.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import trio

__all__ = ["attempt_abort", "current_trio_task", "is_blocked"]


def current_trio_task() -> Callable[[], trio.lowlevel.Task]:
    """A getter of the current trio task, called from inside ``trio.run``: the same
    answer as ``trio.lowlevel.current_task()``, without a Python frame. Falls back to
    that function when trio keeps its run context elsewhere."""
    from trio._core import _run

    context = getattr(_run, "GLOBAL_RUN_CONTEXT", None)
    if context is not None and getattr(context, "task", None) is trio.lowlevel.current_task():
        return partial(getattr, context, "task")
    return trio.lowlevel.current_task


def is_blocked(task: trio.lowlevel.Task) -> bool:
    """Whether ``task`` waits in ``wait_task_rescheduled`` (it has an abort function),
    so that :func:`attempt_abort` can interrupt it now."""
    return task._abort_func is not None


def attempt_abort(task: trio.lowlevel.Task, raise_cancel: Callable[[], Any]) -> None:
    """Interrupt ``task`` (blocked in ``wait_task_rescheduled``) by ``raise_cancel``:
    its abort function runs, and if it agrees, ``raise_cancel()`` raises in ``task``."""
    task._attempt_abort(raise_cancel)
