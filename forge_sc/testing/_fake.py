"""FakeMesh: replicas as in-process actor instances, with fault injection.

Endpoints are awaited directly in the caller's task, so a cancelled caller cancels
the endpoint itself.

Interrupting a call when its replica crashes must be cheap: an anyio cancel scope
costs 4 µs (asyncio) to 9 µs (trio) per call, more than the whole routing overhead.
On asyncio the caller's task is registered with the incarnation and cancelled
natively when the replica dies: every call is interrupted at once. On trio, where
only a cancel scope can interrupt a task, the first step of an endpoint runs with no
scope (an endpoint that never suspends finishes there) and FakeMesh learns which
endpoint functions suspend: those always run inside an interruptible scope from then
on. The one exception, on trio only, is the first call of a function that turns out
to suspend: it is interrupted when it completes (it then fails, or waits, as on a
dead or hung replica) rather than at once. ``FakeMesh(interrupt_first_calls=True)``
treats every endpoint as suspending from the start.

Everything waits through anyio, so the mesh works under trio's
``MockClock(autojump_threshold=0)``. Faults are injected by replica index and hit
the current incarnation (``crash``, ``hang``) or every later one (``slow``,
``fail_spawns``).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from contextlib import asynccontextmanager
from types import CoroutineType
from typing import Any

import anyio
import sniffio
import trio

from ..mesh import ReplicaGone, SpawnSpec
from ..service._endpoints import collect_endpoints

__all__ = ["FakeMesh", "InjectedSpawnFailure"]


class InjectedSpawnFailure(RuntimeError):
    """A spawn failed because ``FakeMesh.fail_spawns`` asked it to."""


class _Life(enum.Enum):
    ALIVE = 1
    CRASHED = 2
    HUNG = 3
    STOPPED = 4


class _Resume:
    """Await the rest of a coroutine already started with ``send`` (``yield from``)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        value = self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class FakeReplica:
    """One incarnation of an in-process replica (implements ``MeshReplica``)."""

    detaches_on_cancel = False

    def __init__(self, mesh: FakeMesh, spec: SpawnSpec, ranks: list[Any]) -> None:
        self._mesh = mesh
        self._idx = spec.idx
        self._ranks = ranks
        self._first_only = spec.return_first_rank_result
        self._fast = True  # alive, not slowed, one rank: the hot path applies
        self._fns: dict[str, Callable[..., Any]] = {
            name: s.fn for name, s in collect_endpoints(spec.actor_cls).items()
        }
        self._actor = ranks[0]
        self._multi = len(ranks) > 1
        self._asyncio = sniffio.current_async_library() == "asyncio"
        self.call = self._call_asyncio if self._asyncio else self._call_trio  # type: ignore[method-assign]
        self._tasks: set[asyncio.Task[Any] | None] = set()
        self._interrupted: set[asyncio.Task[Any] | None] = set()
        self._life = _Life.ALIVE
        self._suspends = mesh._suspends
        self._scopes: set[Any] = set()  # anyio or (trio path) native trio scopes
        self.refresh()
        self._dead = anyio.Event()
        self._stopped = anyio.Event()
        self._reason: BaseException | None = None

    async def call(self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Replaced per instance by the backend's own path (see __init__).
        raise NotImplementedError  # pragma: no cover

    async def _call_asyncio(
        self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # asyncio: the caller's task is registered with this incarnation and, if the
        # replica dies, cancelled natively (task.cancel, then uncancel here): prompt
        # interruption of every call for the price of a set insertion.
        if not self._fast:
            return await self._call_slow_path(endpoint, args, kwargs)
        result = self._fns[endpoint](self._actor, *args, **kwargs)
        if type(result) is not CoroutineType:
            return result if self._first_only else [result]
        task = asyncio.current_task()
        tasks = self._tasks
        tasks.add(task)
        try:
            value = await result
        except asyncio.CancelledError:
            if task in self._interrupted:
                self._interrupted.discard(task)
                assert task is not None
                task.uncancel()
                # Unregister before waiting: a hung replica's stop must not cancel
                # this task a second time.
                tasks.discard(task)
                return await self._after_interrupt()
            raise
        finally:
            tasks.discard(task)
        return value if self._first_only else [value]

    async def _call_trio(self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not self._fast:
            return await self._call_slow_path(endpoint, args, kwargs)
        fn = self._fns[endpoint]
        if fn in self._suspends:
            # Known to suspend: a native trio scope (6 µs; anyio's costs 9 µs),
            # entered before the endpoint's first step so that scopes nest.
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    value = await fn(self._actor, *args, **kwargs)
                finally:
                    self._scopes.discard(scope)
                return value if self._first_only else [value]
            return await self._after_interrupt()
        value = await self._run(fn, self._actor, args, kwargs)
        return value if self._first_only else [value]

    async def _run(
        self, fn: Callable[..., Any], actor: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run one endpoint, interruptibly (trio, and the slow path of asyncio)."""
        if fn in self._mesh._suspends or self._asyncio:
            # Known to suspend: run it inside a scope that crash()/stop() cancel,
            # entered before its first step so that scopes nest correctly.
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    result = fn(actor, *args, **kwargs)
                    return (await result) if inspect.isawaitable(result) else result
                finally:
                    self._scopes.discard(scope)
            return await self._after_interrupt()
        result = fn(actor, *args, **kwargs)
        if type(result) is not CoroutineType:
            return result
        try:
            first = result.send(None)
        except StopIteration as stop:
            return stop.value  # finished without suspending: no scope needed
        # First time this endpoint suspends: finish it as it is (no scope can be
        # entered now without breaking scope nesting); remember it for next time.
        self._mesh._suspends.add(fn)
        value = await _Resume(result, first)
        if self._life is not _Life.ALIVE:
            return await self._after_interrupt()
        return value

    async def _after_interrupt(self) -> Any:
        if self._life is _Life.HUNG:
            await self._stopped.wait()  # a hung process never answers
        raise ReplicaGone(f"replica {self._idx} {self._life.name.lower()}")

    async def _call_slow_path(
        self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._life is not _Life.ALIVE:
            return await self._after_interrupt()
        delay = self._mesh._slow.get(self._idx, 0.0)
        if delay:
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    await anyio.sleep(delay)
                finally:
                    self._scopes.discard(scope)
            if self._life is not _Life.ALIVE:
                return await self._after_interrupt()
        fn = self._fns[endpoint]
        values = [await self._run(fn, rank, args, kwargs) for rank in self._ranks]
        return values[0] if self._first_only else values

    async def ping(self) -> None:
        if self._life is _Life.ALIVE:
            await anyio.lowlevel.checkpoint()
            return
        await self._after_interrupt()

    async def wait_dead(self) -> BaseException:
        await self._dead.wait()
        assert self._reason is not None
        return self._reason

    async def stop(self) -> None:
        if self._life is not _Life.STOPPED:
            self._end(_Life.STOPPED)
        self._stopped.set()
        await anyio.lowlevel.checkpoint()

    def refresh(self) -> None:
        """Recompute whether calls may take the hot path."""
        self._fast = (
            self._life is _Life.ALIVE and not self._multi and self._idx not in self._mesh._slow
        )

    def _end(self, life: _Life) -> None:
        self._life = life
        self._fast = False
        for scope in list(self._scopes):
            scope.cancel()
        for task in list(self._tasks):
            if task is not None and task not in self._interrupted:
                self._interrupted.add(task)
                task.cancel("forge_sc.testing: replica died")
        if life is _Life.CRASHED:
            self._reason = ReplicaGone(f"replica {self._idx} crashed (injected)")
            self._dead.set()
        if life is _Life.STOPPED:
            self._stopped.set()


class FakeMesh:
    """An in-process mesh for tests, with fault injection by replica index.

    ``FakeMesh(seed=1)`` makes the service's restart jitter deterministic.
    ``spawn_delay`` (seconds) makes spawning take time, as a real one does.
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        spawn_delay: float = 0.0,
        interrupt_first_calls: bool = False,
    ) -> None:
        self.seed = seed
        self.interrupt_first_calls = interrupt_first_calls
        self.spawn_delay = spawn_delay
        self._current: dict[int, FakeReplica] = {}
        self._spawns: dict[int, int] = {}
        self._fail: dict[int, int] = {}
        self._slow: dict[int, float] = {}
        self._suspends: set[Callable[..., Any]] = set()
        self._in_use = False

    def __repr__(self) -> str:
        return f"FakeMesh(seed={self.seed!r})"

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        if self._in_use:
            raise RuntimeError("this FakeMesh already serves a service; make one per service")
        self._in_use = True
        try:
            yield
        finally:
            self._in_use = False
            for replica in self._current.values():
                replica._end(_Life.STOPPED)

    async def spawn(self, spec: SpawnSpec) -> FakeReplica:
        idx = spec.idx
        self._spawns[idx] = self._spawns.get(idx, 0) + 1
        if self.spawn_delay:
            await anyio.sleep(self.spawn_delay)
        else:
            await anyio.lowlevel.checkpoint()
        left = self._fail.get(idx, 0)
        if left:
            self._fail[idx] = left - 1
            raise InjectedSpawnFailure(f"spawn of replica {idx} failed (injected by fail_spawns)")
        ranks = [spec.actor_cls(*spec.args, **spec.kwargs) for _ in range(spec.procs)]
        replica = FakeReplica(self, spec, ranks)
        if self.interrupt_first_calls:
            self._suspends.update(replica._fns.values())
        self._current[idx] = replica
        return replica

    # ---------------------------------------------------------------- faults

    def _live(self, idx: int) -> FakeReplica:
        replica = self._current.get(idx)
        if replica is None:
            raise KeyError(f"replica {idx} has never been spawned on this FakeMesh")
        return replica

    def crash(self, idx: int) -> None:
        """The current incarnation of replica ``idx`` dies: in-flight and later calls
        fail as on a dead process, pings fail, and the death is reported at once."""
        replica = self._live(idx)
        if replica._life is _Life.ALIVE or replica._life is _Life.HUNG:
            replica._end(_Life.CRASHED)

    def hang(self, idx: int) -> None:
        """The current incarnation stops answering: calls and pings never return
        (until the service gives up on it and stops it)."""
        replica = self._live(idx)
        if replica._life is _Life.ALIVE:
            replica._end(_Life.HUNG)

    def slow(self, idx: int, seconds: float) -> None:
        """Every call to replica ``idx`` (this and later incarnations) first waits
        ``seconds``; ``slow(idx, 0)`` ends it."""
        if seconds < 0:
            raise ValueError(f"slow() needs seconds >= 0, got {seconds}")
        if seconds:
            self._slow[idx] = seconds
        else:
            self._slow.pop(idx, None)
        replica = self._current.get(idx)
        if replica is not None:
            replica.refresh()

    def fail_spawns(self, idx: int, count: int) -> None:
        """The next ``count`` spawns of replica ``idx`` fail."""
        if count < 0:
            raise ValueError(f"fail_spawns() needs count >= 0, got {count}")
        self._fail[idx] = count

    def spawn_count(self, idx: int) -> int:
        """How many times replica ``idx`` was spawned (failed spawns included)."""
        return self._spawns.get(idx, 0)

    def actor(self, idx: int) -> Any:
        """The live in-process actor instance of replica ``idx`` (rank 0)."""
        return self._live(idx)._ranks[0]
