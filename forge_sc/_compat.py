"""TorchForge-compatible entry points: ``as_actor``, ``as_service``, ``shutdown``.

``actor = await Counter.options(procs=1).as_actor(5)`` spawns the actor on new
processes (through :class:`~forge_sc.mesh.monarch.MonarchMesh`, so the import path,
readiness, ``setup()``, GPUs and spawn errors behave as for a replica) and returns a
:class:`SpawnedActor`: its endpoints have Monarch's ``choose``, ``call_one``, ``call``
(a Monarch ``ValueMesh``) and ``broadcast``, awaitable on asyncio and on trio (through
:mod:`forge_sc.mesh._bridge`, as the services' calls). ``await
Counter.shutdown(actor)`` stops its processes.

``svc = await Counter.options(num_replicas=2).as_service(5)`` returns a service with
no ``async with`` around it. A service must be owned by a task group, so this one
lives in a host of its own: an anyio blocking portal (a dedicated thread running an
asyncio loop) that enters ``open_service(...)`` and stays in it until ``await
svc.shutdown()``. The handle forwards ``route``, ``fanout`` and the rest from the
caller's loop (asyncio or trio) to that thread; a cancelled caller cancels its
request there. Prefer ``async with open_service(...)``: it needs no extra thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Mapping
from concurrent.futures import Future as ConcurrentFuture
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import outcome
import trio

from ._config import ServiceConfig
from ._open import open_service
from ._options import ActorOptions
from ._routing import Router
from ._service._context import BlockSession, EnterOnce
from ._service._handle import ServiceEndpoint
from ._service._scope import ServiceScope
from ._shims._monarch import SupervisionError
from ._spec import collect_endpoints
from .errors import ServiceClosedError
from .mesh._bridge import wait
from .mesh._protocol import SpawnSpec
from .mesh.monarch import MonarchMesh, MonarchReplica

if TYPE_CHECKING:
    from ._service import Service

__all__ = [
    "ActorEndpoint",
    "HostedService",
    "SpawnedActor",
    "shutdown_actor",
    "spawn_actor",
    "start_hosted_service",
]

T = TypeVar("T")


# ---------------------------------------------------------------- as_actor


async def spawn_actor(configured: ActorOptions, args: tuple[Any, ...], kwargs: Any) -> SpawnedActor:
    """Spawn ``configured.actor_cls(*args, **kwargs)`` on ``procs`` new processes
    (``hosts``, ``with_gpus`` honoured, the class attributes as defaults) and return
    its handle once the actor is constructed and its ``setup()``, if any, has run.
    Stop it with :func:`shutdown_actor`."""
    config = ServiceConfig(**configured.config_options())
    spec = SpawnSpec(
        idx=0,
        actor_cls=configured.actor_cls,
        args=tuple(args),
        kwargs=dict(kwargs),
        procs=config.procs,
        hosts=config.hosts,
        with_gpus=config.with_gpus,
    )
    replica = await MonarchMesh().spawn(spec)
    return SpawnedActor(replica, configured.actor_cls)


async def shutdown_actor(actor: Any) -> None:
    """Stop an actor made by :func:`spawn_actor` and its processes (idempotent)."""
    if not isinstance(actor, SpawnedActor):
        raise TypeError(f"{actor!r} was not made by as_actor(); it cannot be shut down here")
    await actor._replica.stop()


class _Sent:
    """What ``broadcast()`` returns: the message is already sent (fire and forget,
    as in Monarch); awaiting it is optional and returns None at once."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return None
        yield  # pragma: no cover - makes this a generator


_SENT = _Sent()


