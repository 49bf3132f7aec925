"""The endpoint-kind table that both meshes must agree on, and its runner.

Each row is one call of one endpoint kind Monarch accepts, with what its caller gets
and what happens to the replica, as measured on real Monarch (see
``forge_sc/mesh/_kinds.py``). ``tests/adversarial/test_mesh_kinds.py`` runs every row
on FakeMesh, ``tests/monarch/test_monarch_adversarial.py`` on Monarch.
"""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest

from forge_sc import open_service
from forge_sc.errors import RequestKilledReplicaError, ServiceFailedError
from forge_sc.mesh import Mesh

from .mesh_actors import (
    AsyncGeneratorKinds,
    AsyncKinds,
    Boom,
    ConcurrentKinds,
    GeneratorKinds,
    MixedKinds,
    MixinKinds,
    PortKinds,
    SyncKinds,
)

#: The caller gets this value.
VALUE = "value"
#: The caller gets this exception; the replica lives (no restart).
RAISES = "raises"
#: The caller gets RequestKilledReplicaError; the replica is restarted once.
KILLS = "kills"
#: The call never answers (the caller gives up after a while); the replica lives.
SILENT = "silent"
#: ``n`` concurrent calls all run at once (each returns ``n``).
OVERLAP = "overlap"
#: The service does not start: ServiceFailedError, caused by this exception.
SPAWN_FAILS = "spawn fails"


@attrs.frozen
class Case:
    id: str
    actor: type[Any]
    endpoint: str
    args: tuple[Any, ...]
    outcome: str
    expected: Any = None
    #: A call that must answer afterwards (the replica lives or was replaced).
    then: tuple[str, tuple[Any, ...], Any] | None = None


CASES = [
    Case("async-value", AsyncKinds, "value", (1,), VALUE, 2),
    Case("async-exception", AsyncKinds, "fails", (), RAISES, ValueError, ("value", (1,), 2)),
    Case("async-baseexception", AsyncKinds, "boom", (), KILLS, None, ("value", (1,), 2)),
    # Let out as it is, it would end the actor on Monarch 0.7.0 (the call and every
    # later one never answer, the process lives): forge_sc's wrapper makes it an error.
    Case(
        "async-own-cancel", AsyncKinds, "own_cancel", (), RAISES, RuntimeError, ("value", (1,), 2)
    ),
    Case("sync-value", SyncKinds, "value", (1,), VALUE, 2),
    Case("sync-exception", SyncKinds, "fails", (), RAISES, ValueError, ("value", (1,), 2)),
    Case("sync-baseexception", SyncKinds, "boom", (), KILLS, None, ("value", (1,), 2)),
    Case(
        "sync-returns-coroutine", SyncKinds, "coroutine", (), RAISES, TypeError, ("value", (1,), 2)
    ),
    Case(
        "mixin-own-cancel",
        MixinKinds,
        "mixin_own_cancel",
        (),
        RAISES,
        RuntimeError,
        ("value", (1,), 2),
    ),
    Case("mixin-monarch-endpoint", MixinKinds, "mixin_plain", (2,), VALUE, 20),
    Case("concurrent-value", ConcurrentKinds, "value", (1,), VALUE, 2),
    Case("concurrent-overlap", ConcurrentKinds, "meet", (3, 10.0), OVERLAP, 3),
    Case(
        "concurrent-exception", ConcurrentKinds, "fails", (), RAISES, ValueError, ("value", (1,), 2)
    ),
    Case("concurrent-baseexception", ConcurrentKinds, "boom", (), RAISES, Boom, ("value", (1,), 2)),
    Case("port-send", PortKinds, "value", (1,), VALUE, 2),
    Case("port-first-answer-wins", PortKinds, "first_wins", (), VALUE, 1, ("value", (1,), 2)),
    Case("port-exception-sent", PortKinds, "refuses", (), RAISES, ValueError, ("value", (1,), 2)),
    Case("port-exception-raised", PortKinds, "fails", (), KILLS, None, ("value", (1,), 2)),
    Case("port-never-answers", PortKinds, "silent", (), SILENT, None, ("value", (1,), 2)),
    Case("generator", GeneratorKinds, "gen", (3,), RAISES, TypeError, ("value", (1,), 2)),
    Case("async-generator", AsyncGeneratorKinds, "agen", (3,), RAISES, TypeError),
    Case("sync-and-async-mixed", MixedKinds, "sync_one", (), SPAWN_FAILS, ValueError),
]


async def run_case(case: Case, mesh: Mesh | None, *, silent_for: float = 0.5) -> None:
    """Run one row on ``mesh`` (``None``: Monarch) and check every expectation."""
    if case.outcome == SPAWN_FAILS:
        with anyio.fail_after(60), pytest.raises(ServiceFailedError) as info:
            async with open_service(case.actor, mesh=mesh):
                pass
        cause = info.value.__cause__
        assert isinstance(cause, case.expected), repr(cause)
        assert "mixes both async and sync endpoints" in str(cause)
        return
    async with open_service(case.actor, mesh=mesh, max_restarts=2, restart_backoff=0.01) as svc:
        ep = getattr(svc, case.endpoint)
        with anyio.fail_after(60):
            if case.outcome == VALUE:
                assert await ep.route(*case.args) == case.expected
            elif case.outcome == RAISES:
                with pytest.raises(case.expected):
                    await ep.route(*case.args)
            elif case.outcome == KILLS:
                with pytest.raises(RequestKilledReplicaError) as killed:
                    await ep.route(*case.args)
                assert f"Its endpoint {case.endpoint!r}" in str(killed.value)
            elif case.outcome == SILENT:
                with anyio.move_on_after(silent_for) as scope:
                    await ep.route(*case.args)
                assert scope.cancelled_caught, "the call answered"
            elif case.outcome == OVERLAP:
                got: list[int] = []

                async def one() -> None:
                    got.append(await ep.route(*case.args))

                async with anyio.create_task_group() as tg:
                    for _ in range(case.expected):
                        tg.start_soon(one)
                assert got == [case.expected] * case.expected, got
            else:  # pragma: no cover - a typo in the table
                raise AssertionError(case.outcome)
            if case.then is not None:
                name, args, expected = case.then
                assert await getattr(svc, name).route(*args) == expected
        stats = svc.statistics()
        assert stats.restarts == (1 if case.outcome == KILLS else 0), stats
        assert stats.retries == 0, stats
