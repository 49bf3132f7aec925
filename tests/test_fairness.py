"""Fairness: requests that wait for capacity are served in the order they queued, in
the service queue and in a session's queue on its replica (a waiter that came first
never starves behind later ones)."""

from __future__ import annotations

import anyio
import pytest
import sniffio

from forge_sc import open_service
from forge_sc.mesh import SpawnSpec
from forge_sc.testing import FakeMesh
from forge_sc.testing._fake import FakeReplica

from .conftest import wait_for
from .gated import Gated

pytestmark = pytest.mark.anyio

WAITERS = [f"w{i}" for i in range(6)]


async def test_waiters_for_capacity_are_served_in_arrival_order() -> None:
    mesh = FakeMesh()
    async with open_service(
        Gated, num_replicas=1, mesh=mesh, replica_max_concurrent_requests=1
    ) as svc:
        actor = mesh.actor(0)
        answers: list[tuple[object, str]] = []

        async def call(tag: str) -> None:
            answers.append(await svc.run.route(tag))

        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.hold.route, "blocker")  # takes the only slot
            await wait_for(lambda: actor.started == ["blocker"])
            for n, tag in enumerate(WAITERS, 1):
                tg.start_soon(call, tag)
                await wait_for(lambda n=n: svc.statistics().queue_depth == n)  # type: ignore[misc]
            actor.gate("blocker").set()
        assert actor.finished == ["blocker", *WAITERS]
        assert [tag for _, tag in answers] == WAITERS


async def test_waiters_over_several_replicas_are_served_in_arrival_order() -> None:
    """Two replicas, two slots each, all taken: each slot freed, on either replica,
    goes to the waiter that has waited longest."""
    mesh = FakeMesh()
    log: list[str] = []  # the order in which calls started, over both replicas
    blockers = ["b0", "b1", "b2", "b3"]

    def release(tag: str) -> None:
        owner = next(mesh.actor(i) for i in (0, 1) if tag in mesh.actor(i).started)
        owner.gate(tag).set()

    async with open_service(
        Gated, log, num_replicas=2, mesh=mesh, replica_max_concurrent_requests=2
    ) as svc:
        async with anyio.create_task_group() as tg:
            for n, tag in enumerate(blockers, 1):
                tg.start_soon(svc.hold.route, tag)
                await wait_for(lambda n=n: len(log) == n)  # type: ignore[misc]
            for n, tag in enumerate(WAITERS, 1):
                tg.start_soon(svc.hold.route, tag)  # a waiter holds its slot in turn
                await wait_for(lambda n=n: svc.statistics().queue_depth == n)  # type: ignore[misc]
            # Free one slot at a time (b0 and b2 are on one replica, b1 and b3 on the
            # other, then the waiters'): each goes to the oldest waiter still queued.
            for n, tag in enumerate([*blockers, *WAITERS[:2]], 1):
                release(tag)
                await wait_for(lambda n=n: len(log) == 4 + n)  # type: ignore[misc]
                assert log[4:] == WAITERS[:n]
            for tag in WAITERS:
                release(tag)
        assert log == [*blockers, *WAITERS]


async def test_session_requests_queued_on_their_replica_are_served_in_order() -> None:
    mesh = FakeMesh()
    async with open_service(
        Gated, num_replicas=2, mesh=mesh, replica_max_concurrent_requests=1
    ) as svc:
        async with svc.session():
            await svc.run.route("first")  # assigns the session a replica
            home = next(r.idx for r in svc.replicas if r.assigned_sessions == 1)
            actor = mesh.actor(home)
            async with anyio.create_task_group() as tg:
                tg.start_soon(svc.hold.route, "blocker")
                await wait_for(lambda: "blocker" in actor.started)
                for n, tag in enumerate(WAITERS, 1):
                    tg.start_soon(svc.run.route, tag)
                    await wait_for(
                        lambda n=n: svc.replicas[home].queue_depth == n  # type: ignore[misc]
                    )
                actor.gate("blocker").set()
            assert actor.finished == ["first", "blocker", *WAITERS]


class SpawnGateMesh(FakeMesh):
    """A FakeMesh whose spawns wait for ``spawn_gate`` while it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.spawn_gate: anyio.Event | None = None

    async def spawn(self, spec: SpawnSpec) -> FakeReplica:
        if self.spawn_gate is not None:
            await self.spawn_gate.wait()
        return await super().spawn(spec)


async def test_waiters_woken_together_keep_their_order() -> None:
    """Requests queued while no replica is healthy are all woken when one comes back;
    the one that gets the slot runs (on asyncio the oldest; on trio the first the
    scheduler runs), and the others queue again in their old order."""
    mesh = SpawnGateMesh()
    log: list[str] = []
    async with open_service(
        Gated, log, num_replicas=1, mesh=mesh, replica_max_concurrent_requests=1,
        health_poll_rate=0.01, restart_backoff=0.001,
    ) as svc:  # fmt: skip
        mesh.spawn_gate = anyio.Event()
        mesh.crash(0)
        await wait_for(lambda: not svc.replicas[0].healthy)
        async with anyio.create_task_group() as tg:
            for n, tag in enumerate(WAITERS, 1):
                tg.start_soon(svc.hold.route, tag)
                await wait_for(lambda n=n: svc.statistics().queue_depth == n)  # type: ignore[misc]
            mesh.spawn_gate.set()  # the replica comes back: every waiter is woken
            await wait_for(lambda: len(log) == 1)
            for n in range(1, len(WAITERS)):
                mesh.actor(0).gate(log[-1]).set()  # free the slot for the next one
                await wait_for(lambda n=n: len(log) == n + 1)  # type: ignore[misc]
            mesh.actor(0).gate(log[-1]).set()
        first, rest = log[0], log[1:]
        assert rest == [t for t in WAITERS if t != first]
        if sniffio.current_async_library() == "asyncio":
            assert first == WAITERS[0]
