"""FakeMesh misuse and faults from elsewhere: one behaviour on both backends."""

from __future__ import annotations

import anyio
import pytest

from forge_sc import ForgeActor, endpoint, open_service
from forge_sc.errors import ServiceFailedError
from forge_sc.mesh import ReplicaStartError
from forge_sc.testing import FakeMesh

from ..conftest import wait_for
from .mesh_actors import Boom, InitBoom

pytestmark = pytest.mark.anyio


class Counter(ForgeActor):
    def __init__(self) -> None:
        self.v = 0

    @endpoint
    async def incr(self) -> int:
        self.v += 1
        return self.v

    @endpoint
    async def value(self) -> int:
        return self.v

    @endpoint
    async def value_after(self, seconds: float) -> int:
        """The value, after ``seconds`` if it is not 0 (a fresh actor answers at once)."""
        if self.v:
            await anyio.sleep(seconds)
        return self.v


async def test_a_constructor_raising_a_base_exception_fails_the_start_plainly() -> None:
    # One behaviour on asyncio and trio, and Monarch's: ServiceFailedError, bare,
    # caused by ReplicaStartError, caused by the constructor's exception.
    with anyio.fail_after(10), pytest.raises(ServiceFailedError) as info:
        async with open_service(InitBoom, mesh=FakeMesh(seed=1)):
            pass
    cause = info.value.__cause__
    assert isinstance(cause, ReplicaStartError), repr(cause)
    assert isinstance(cause.__cause__, Boom)
    assert "Boom: constructor boom" in str(cause)


async def test_the_mesh_class_instead_of_an_instance_is_refused() -> None:
    with pytest.raises(TypeError, match=r"mesh=FakeMesh\(\)"):
        open_service(Counter, mesh=FakeMesh)  # type: ignore[arg-type]


async def test_the_fault_api_works_from_the_thread_that_holds_the_mesh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as_service() runs the service in a host thread; the user's mesh is here. The
    # host's asyncio loop runs in debug mode, which refuses calls from another thread
    # instead of sometimes missing them; no health poll wakes it up.
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
    mesh = FakeMesh(seed=1)
    options = Counter.options(num_replicas=1, restart_backoff=0.01, health_poll_rate=60.0)
    svc = await options.as_service(mesh=mesh)
    try:
        with anyio.fail_after(10):
            assert await svc.incr.route() == 1
            got: list[int] = []
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    got.append(await svc.value_after.route(60.0))

                tg.start_soon(call)
                await wait_for(lambda: svc.statistics().active_requests == 1)
                # The incarnation dies at once, the call in flight there too: it is
                # retried on a fresh actor, which answers at once.
                mesh.crash(0)
            assert got == [0]
            assert mesh.spawn_count(0) == 2
            mesh.slow(0, 0.05)
            t0 = anyio.current_time()
            assert await svc.incr.route() == 1
            assert anyio.current_time() - t0 >= 0.05
            mesh.slow(0, 0)
            mesh.fail_spawns(0, 1)
            mesh.hang(0)  # the call is held; a restart replaces the hung incarnation
            async with anyio.create_task_group() as tg:
                tg.start_soon(svc.value.route)
                await wait_for(lambda: svc.statistics().active_requests == 1)
                await svc.restart_replica(0)  # its first spawn fails (fail_spawns)
            assert await svc.value.route() == 0
            assert mesh.spawn_count(0) == 4
            assert mesh.actor(0).v == 0
    finally:
        await svc.shutdown()
