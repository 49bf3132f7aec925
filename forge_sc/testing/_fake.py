"""FakeMesh: replicas as in-process actor instances, with fault injection.

Endpoints are awaited directly in the caller's task, so a cancelled caller cancels
the endpoint itself.

Interrupting a call when its replica crashes must be cheap: a cancel scope per call
costs 4 µs (asyncio) to 6-11 µs (trio), more than the whole routing overhead. So the
caller's task is registered with the incarnation (a set insertion: ``calls``, by
``call`` or, for a direct call, by the service's request path, which awaits an async
endpoint's coroutine itself: ``mesh._protocol.DirectCalls``), and when the
replica dies each registered task is interrupted where it waits: on asyncio by
``task.cancel()`` (then ``uncancel()`` here); on trio through the task's abort hook,
the same path a cancellation takes, raising a private ``_Interrupted`` instead of
``Cancelled`` (a task that is runnable at that instant is interrupted as soon as it
next waits, by a trio instrument active only while such tasks exist). A call whose
replica died while it ran never returns its result: it fails as on a dead process, or
waits, as on a hung one, until the replica is stopped.

Everything waits through anyio, so the mesh works under trio's
``MockClock(autojump_threshold=0)``. Faults are injected by replica index and hit
the current incarnation (``crash``, ``hang``) or every later one (``slow``,
``fail_spawns``); injected from another thread, they run on the service's loop.

Every endpoint kind Monarch accepts runs as Monarch runs it (the table in
:mod:`forge_sc.mesh._kinds`): plain ``def`` and ``async def`` endpoints, concurrent
ones (the user's method, unwrapped), explicit-port ones (with a port that answers the
call), generators (``TypeError``, as Monarch cannot send them). An endpoint that lets
out what ends the actor on Monarch (a ``BaseException`` that is not an ``Exception``)
kills the incarnation here too, and that call raises ``CallKilledReplica``.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import math
import threading
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from types import CoroutineType, MethodType
from typing import Any, NoReturn, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import outcome
import sniffio
import trio

from .._config import check_replica_index
from .._shims._trio import attempt_abort, current_trio_task, is_blocked
from .._spec import collect_endpoints, setup_endpoint
from ..mesh import CallKilledReplica, CallNotSent, ReplicaGone, ReplicaStartError, SpawnSpec
from ..mesh._kinds import (
    EndpointInfo,
    Kind,
    check_actor_kind,
    def_returned_coroutine,
    endpoint_kinds,
    own_cancel_error,
)
from ..mesh._protocol import CallerGone

T = TypeVar("T")

__all__ = ["FakeMesh", "InjectedSpawnFailure"]


class InjectedSpawnFailure(RuntimeError):
    """A spawn failed because ``FakeMesh.fail_spawns`` asked it to."""


class _Life(enum.Enum):
    ALIVE = 1
    CRASHED = 2
    HUNG = 3
    STOPPED = 4


def _current_task_getter() -> Callable[[], Any]:
    """A cheap ``asyncio.current_task()`` for the running loop.

    On Python 3.11 ``asyncio.current_task()`` calls ``get_running_loop()``, which
    makes a ``getpid()`` system call (~0.25 µs, more under load) on every call. The
    C implementation keeps the current task of each loop in ``asyncio.tasks.
    _current_tasks``; its ``get`` bound to this loop (a ``partial``: no Python frame)
    answers the same for a fraction of the cost. Used only where it gives the same
    answer as ``asyncio.current_task()`` right now (else, on a Python that keeps the
    current task elsewhere, ``asyncio.current_task`` itself).
    """
    loop = asyncio.get_running_loop()
    current = getattr(asyncio.tasks, "_current_tasks", None)
    task = asyncio.current_task()
    if isinstance(current, dict) and task is not None and current.get(loop) is task:
        return partial(current.get, loop)
    return asyncio.current_task


class _Interrupted(CallerGone):
    """Thrown into a trio task whose replica died under it (a BaseException, so that
    an endpoint's ``except Exception`` does not swallow it). It names that replica: a
    task can be in calls on several (an endpoint that routes to another service), and
    only the dead one's call ends with it; the others let it pass."""

    def __init__(self, replica: object) -> None:
        super().__init__(replica)
        self.replica = replica


def _raise_interrupted(replica: object) -> NoReturn:
    raise _Interrupted(replica)


def _interrupts(exc: BaseException, replica: object) -> bool:
    """Whether ``exc`` is (or, out of a nursery, carries) ``replica``'s ``_Interrupted``."""
    if isinstance(exc, _Interrupted):
        return exc.replica is replica
    return (
        isinstance(exc, BaseExceptionGroup)
        and exc.subgroup(lambda e: isinstance(e, _Interrupted) and e.replica is replica) is not None
    )


class _Fatal(BaseException):
    """What an explicit-port endpoint raised (anything it raises ends the actor)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


def _ends_the_actor(exc: BaseException, cancelled: type[BaseException]) -> bool:
    """Whether ``exc``, let out by an endpoint, ends the actor as it does on Monarch:
    a ``BaseException`` that is not an ``Exception``, unless it is (or carries) a
    cancellation of the caller or an interruption by this mesh."""
    if isinstance(exc, Exception | cancelled | _Interrupted):
        return False
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup((cancelled, _Interrupted)) is None
    return True


class _FakePort:
    """Monarch's response port, as an explicit-port endpoint sees it: the first
    ``send(value)`` or ``exception(exc)`` answers the call; until then it waits."""

    __slots__ = ("_answer", "_answered")

    def __init__(self) -> None:
        self._answered = anyio.Event()
        self._answer: outcome.Outcome[Any] | None = None

    def send(self, value: Any) -> None:
        if self._answer is None:
            self._answer = outcome.Value(value)
            self._answered.set()

    def exception(self, exc: BaseException) -> None:
        if self._answer is None:
            self._answer = outcome.Error(exc)
            self._answered.set()

    async def answer(self) -> Any:
        await self._answered.wait()
        assert self._answer is not None
        return self._answer.unwrap()


def _port_endpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def call(actor: Any, *args: Any, **kwargs: Any) -> Any:
        port = _FakePort()
        try:
            result = fn(actor, port, *args, **kwargs)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # it was not sent through the port: it ends the actor
            raise _Fatal(exc) from exc
        return await port.answer()

    return call


def _generator_endpoint(info: EndpointInfo) -> Callable[..., Any]:
    what = "async_generator" if inspect.isasyncgenfunction(info.fn) else "generator"

    def call(actor: Any, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"cannot pickle {what!r} object: endpoint {info.name!r} is a generator "
            "function, and Monarch cannot send a generator back to the caller (it "
            "raises this TypeError at every call); return a list instead"
        )

    return call


def _runner(info: EndpointInfo) -> Callable[..., Any]:
    """What FakeMesh calls for an endpoint, ``(actor, *args, **kwargs)``: the user's
    method, or an adapter that runs it as Monarch does (see ``forge_sc.mesh._kinds``)."""
    if info.kind is Kind.GENERATOR:
        return _generator_endpoint(info)
    if info.explicit_port:
        return _port_endpoint(info.fn)
    if info.kind is Kind.SYNC:
        return _def_endpoint(info)
    return info.fn


def _def_endpoint(info: EndpointInfo) -> Callable[..., Any]:
    """A plain def endpoint as Monarch runs it: its return value is the answer, and
    a coroutine is refused (Monarch cannot send one back), not awaited."""
    fn = info.fn

    def run(actor: Any, *args: Any, **kwargs: Any) -> Any:
        result = fn(actor, *args, **kwargs)
        if type(result) is CoroutineType:
            raise def_returned_coroutine(info.name, result)
        return result

    return run


class _Table:
    """One actor class's endpoints as FakeMesh runs them (computed once per class)."""

    def __init__(self, actor_cls: type[Any]) -> None:
        self.error: ValueError | None = None
        try:
            check_actor_kind(actor_cls)  # Monarch refuses to spawn such a class
        except ValueError as exc:
            self.error = exc
        kinds = endpoint_kinds(actor_cls)
        self.fns: dict[str, Callable[..., Any]] = {}
        self.infos: dict[str, EndpointInfo] = {}
        for name, spec in collect_endpoints(actor_cls).items():
            info = kinds.get(name)
            if info is None:  # not a Monarch endpoint property: call it as it is
                info = EndpointInfo(
                    name=name, kind=Kind.ASYNC, fn=spec.fn, explicit_port=False, where=("", name)
                )
            self.fns[name] = _runner(info)
            self.infos[name] = info
        #: Endpoints whose body's BaseExceptions go to the caller (the actor lives).
        self.forwards = frozenset(n for n, i in self.infos.items() if i.forwards_everything)


class _Deliver(trio.abc.Instrument):
    """Interrupts trio tasks that were runnable when their replica died, as soon as
    each next waits. Installed only while such tasks exist."""

    def __init__(self) -> None:
        self.tasks: dict[Any, FakeReplica] = {}

    def after_task_step(self, task: Any) -> None:
        replica = self.tasks.get(task)
        if replica is not None:
            if task not in replica.calls:  # its call ended meanwhile
                del self.tasks[task]
            elif is_blocked(task):  # it waits: interrupt it now
                del self.tasks[task]
                attempt_abort(task, partial(_raise_interrupted, replica))
        if not self.tasks:
            trio.lowlevel.remove_instrument(self)


class FakeReplica:
    """One incarnation of an in-process replica (implements ``MeshReplica`` and its
    direct calls, ``DirectCalls``: the service awaits an async endpoint's coroutine
    itself, registering its task in ``calls`` as ``call`` does)."""

    detaches_on_cancel = False
    #: ``DirectCalls``: the endpoints callable directly now (see ``refresh``), the
    #: tasks in a call here (direct or through ``call``), whether it lives, and a
    #: C-level getter of the current task.
    direct: dict[str, Callable[..., Any]]
    calls: set[Any]
    alive: bool
    current_task: Callable[[], Any]

    def __init__(self, mesh: FakeMesh, spec: SpawnSpec, ranks: list[Any], table: _Table) -> None:
        self._mesh = mesh
        self._idx = spec.idx
        self._ranks = ranks
        self._first_only = spec.return_first_rank_result
        self._fast = True  # alive, not slowed, one rank: the hot path applies
        self._fns = table.fns
        self._table = table
        self._actor = ranks[0]
        #: The endpoints bound to rank 0, for the hot path (one rank, alive).
        self._bound = {name: MethodType(fn, ranks[0]) for name, fn in table.fns.items()}
        # The endpoints a direct call may run: coroutine functions run as they are
        # (not an explicit-port or generator adapter).
        self._direct_fns = {
            name: self._bound[name]
            for name, info in table.infos.items()
            if table.fns[name] is info.fn and inspect.iscoroutinefunction(info.fn)
        }
        self.direct = {}
        self.alive = True
        self._multi = len(ranks) > 1
        self._asyncio = sniffio.current_async_library() == "asyncio"
        self._cancelled: type[BaseException] = (
            asyncio.CancelledError if self._asyncio else trio.Cancelled
        )
        self.call = self._call_asyncio if self._asyncio else self._call_trio  # type: ignore[method-assign]
        self.current_task = _current_task_getter() if self._asyncio else current_trio_task()
        self.calls = set()  # tasks running a call here (hot path)
        self._interrupted: set[Any] = set()  # asyncio tasks this replica cancelled
        self._life = _Life.ALIVE
        self._scopes: set[anyio.CancelScope] = set()  # calls on the slow path
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
        if not self._fast:
            return await self._call_slow_path(endpoint, args, kwargs)
        try:
            result = (
                self._bound[endpoint](*args, **kwargs) if kwargs else self._bound[endpoint](*args)
            )
        except Exception:
            raise
        except BaseException as exc:  # a plain def endpoint raised it
            if not self._ends(exc, endpoint):
                raise
            return await self._killed(endpoint, exc)
        if type(result) is not CoroutineType:
            return result if self._first_only else [result]
        task = self.current_task()
        tasks = self.calls
        tasks.add(task)
        try:
            value = await result
        except Exception:
            if not self.alive:  # died while this call ran: no answer, not this error
                tasks.discard(task)
                await self.direct_failed(endpoint, None)
            raise
        except BaseException as exc:
            # Unregistered before any wait: a hung replica's stop must not interrupt
            # this task a second time.
            tasks.discard(task)
            await self.direct_failed(endpoint, exc)
        finally:
            tasks.discard(task)
        if not self.alive:  # died while this call ran: no answer
            await self.direct_failed(endpoint, None)
        return value if self._first_only else [value]

    async def _call_trio(self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not self._fast:
            return await self._call_slow_path(endpoint, args, kwargs)
        task = self.current_task()
        tasks = self.calls
        tasks.add(task)
        try:
            value = (
                self._bound[endpoint](*args, **kwargs) if kwargs else self._bound[endpoint](*args)
            )
            if type(value) is CoroutineType:  # a plain def endpoint returns its value
                value = await value
        except Exception:
            if not self.alive:  # died while this call ran: no answer, not this error
                tasks.discard(task)
                await self.direct_failed(endpoint, None)
            raise
        except BaseException as exc:
            tasks.discard(task)
            await self.direct_failed(endpoint, exc)
        finally:
            tasks.discard(task)
        if not self.alive:  # died while this call ran: no answer
            await self.direct_failed(endpoint, None)
        return value if self._first_only else [value]

    async def direct_failed(self, endpoint: str, exc: BaseException | None) -> NoReturn:
        """A call let out ``exc`` (not an ``Exception``), or returned after this
        replica died (``exc`` None), its task already unregistered: raise what the
        caller gets. The one translation of both paths: a direct call's (through the
        service's request path) and ``call``'s own (``_call_asyncio``, ``_call_trio``)."""
        if exc is None:
            if self._asyncio:
                # If this replica cancelled the task, a call nested inside took that
                # cancellation as its own replica's (both died at once): undo this
                # replica's count, or the task stays "cancelling".
                self._take_interrupt()
            await self._after_interrupt()
        elif self._asyncio:
            if isinstance(exc, asyncio.CancelledError):
                if self._take_interrupt():
                    await self._after_interrupt()
                if self._own_cancel(exc, endpoint):
                    raise own_cancel_error(endpoint, exc) from exc
            elif self._ends(exc, endpoint):
                await self._killed(endpoint, exc)
        else:
            if _interrupts(exc, self):
                await self._after_interrupt()
            if self._own_cancel(exc, endpoint):
                raise own_cancel_error(endpoint, exc) from exc
            if self._ends(exc, endpoint):
                await self._killed(endpoint, exc)
        assert exc is not None  # _after_interrupt always raises
        raise exc

    def _take_interrupt(self) -> bool:
        """Whether this replica interrupted the current (asyncio) task; if it did,
        its cancellation is undone (``uncancel``), once."""
        task = self.current_task()
        if task not in self._interrupted:
            return False
        self._interrupted.discard(task)
        task.uncancel()
        return True

    async def _run(
        self, fn: Callable[..., Any], actor: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run one endpoint on the slow path, inside a scope that crash()/stop() cancel."""
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                result = fn(actor, *args, **kwargs)
                return (await result) if inspect.isawaitable(result) else result
            finally:
                self._scopes.discard(scope)
        return await self._after_interrupt()

    async def _run_ranks(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[Any]:
        """Every rank runs the call at the same time, as a replica's processes do (a
        collective waits for all of them); each runs it to its end, and the first
        rank's error, in rank order, is the call's."""
        outcomes: list[Any] = [None] * len(self._ranks)

        async def one(i: int, rank: Any) -> None:
            outcomes[i] = await outcome.acapture(self._run, fn, rank, args, kwargs)

        async with anyio.create_task_group() as tg:
            for i, rank in enumerate(self._ranks):
                tg.start_soon(one, i, rank)
        return [o.unwrap() for o in outcomes]

    async def _killed(self, endpoint: str, exc: BaseException) -> NoReturn:
        """The endpoint let out ``exc``, which ends the actor (as on Monarch): this
        incarnation dies as a dead process would, and this call, unlike the others
        running here, learns that it was the cause."""
        cause = exc.exc if isinstance(exc, _Fatal) else exc
        if self._life is not _Life.ALIVE:  # it was dead already: no answer
            await self._after_interrupt()
        # Worded as Monarch's report ends: the exception's last traceback line.
        what = traceback.format_exception_only(cause)[-1].strip()
        why = self._table.infos[endpoint].killed(what)
        self._end(_Life.CRASHED, ReplicaGone(f"replica {self._idx} died. {why}"))
        raise CallKilledReplica(why) from cause

    def _ends(self, exc: BaseException, endpoint: str) -> bool:
        """Whether ``exc``, let out by ``endpoint``, ends the actor (see
        ``_ends_the_actor``); a plain ``def`` awaits nothing, so a ``CancelledError``
        it raises is its own, and ends the actor as on Monarch (measured)."""
        if endpoint in self._table.forwards:
            return False
        if (
            isinstance(exc, asyncio.CancelledError)
            and self._table.infos[endpoint].kind is Kind.SYNC
        ):
            return True
        return _ends_the_actor(exc, self._cancelled)

    def _own_cancel(self, exc: BaseException, endpoint: str) -> bool:
        """Whether ``exc`` is an asyncio ``CancelledError`` that an awaiting endpoint
        raised of its own (a cancelled future it awaited), not a cancellation of its
        caller."""
        if not isinstance(exc, asyncio.CancelledError) or endpoint in self._table.forwards:
            return False
        if self._table.infos[endpoint].kind is Kind.SYNC:
            return False
        if not self._asyncio:
            return True
        task = self.current_task()
        return task is not None and not task.cancelling()

    async def _after_interrupt(self) -> NoReturn:
        if self._life is _Life.HUNG:
            await self._stopped.wait()  # a hung process never answers
        raise ReplicaGone(f"replica {self._idx} {self._life.name.lower()}")

    async def _call_slow_path(
        self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._life is not _Life.ALIVE:
            if self._life is not _Life.HUNG:  # (a hung process takes calls, never answers)
                raise CallNotSent(f"replica {self._idx} {self._life.name.lower()}")
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
        try:
            if self._multi:
                values = await self._run_ranks(fn, args, kwargs)
            else:
                values = [await self._run(fn, self._ranks[0], args, kwargs)]
        except Exception:
            if self._life is not _Life.ALIVE:  # died meanwhile: no answer, not this error
                return await self._after_interrupt()
            raise
        except BaseException as exc:
            if self._own_cancel(exc, endpoint):
                raise own_cancel_error(endpoint, exc) from exc
            if not self._ends(exc, endpoint):
                raise
            return await self._killed(endpoint, exc)
        if self._life is not _Life.ALIVE:
            return await self._after_interrupt()
        return values[0] if self._first_only else values

    async def ping(self) -> None:
        if self._life is _Life.ALIVE:
            await anyio.lowlevel.checkpoint()
            return
        await self._after_interrupt()

    @property
    def death(self) -> BaseException | None:
        return self._reason

    async def wait_dead(self) -> BaseException:
        await self._dead.wait()
        assert self._reason is not None
        return self._reason

    async def stop(self) -> None:
        if self._life is not _Life.STOPPED:
            self._end(_Life.STOPPED)
        self._stopped.set()
        await anyio.lowlevel.checkpoint()

    def promote(self, idx: int) -> None:
        """This warm spare now serves replica ``idx``: faults by index reach it."""
        self._mesh._spares.pop(self, None)
        self._idx = idx
        self._mesh._current[idx] = self
        self.refresh()

    def refresh(self) -> None:
        """Recompute whether calls may take the hot path, and which may be direct."""
        self._fast = (
            self._life is _Life.ALIVE and not self._multi and self._idx not in self._mesh._slow
        )
        if self._fast and self._first_only:
            self.direct.update(self._direct_fns)
        else:
            self.direct.clear()

    def _end(self, life: _Life, reason: ReplicaGone | None = None) -> None:
        self._life = life
        self._fast = False
        self.alive = False
        self.direct.clear()
        for scope in list(self._scopes):
            scope.cancel()
        if self.calls:
            self._interrupt_calls()
        if life is _Life.CRASHED:
            self._reason = reason or ReplicaGone(f"replica {self._idx} crashed (injected)")
            self._dead.set()
        if life is _Life.STOPPED:
            self._stopped.set()

    def _interrupt_calls(self) -> None:
        """Interrupt every task running a call here, where it waits. The task that
        is running now (one that crashed its own replica) finds out when its call
        returns."""
        if self._asyncio:
            running = asyncio.current_task()
            for task in list(self.calls):
                if task is not running and task not in self._interrupted:
                    self._interrupted.add(task)
                    task.cancel("forge_sc.testing: replica died")
            return
        try:
            current = trio.lowlevel.current_task()
        except RuntimeError:  # a fault injected from another thread, run in trio's context
            current = None
        deliver = self._mesh._deliver
        for task in list(self.calls):
            if task is current:
                continue
            if is_blocked(task):  # waiting: abort that wait
                attempt_abort(task, partial(_raise_interrupted, self))
            else:  # runnable: interrupt it at its next wait
                if not deliver.tasks:
                    trio.lowlevel.add_instrument(deliver)
                deliver.tasks[task] = self


def _seconds(what: str, value: object) -> float:
    """``value`` as a finite number of seconds >= 0, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} takes seconds (a number), got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} needs finite seconds >= 0, got {value!r}")
    return seconds


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
    ) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"FakeMesh(seed=...) takes an int or None, got {seed!r}")
        self.seed = seed
        self._spawn_delay = _seconds("FakeMesh(spawn_delay=...)", spawn_delay)
        self._current: dict[int, FakeReplica] = {}
        self._spawns: dict[int, int] = {}
        self._fail: dict[int, int] = {}
        self._slow: dict[int, float] = {}
        self._deliver = _Deliver()
        self._in_use = False
        self._tables: dict[type[Any], _Table] = {}
        # The event loop (and its thread) of the service this mesh serves: faults
        # injected from another thread run there.
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._thread: int | None = None
        # Warm spares not yet promoted, oldest first (a dict: ordered, as a set is not).
        self._spares: dict[FakeReplica, None] = {}

    @property
    def spawn_delay(self) -> float:
        """Seconds each spawn takes (settable; a finite number >= 0)."""
        return self._spawn_delay

    @spawn_delay.setter
    def spawn_delay(self, seconds: float) -> None:
        self._spawn_delay = _seconds("FakeMesh.spawn_delay", seconds)

    def __repr__(self) -> str:
        return f"FakeMesh(seed={self.seed!r})"

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        if self._in_use:
            raise RuntimeError("this FakeMesh already serves a service; make one per service")
        self._in_use = True
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.get_ident()
        try:
            yield
        finally:
            self._in_use = False
            self._token = self._thread = None
            for replica in [*self._current.values(), *self._spares]:
                replica._end(_Life.STOPPED)

    def _table(self, actor_cls: type[Any]) -> _Table:
        table = self._tables.get(actor_cls)
        if table is None:
            table = self._tables[actor_cls] = _Table(actor_cls)
        return table

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
        table = self._table(spec.actor_cls)
        if table.error is not None:  # as Monarch refuses it, before anything starts
            raise ValueError(*table.error.args)
        try:
            ranks = [spec.actor_cls(*spec.args, **spec.kwargs) for _ in range(spec.procs)]
        except Exception:
            raise
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            # On Monarch such a constructor ends the actor: the spawn fails.
            what = traceback.format_exception_only(exc)[-1].strip()
            raise ReplicaStartError(
                f"replica {idx} ({spec.actor_cls.__name__}) failed to start: its "
                f"constructor raised {what}, a BaseException that is not an Exception"
            ) from exc
        setup = setup_endpoint(spec.actor_cls)
        if setup is not None:  # once per incarnation, before it takes traffic
            for rank in ranks:
                result = setup(rank)
                if inspect.isawaitable(result):
                    await result
        replica = FakeReplica(self, spec, ranks, table)
        if spec.spare:  # filed under an index once promoted (FakeReplica.promote)
            self._spares[replica] = None
        else:
            self._current[idx] = replica
        return replica

    # ---------------------------------------------------------------- faults

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread of the service's event loop (the fault API may be
        called from another thread, e.g. where ``as_service()`` was awaited)."""
        token = self._token
        if token is None or threading.get_ident() == self._thread:
            return fn()
        try:
            return anyio.from_thread.run_sync(fn, token=token)
        except anyio.RunFinishedError:  # the service's loop has ended meanwhile
            return fn()

    def _live(self, idx: int) -> FakeReplica:
        """Replica ``idx``'s latest incarnation; for ``-1``, the oldest waiting warm
        spare (spares are spawned as index -1 until promoted)."""
        check_replica_index(idx)
        if idx == -1:
            for spare in self._spares:
                if spare._life is _Life.ALIVE:
                    return spare
            raise KeyError("no warm spare is waiting on this FakeMesh (index -1)")
        replica = self._current.get(idx)
        if replica is None:
            raise KeyError(
                f"replica {idx} has no incarnation on this FakeMesh yet (never "
                "spawned, or its first spawn has not finished)"
            )
        return replica

    def crash(self, idx: int) -> None:
        """The current incarnation of replica ``idx`` dies: in-flight and later calls
        fail as on a dead process, pings fail, and the death is reported at once.
        ``-1``: the oldest waiting warm spare dies. An incarnation dead already
        (the replica is recovering) is left as it is. Callable from any thread."""
        check_replica_index(idx)

        def crash() -> None:
            # Resolved on the loop: called from another thread, a spare (-1) chosen
            # there could be promoted meanwhile, and a replica in rotation hit.
            replica = self._live(idx)
            if replica._life is _Life.ALIVE or replica._life is _Life.HUNG:
                replica._end(_Life.CRASHED)

        self._on_loop(crash)

    def hang(self, idx: int) -> None:
        """The current incarnation stops answering: calls and pings never return
        (until the service gives up on it and stops it). ``-1``: the oldest waiting
        warm spare. Callable from any thread."""
        check_replica_index(idx)

        def hang() -> None:
            replica = self._live(idx)  # on the loop (see crash)
            if replica._life is _Life.ALIVE:
                replica._end(_Life.HUNG)

        self._on_loop(hang)

    def slow(self, idx: int, seconds: float) -> None:
        """Every call to replica ``idx`` (this and later incarnations) first waits
        ``seconds``; ``slow(idx, 0)`` ends it. Callable from any thread."""
        check_replica_index(idx)
        seconds = _seconds("slow()", seconds)

        def slow() -> None:
            if seconds:
                self._slow[idx] = seconds
            else:
                self._slow.pop(idx, None)
            replica = self._current.get(idx)
            if replica is not None:
                replica.refresh()

        self._on_loop(slow)

    def fail_spawns(self, idx: int, count: int) -> None:
        """The next ``count`` spawns of replica ``idx`` fail. Callable from any thread."""
        check_replica_index(idx)
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"fail_spawns() takes a count (an int), got {count!r}")
        if count < 0:
            raise ValueError(f"fail_spawns() needs a count >= 0, got {count!r}")

        def fail_spawns() -> None:
            self._fail[idx] = count

        self._on_loop(fail_spawns)

    def spawn_count(self, idx: int) -> int:
        """How many times replica ``idx`` was spawned (failed spawns included)."""
        check_replica_index(idx)
        return self._spawns.get(idx, 0)

    def actor(self, idx: int) -> Any:
        """The in-process actor instance (rank 0) of replica ``idx``'s latest
        incarnation: the live one while the replica runs, the dead one's after a
        crash until its replacement has started (to inspect its state). ``-1``: the
        oldest waiting warm spare's."""
        return self._live(idx)._ranks[0]
