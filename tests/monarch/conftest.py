"""Fixtures for the tests on real Monarch processes.

``anyio_backend`` (asyncio and trio) and ``wait_for`` come from ``tests/conftest.py``.
"""

from __future__ import annotations

import os

# forge_sc sets this too; it must be set before Monarch's native runtime loads.
os.environ.setdefault("HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY", "500ms")

from collections.abc import AsyncIterator, Iterator

import pytest

from forge_sc.mesh.monarch import MonarchMesh

from ._support import live_descendants, wait_until


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    """Every test must leave no child process of its own behind."""
    before = live_descendants()
    yield
    assert wait_until(lambda: not (live_descendants() - before)), (
        f"processes left behind: {sorted(live_descendants() - before)}"
    )


@pytest.fixture
async def mesh() -> AsyncIterator[MonarchMesh]:
    m = MonarchMesh()
    async with m.lifespan():
        yield m
