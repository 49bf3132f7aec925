"""The Monarch halves of the mesh adversarial tests (``tests/adversarial``): the
endpoint-kind table, a request that kills its replica, a SIGSTOPped replica, imports
in the replicas' processes, misuse."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from forge_sc import Service, open_service
from forge_sc.errors import RequestKilledReplicaError, ServiceFailedError
from forge_sc.mesh import ReplicaStartError
from forge_sc.mesh.monarch import STOP_GRACE, MonarchMesh

from ..adversarial.mesh_actors import BASE_EXCEPTIONS, InitBoom, Poison, Reader
from ..adversarial.mesh_cases import CASES, Case, run_case
from ..conftest import wait_for
from ._support import STEADY_HEALTH_TIMEOUT, live_descendants, pid_alive, proc_stat, spawn
from .service_actors import SlowInit

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]


def _init_pids(marker_dir: Path) -> list[int]:
    """The pids whose SlowInit constructor started (a file ``init-<pid>`` each)."""
    return [int(p.name.split("-")[1]) for p in marker_dir.glob("init-*")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_endpoint_kind_behaves_as_on_fakemesh(case: Case) -> None:
    await run_case(case, None, silent_for=1.0)


@pytest.mark.parametrize("kind", sorted(BASE_EXCEPTIONS))
async def test_a_request_that_kills_its_replica_is_not_re_sent(kind: str) -> None:
    async with open_service(
        Poison, max_restarts=2, restart_backoff=0.01, health_timeout=STEADY_HEALTH_TIMEOUT
    ) as svc:
        first = await svc.os_pid.route()
        with anyio.fail_after(30):
            with pytest.raises(RequestKilledReplicaError) as info:
                await svc.poison.route(kind)
            assert await svc.echo.route(7) == 7
        assert f"{BASE_EXCEPTIONS[kind].__name__}: poison: {kind}," in str(info.value)
        assert "Raise an Exception subclass instead" in str(info.value)
        assert await svc.os_pid.route() != first
        stats = svc.statistics()
        assert (stats.restarts, stats.retries) == (1, 0), stats


async def test_requests_queued_behind_the_poison_are_retried() -> None:
    # One process: the calls run one at a time in the order sent; the one before the
    # poison answered, the ones after it were queued there and go to the new one.
    async with open_service(
        Poison, max_restarts=2, restart_backoff=0.01, health_timeout=STEADY_HEALTH_TIMEOUT
    ) as svc:
        answers: list[int] = []
        errors: list[BaseException] = []

        async def echo(x: int) -> None:
            answers.append(await svc.slow_echo.route(x, 0.1))

        async def poison() -> None:
            try:
                await svc.poison.route("custom", 0.1)
            except RequestKilledReplicaError as exc:
                errors.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(echo, 0)
                await wait_for(lambda: svc.statistics().active_requests == 1)
                tg.start_soon(poison)
                await wait_for(lambda: svc.statistics().active_requests == 2)
                for x in (1, 2, 3):
                    tg.start_soon(echo, x)
        assert sorted(answers) == [0, 1, 2, 3]
        assert len(errors) == 1
        stats = svc.statistics()
        assert stats.restarts == 1 and stats.retries == 3, stats


async def test_a_poisoned_batch_fails_its_callers_once() -> None:
    async with open_service(
        Poison, max_restarts=2, restart_backoff=0.01, health_timeout=STEADY_HEALTH_TIMEOUT
    ) as svc:
        outcomes: list[object] = []

        async def one(x: int) -> None:
            try:
                outcomes.append(await svc.batch.route(x))
            except RequestKilledReplicaError as exc:
                outcomes.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for x in (1, 2, -1, 3):
                    tg.start_soon(one, x)
            assert await svc.batch.route(5) == 5
        assert all(isinstance(o, RequestKilledReplicaError) for o in outcomes), outcomes
        assert len(outcomes) == 4
        assert svc.statistics().restarts == 1


async def test_a_sigstopped_replica_is_replaced_and_the_service_closes_in_time() -> None:
    # The bounds are forge_sc's own: noticing a hang (a poll plus health_timeout) and
    # closing (graceful, then a kill). Spawning the replacement is Monarch's and the
    # machine's time, so it is waited for, not bounded (under load it takes seconds).
    health_timeout, graceful = 0.5, 1.0
    bound = health_timeout + graceful + 2.0
    outcomes: list[object] = []

    async def fanout_outside_the_block(svc: Service) -> None:
        try:
            outcomes.append(await svc.echo.fanout(1))
        except Exception as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as outer:
        async with open_service(
            Poison,
            num_replicas=2,
            health_poll_rate=0.1,
            health_timeout=health_timeout,
            graceful_shutdown_timeout=graceful,
            restart_backoff=0.01,
        ) as svc:
            pids = await svc.os_pid.fanout()
            t0 = time.monotonic()
            os.kill(pids[0], signal.SIGSTOP)
            with anyio.fail_after(60):
                await wait_for(lambda: not svc.replicas[0].healthy, timeout=60)
                noticed = time.monotonic() - t0
                await wait_for(lambda: svc.replicas[0].restarts == 1, timeout=60)
                await wait_for(lambda: svc.replicas[0].healthy, timeout=60)
            assert (await svc.os_pid.fanout())[1] == pids[1]
            assert not pid_alive(pids[0])
            # Stop the new one too, and leave while a request waits on it.
            stopped = (await svc.os_pid.fanout())[0]
            os.kill(stopped, signal.SIGSTOP)
            outer.start_soon(fanout_outside_the_block, svc)
            await wait_for(lambda: svc.statistics().active_requests >= 1)
            t1 = time.monotonic()
        closed = time.monotonic() - t1
    assert noticed <= bound, f"noticed after {noticed:.2f}s (bound {bound}s)"
    assert closed <= bound, f"closed after {closed:.2f}s (bound {bound}s)"
    assert not pid_alive(stopped)
    assert len(outcomes) == 1


def _stopped(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] == "T"


@pytest.mark.parametrize("when", ["in its constructor", "before it answers anything"])
async def test_a_replica_sigstopped_while_it_starts_is_stopped_at_once(
    mesh: MonarchMesh, tmp_path: Path, when: str
) -> None:
    # A stopped process cannot answer: stopping the replica kills it at once, also
    # before its health actor told its pid (its processes are then found by a tag in
    # their environment). Monarch's own stop would wait ~20 s.
    (tmp_path / "delay").write_text("60")
    before = live_descendants()
    stopped_at = 0.0

    def new_process() -> list[int]:
        if when == "in its constructor":
            return _init_pids(tmp_path)
        return sorted(live_descendants() - before)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:

            async def stop_it_when_it_starts() -> None:
                nonlocal stopped_at
                await wait_for(lambda: bool(new_process()), timeout=60)
                pid = new_process()[0]
                os.kill(pid, signal.SIGSTOP)
                await wait_for(lambda: _stopped(pid), timeout=10)
                stopped_at = time.monotonic()
                tg.cancel_scope.cancel()  # the spawn is cancelled: it stops the replica

            tg.start_soon(stop_it_when_it_starts)
            await spawn(mesh, SlowInit, str(tmp_path))
    took = time.monotonic() - stopped_at
    assert took < STOP_GRACE, f"the half-built replica took {took:.2f}s to stop"


async def test_the_replica_process_has_forge_sc_imported_before_the_actor_module() -> None:
    # The user's actor and the health actor are built on two threads at once; if both
    # import forge_sc then, Python's import locks can deadlock (_DeadlockError).
    async with open_service(Reader, num_replicas=3) as svc:
        assert await svc.forge_sc_was_imported.fanout() == [True, True, True]


async def test_a_constructor_raising_a_base_exception_fails_the_start_plainly() -> None:
    with anyio.fail_after(60), pytest.raises(ServiceFailedError) as info:
        async with open_service(InitBoom):
            pass
    cause = info.value.__cause__
    assert isinstance(cause, ReplicaStartError), repr(cause)
    assert "Boom: constructor boom" in str(cause)


async def test_an_open_text_file_argument_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello")
    async with open_service(Reader, health_timeout=STEADY_HEALTH_TIMEOUT) as svc:
        with path.open() as f:
            with pytest.raises(TypeError, match="is an open text file"):
                await svc.read.route(f)
            with pytest.raises(TypeError, match="is an open text file"):
                await svc.read.route(f=f)
        # What can travel does: a file's contents, an in-memory stream.
        assert await svc.read.route(io.StringIO(path.read_text())) == "StringIO: hello"
        assert svc.statistics().restarts == 0


_MAIN_POISON = """
import anyio
from forge_sc import ForgeActor, endpoint, open_service
from forge_sc.errors import RequestKilledReplicaError


class InMain(ForgeActor):  # defined in __main__: the replica gets it by value
    @endpoint
    async def poison(self) -> None:
        raise KeyboardInterrupt

    @endpoint
    async def value(self) -> int:
        return 1


async def main() -> None:
    async with open_service(InMain, max_attempts=3, restart_backoff=0.01) as svc:
        with anyio.fail_after(60):
            try:
                await svc.poison.route()
            except RequestKilledReplicaError:
                print("killed-not-resent", svc.statistics().retries)
            assert await svc.value.route() == 1


anyio.run(main)
"""


def test_a_poison_request_of_an_actor_defined_in_main_is_not_re_sent(tmp_path: Path) -> None:
    """The replica runs a class defined in the script's __main__ as code sent by value
    (cloudpickle names its file "<dynamic-code>"): the call that killed the replica is
    still recognised as the culprit, not re-sent max_attempts times."""
    script = tmp_path / "poison_in_main.py"
    script.write_text(_MAIN_POISON)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "killed-not-resent 0" in proc.stdout, proc.stdout + proc.stderr
