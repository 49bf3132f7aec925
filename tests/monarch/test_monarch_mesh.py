"""MonarchMesh on real processes: spawn, call, ping, stop, death, spawn failures."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from forge_sc.mesh import GpuPool, MeshReplica, NotEnoughGpusError, ReplicaGone
from forge_sc.mesh import _faults as faults_mod
from forge_sc.mesh import monarch as monarch_mod
from forge_sc.mesh._bridge import pending_relays
from forge_sc.mesh.monarch import MonarchMesh, ReplicaStartError

from ..conftest import wait_for
from ._support import live_descendants, pid_alive, spawn, wait_until
from .monarch_actors import BadInit, BoomError, SyncWorker, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]

_ROOT = str(Path(__file__).resolve().parents[2])


async def test_spawn_call_ping_stop(mesh: MonarchMesh) -> None:
    replica = await spawn(mesh, Worker, 5, kwargs={"tag": "t"})
    assert isinstance(replica, MeshReplica)
    assert replica.detaches_on_cancel
    assert await replica.call("value", (), {}) == 5
    assert await replica.call("get_tag", (), {}) == "t"
    assert await replica.call("incr", (), {}) == 6
    assert await replica.call("echo", ({"a": [1, 2]},), {}) == {"a": [1, 2]}
    assert await replica.call("echo", (None,), {}) is None
    await replica.ping()
    pid = await replica.call("pid", (), {})
    assert pid != os.getpid() and pid_alive(pid)

    await replica.stop()
    assert wait_until(lambda: not pid_alive(pid))
    with pytest.raises(ReplicaGone, match="stopped"):
        await replica.call("value", (), {})
    with pytest.raises(ReplicaGone):
        await replica.ping()
    await replica.stop()  # idempotent
    with anyio.move_on_after(0.2) as scope:  # a stopped replica never reports death
        await replica.wait_dead()
    assert scope.cancelled_caught


async def test_actor_module_found_through_runtime_sys_path(mesh: MonarchMesh) -> None:
    # This module was importable only because pytest put its root on sys.path at run
    # time; the child got that path through PYTHONPATH.
    root = _ROOT
    assert root in sys.path
    replica = await spawn(mesh, Worker)
    try:
        child_path = await replica.call("env", ("PYTHONPATH",), {})
        assert root in child_path.split(os.pathsep)
    finally:
        await replica.stop()


async def test_user_exception_keeps_type_and_remote_traceback(mesh: MonarchMesh) -> None:
    replica = await spawn(mesh, Worker, 1)
    try:
        with pytest.raises(BoomError) as info:
            await replica.call("fail", ("kaput",), {})
        assert str(info.value) == "kaput"
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "remote call failed" in notes
        assert "monarch_actors.py" in notes and "in fail" in notes
        # A user error does not hurt the replica.
        assert await replica.call("value", (), {}) == 1
        await replica.ping()
    finally:
        await replica.stop()


@pytest.mark.parametrize("kind", ["lock", "two-args"])
async def test_an_exception_that_cannot_travel_is_named_and_spares_the_replica(
    mesh: MonarchMesh, kind: str
) -> None:
    # Unpicklable, it would end the actor on Monarch; not rebuildable, it would reach
    # the caller as an unrelated TypeError. Either way: a RuntimeError naming it.
    replica = await spawn(mesh, Worker, 1)
    try:
        with pytest.raises(RuntimeError, match="cannot be sent back to the caller") as info:
            await replica.call("fail_unsendable", (kind,), {})
        assert ("LockedError" if kind == "lock" else "TwoArgError") in str(info.value)
        assert await replica.call("value", (), {}) == 1  # the replica lives
    finally:
        await replica.stop()


@pytest.mark.parametrize("how", ["stop", "sigkill"])
async def test_processes_an_endpoint_started_end_with_the_replica(
    mesh: MonarchMesh, how: str
) -> None:
    replica = await spawn(mesh, Worker, 1)
    try:
        child = await replica.call("start_child", (), {})
        assert pid_alive(child)
        if how == "sigkill":  # the replica's process dies; its child is reparented
            os.kill(await replica.call("pid", (), {}), signal.SIGKILL)
            with anyio.fail_after(30):
                await replica.wait_dead()
    finally:
        await replica.stop()
    assert wait_until(lambda: not pid_alive(child))


async def test_all_ranks_or_first_rank(mesh: MonarchMesh) -> None:
    every = await spawn(mesh, Worker, procs=2, return_first_rank_result=False)
    first = await spawn(mesh, Worker, idx=1, procs=2)
    try:
        assert await every.call("rank", (), {}) == [0, 1]
        pids = await every.call("pid", (), {})
        assert len(set(pids)) == 2
        assert await first.call("rank", (), {}) == 0
        await every.ping()
    finally:
        await every.stop()
        await first.stop()


async def test_single_process_all_ranks_is_a_list(mesh: MonarchMesh) -> None:
    replica = await spawn(mesh, Worker, 3, return_first_rank_result=False)
    try:
        assert await replica.call("value", (), {}) == [3]
    finally:
        await replica.stop()


async def test_sync_actor(mesh: MonarchMesh) -> None:
    replica = await spawn(mesh, SyncWorker, 7)
    try:
        assert await replica.call("value", (), {}) == 7
        await replica.ping()
    finally:
        await replica.stop()


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd-only", "fault-hook-only"])
async def test_sigkill_from_outside_is_noticed(
    mesh: MonarchMesh, pidfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the two detection paths notices a SIGKILL on its own: the process's
    pidfd with Monarch's fault hook cut off, or the fault hook with no pidfd. How
    fast each is, is a figure of ``bench/bench_reroute.py``, not a margin here (under
    load Monarch's report can take seconds)."""
    if pidfd:
        monkeypatch.setattr(faults_mod, "register", lambda name, listener: None)
    else:
        monkeypatch.setattr(monarch_mod, "_open_pidfd", lambda pid: None)
    replica = await spawn(mesh, Worker)
    assert bool(replica._pidfds) is pidfd
    pid = await replica.call("pid", (), {})
    failures: list[BaseException] = []

    async def in_flight() -> None:
        try:
            # Far longer than the bound below: only the death can end it in time.
            await replica.call("nap", (60,), {})
        except ReplicaGone as exc:
            failures.append(exc)

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(in_flight)
                await anyio.sleep(0.1)  # let the call reach the actor
                os.kill(pid, signal.SIGKILL)
                reason = await replica.wait_dead()
        assert isinstance(reason, ReplicaGone)
        assert "died" in str(reason)
        assert len(failures) == 1  # the in-flight call failed; it did not hang
        with pytest.raises(ReplicaGone):
            await replica.call("value", (), {})
        with pytest.raises(ReplicaGone):
            await replica.ping()
        await replica.stop()
        assert replica.death is reason
        if pidfd:
            # Which process; how it ended only if Monarch had not reaped it yet (that
            # status comes with Monarch's report, cut off here).
            assert f"process {pid}" in str(reason)
        else:
            assert "sig=9" in str(reason)  # Monarch's report: "Killed(sig=9)"
    finally:
        await replica.stop()


