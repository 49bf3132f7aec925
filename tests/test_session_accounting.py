"""Per-replica session counts follow the live sessions (terminate frees them, so
placement by load stays right), and a session whose replica was replaced moves, also
when that replica is healthy again by the time the session calls."""

from __future__ import annotations

import pytest

from forge_sc import ReplicaState, open_service
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for

pytestmark = pytest.mark.anyio

FAST = dict(health_poll_rate=0.01, health_timeout=0.05, restart_backoff=0.001)


def counts(svc: object) -> list[int]:
    """Assigned sessions per replica, as the views, statistics() and the summary say
    (they must agree)."""
    views = [r.assigned_sessions for r in svc.replicas]  # type: ignore[attr-defined]
    stats = [r.assigned_sessions for r in svc.statistics().replicas]  # type: ignore[attr-defined]
    summary = svc.get_metrics_summary()["replicas"]  # type: ignore[attr-defined]
    assert views == stats == [summary[i]["assigned_sessions"] for i in sorted(summary)]
    return views


async def home_of(svc: object, mesh: FakeMesh, sid: str) -> int:
    """The index of the replica that serves session ``sid`` (asks it)."""
    me = await svc.whoami.route(sess_id=sid)  # type: ignore[attr-defined]
    return next(i for i in range(len(svc.replicas)) if id(mesh.actor(i)) == me)  # type: ignore[attr-defined]


async def test_terminate_session_frees_its_replicas_count() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh) as svc:
        a, b, c = [await svc.start_session() for _ in range(3)]
        homes = [await home_of(svc, mesh, sid) for sid in (a, b, c)]
        assert homes == [0, 1, 0]  # least loaded, fewest sessions first
        assert counts(svc) == [2, 1]
        await svc.terminate_session(a)
        assert counts(svc) == [1, 1]
        await svc.terminate_session(c)
        assert counts(svc) == [0, 1]
        await svc.terminate_session(c)  # idempotent: nothing freed twice
        assert counts(svc) == [0, 1]
        assert svc.statistics().active_sessions == 1
        # Placement by load sees the freed count: the next session goes to replica 0.
        d = await svc.start_session()
        assert await home_of(svc, mesh, d) == 0
        assert counts(svc) == [1, 1]
        async with svc.session() as e:
            assert await home_of(svc, mesh, e) == 0  # ties: the lower index
            assert counts(svc) == [2, 1]
        assert counts(svc) == [1, 1]  # leaving the block terminated it
        for sid in (b, d):
            await svc.terminate_session(sid)
        assert counts(svc) == [0, 0]
        assert svc.get_metrics_summary()["service"]["total_sessions"] == 0


async def test_many_sessions_opened_and_closed_leave_no_count() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=3, mesh=mesh) as svc:
        for _ in range(20):
            sids = [await svc.start_session() for _ in range(4)]
            for sid in sids:
                await svc.incr.route(sess_id=sid)
            assert sum(counts(svc)) == 4
            for sid in sids:
                await svc.terminate_session(sid)
            assert counts(svc) == [0, 0, 0]


async def test_session_moves_when_its_replica_was_restarted() -> None:
    """``restart_replica`` replaced the session's replica, which is healthy again
    when the session calls next: the session moves to the new incarnation (its state
    is gone), and that is counted as a migration."""
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh, **FAST) as svc:
        sid = await svc.start_session()
        for _ in range(3):
            await svc.incr.route(sess_id=sid)
        home = await home_of(svc, mesh, sid)
        assert await svc.value.route(sess_id=sid) == 3
        await svc.restart_replica(home)
        assert svc.replicas[home].healthy and svc.replicas[home].restarts == 1
        # It left the dead incarnation at once (DESIGN §3: when it dies the session
        # moves), and is placed again by its next call.
        assert svc.statistics().session_migrations == 1
        assert sum(counts(svc)) == 0
        assert await svc.value.route(sess_id=sid) == 0  # a fresh incarnation's state
        assert svc.statistics().session_migrations == 1
        # It moved to the new incarnation of the same index (the session router
        # keeps a session's index while that replica is healthy); counted once.
        assert await home_of(svc, mesh, sid) == home
        assert sum(counts(svc)) == 1 and counts(svc)[home] == 1
        await svc.incr.route(sess_id=sid)
        assert await svc.value.route(sess_id=sid) == 1  # and it stays there
        assert svc.statistics().session_migrations == 1


async def test_session_moves_when_its_replica_died_and_recovered() -> None:
    """The replica crashed and is back (a new incarnation) before the session's next
    call: the session moves as if it had called while the replica was down."""
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh, **FAST) as svc:
        sid = await svc.start_session()
        await svc.incr.route(sess_id=sid)
        home = await home_of(svc, mesh, sid)
        mesh.crash(home)
        await wait_for(lambda: svc.replicas[home].restarts == 1 and svc.replicas[home].healthy)
        assert await svc.value.route(sess_id=sid) == 0
        assert svc.statistics().session_migrations == 1
        assert await home_of(svc, mesh, sid) == home
        assert sum(counts(svc)) == 1


async def test_a_session_leaves_a_replica_that_failed_for_good_at_once() -> None:
    """DESIGN §3: when its replica dies the session moves and session_migrations goes
    up, also before the session calls again; a replica out of restart budget does not
    go on counting the session."""
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh, max_restarts=0, **FAST) as svc:
        sid = await svc.start_session()
        await svc.incr.route(sess_id=sid)
        home = await home_of(svc, mesh, sid)
        mesh.crash(home)
        await wait_for(lambda: svc.replicas[home].state is ReplicaState.FAILED)
        assert svc.statistics().session_migrations == 1
        assert counts(svc) == [0, 0]
        assert await svc.value.route(sess_id=sid) == 0  # placed on the survivor
        assert counts(svc)[1 - home] == 1
        assert svc.statistics().session_migrations == 1  # counted once
