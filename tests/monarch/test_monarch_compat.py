"""TorchForge's API on real Monarch processes: ``setup()`` once per incarnation, and
the ``as_actor()`` handle (awaitable on asyncio and trio; shutdown leaves no process).
The seed examples themselves are in ``test_seed_examples_monarch.py``."""

from __future__ import annotations

import os
import pathlib
import signal

import anyio
import pytest
from monarch.actor import ActorError

from forge_sc import open_service
from forge_sc.errors import ServiceClosedError, ServiceFailedError

from ..conftest import wait_for
from ._support import live_descendants, pid_alive, wait_until
from .monarch_actors import BoomError, Worker
from .seed_actors import SetupError, WithSetup

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]


async def test_setup_runs_once_per_incarnation_before_the_first_request() -> None:
    async with open_service(WithSetup, num_replicas=1, restart_backoff=0.05) as svc:
        first = await svc.report.route()
        assert (first["setups"], first["setups_before_first_request"]) == (1, 1)
        os.kill(first["pid"], signal.SIGKILL)
        with anyio.fail_after(30):
            await wait_for(lambda: svc.replicas[0].restarts == 1, timeout=30)
            await wait_for(lambda: svc.replicas[0].healthy, timeout=30)
        again = await svc.report.route()
        assert again["pid"] != first["pid"]
        assert (again["setups"], again["setups_before_first_request"]) == (1, 1)


async def test_a_raising_setup_fails_open_service_with_that_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "fail").write_text("")
    before = live_descendants()
    with pytest.raises(ServiceFailedError) as info:
        async with open_service(WithSetup, str(tmp_path), num_replicas=2):
            pytest.fail("the body must not run")
    cause = info.value.__cause__
    assert isinstance(cause, SetupError)  # the user's own type, from the process
    assert "setup failed in process" in str(cause)
    assert wait_until(lambda: not (live_descendants() - before))


async def test_as_actor_runs_setup_and_fails_with_its_error(tmp_path: pathlib.Path) -> None:
    before = live_descendants()
    actor = await WithSetup.as_actor()
    try:
        assert (await actor.report.call_one())["setups_before_first_request"] == 1
    finally:
        await WithSetup.shutdown(actor)
    (tmp_path / "fail").write_text("")
    with pytest.raises(SetupError):
        await WithSetup.as_actor(str(tmp_path))
    assert wait_until(lambda: not (live_descendants() - before))


async def test_as_actor_endpoints_then_shutdown_leaves_no_process() -> None:
    before = live_descendants()
    actor = await Worker.options(procs=2).as_actor(3)
    try:
        pids = list((await actor.pid.call()).values())
        assert set(pids) == live_descendants() - before and len(pids) == 2
        assert await actor.value.choose() == 3
        assert list((await actor.incr.call()).values()) == [4, 4]
        with pytest.raises(ValueError, match="exactly 1 actor"):
            await actor.value.call_one()
        actor.incr.broadcast()
        assert list((await actor.value.call()).values()) == [5, 5]
        assert [await answer for answer in actor.value.stream()] == [5, 5]
        # An endpoint's exception arrives as Monarch raises it (as_actor is Monarch's API).
        with pytest.raises(ActorError) as info:
            await actor.fail.choose("x")
        assert isinstance(info.value.exception, BoomError)

        async with anyio.create_task_group() as tg:
            errors: list[BaseException] = []

            async def napping() -> None:
                try:
                    await actor.nap.choose(30)
                except ServiceClosedError as exc:
                    errors.append(exc)

            tg.start_soon(napping)
            await anyio.wait_all_tasks_blocked()  # the call is sent, waiting for its answer
            with anyio.fail_after(15):
                await Worker.shutdown(actor)
    finally:
        await Worker.shutdown(actor)  # idempotent: a no-op after the one above
    assert len(errors) == 1  # the running call ended with the shutdown
    assert wait_until(lambda: not any(pid_alive(p) for p in pids))
    assert wait_until(lambda: not (live_descendants() - before))
    with pytest.raises(ServiceClosedError, match="shut down"):
        await actor.value.choose()
    with pytest.raises(AttributeError, match="no endpoint 'nope'"):
        actor.nope