async def test_exit_inside_endpoint(mesh: MonarchMesh) -> None:
    replica = await spawn(mesh, Worker)
    try:
        with anyio.fail_after(10):
            with pytest.raises(ReplicaGone):
                await replica.call("exit_now", (3,), {})
            reason = await replica.wait_dead()
        assert "died" in str(reason)
        # The pidfd may see the exit before Monarch reports it; stop() waits for
        # Monarch's report, which says how the process ended.
        await replica.stop()
        assert replica.death is reason
        assert "code 3" in str(reason)
    finally:
        await replica.stop()


async def test_stop_interrupts_in_flight_calls_at_once(mesh: MonarchMesh) -> None:
    replica = await spawn(mesh, Worker)
    gone: list[float] = []

    async def in_flight() -> None:
        with pytest.raises(ReplicaGone):
            await replica.call("nap", (30,), {})
        gone.append(time.monotonic())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(in_flight)
            await anyio.sleep(0.1)
            t0 = time.monotonic()
            await replica.stop()
            stopped = time.monotonic()
    assert len(gone) == 3
    # Ended by the stop (after it began, before it returned), not by their 30 s naps;
    # how fast is bench_reroute's to say, not a wall-clock margin here.
    assert all(t0 <= t <= stopped for t in gone)


async def test_cancelled_call_is_abandoned_then_settled_once(mesh: MonarchMesh) -> None:
    settled: list[int] = []
    event = anyio.Event()

    def on_settled() -> None:
        settled.append(threading.get_ident())
        event.set()

    replica = await spawn(mesh, Worker, on_abandoned_settled=on_settled)
    try:
        with anyio.move_on_after(0.05) as scope:
            await replica.call("nap", (1.5,), {})  # outlasts the deadline on a busy machine
        assert scope.cancelled_caught
        assert settled == []  # the remote call is still running
        with anyio.fail_after(5):
            await event.wait()
        assert settled == [threading.get_ident()]  # once, on the event loop thread
        assert await replica.call("value", (), {}) == 0
        assert settled == [threading.get_ident()]
    finally:
        await replica.stop()


