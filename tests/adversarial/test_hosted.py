"""The ``as_service()`` handle under hostile use: its service runs in a host thread
of its own, and whatever a caller does from its side of the thread must end as it
would with ``open_service``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from forge_sc import ForgeActor, Router, endpoint, service_endpoint
from forge_sc.testing import FakeMesh

from ..conftest import wait_for

pytestmark = pytest.mark.anyio

_HANDLES: dict[str, Any] = {}  # for endpoints that call their own service


class _Interrupting(Router):
    def get_replica(self, healthy_replicas: Sequence[Any], *_: Any) -> Any:
        raise KeyboardInterrupt("the router")


class Hosted(ForgeActor):
    @endpoint
    async def nap(self, seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    @service_endpoint(router=_Interrupting)
    async def interrupted(self) -> int:
        return 1

    @endpoint
    async def value(self) -> int:
        return 7

    @endpoint
    async def ask_own_service(self) -> tuple[int, int]:
        svc = _HANDLES["self"]
        return await svc.value.route(), len(svc.replicas)


class Hung(ForgeActor):
    @endpoint
    async def setup(self) -> None:
        await anyio.sleep_forever()  # a model download that never ends

    @endpoint
    async def value(self) -> int:
        return 1


def _portal_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("asyncio-portal")]


async def test_a_second_concurrent_shutdown_returns_once_the_service_has_stopped() -> None:
    before = _portal_threads()
    svc = await Hosted.options(graceful_shutdown_timeout=30.0).as_service(mesh=FakeMesh())
    returned: list[list[str]] = []

    async def shut() -> None:
        await svc.shutdown()
        returned.append([r.state.name for r in svc.replicas])  # readable at once

    async with anyio.create_task_group() as tg:
        tg.start_soon(svc.nap.route, 0.3)  # drained by the close
        await wait_for(lambda: svc.statistics().active_requests == 1)
        tg.start_soon(shut)
        tg.start_soon(shut)
    assert returned == [["STOPPED"], ["STOPPED"]]
    assert _portal_threads() == before


async def test_a_cancelled_caller_ends_a_start_up_that_hangs() -> None:
    before = _portal_threads()
    with anyio.fail_after(30):
        with anyio.move_on_after(0.3) as scope:
            await Hung.as_service(mesh=FakeMesh())
    assert scope.cancelled_caught
    assert _portal_threads() == before


async def test_a_base_exception_of_a_router_reaches_its_caller_only() -> None:
    svc = await Hosted.options(num_replicas=1).as_service(mesh=FakeMesh())
    try:
        got: list[Any] = []

        async def in_flight() -> None:
            got.append(await svc.nap.route(0.2))

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_flight)
            await wait_for(lambda: svc.statistics().active_requests == 1)
            with pytest.raises(KeyboardInterrupt, match="the router"):
                await svc.interrupted.route()
        assert got == [0.2]
        assert await svc.value.route() == 7  # the service lives on
    finally:
        await svc.shutdown()


async def test_an_endpoint_can_call_its_own_hosted_service() -> None:
    svc = await Hosted.options(num_replicas=1).as_service(mesh=FakeMesh())
    _HANDLES["self"] = svc
    try:
        assert await svc.ask_own_service.route() == (7, 1)
    finally:
        del _HANDLES["self"]
        await svc.shutdown()


def test_services_left_open_are_all_closed_at_exit_even_after_one_failed() -> None:
    """The exit hook closes every hosted service not shut down, whatever one's close
    raises (a service that had failed), before the interpreter joins its threads."""
    script = textwrap.dedent(
        """
        import atexit, threading, anyio
        from forge_sc import ForgeActor, endpoint
        from forge_sc.testing import FakeMesh

        class A(ForgeActor):
            @endpoint
            async def value(self) -> int:
                return 1

        kept = []

        async def main():
            mesh = FakeMesh()
            failed = await A.options(max_restarts=0, health_poll_rate=0.01).as_service(mesh=mesh)
            mesh.crash(0)
            with anyio.fail_after(10):
                while failed.replicas[0].state.name != "FAILED":
                    await anyio.sleep(0.01)
            kept.append(failed)
            kept.append(await A.as_service(mesh=FakeMesh()))
            user = threading.Thread(target=lambda: print("user thread joined", flush=True))
            kept.append(user)

        anyio.run(main)
        kept[2].start()

        @atexit.register
        def report():
            print("healthy one:", kept[1].replicas[0].state.name, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "user thread joined" in out.stdout
    assert "healthy one: STOPPED" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
