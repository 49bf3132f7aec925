"""Warm spares (``spare_replicas``) and replacement while the old replica is reaped.

FakeMesh with a spawn delay: a replica that is healthy again sooner than a spawn can
take was served by a spare, and ``spawn_count(idx)`` shows that no spawn of that
index happened (spares are spawned with idx -1 until promoted).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from forge_sc import ForgeActor, ServiceConfig, endpoint, open_service
from forge_sc.errors import ServiceFailedError
from forge_sc.mesh import ReplicaGone, SpawnSpec
from forge_sc.testing import FakeMesh

from .conftest import wait_for

pytestmark = pytest.mark.anyio

SPAWN = 0.3  # seconds a spawn takes; a promotion takes none of it


class Who(ForgeActor):
    def __init__(self) -> None:
        self.calls = 0

    @endpoint
    async def me(self) -> int:
        self.calls += 1
        return id(self)

    @endpoint
    async def nap(self, seconds: float) -> int:
        await anyio.sleep(seconds)
        return id(self)


def test_spare_replicas_is_validated() -> None:
    assert ServiceConfig().spare_replicas == 0
    assert ServiceConfig(spare_replicas=2).spare_replicas == 2
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="spare_replicas"):
            ServiceConfig(spare_replicas=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spare_replicas"):
        open_service(Who, spare_replicas=-1, mesh=FakeMesh())


async def _ready(svc: Any, n: int = 1) -> None:
    await wait_for(lambda: svc.statistics().ready_spares >= n, timeout=10, what="spares ready")


async def test_a_crashed_replica_is_replaced_by_a_spare_at_once() -> None:
    mesh = FakeMesh(seed=1, spawn_delay=SPAWN)
    async with open_service(Who, num_replicas=2, spare_replicas=1, mesh=mesh) as svc:
        await _ready(svc)
        old = mesh.actor(0)
        replica = svc.replicas[0]
        with anyio.fail_after(SPAWN / 2):  # sooner than any spawn
            mesh.crash(0)
            await wait_for(lambda: replica.healthy and mesh.actor(0) is not old)
        assert mesh.spawn_count(0) == 1  # index 0 was never spawned again
        assert replica.restarts == 1
        assert await svc.me.fanout() == [id(mesh.actor(0)), id(mesh.actor(1))]
        # A new spare starts in the background.
        await wait_for(lambda: mesh.spawn_count(-1) == 2, timeout=10)
        await _ready(svc)
        stats = svc.statistics()
        assert stats.spares_started == 2
        assert stats.healthy_replicas == stats.total_replicas == 2


async def test_spares_are_out_of_rotation_and_not_counted_as_replicas() -> None:
    mesh = SparesMesh()
    async with open_service(Who, num_replicas=2, spare_replicas=2, mesh=mesh) as svc:
        await _ready(svc, 2)
        for _ in range(20):
            await svc.me.route()
        assert await svc.me.fanout() == [id(mesh.actor(0)), id(mesh.actor(1))]
        assert [s._actor.calls for s in mesh.spares] == [0, 0]  # no traffic reached them
        # svc.replicas, statistics() and the summary count the replicas in rotation
        # only; the spares have figures of their own.
        assert [r.idx for r in svc.replicas] == [0, 1]
        stats = svc.statistics()
        assert (stats.total_replicas, stats.healthy_replicas) == (2, 2)
        assert (stats.ready_spares, stats.spares_started) == (2, 2)
        assert [r.idx for r in stats.replicas] == [0, 1]
        service = svc.get_metrics_summary()["service"]
        assert (service["total_replicas"], service["healthy_replicas"]) == (2, 2)
        assert sorted(svc.get_metrics_summary()["replicas"]) == [0, 1]


async def test_a_hung_replica_is_replaced_by_a_spare() -> None:
    mesh = FakeMesh(seed=1, spawn_delay=SPAWN)
    async with open_service(
        Who,
        num_replicas=1,
        spare_replicas=1,
        health_poll_rate=0.01,
        health_timeout=0.05,
        mesh=mesh,
    ) as svc:
        await _ready(svc)
        old = mesh.actor(0)
        with anyio.fail_after(SPAWN):  # the ping timeout, then no spawn
            mesh.hang(0)
            assert await svc.me.route() != id(old)  # waits for the replacement
        assert mesh.actor(0) is not old
        assert mesh.spawn_count(0) == 1
        assert svc.replicas[0].restarts == 1


async def test_requests_in_flight_on_the_dead_replica_move_to_the_spare() -> None:
    mesh = FakeMesh(seed=1, spawn_delay=SPAWN)
    async with open_service(Who, num_replicas=1, spare_replicas=1, mesh=mesh) as svc:
        await _ready(svc)
        old = mesh.actor(0)
        results: list[int] = []

        async def call() -> None:
            results.append(await svc.nap.route(0.05))

        with anyio.fail_after(SPAWN):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(call)
                await wait_for(lambda: svc.replicas[0].active_requests == 5)
                mesh.crash(0)
        assert results == [id(mesh.actor(0))] * 5
        assert id(old) not in results
        assert svc.statistics().retries == 5
        assert svc.statistics().failed_requests == 0


async def test_sessions_and_metrics_keep_the_index_of_a_promoted_spare() -> None:
    mesh = FakeMesh(seed=1, spawn_delay=SPAWN)
    async with open_service(Who, num_replicas=1, spare_replicas=1, mesh=mesh) as svc:
        await _ready(svc)
        async with svc.session():
            first = await svc.me.route()
            mesh.crash(0)
            await wait_for(lambda: svc.replicas[0].healthy)
            # The session moved to the replica now at index 0 (the promoted spare),
            # and stays there.
            after = [await svc.me.route() for _ in range(3)]
        assert first != after[0]
        assert after == [id(mesh.actor(0))] * 3
        assert mesh.actor(0).calls == 3
        stats = svc.statistics()
        assert stats.session_migrations == 1
        assert [r.idx for r in stats.replicas] == [0]
        # The replica's figures run on across the promotion: 1 call before, 3 after.
        assert stats.replicas[0].total_requests == 4
        assert stats.replicas[0].restarts == 1
        sid = await svc.start_session()
        assert await svc.me.route(sess_id=sid) == id(mesh.actor(0))
        assert svc.replicas[0].assigned_sessions == 1


async def test_promotions_count_against_the_restart_budget() -> None:
    mesh = FakeMesh(seed=1)
    with pytest.raises(ServiceFailedError):
        async with open_service(
            Who, num_replicas=1, spare_replicas=1, max_restarts=1, mesh=mesh
        ) as svc:
            await _ready(svc)
            mesh.crash(0)  # promoted: restart 1 of 1
            await wait_for(lambda: svc.replicas[0].healthy and svc.replicas[0].restarts == 1)
            mesh.crash(0)  # out of budget, spare or not
            await anyio.sleep_forever()


async def test_scaling_up_takes_a_spare() -> None:
    mesh = FakeMesh(seed=1, spawn_delay=SPAWN)
    async with open_service(Who, num_replicas=1, spare_replicas=1, mesh=mesh) as svc:
        await _ready(svc)
        with anyio.fail_after(SPAWN / 2):
            await svc.scale_to(2)
        assert mesh.spawn_count(1) == 0  # replica 1 is the former spare
        assert len(await svc.me.fanout()) == 2


async def test_spares_are_stopped_with_the_service() -> None:
    stopped: list[int] = []

    class CountingMesh(FakeMesh):
        async def spawn(self, spec: SpawnSpec) -> Any:
            replica = await super().spawn(spec)
            stop = replica.stop

            async def counted_stop() -> None:
                stopped.append(spec.idx)
                await stop()

            replica.stop = counted_stop
            return replica

    mesh = CountingMesh(seed=1)
    async with open_service(Who, num_replicas=2, spare_replicas=2, mesh=mesh) as svc:
        await _ready(svc, 2)
    assert sorted(stopped) == [-1, -1, 0, 1]


class SlowStopMesh(FakeMesh):
    """A FakeMesh whose replicas take until ``release`` is set to stop."""

    def __init__(self) -> None:
        super().__init__(seed=1)
        self.release = anyio.Event()
        self.stopping = 0

    async def spawn(self, spec: SpawnSpec) -> Any:
        replica = await super().spawn(spec)
        stop = replica.stop

        async def slow_stop() -> None:
            self.stopping += 1
            await self.release.wait()
            await stop()

        replica.stop = slow_stop
        return replica


@pytest.mark.parametrize("spares", [0, 1])
async def test_the_replacement_starts_while_the_dead_replica_is_reaped(spares: int) -> None:
    mesh = SlowStopMesh()
    async with open_service(
        Who, num_replicas=1, spare_replicas=spares, restart_backoff=0.0, mesh=mesh
    ) as svc:
        if spares:
            await _ready(svc)
        old = mesh.actor(0)
        try:
            mesh.crash(0)
            await wait_for(lambda: svc.replicas[0].healthy and mesh.actor(0) is not old)
            # The old one's stop began (the reaper may run just after the promotion)
            # and cannot finish before ``release``: the new one serves meanwhile.
            await wait_for(lambda: mesh.stopping == 1)
            assert svc.replicas[0].healthy
            assert await svc.me.route() == id(mesh.actor(0))
        finally:
            mesh.release.set()


async def test_a_backend_can_ask_for_the_stop_before_the_respawn() -> None:
    # MonarchMesh on a pool of hosts does (a dead replica's hosts are known suspect
    # only once its stop ran): the new incarnation waits for the old one's stop.
    mesh = SlowStopMesh()
    spawn = mesh.spawn

    async def spawn_asking(spec: SpawnSpec) -> Any:
        replica = await spawn(spec)
        replica.stop_before_respawn = True
        return replica

    mesh.spawn = spawn_asking  # type: ignore[method-assign]
    async with open_service(Who, num_replicas=1, restart_backoff=0.0, mesh=mesh) as svc:
        old = mesh.actor(0)
        try:
            mesh.crash(0)
            await wait_for(lambda: mesh.stopping == 1)
            with anyio.move_on_after(0.2):
                await wait_for(lambda: mesh.actor(0) is not old, timeout=1)
            assert mesh.actor(0) is old and not svc.replicas[0].healthy
            assert mesh.spawn_count(0) == 1
        finally:
            mesh.release.set()
        await wait_for(lambda: svc.replicas[0].healthy and mesh.actor(0) is not old)


class SparesMesh(FakeMesh):
    """A FakeMesh that keeps the spares it spawned (to make one fail) and counts stops."""

    def __init__(self) -> None:
        super().__init__(seed=1)
        self.spares: list[Any] = []
        self.stopped: list[Any] = []

    async def spawn(self, spec: SpawnSpec) -> Any:
        replica = await super().spawn(spec)
        if spec.spare:
            self.spares.append(replica)
        stop = replica.stop

        async def counted_stop() -> None:
            self.stopped.append(replica)
            await stop()

        replica.stop = counted_stop
        return replica


@pytest.mark.parametrize("failure", ["dead", "hung"])
async def test_a_spare_that_fails_while_it_waits_is_replaced(failure: str) -> None:
    mesh = SparesMesh()
    async with open_service(
        Who,
        num_replicas=1,
        spare_replicas=1,
        health_poll_rate=0.01,
        health_timeout=0.05,
        mesh=mesh,
    ) as svc:
        await _ready(svc)
        (first,) = mesh.spares

        async def dead() -> None:
            raise ReplicaGone("the spare's process died")

        async def hung() -> None:
            await anyio.sleep_forever()

        first.ping = dead if failure == "dead" else hung
        await wait_for(lambda: svc.statistics().spares_started == 2, timeout=5)
        await _ready(svc)
        assert first in mesh.stopped
        # The replicas in rotation were not touched; the new spare is promoted on a crash.
        assert svc.replicas[0].restarts == 0
        old = mesh.actor(0)
        mesh.crash(0)
        await wait_for(lambda: svc.replicas[0].healthy and mesh.actor(0) is not old)
        assert mesh.spawn_count(0) == 1  # served by the new spare


async def test_the_mesh_is_asked_for_room_for_replicas_and_spares() -> None:
    # A pool of hosts (MonarchMesh's check_capacity) must fit the spares too.
    asked: list[int] = []

    class RoomMesh(FakeMesh):
        def check_capacity(self, spec: SpawnSpec, count: int) -> None:
            asked.append(count)

    async with open_service(Who, num_replicas=2, spare_replicas=1, mesh=RoomMesh(seed=1)):
        pass
    assert asked == [3]


async def test_a_spare_that_died_while_waiting_is_never_promoted() -> None:
    """The spare dies (``crash(-1)``: the oldest waiting spare), then a replica,
    sooner than the spare's next health check: the dead spare is not promoted (it
    would die at once, costing the replica a second restart of its budget)."""
    mesh = FakeMesh(seed=1, spawn_delay=SPAWN)
    async with open_service(
        Who, num_replicas=1, spare_replicas=1, mesh=mesh, health_poll_rate=30.0,
        health_timeout=30.0, max_restarts=1,
    ) as svc:  # fmt: skip
        await _ready(svc)
        spare = mesh.actor(-1)
        mesh.crash(-1)
        await wait_for(lambda: svc.statistics().ready_spares == 0)  # at once, not at a ping
        mesh.crash(0)
        await wait_for(lambda: svc.replicas[0].healthy and svc.replicas[0].restarts == 1)
        assert mesh.actor(0) is not spare
        assert svc.statistics().restarts == 1
        assert await svc.me.route() == id(mesh.actor(0))


async def test_crash_of_a_spare_from_another_thread_never_hits_a_promoted_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``crash(-1)`` from a worker thread (as with ``as_service``) is resolved on the
    service's loop: a spare promoted while the call crossed over is not the one hit
    (it serves replica 0 by then), a spare still waiting is."""
    import time

    import anyio.from_thread

    mesh = FakeMesh(seed=1, spawn_delay=0.05)
    hop = anyio.from_thread.run_sync
    armed = [False]

    def slow_hop(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if armed[0]:  # while crash(-1) crosses over: replica 0 dies, a spare steps in
            armed[0] = False
            mesh.crash(0)
            time.sleep(1.0)
        return hop(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.from_thread, "run_sync", slow_hop)
    async with open_service(
        Who, num_replicas=1, spare_replicas=1, mesh=mesh, health_poll_rate=30.0,
        health_timeout=30.0,
    ) as svc:  # fmt: skip
        await _ready(svc)
        armed[0] = True
        await anyio.to_thread.run_sync(mesh.crash, -1)
        assert svc.replicas[0].healthy
        assert svc.replicas[0].restarts == 1  # the crash(0) only
