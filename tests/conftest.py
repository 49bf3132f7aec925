"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import sniffio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:  # noqa: ASYNC109
    """Wait (bounded) until ``cond()`` holds, re-checking at every scheduler turn.

    For states that no event announces (a replica's state as seen from outside).
    """
    with anyio.fail_after(timeout):
        while not cond():  # noqa: ASYNC110 - a bounded wait-for-condition
            await anyio.sleep(0.001)
    assert cond(), what


def running_tasks() -> set[Any]:
    """Every task alive in the current event loop, except the caller's own."""
    if sniffio.current_async_library() == "asyncio":
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    import trio

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