class ActorEndpoint:
    """``actor.<endpoint>`` of an actor made by ``as_actor()``: Monarch's endpoint
    API, every call awaitable on asyncio and trio.

    Errors are Monarch's: ``monarch.actor.ActorError`` when the endpoint raised (its
    ``.exception`` is the endpoint's own), ``SupervisionError`` (a ``RuntimeError``)
    when the actor's process died. A call made after ``ForgeActor.shutdown(actor)``,
    or still running when it was called, raises ``ServiceClosedError``.
    """

    __slots__ = ("_name", "_owner")

    def __init__(self, owner: SpawnedActor, name: str) -> None:
        self._owner = owner
        self._name = name

    def __repr__(self) -> str:
        return f"<ActorEndpoint {self._name}>"

    @property
    def name(self) -> str:
        return self._name

    def _monarch(self) -> Any:
        return self._owner._endpoint(self._name)

    async def choose(self, *args: Any, **kwargs: Any) -> Any:
        """Run on one actor of the mesh, picked at random; return its result."""
        return await self._owner._wait(self._monarch().choose(*args, **kwargs))

    async def call_one(self, *args: Any, **kwargs: Any) -> Any:
        """Run on the only actor of the mesh (``ValueError`` if it has several)."""
        return await self._owner._wait(self._monarch().call_one(*args, **kwargs))

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run on every actor; return Monarch's ``ValueMesh`` of the results
        (``list(vm.values())`` in rank order, ``vm.items()`` with their points)."""
        return await self._owner._wait(self._monarch().call(*args, **kwargs))

    def broadcast(self, *args: Any, **kwargs: Any) -> _Sent:
        """Send to every actor without waiting for anything (Monarch's fire and
        forget). Returns an awaitable that is already done."""
        self._monarch().broadcast(*args, **kwargs)
        return _SENT

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Coroutine[Any, Any, Any]]:
        """Send to every actor; yield one awaitable per actor's result."""
        for fut in self._monarch().stream(*args, **kwargs):
            yield self._owner._wait(fut)

    def route(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(_NOT_ON_ACTOR.format(verb="route"))

    def fanout(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(_NOT_ON_ACTOR.format(verb="fanout"))


_NOT_ON_ACTOR = (
    "You tried to use {verb}() on an actor made by as_actor(), not a service. Actors "
    "support choose(), call_one(), call() and broadcast(); spawn it with as_service() "
    "or open_service() for route() and fanout()."
)


class SpawnedActor:
    """The handle ``as_actor()`` returns: one :class:`ActorEndpoint` per endpoint of
    the actor class. Stop it with ``await ForgeActor.shutdown(actor)``."""

    def __init__(self, replica: MonarchReplica, actor_cls: type[Any]) -> None:
        self._replica = replica
        self._actor_cls = actor_cls
        self._names = tuple(collect_endpoints(actor_cls))
        for name in self._names:
            self.__dict__[name] = ActorEndpoint(self, name)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are neither endpoints nor attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        known = ", ".join(sorted(self._names)) or "(none)"
        raise AttributeError(
            f"{self._actor_cls.__name__} has no endpoint {name!r}; its endpoints are: "
            f"{known}. Mark the method with @endpoint or @service_endpoint."
        )

    def __repr__(self) -> str:
        state = " shut down" if self._replica._stopping else ""
        return f"<SpawnedActor {self._actor_cls.__name__} mesh={self._replica.mesh_name}{state}>"

    def _closed(self) -> ServiceClosedError:
        return ServiceClosedError(
            f"{self._actor_cls.__name__}: this actor was shut down by "
            "ForgeActor.shutdown(); spawn a new one with as_actor()"
        )

    def _endpoint(self, name: str) -> Any:
        if self._replica._stopping:
            raise self._closed()
        return getattr(self._replica._actor, name)

    async def _wait(self, fut: Any) -> Any:
        try:
            return await wait(fut)
        except SupervisionError as exc:
            if self._replica._stopping:  # "stopped by client": our own shutdown
                raise self._closed() from exc
            raise


# ---------------------------------------------------------------- as_service

#: HostedService -> session id of ``async with svc.session()``, in the caller's context
#: (the requests themselves run in the host's thread, where that context is not).
_HOSTED_SESSIONS: ContextVar[Mapping[HostedService, str]] = ContextVar("forge_sc_hosted")


async def start_hosted_service(
    configured: ActorOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> HostedService:
    """Start ``open_service(configured, *args, **kwargs)`` in a host thread of its own
    and return its handle once every replica is healthy. Errors (bad configuration,
    ``ServiceFailedError``) are raised here and leave nothing running."""
    host = _ServiceHost()
    started: list[outcome.Outcome[Service]] = []
    finished = anyio.Event()

    async def run_start() -> None:
        # Shielded: the thread is joined, never left behind; a cancelled caller
        # ends the start-up through host.cancel_start() instead.
        with anyio.CancelScope(shield=True):
            started.append(
                await outcome.acapture(
                    anyio.to_thread.run_sync, host.start, configured, args, kwargs
                )
            )
        finished.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_start)
            try:
                await finished.wait()
            except BaseException:
                host.cancel_start()
                raise
    except BaseException:
        if started and isinstance(started[0], outcome.Value):  # started meanwhile
            with anyio.CancelScope(shield=True):
                await HostedService(host, started[0].value).shutdown()
        raise
    return HostedService(host, started[0].unwrap())


class _ServiceHost:
    """The thread and loop that own one hosted service's task group."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()
        self._closed = False
        self._done = threading.Event()  # the close has ended (for a concurrent close)
        self._finished = False  # the host's loop has ended: nothing changes the service
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread: int | None = None  # the host loop's thread
        self.portal: anyio.from_thread.BlockingPortal | None = None
        self._scope: ServiceScope | None = None  # being entered, while starting
        self._start_cancelled = False

    def start(
        self, configured: ActorOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Service:
        """Worker thread: start the portal, then enter the service inside it."""
        try:
            portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal("asyncio"))
            self.portal = portal
            self._loop = portal.call(asyncio.get_running_loop)
            self.thread = portal.call(threading.get_ident)
            # Built inside the portal: the service's primitives belong to its loop.
            scope = portal.call(partial(open_service, configured, *args, **kwargs))
            with self._lock:
                self._scope = scope
                cancelled = self._start_cancelled
            if cancelled:
                portal.call(scope._cancel_start)
            svc: Service = self._stack.enter_context(portal.wrap_async_context_manager(scope))
        except BaseException:
            self._end()
            raise
        finally:
            with self._lock:
                self._scope = None
        _live_hosts.add(self)
        return svc

    def cancel_start(self) -> None:
        """Any thread: end a start-up in progress (its caller was cancelled)."""
        with self._lock:
            self._start_cancelled = True
            scope, loop = self._scope, self._loop
        if scope is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(scope._cancel_start)

    def close(self) -> None:
        """Worker thread: leave the service (graceful drain), then stop the portal."""
        with self._lock:
            first = not self._closed
            self._closed = True
        if not first:  # another caller closes it: returns once that close has ended
            self._done.wait()
            return
        _live_hosts.discard(self)
        try:
            self._end()
        finally:
            self._finished = True
            self._done.set()

    def _end(self) -> None:
        """Stop the portal (which joins its thread), then join the worker threads its
        loop ran blocking calls in: anyio tells them to stop when that loop ends but
        does not wait for them, and a shut-down service leaves no thread behind."""
        self._stack.close()
        for t in threading.enumerate():
            if self._loop is not None and getattr(t, "loop", None) is self._loop:
                t.join(timeout=10.0)

    def submit(
        self, fn: Callable[[], Coroutine[Any, Any, T]]
    ) -> ConcurrentFuture[outcome.Outcome[T]]:
        portal = self.portal
        if portal is None or self._closed:
            raise ServiceClosedError("the service was shut down; start a new one")
        try:
            return portal.start_task_soon(_boxed, fn)
        except RuntimeError as exc:  # the portal is no longer running
            raise ServiceClosedError("the service was shut down; start a new one") from exc

    def call_sync(self, fn: Callable[[], T]) -> T:
        """Run a synchronous read (``statistics()``, ``replicas``) in the host thread;
        once the service has ended there, read it here (nothing changes it any more)."""
        if self._finished or threading.get_ident() == self.thread:
            return fn()  # ended, or called from the host's own loop (an endpoint)
        portal = self.portal
        if portal is None or self._closed:
            raise ServiceClosedError(
                "the service is shutting down; read it once shutdown() has returned"
            )
        return portal.call(fn)


#: Hosts not shut down yet, held strongly: a handle dropped without ``shutdown()``
#: leaves its service running until the interpreter exits (and warns), rather than
#: having it torn down, undrained, by whichever thread the garbage collector runs in
#: (in the host's own, it could not be joined).
_live_hosts: set[_ServiceHost] = set()


async def _boxed(fn: Callable[[], Coroutine[Any, Any, T]]) -> outcome.Outcome[T]:
    """Run ``fn`` in the host's portal, its outcome boxed: a BaseException that is
    not a cancellation (a router's KeyboardInterrupt) would otherwise end the
    portal's task group, the service, and every other caller's call with it. A
    cancellation is let out (``outcome.acapture`` would box it too): it cancels
    the portal's task, which the caller's side waits on."""
    try:
        return outcome.Value(await fn())
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:
        return outcome.Error(exc)


def _close_forgotten_hosts() -> None:
    # A portal thread never shut down would keep the interpreter from exiting. Each
    # is closed whatever another's close raises (a service that had failed).
    for host in list(_live_hosts):
        try:
            host.close()
        except Exception as exc:
            logging.getLogger("forge_sc.service").warning(
                "closing a service left open at exit: %s: %s", type(exc).__name__, exc
            )


# Runs before the interpreter joins its worker threads (plain atexit runs after).
getattr(threading, "_register_atexit", lambda fn: None)(_close_forgotten_hosts)


async def _await_future(cf: ConcurrentFuture[T]) -> T:
    """Await a future of the host's thread from the caller's loop; cancelling the
    caller cancels the task behind it."""
    if not trio.lowlevel.in_trio_run():
        return await asyncio.wrap_future(cf)
    token = trio.lowlevel.current_trio_token()
    box: list[trio.lowlevel.Task | None] = [trio.lowlevel.current_task()]

    def wake() -> None:
        task = box[0]
        if task is not None:  # None: the wait was aborted
            box[0] = None
            trio.lowlevel.reschedule(task, outcome.capture(cf.result))

    def on_done(_: ConcurrentFuture[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(wake)

    def abort(_: Any) -> trio.lowlevel.Abort:
        if cf.cancel():  # still running there: the host cancels it
            box[0] = None
            return trio.lowlevel.Abort.SUCCEEDED
        return trio.lowlevel.Abort.FAILED  # finished: its outcome is on its way

    cf.add_done_callback(on_done)
    value: T = await trio.lowlevel.wait_task_rescheduled(abort)
    return value


class HostedEndpoint(ServiceEndpoint):
    """``svc.<endpoint>`` of a hosted service: ``route`` and ``fanout``, forwarded
    to the service's host thread. A :class:`ServiceEndpoint`, as TorchForge's
    ``as_service()`` endpoints are; its state is the forwarded endpoint's."""

    __slots__ = ("_ep", "_owner")

    def __init__(self, owner: HostedService, ep: ServiceEndpoint) -> None:
        # (Not ServiceEndpoint.__init__: nothing of its own runs here, it forwards.)
        self._owner = owner
        self._ep = ep

    def __repr__(self) -> str:
        return f"<HostedEndpoint {self._ep.name}>"

    @property
    def name(self) -> str:
        return str(self._ep.name)

    @property
    def router(self) -> Router:
        """The endpoint's router (it runs in the service's host thread)."""
        return self._ep.router

    @router.setter
    def router(self, router: Router) -> None:
        self._ep.router = router

    async def route(self, *args: Any, sess_id: str | None = None, **kwargs: Any) -> Any:
        """As :meth:`ServiceEndpoint.route`, run in the service's host thread."""
        if sess_id is None:
            sess_id = _HOSTED_SESSIONS.get({}).get(self._owner)
        return await self._owner._run(partial(self._ep.route, *args, sess_id=sess_id, **kwargs))

    async def __call__(self, sess_id: str | None, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`ServiceEndpoint.__call__`, run in the service's host thread."""
        if sess_id is None:  # the session() block's, if any (looked up in this task)
            return await self.route(*args, **kwargs)
        return await self._owner._run(partial(self._ep.__call__, sess_id, *args, **kwargs))

    async def fanout(self, *args: Any, **kwargs: Any) -> list[Any]:
        """As :meth:`ServiceEndpoint.fanout`, run in the service's host thread."""
        result: list[Any] = await self._owner._run(partial(self._ep.fanout, *args, **kwargs))
        return result

    def call(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._ep.call(*args, **kwargs)

    def call_one(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._ep.call_one(*args, **kwargs)

    def choose(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._ep.choose(*args, **kwargs)

    def broadcast(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._ep.broadcast(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._ep.generate(*args, **kwargs)


class HostedService:
    """The handle of a service started by ``as_service``: the :class:`Service` API,
    forwarded to the thread that hosts the service. Stop it with ``await
    svc.shutdown()`` (or ``stop()``)."""

    def __init__(self, host: _ServiceHost, svc: Service) -> None:
        self._host = host
        self._svc = svc
        self._endpoints = {name: HostedEndpoint(self, ep) for name, ep in svc._endpoints.items()}

    def __getattr__(self, name: str) -> HostedEndpoint:
        if name.startswith("_"):
            raise AttributeError(name)
        ep = self._endpoints.get(name)
        if ep is None:
            getattr(self._svc, name)  # raises the service's own AttributeError
            raise AttributeError(name)  # pragma: no cover
        return ep

    def __repr__(self) -> str:
        return f"<HostedService {self._svc!r}>"

    async def _run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if threading.get_ident() == self._host.thread:  # from an endpoint of its own
            return await fn()
        return (await _await_future(self._host.submit(fn))).unwrap()

    def __del__(self) -> None:
        if not self._host._closed:
            warnings.warn(
                f"{self!r} was dropped without shutdown(); its service runs until the "
                "interpreter exits. Call `await svc.shutdown()` when done with it.",
                ResourceWarning,
                stacklevel=1,
            )

    @property
    def config(self) -> Any:
        return self._svc.config

    @property
    def replicas(self) -> list[Any]:
        return self._host.call_sync(lambda: self._svc.replicas)

    @property
    def _replicas(self) -> list[Any]:
        """The replica views, under the name TorchForge's docs use
        (``metrics.get_avg_capacity_utilization(service._replicas)``)."""
        return self.replicas

    async def call_all(self, *args: Any, **kwargs: Any) -> list[Any]:
        """``fanout`` by endpoint name (see :meth:`Service.call_all`)."""
        result: list[Any] = await self._run(partial(self._svc.call_all, *args, **kwargs))
        return result

    async def start_session(self) -> str:
        return await self._run(self._svc.start_session)

    async def terminate_session(self, sess_id: str) -> None:
        """Forget a session; idempotent, and a no-op once the service is shut down
        (its sessions ended with it), as on :class:`Service`."""
        with contextlib.suppress(ServiceClosedError):
            await self._run(partial(self._svc.terminate_session, sess_id))

    def session(self) -> contextlib.AbstractAsyncContextManager[str]:
        """Every ``route()`` of this service inside the block goes to one replica."""
        return EnterOnce(self._session_block())

    @contextlib.asynccontextmanager
    async def _session_block(self) -> AsyncIterator[str]:
        sid = await self.start_session()
        ref = BlockSession(sid)  # marked ended on exit: inherited copies cannot revive it
        token = _HOSTED_SESSIONS.set({**_HOSTED_SESSIONS.get({}), self: ref})
        try:
            yield sid
        finally:
            ref.ended = True
            with contextlib.suppress(ValueError, RuntimeError):  # left from another task
                _HOSTED_SESSIONS.reset(token)
            with anyio.CancelScope(shield=True):
                await self.terminate_session(sid)

    async def restart_replica(self, idx: int) -> None:
        await self._run(partial(self._svc.restart_replica, idx))

    async def scale_to(self, num_replicas: int) -> None:
        await self._run(partial(self._svc.scale_to, num_replicas))

    def statistics(self) -> Any:
        return self._host.call_sync(self._svc.statistics)

    def get_metrics(self) -> Any:
        return self._host.call_sync(self._svc.get_metrics)

    def get_metrics_summary(self) -> dict[str, Any]:
        return self._host.call_sync(self._svc.get_metrics_summary)

    async def shutdown(self) -> None:
        """Close the service as leaving ``open_service`` does, then end its host
        thread. Idempotent."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._host.close)

    async def stop(self) -> None:
        """Alias of :meth:`shutdown` (TorchForge's name)."""
        await self.shutdown()
