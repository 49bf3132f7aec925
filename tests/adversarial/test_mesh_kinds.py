"""FakeMesh runs every endpoint kind Monarch accepts as Monarch does (the table in
``mesh_cases``; its Monarch half is ``tests/monarch/test_monarch_adversarial.py``)."""

from __future__ import annotations

import pytest

from forge_sc.testing import FakeMesh

from .mesh_cases import CASES, Case, run_case

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_endpoint_kind_behaves_as_on_monarch(case: Case) -> None:
    await run_case(case, FakeMesh(seed=1))
