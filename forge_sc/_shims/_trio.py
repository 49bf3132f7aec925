"""trio's private API that FakeMesh relies on (trio capped in pyproject.toml).

``Task._attempt_abort(raise_cancel)`` interrupts a task blocked in
``wait_task_rescheduled`` the way a cancellation does, but with an exception of our
choosing and without a cancel scope per call: it is how FakeMesh makes a crashed
replica's in-flight calls raise at once, for the price of nothing per call on the
hot path (a cancel scope per request costs ~1 µs). anyio's own trio backend touches
one private trio field in the same spirit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

__all__ = ["attempt_abort", "is_blocked"]


def is_blocked(task: trio.lowlevel.Task) -> bool:
    """Whether ``task`` waits in ``wait_task_rescheduled`` (it has an abort function),
    so that :func:`attempt_abort` can interrupt it now."""
    return task._abort_func is not None


def attempt_abort(task: trio.lowlevel.Task, raise_cancel: Callable[[], Any]) -> None:
    """Interrupt ``task`` (blocked in ``wait_task_rescheduled``) by ``raise_cancel``:
    its abort function runs, and if it agrees, ``raise_cancel()`` raises in ``task``."""
    task._attempt_abort(raise_cancel)
