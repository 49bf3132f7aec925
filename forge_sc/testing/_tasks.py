"""``running_tasks()``: what is still running, for tests that check nothing leaked."""

from __future__ import annotations

import asyncio
from typing import Any

import sniffio
import trio

__all__ = ["running_tasks"]


def running_tasks() -> set[Any]:
    """Every task alive in the current event loop (asyncio or trio), except the
    caller's own.

    Compare it before and after a piece of code to check that it left no task
    behind: ``before = running_tasks(); ...; assert running_tasks() == before``.
    """
    if sniffio.current_async_library() == "asyncio":
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    me = trio.lowlevel.current_task()
    out: set[Any] = set()

    def walk(task: Any) -> None:
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                if child is not me:
                    out.add(child)
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return out
