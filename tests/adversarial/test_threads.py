"""Use from another thread (issue 10, item 11): refused with a clear error that says
how to do it (anyio.from_thread); the right way works."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
import sniffio

from ._support import assert_idle, checked_service

pytestmark = pytest.mark.anyio


def _in_another_loop(backend: str, fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` in a new event loop of this (worker) thread."""

    async def main() -> Any:
        with anyio.fail_after(5):
            try:
                return await fn(*args)
            except RuntimeError as exc:
                return exc

    return anyio.run(main, backend=backend)


@pytest.mark.parametrize("what", ["route", "batched", "fanout", "session", "scale_to"])
async def test_a_call_from_another_threads_loop_is_refused_clearly(what: str) -> None:
    async with checked_service(num_replicas=2, replica_max_concurrent_requests=1) as svc:
        calls = {
            "route": lambda: svc.value.route(),
            "batched": lambda: svc.brecord.route(1),
            "fanout": lambda: svc.value.fanout(),
            "session": lambda: svc.start_session(),
            "scale_to": lambda: svc.scale_to(3),
        }

        backend = sniffio.current_async_library()

        def thread() -> Any:
            return _in_another_loop(backend, calls[what])

        outcome = await anyio.to_thread.run_sync(thread)
        assert isinstance(outcome, RuntimeError), outcome
        assert "anyio.from_thread" in str(outcome)
        assert len(svc.replicas) == 2
        assert_idle(svc)


async def test_the_documented_way_from_another_thread_works() -> None:
    async with checked_service() as svc:

        def thread() -> Any:
            return anyio.from_thread.run(svc.value.route)

        assert await anyio.to_thread.run_sync(thread) == 1
