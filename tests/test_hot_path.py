"""The request path's use of private APIs, guarded (they must fail loudly if the
dependency changes them)."""

from __future__ import annotations

import asyncio
import sys

import pytest


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.11 only: current_task is C later")
def test_fakemesh_finds_the_current_asyncio_task_as_asyncio_does() -> None:
    from forge_sc.testing._fake import _current_task

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert _current_task(loop) is asyncio.current_task()
        inner = asyncio.ensure_future(check(loop))
        await inner

    async def check(loop: asyncio.AbstractEventLoop) -> None:
        assert _current_task(loop) is asyncio.current_task() is not None

    asyncio.run(main())
