"""Sticky sessions: affinity, migration on death, isolation between services."""

from __future__ import annotations

import pytest

from forge_sc import open_service
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for

pytestmark = pytest.mark.anyio

FAST = dict(health_poll_rate=0.01, health_timeout=0.05, restart_backoff=0.001)


async def test_session_context_pins_every_route_to_one_replica() -> None:
    async with open_service(Counter, num_replicas=4, mesh=FakeMesh()) as svc:
        async with svc.session():
            seen = {await svc.whoami.route() for _ in range(10)}
            assert len(seen) == 1
            assert svc.statistics().active_sessions == 1
        assert svc.statistics().active_sessions == 0
        # outside the session: round robin again
        assert len({await svc.whoami.route() for _ in range(4)}) == 4


async def test_explicit_session_ids() -> None:
    async with open_service(Counter, num_replicas=3, mesh=FakeMesh()) as svc:
        a = await svc.start_session()
        b = await svc.start_session()
        assert a != b
        for _ in range(3):
            await svc.incr.route(sess_id=a)
        assert await svc.value.route(sess_id=a) == 3
        assert await svc.value.route(sess_id=b) == 0  # b went to another replica
        await svc.terminate_session(a)
        await svc.terminate_session(a)  # idempotent
        assert svc.statistics().active_sessions == 1


async def test_sessions_spread_over_replicas_least_loaded() -> None:
    async with open_service(Counter, num_replicas=3, mesh=FakeMesh()) as svc:
        sids = [await svc.start_session() for _ in range(3)]
        for sid in sids:
            await svc.incr.route(sess_id=sid)
        assert sorted(r.assigned_sessions for r in svc.replicas) == [1, 1, 1]


async def test_session_migrates_when_its_replica_dies() -> None:
    mesh = FakeMesh()
    async with open_service(Counter, num_replicas=2, mesh=mesh, **FAST) as svc:
        async with svc.session():
            await svc.incr.route()
            home = next(r for r in svc.replicas if r.assigned_sessions == 1)
            mesh.crash(home.idx)
            await wait_for(lambda: not home.healthy or home.restarts == 1)
            await svc.incr.route()
            assert svc.statistics().session_migrations == 1
            new_home = next(r for r in svc.replicas if r.assigned_sessions == 1)
            assert await svc.value.route() == mesh.actor(new_home.idx).v


async def test_two_services_side_by_side_do_not_share_sessions() -> None:
    m1, m2 = FakeMesh(), FakeMesh()
    async with (
        open_service(Counter, num_replicas=3, mesh=m1) as s1,
        open_service(Counter, num_replicas=3, mesh=m2) as s2,
    ):
        async with s1.session():
            # s2 is not in a session: its calls still round-robin
            assert len({await s2.whoami.route() for _ in range(3)}) == 3
            assert len({await s1.whoami.route() for _ in range(3)}) == 1
            async with s2.session():
                assert len({await s2.whoami.route() for _ in range(3)}) == 1
                assert len({await s1.whoami.route() for _ in range(3)}) == 1
        assert s2.statistics().active_sessions == 0
        assert s1.statistics().active_sessions == 0


async def test_session_calls_to_a_batched_endpoint_go_alone() -> None:
    async with open_service(Counter, num_replicas=2, mesh=FakeMesh()) as svc:
        async with svc.session():
            assert await svc.predict.route(21) == 42
        stats = {b.endpoint: b for b in svc.statistics().batchers}
        assert stats["predict"].batches_sent == 0