async def test_many_concurrent_calls(mesh: MonarchMesh) -> None:
    before = pending_relays()  # only this test's (see test_monarch_bridge)
    replica = await spawn(mesh, Worker)
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        results[i] = await replica.call("echo", (i,), {})

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, i)
        assert results == {i: i for i in range(200)}
    finally:
        await replica.stop()
    assert pending_relays() == before


async def test_constructor_failure_is_a_clear_spawn_error(mesh: MonarchMesh) -> None:
    before = live_descendants()
    with pytest.raises(ReplicaStartError) as info:
        await spawn(mesh, BadInit, "no config", idx=4)
    message = str(info.value)
    assert "replica 4 (BadInit) failed to start: ValueError: bad init: no config" in message
    assert "monarch_actors.py" in message  # the constructor's traceback
    assert wait_until(lambda: not (live_descendants() - before))


async def test_unimportable_module_is_a_clear_spawn_error(
    mesh: MonarchMesh, tmp_path: Path
) -> None:
    # A module loaded by file path: the parent has it, no child can import it.
    source = tmp_path / "hidden_actor_mod.py"
    source.write_text(
        "from forge_sc import ForgeActor, endpoint\n"
        "class Hidden(ForgeActor):\n"
        "    @endpoint\n"
        "    async def value(self) -> int:\n"
        "        return 1\n"
    )
    spec = importlib.util.spec_from_file_location("hidden_actor_mod", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hidden_actor_mod"] = module
    try:
        spec.loader.exec_module(module)
        with pytest.raises(ReplicaStartError) as info:
            await spawn(mesh, module.Hidden)
    finally:
        del sys.modules["hidden_actor_mod"]
    message = str(info.value)
    assert "ModuleNotFoundError: No module named 'hidden_actor_mod'" in message
    assert "PYTHONPATH" in message


async def test_constructor_arguments_are_checked_before_any_process(mesh: MonarchMesh) -> None:
    before = live_descendants()
    with pytest.raises(TypeError, match=r"Worker\(\) cannot take these arguments"):
        await spawn(mesh, Worker, 1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        await spawn(mesh, Worker, kwargs={"nope": 1})
    assert live_descendants() == before


async def test_gpus_are_disjoint_and_released() -> None:
    pool = GpuPool(["3", "5"])
    gpu_mesh = MonarchMesh(gpu_pool=pool)
    a = await spawn(gpu_mesh, Worker, with_gpus=True)
    b = await spawn(gpu_mesh, Worker, idx=1, with_gpus=True)
    try:
        assert await a.call("env", ("CUDA_VISIBLE_DEVICES",), {}) == "3"
        assert await b.call("env", ("CUDA_VISIBLE_DEVICES",), {}) == "5"
        before = live_descendants()
        with pytest.raises(NotEnoughGpusError, match="needs 1 GPU"):
            await spawn(gpu_mesh, Worker, idx=2, with_gpus=True)
        assert live_descendants() == before  # failed before starting any process
        await a.stop()
        c = await spawn(gpu_mesh, Worker, idx=2, with_gpus=True)
        assert await c.call("env", ("CUDA_VISIBLE_DEVICES",), {}) == "3"
        await c.stop()
    finally:
        await a.stop()
        await b.stop()
    assert pool.free == 2


async def test_two_hosts_on_a_process_job(mesh: MonarchMesh) -> None:
    replica = await spawn(mesh, Worker, 2, hosts=2, procs=1, return_first_rank_result=False)
    try:
        assert await replica.call("value", (), {}) == [2, 2]
        pids = await replica.call("pid", (), {})
        assert len(set(pids)) == 2
        await replica.ping()
    finally:
        await replica.stop()
    assert wait_until(lambda: not any(pid_alive(p) for p in pids))


async def test_late_failure_after_stop_is_dropped(
    mesh: MonarchMesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="forge_sc.mesh._faults")
    replica = await spawn(mesh, Worker)
    pid = await replica.call("pid", (), {})
    os.kill(pid, signal.SIGKILL)
    await replica.stop()  # Monarch reports the kill after this returned
    await wait_for(lambda: any("late failure" in r.getMessage() for r in caplog.records))
    with anyio.move_on_after(0.1) as scope:
        await replica.wait_dead()  # stopped first: not reported as a death
    assert scope.cancelled_caught
