"""FakeMesh's own contract: a crash interrupts every call on the replica where it
waits, whatever the call is doing, on both backends; a hang holds them until stop."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio

from forge_sc import ForgeActor, endpoint, open_service, service_endpoint
from forge_sc.errors import ReplicaDiedError, RequestKilledReplicaError, ServiceFailedError
from forge_sc.mesh import ReplicaGone, SpawnSpec
from forge_sc.testing import FakeMesh

from .conftest import wait_for

pytestmark = pytest.mark.anyio


class Sleeper(ForgeActor):
    def __init__(self) -> None:
        self.finished = 0
        self.mesh: FakeMesh | None = None
        self.delay = 0.0

    @endpoint
    async def nap_here(self) -> str:
        await anyio.sleep(self.delay)
        return "done"

    @endpoint
    async def nap(self, seconds: float) -> str:
        await anyio.sleep(seconds)
        self.finished += 1
        return "done"

    @endpoint
    async def nap_in_group(self, seconds: float) -> str:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, seconds)
        self.finished += 1
        return "done"

    @endpoint
    async def swallow(self, seconds: float) -> str:
        try:
            await anyio.sleep(seconds)
        except Exception:  # an endpoint's own handler must not hide the death
            return "swallowed"
        return "done"

    @endpoint
    async def crash_myself(self) -> str:
        assert self.mesh is not None
        self.mesh.crash(0)
        return "answer from a dead process"

    @endpoint
    async def wake_then_crash(self, ev: anyio.Event, gate: anyio.Event) -> str:
        await ev.wait()
        await gate.wait()
        return "done"


def spec() -> SpawnSpec:
    return SpawnSpec(idx=0, actor_cls=Sleeper, args=(), kwargs={})


async def test_crash_interrupts_calls_where_they_wait() -> None:
    mesh = FakeMesh()
    async with mesh.lifespan():
        replica = await mesh.spawn(spec())
        outcomes: list[str] = []

        async def call(name: str) -> None:
            try:
                outcomes.append(await replica.call(name, (30.0,), {}))
            except ReplicaGone:
                outcomes.append("gone")

        with anyio.fail_after(5):  # 30 s naps: only an interruption ends them in time
            async with anyio.create_task_group() as tg:
                for name in ("nap", "nap_in_group", "swallow"):
                    tg.start_soon(call, name)
                await wait_for(lambda: len(replica.calls) == 3)
                mesh.crash(0)
        assert outcomes == ["gone", "gone", "gone"]
        assert mesh.actor(0).finished == 0
        assert isinstance(await replica.wait_dead(), ReplicaGone)


async def test_crash_while_the_call_is_runnable_interrupts_at_its_next_wait() -> None:
    mesh = FakeMesh()
    async with mesh.lifespan():
        replica = await mesh.spawn(spec())
        ev, gate = anyio.Event(), anyio.Event()
        outcome: list[str] = []

        async def call() -> None:
            try:
                outcome.append(await replica.call("wake_then_crash", (ev, gate), {}))
            except ReplicaGone:
                outcome.append("gone")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wait_for(lambda: len(replica.calls) == 1)
                ev.set()  # the call is now runnable, not waiting
                mesh.crash(0)  # ...and is interrupted as soon as it waits on the gate
        assert outcome == ["gone"]


async def test_a_call_that_crashes_its_own_replica_gets_no_answer() -> None:
    mesh = FakeMesh()
    async with mesh.lifespan():
        replica = await mesh.spawn(spec())
        mesh.actor(0).mesh = mesh
        with pytest.raises(ReplicaGone):
            await replica.call("crash_myself", (), {})
        await anyio.lowlevel.checkpoint()  # no stray cancellation is left pending on this task


async def test_hang_holds_calls_until_the_replica_is_stopped() -> None:
    mesh = FakeMesh()
    async with mesh.lifespan():
        replica = await mesh.spawn(spec())
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                # Long enough to be seen in flight on a busy machine (a 10 ms nap
                # could end before the test looked).
                await replica.call("nap", (0.2,), {})
            except ReplicaGone as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_for(lambda: len(replica.calls) == 1)
            mesh.hang(0)
            with anyio.move_on_after(0.4):
                await replica.ping()  # a hung replica does not answer pings either
            assert errors == []  # the nap is long over, but no answer comes
            await replica.stop()
        assert len(errors) == 1


def test_trio_internals_used_for_interruption_are_still_there() -> None:
    """FakeMesh interrupts trio tasks through the abort hook of the task's current
    wait (``Task._abort_func`` and ``Task._attempt_abort``: trio's own cancellation
    path). If trio renames them, this fails first and says so."""
    from trio._core._run import Task

    assert callable(getattr(Task, "_attempt_abort", None)), "trio.Task._attempt_abort is gone"
    fields = {a.name for a in Task.__attrs_attrs__}
    assert "_abort_func" in fields, "trio.Task._abort_func is gone"


class OwnCancel(ForgeActor):
    @endpoint
    async def own_cancel(self) -> None:
        raise asyncio.CancelledError  # as from a cancelled future it awaited

    @endpoint
    async def ok(self, x: int) -> int:
        return x

    @service_endpoint(batch_size=4, batch_timeout=0.001)
    async def batched(self, xs: list[int]) -> list[int]:
        if xs[0] < 0:
            raise asyncio.CancelledError
        return xs


class SyncOwnCancel(ForgeActor):
    @endpoint
    def own_cancel(self) -> None:
        raise asyncio.CancelledError


FAST = dict(health_poll_rate=0.01, health_timeout=0.05, restart_backoff=0.001)


async def test_an_endpoints_own_cancelled_error_is_an_error_of_that_call() -> None:
    # Not a cancellation of the caller: the call fails with a RuntimeError that says
    # what happened, the replica lives (on Monarch too: forge_sc's wrapper in the
    # replica keeps it from ending the actor), and the batcher goes on serving.
    async with open_service(
        OwnCancel, num_replicas=2, mesh=FakeMesh(), max_attempts=1, **FAST
    ) as svc:
        with anyio.fail_after(10):
            with pytest.raises(RuntimeError, match="CancelledError of its own"):
                await svc.own_cancel.route()
            with pytest.raises(RuntimeError, match="CancelledError of its own"):
                await svc.batched.route(-1)
            assert await svc.ok.route(3) == 3
            assert await svc.batched.route(4) == 4
        stats = svc.statistics()
        assert (stats.failed_requests, stats.restarts, stats.retries) == (2, 0, 0)
        assert all(r.healthy for r in svc.replicas)


async def test_a_plain_defs_cancelled_error_kills_its_replica_as_on_monarch() -> None:
    async with open_service(SyncOwnCancel, num_replicas=1, mesh=FakeMesh(), **FAST) as svc:
        with anyio.fail_after(10), pytest.raises(RequestKilledReplicaError):
            await svc.own_cancel.route()


class Inner(ForgeActor):
    @endpoint
    async def slow(self) -> str:
        await anyio.sleep(30)
        return "inner"  # pragma: no cover


class Outer(ForgeActor):
    inner: Any = None  # the inner service, set by the test

    @endpoint
    async def outer(self) -> str:
        return str(await Outer.inner.slow.route())


async def test_a_crash_interrupts_only_the_dead_replicas_call_of_a_nested_service() -> None:
    # An endpoint that routes to another service: its task runs a call on both meshes.
    # Crashing the outer replica must not read as a death of the inner one.
    inner_mesh, outer_mesh = FakeMesh(), FakeMesh()
    async with (
        open_service(Inner, num_replicas=1, mesh=inner_mesh, **FAST) as inner,
        open_service(Outer, num_replicas=1, mesh=outer_mesh, max_attempts=1, **FAST) as outer,
    ):
        Outer.inner = inner
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    with pytest.raises(ReplicaDiedError):
                        await outer.outer.route()

                tg.start_soon(call)
                await wait_for(lambda: inner.replicas[0].active_requests == 1)
                outer_mesh.crash(0)
        await wait_for(lambda: inner.replicas[0].active_requests == 0)
        stats = inner.statistics()
        assert (stats.restarts, stats.failed_requests) == (0, 0)  # withdrawn, not failed
        assert inner_mesh.spawn_count(0) == 1
        assert inner.replicas[0].healthy


class Napper(ForgeActor):
    @endpoint
    async def nap(self, seconds: float) -> str:
        await anyio.sleep(seconds)
        return "inner"


class Relay(ForgeActor):
    inner: Any = None  # the inner service, set by the test

    @endpoint
    async def relay(self) -> tuple[str, str]:
        return ("outer", await Relay.inner.nap.route(0.3))

    mesh: Any = None  # its FakeMesh, set by the test

    @endpoint
    async def crash_then_raise(self) -> None:
        mesh = Relay.mesh
        mesh.crash(next(i for i in range(2) if mesh.actor(i) is self))
        raise ValueError("from a replica that had died")


async def test_both_replicas_of_a_nested_call_dying_at_once_leave_the_task_clean() -> None:
    """The caller's task is in a call on both services' replicas; both die in the
    same step. The request is re-sent on each level and answered, and the task is
    left as it was: a later timeout in it still works (on asyncio, no cancellation
    count is left behind)."""
    inner_mesh, outer_mesh = FakeMesh(seed=1), FakeMesh(seed=2)
    async with (
        open_service(Napper, num_replicas=2, mesh=inner_mesh, **FAST) as inner,
        open_service(Relay, num_replicas=2, mesh=outer_mesh, **FAST) as outer,
    ):
        Relay.inner = inner
        out: list[Any] = []

        async def call() -> None:
            out.append(await outer.relay.route())
            if sniffio.current_async_library() == "asyncio":
                task = asyncio.current_task()
                assert task is not None
                out.append(task.cancelling())
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.05):
                    await anyio.sleep(5)
            await anyio.sleep(0.01)  # no stray cancellation left either

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wait_for(lambda: inner.statistics().active_requests == 1)
                busy_outer = next(r.idx for r in outer.replicas if r.active_requests)
                busy_inner = next(r.idx for r in inner.replicas if r.active_requests)
                outer_mesh.crash(busy_outer)
                inner_mesh.crash(busy_inner)
        assert out[0] == ("outer", "inner")
        assert out[1:] in ([], [0])  # (the count, on asyncio)
        assert outer.statistics().retries == 1


async def test_an_error_raised_after_the_replica_died_is_no_answer() -> None:
    """A dead process answers nothing: what its endpoint raised after the crash does
    not reach the caller; the request is re-sent as after any death."""
    mesh = FakeMesh(seed=1)
    Relay.mesh = mesh
    async with open_service(Relay, num_replicas=2, mesh=mesh, max_attempts=1, **FAST) as svc:
        with anyio.fail_after(10), pytest.raises(ReplicaDiedError):
            await svc.crash_then_raise.route()


@pytest.mark.parametrize("procs", [1, 2], ids=["direct-call", "through-call"])
async def test_a_crash_reroutes_the_requests_waiting_on_its_replica(procs: int) -> None:
    # One rank: the service awaits the endpoint itself (FakeMesh's direct calls);
    # two: through FakeMesh's call(). The same crash must end the same way.
    mesh = FakeMesh()
    async with open_service(Sleeper, num_replicas=2, procs=procs, mesh=mesh, **FAST) as svc:
        results: list[str] = []

        async def call() -> None:
            results.append(await svc.nap_here.route())
            await anyio.lowlevel.checkpoint()  # no stray cancellation left on this task

        mesh.actor(0).delay = 60.0  # only an interruption ends these in time
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(4):  # round robin: two on each replica
                    tg.start_soon(call)
                await wait_for(lambda: svc.replicas[0].active_requests == 2)
                mesh.crash(0)
        assert results == ["done"] * 4
        stats = svc.statistics()
        assert (stats.retries, stats.failed_requests, stats.successful_requests) == (2, 0, 4)
        await wait_for(lambda: svc.replicas[0].healthy)
        assert mesh.spawn_count(0) == 2


def test_fault_injection_takes_only_sensible_values() -> None:
    mesh = FakeMesh()
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="fail_spawns"):
            mesh.fail_spawns(0, bad)
    with pytest.raises(ValueError, match="fail_spawns"):
        mesh.fail_spawns(0, -1)
    with pytest.raises(ValueError, match="spawn_delay"):
        mesh.spawn_delay = -1.0
    with pytest.raises(TypeError, match="replica index is an int"):
        mesh.spawn_count("0")
    for bad_seconds in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="finite seconds"):
            mesh.slow(0, bad_seconds)
    with pytest.raises(TypeError, match="seconds"):
        mesh.slow(0, "1")
    for bad_idx in ("0", 0.0, True):
        with pytest.raises(TypeError, match="replica index is an int"):
            mesh.crash(bad_idx)
        with pytest.raises(TypeError, match="replica index is an int"):
            mesh.slow(bad_idx, 1.0)
    for bad_delay in (-1, float("nan"), 10**400):
        with pytest.raises(ValueError, match="spawn_delay"):
            FakeMesh(spawn_delay=bad_delay)
    with pytest.raises(ValueError, match="finite seconds"):
        mesh.slow(0, 10**400)  # an int no float holds: not an OverflowError
    with pytest.raises(KeyError, match="no incarnation"):
        mesh.crash(0)
    with pytest.raises(KeyError, match="no warm spare"):
        mesh.hang(-1)
    with pytest.raises(TypeError, match="spawn_delay"):
        FakeMesh(spawn_delay="x")
    with pytest.raises(TypeError, match="seed"):
        FakeMesh(seed="1")


class GeneratorBesideAsync(ForgeActor):
    @endpoint
    async def gen(self) -> Any:
        yield 1

    @endpoint
    async def v(self) -> int:
        return 1  # pragma: no cover


async def test_a_class_monarch_refuses_names_the_users_endpoints() -> None:
    with pytest.raises(ServiceFailedError) as info:
        async with open_service(GeneratorBesideAsync, mesh=FakeMesh()):
            pass  # pragma: no cover
    message = str(info.value)
    assert "mixes both async and sync" in message  # Monarch's own words
    assert "_forge_sc" not in message  # not forge_sc's hidden tracing twins
    assert "generator endpoint(s) ['gen']" in message


class Ranks(ForgeActor):
    def __init__(self) -> None:
        self.arrived = 0

    @endpoint
    async def meet(self) -> str:
        # A collective: each rank waits for the other (the ranks share nothing here
        # but a module-level gate, as processes share a rendezvous).
        _GATE.append(self)
        if len(_GATE) == 2:
            _BOTH[0].set()
        with anyio.fail_after(10):
            await _BOTH[0].wait()
        return "met"


_GATE: list[Any] = []
_BOTH: list[anyio.Event] = []


async def test_the_ranks_of_a_replica_run_a_call_at_the_same_time() -> None:
    """As a replica's processes do: a collective of two ranks completes (run one
    after the other, the first rank waited for the second forever)."""
    _GATE.clear()
    _BOTH[:] = [anyio.Event()]
    async with open_service(
        Ranks, procs=2, return_first_rank_result=False, mesh=FakeMesh(seed=1)
    ) as svc:
        assert await svc.meet.route() == ["met", "met"]


async def _recovery_order(seed: int) -> list[tuple[int, float]]:
    mesh = FakeMesh(seed=seed)
    async with open_service(
        Sleeper, num_replicas=2, mesh=mesh, restart_backoff=2.0, health_poll_rate=0.5
    ) as svc:
        t0 = anyio.current_time()
        mesh.crash(0)
        mesh.crash(1)
        healthy: dict[int, float] = {}
        with anyio.fail_after(60):
            while len(healthy) < 2:
                for r in svc.replicas:
                    if r.healthy and r.restarts == 1 and r.idx not in healthy:
                        healthy[r.idx] = round(anyio.current_time() - t0, 6)
                await anyio.sleep(0.01)
        return sorted(healthy.items())


def test_replicas_dying_together_recover_alike_under_one_seed() -> None:
    """Each replica draws its backoff jitter from its own generator (seed, index):
    trio runs the two supervisors in either order, and the delays are the same."""
    import trio
    import trio.testing

    runs = {
        tuple(
            trio.run(_recovery_order, 11, clock=trio.testing.MockClock(autojump_threshold=0))
        )
        for _ in range(8)
    }
    assert len(runs) == 1, runs
