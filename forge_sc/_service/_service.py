"""The Service: the handle users hold (``open_service`` makes it).

Its parts live in their own modules, each a class deriving from
:class:`~forge_sc._service._state.ServiceState`: the request path
(:mod:`._requests`), admission and waiting (:mod:`._admission`), fan-out
(:mod:`._fanout`), lifecycle and supervision events (:mod:`._lifecycle`), and the
statistics snapshot (:mod:`._statistics`). This module adds the user's API.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import MappingProxyType
from typing import Any

import anyio
import anyio.abc
import sniffio

from .._batching import Batcher
from .._config import MAX_REPLICAS, ServiceConfig
from .._metrics import Recorder, loop_clock
from .._replica import ChildSpec, Replica, supervise
from .._routing import LeastLoadedRouter, SessionRouter
from .._spec import EndpointSpec
from .._stats import ServiceMetrics
from .._waiters import WaitQueue
from ..errors import NoHealthyReplicasError
from ..mesh._protocol import Mesh
from ..observe import _events, _registry
from ._autoscaler import autoscale
from ._context import CURRENT_SESSIONS as _CURRENT_SESSIONS
from ._context import BlockSession, EnterOnce
from ._fanout import Fanout
from ._handle import ServiceEndpoint
from ._lifecycle import Lifecycle
from ._noctor import NoPublicConstructor
from ._requests import Requests
from ._state import HEALTHY, get_ident
from ._statistics import snapshot

__all__ = ["Service"]

#: How long ``statistics()`` from another thread waits for the service's loop.
_FOREIGN_READ_TIMEOUT = 10.0


class _RequestPath(Requests):
    """The request path's view of a service: the same object state (the service's
    own ``__dict__``, shared), in a class without ``__getattr__``.

    CPython specializes attribute access (``self._x``, a few dozen per request) only
    for classes that do not hook it; :class:`Service` has a ``__getattr__`` for its
    "no endpoint" error, which makes every one of them a slow lookup (measured: a
    quarter of the instructions of a ``route()``). Endpoints send their requests
    through this view. It has only the request path's methods (``Requests`` and
    what it derives from); nothing on that path uses the identity of ``self``.
    """


def _request_path(svc: Service) -> _RequestPath:
    view: _RequestPath = object.__new__(_RequestPath)
    view.__dict__ = svc.__dict__
    return view


class Service(Requests, Fanout, Lifecycle, metaclass=NoPublicConstructor):
    """A running pool of replicas of one actor. Get one from ``open_service``.

    Every endpoint of the actor is an attribute with ``route()`` and ``fanout()``.
    """

    def __init__(
        self,
        actor_cls: type[Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        config: ServiceConfig,
        mesh: Mesh,
        endpoints: Mapping[str, EndpointSpec],
    ) -> None:
        self._actor_cls = actor_cls
        self._specs = dict(endpoints)
        # First the routers (a bad router factory fails here, bare, even outside a
        # loop), then the event loop check.
        self._endpoints = {}
        path = _request_path(self)
        for name, spec in self._specs.items():
            ep = ServiceEndpoint(self, spec, path)
            self._endpoints[name] = ep
            self.__dict__[name] = ep
        try:
            self._backend = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            raise RuntimeError(
                "open_service() must be called inside a running event loop (asyncio or "
                "trio), where its block is entered: async with open_service(...) as svc"
            ) from None
        self._thread = get_ident()
        #: The metrics' clock: perf_counter, or the loop's own when it is virtual.
        self._clock = loop_clock()
        self._args = args
        self._kwargs = dict(kwargs)
        self._config = config
        self._mesh = mesh
        self._rng = random.Random(getattr(mesh, "seed", None))
        self._cap = config.replica_max_concurrent_requests
        self._max_attempts = config.max_attempts
        self._replicas = []
        self._by_idx = {}
        self._next_idx = 0
        self._available = ()
        self._dirty = True
        self._waiters = WaitQueue()
        self._watchers = WaitQueue()
        self._queued = 0
        self._inflight = 0
        self._closing = False
        self._forced = False
        self._failed = False
        self._gate = self._thread
        # The cancel scope of the open_service body, cancelled on escalation.
        self._body_scope = None
        self._closed = anyio.Event()
        self._close_started = False
        self._drained = anyio.Event()
        self._starting = True
        self._started = anyio.Event()
        self._retries = 0
        self._migrations = 0
        self._scaling_events = 0
        self._rec = Recorder()  # failures the service itself raised
        self._retired = Recorder()  # counts of replicas removed by scaling
        self._retired_restarts = 0
        self._t0 = self._clock()
        self._sessions = {}
        self._session_blocks = False
        self._session_idx = {}
        self._session_view = MappingProxyType(self._session_idx)
        self._session_router = SessionRouter(LeastLoadedRouter())
        self._scale_lock = anyio.Lock()
        self._scale_target = config.num_replicas
        self._spares = self._make_spares()
        self._child = ChildSpec(
            start=self._start_incarnation,
            events=self,
            config=config,
            rng=self._rng,
            seed=getattr(mesh, "seed", None),
            starting=lambda: self._starting,
            stopping=lambda: self._closing,
            spares=self._spares,
        )
        self._itg = None
        self._batchers = {}
        for _ in range(config.num_replicas):
            self._add_replica()
        self._start_pending = {r.idx for r in self._replicas}

    # ----------------------------------------------------------------- handle API

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are neither endpoints nor attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        known = ", ".join(sorted(self._specs)) or "(none)"
        raise AttributeError(
            f"{self._actor_cls.__name__} has no endpoint {name!r}; its endpoints are: {known}. "
            "Mark the method with @endpoint or @service_endpoint."
        )

    def __repr__(self) -> str:
        healthy = sum(r._state is HEALTHY for r in self._replicas)
        return (
            f"<Service {self._actor_cls.__name__} replicas={len(self._replicas)} "
            f"healthy={healthy}{' closing' if self._closing else ''}>"
        )

    @property
    def config(self) -> ServiceConfig:
        return self._config

    @property
    def replicas(self) -> list[Replica]:
        """Read-only views of the replicas, in index order."""
        return list(self._replicas)

    async def call_all(self, *args: Any, **kwargs: Any) -> list[Any]:
        """``fanout`` by endpoint name: TorchForge's ``call_all(function, *args,
        **kwargs)``. The endpoint's name is the first positional argument, or, with
        none, the keyword ``function=`` (TorchForge's name for it) or ``name=``."""
        name, args, kwargs = _endpoint_name(args, kwargs)
        if not isinstance(name, str):
            raise TypeError(f"call_all() takes the endpoint's name (a str), got {name!r}")
        ep = self._endpoints.get(name)
        if ep is None:
            self.__getattr__(name)
            raise AssertionError("unreachable")  # pragma: no cover
        return await ep.fanout(*args, **kwargs)

    async def start_session(self) -> str:
        """A new session id. Its first request assigns it a replica (least loaded);
        later requests with ``sess_id=`` go to the same replica while it lives."""
        self._check_open()
        sid = str(uuid.uuid4())
        self._sessions[sid] = None
        return sid

    async def terminate_session(self, sess_id: str) -> None:
        """Forget a session (idempotent). Requests of the session still running finish;
        one that must be placed again (its replica died) runs without the session,
        which stays terminated."""
        if get_ident() != self._thread:
            self._wrong_thread("terminate_session()")
        if not isinstance(sess_id, str):
            raise TypeError(f"terminate_session() takes a session id (a str), got {sess_id!r}")
        self._end_session(sess_id)

    def _end_session(self, sess_id: str) -> None:
        inc = self._sessions.pop(sess_id, None)
        idx = self._session_idx.pop(sess_id, None)
        if inc is not None and idx is not None:
            replica = self._by_idx.get(idx)
            if replica is not None:
                replica._drop_session()

    def session(self) -> AbstractAsyncContextManager[str]:
        """Every ``route()`` of this service inside the block goes to one replica."""
        return EnterOnce(self._session_block())

    @asynccontextmanager
    async def _session_block(self) -> AsyncIterator[str]:
        sid = await self.start_session()
        self._session_blocks = True
        ref = BlockSession(sid)
        current = _CURRENT_SESSIONS.get(None)
        token = _CURRENT_SESSIONS.set({**(current or {}), self: ref})
        try:
            yield sid
        finally:
            # Tasks that inherited the session (started inside the block) may still
            # hold it: marked ended, it raises there instead of coming back.
            ref.ended = True
            # Left from another task (another context), reset() raises: the entering
            # task's context keeps the mapping, whose session is marked ended.
            with contextlib.suppress(ValueError, RuntimeError):
                _CURRENT_SESSIONS.reset(token)
            self._end_session(sid)

    async def restart_replica(self, idx: int) -> None:
        """Replace replica ``idx`` by a new incarnation (the hard cancel: calls running
        on it are interrupted and retried). Returns once it is healthy again, or
        failed for good."""
        self._check_open()
        replica = self._replica(idx)
        inc = replica._inc
        if inc is None or replica._done.is_set():
            raise ValueError(f"replica {idx} is not running; it cannot be restarted")
        if replica._draining:
            raise ValueError(
                f"replica {idx} is being removed by scale_to() (its in-flight requests "
                "finish first); it cannot be restarted"
            )
        inc.die(RuntimeError(f"replica {idx} restarted by restart_replica()"))
        await self._wait_healthy_after(replica, inc)

    def _usable_replicas(self) -> int:
        return sum(not r._exhausted for r in self._replicas)

    async def scale_to(self, num_replicas: int) -> None:
        """Grow or shrink the pool to ``num_replicas`` replicas that can serve.
        Replicas failed for good are removed first (they count for nothing); new
        replicas are healthy (or failed) when this returns; removed ones (highest
        index first) finish their in-flight requests first and their sessions move.
        With autoscaling on, ``num_replicas`` must lie within ``min_replicas`` and
        ``max_replicas``."""
        if (
            isinstance(num_replicas, bool)
            or not isinstance(num_replicas, int)
            or not 1 <= num_replicas <= MAX_REPLICAS
        ):
            raise ValueError(
                f"scale_to() needs an int >= 1 and <= {MAX_REPLICAS}, got {num_replicas!r}"
            )
        config = self._config
        if config.max_replicas is not None and not (
            config.effective_min_replicas <= num_replicas <= config.max_replicas
        ):
            raise ValueError(
                f"scale_to({num_replicas}): the autoscaler keeps this service between "
                f"min_replicas={config.effective_min_replicas} and max_replicas="
                f"{config.max_replicas}; scale within those bounds"
            )
        self._check_open()
        # Calls are serialized and the latest call's target wins: whoever holds the
        # lock goes on scaling until the pool has the latest target, and a call
        # returns once the pool has the target that is the latest at that moment.
        self._scale_target = num_replicas
        async with self._scale_lock:
            while True:
                self._check_open()
                target = self._scale_target
                current = len(self._replicas)
                dead = [r for r in self._replicas if r._exhausted]  # failed for good
                live = [r for r in self._replicas if not r._exhausted]
                if target == len(live) and not dead:
                    return
                if target > len(live):
                    self._check_capacity(target - len(live))
                self._scaling_events += 1
                if dead:
                    await self._retire(dead)
                if target > len(live):
                    added = [self._add_replica() for _ in range(target - len(live))]
                    assert self._itg is not None
                    for r in added:
                        self._itg.start_soon(supervise, self._child, r)
                    try:
                        for r in added:
                            await self._wait_healthy_after(r, None)
                    except NoHealthyReplicasError as exc:
                        _events.service_scale_failed(self, current, target, exc)
                        raise
                elif target < len(live):
                    await self._retire(live[target:])
                _events.service_scaled(self, current, target)

    async def shutdown(self) -> None:
        """Close the service: no new requests, in-flight ones finish (up to
        ``graceful_shutdown_timeout``), replicas and their processes stop."""
        if get_ident() != self._thread:
            self._wrong_thread("shutdown()")
        with anyio.CancelScope(shield=True):
            await self._close()

    async def stop(self) -> None:
        """Alias of :meth:`shutdown` (TorchForge's name)."""
        await self.shutdown()

    def _start_helpers(self, tg: anyio.abc.TaskGroup) -> None:
        for name, spec in self._specs.items():
            if spec.batched:
                ep = self._endpoints[name]
                batcher = Batcher(self, spec, ep.router)
                ep._bind(batcher)
                self._batchers[name] = batcher
                tg.start_soon(batcher.run)
        if self._config.autoscaling:
            tg.start_soon(autoscale, self)

    # ------------------------------------------------------------------ metrics

    def statistics(self) -> ServiceMetrics:
        """A frozen snapshot of the service's metrics (see :class:`ServiceMetrics`).

        From another thread than the service's, while it runs, the snapshot is taken
        on the service's event loop (its counters belong to that thread) and this
        call waits for it."""
        if get_ident() != self._thread:
            live = _registry.entry(self)
            if live is not None:
                snap: ServiceMetrics | None = live.statistics(timeout=_FOREIGN_READ_TIMEOUT)
                if snap is not None:
                    return snap
                if _registry.entry(self) is not None:
                    raise RuntimeError(
                        f"statistics() from another thread waits for the service's event "
                        f"loop, which did not answer within {_FOREIGN_READ_TIMEOUT:g}s "
                        "(is it blocked?)"
                    )
        return snapshot(self)

    def get_metrics(self) -> ServiceMetrics:
        """TorchForge's name for :meth:`statistics`."""
        return self.statistics()

    def get_metrics_summary(self) -> dict[str, Any]:
        """TorchForge's summary dict: ``{"service": {...}, "replicas": {idx: {...}}}``."""
        return self.statistics().summary()


def _endpoint_name(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``call_all``'s endpoint name and the endpoint's own arguments."""
    if args:
        return args[0], args[1:], kwargs
    for key in ("function", "name"):
        if key in kwargs:
            rest = dict(kwargs)
            return rest.pop(key), (), rest
    raise TypeError(
        "call_all() takes the endpoint's name first: call_all('endpoint', *args, **kwargs)"
    )
