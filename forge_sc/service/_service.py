"""The Service: the handle users hold, and the request path.

A request runs in its caller's task. The fast path (a replica with a free slot, no
one queued) is plain bookkeeping around one ``await handle.call(...)``: no cancel
scope, no hand-off, no clock read beyond ``perf_counter``. Everything else (waiting
for capacity or recovery, sessions, retries) is on slow paths.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, NoReturn

import anyio
import anyio.abc
import anyio.lowlevel

from .._config import ServiceConfig
from .._metrics import Recorder, clock, percentile, rate
from .._waiters import Waiter, WaitQueue
from ..errors import (
    NoHealthyReplicasError,
    ReplicaDiedError,
    ServiceClosedError,
    ServiceError,
    ServiceOverloadedError,
)
from ..mesh import Mesh, ReplicaGone, SpawnSpec
from ..replica import Incarnation, Replica, ReplicaState, supervise
from ..routing import LeastLoadedRouter, Router, SessionRouter
from ._context import CURRENT_SESSIONS as _CURRENT_SESSIONS
from ._endpoints import EndpointSpec
from ._stats import ReplicaMetrics, ServiceMetrics

__all__ = ["Service"]

HEALTHY = ReplicaState.HEALTHY


class Service:
    """A running pool of replicas of one actor. Get one from ``open_service``.

    Every endpoint of the actor is an attribute with ``route()`` and ``fanout()``.
    """

    # Instance attributes are listed for type checkers; endpoints are added per
    # instance (so attribute lookup on the hot path is a plain dict hit).
    _config: ServiceConfig
    _mesh: Mesh

    def __init__(
        self,
        actor_cls: type[Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        config: ServiceConfig,
        mesh: Mesh,
        endpoints: Mapping[str, EndpointSpec],
    ) -> None:
        from ._handle import ServiceEndpoint

        self._actor_cls = actor_cls
        self._args = args
        self._kwargs = dict(kwargs)
        self._config = config
        self._mesh = mesh
        self._specs = dict(endpoints)
        self._rng = random.Random(getattr(mesh, "seed", None))
        self._cap = config.replica_max_concurrent_requests
        self._max_attempts = config.max_attempts
        self._replicas: list[Replica] = []
        self._by_idx: dict[int, Replica] = {}
        self._next_idx = 0
        self._available: list[Replica] = []
        self._dirty = True
        self._waiters = WaitQueue()
        self._queued = 0
        self._inflight = 0
        self._closing = False
        self._forced = False
        self._failed = False
        # The cancel scope of the open_service body, cancelled on escalation.
        self._body_scope: anyio.CancelScope | None = None
        self._closed = anyio.Event()
        self._close_started = False
        self._drained = anyio.Event()
        self._starting = True
        self._started = anyio.Event()
        self._restarts = 0
        self._retries = 0
        self._migrations = 0
        self._scaling_events = 0
        self._rec = Recorder()  # failures the service itself raised
        self._retired = Recorder()  # counts of replicas removed by scaling
        self._retired_restarts = 0
        self._t0 = clock()
        self._sessions: dict[str, Incarnation | None] = {}
        self._session_idx: dict[str, int] = {}
        self._session_view = MappingProxyType(self._session_idx)
        self._session_router = SessionRouter(LeastLoadedRouter())
        self._itg: anyio.abc.TaskGroup | None = None
        self._batchers: dict[str, Any] = {}
        self._endpoints: dict[str, ServiceEndpoint] = {}
        for name, spec in self._specs.items():
            ep = ServiceEndpoint(self, spec)
            self._endpoints[name] = ep
            self.__dict__[name] = ep
        for _ in range(config.num_replicas):
            self._add_replica()

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

    async def call_all(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        """``fanout`` by endpoint name (TorchForge's ``call_all``)."""
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
        """Forget a session (idempotent)."""
        inc = self._sessions.pop(sess_id, None)
        idx = self._session_idx.pop(sess_id, None)
        if inc is not None and idx is not None:
            replica = self._by_idx.get(idx)
            if replica is not None:
                replica._sessions -= 1

    @asynccontextmanager
    async def session(self) -> AsyncIterator[str]:
        """Every ``route()`` of this service inside the block goes to one replica."""
        sid = await self.start_session()
        current = _CURRENT_SESSIONS.get(None)
        token = _CURRENT_SESSIONS.set({**(current or {}), self: sid})
        try:
            yield sid
        finally:
            _CURRENT_SESSIONS.reset(token)
            await self.terminate_session(sid)

    async def restart_replica(self, idx: int) -> None:
        """Replace replica ``idx`` by a new incarnation (the hard cancel: calls running
        on it are interrupted and retried). Returns once it is healthy again, or
        failed for good."""
        replica = self._replica(idx)
        inc = replica._inc
        if inc is None or replica._done.is_set():
            raise ValueError(f"replica {idx} is not running; it cannot be restarted")
        inc.die(RuntimeError(f"replica {idx} restarted by restart_replica()"))
        await self._wait_healthy_after(replica, inc)

    async def scale_to(self, num_replicas: int) -> None:
        """Grow or shrink the pool to ``num_replicas``. New replicas are healthy (or
        failed) when this returns; removed ones (highest index first) finish their
        in-flight requests first and their sessions move."""
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"scale_to() needs an int >= 1, got {num_replicas!r}")
        self._check_open()
        current = len(self._replicas)
        if num_replicas == current:
            return
        if num_replicas > current:
            self._check_capacity(num_replicas - current)
        self._scaling_events += 1
        if num_replicas > current:
            added = [self._add_replica() for _ in range(num_replicas - current)]
            assert self._itg is not None
            for r in added:
                self._itg.start_soon(supervise, self, r)
            for r in added:
                await self._wait_healthy_after(r, None)
        else:
            victims = self._replicas[num_replicas:]
            await self._retire(victims)

    async def shutdown(self) -> None:
        """Close the service: no new requests, in-flight ones finish (up to
        ``graceful_shutdown_timeout``), replicas and their processes stop."""
        with anyio.CancelScope(shield=True):
            await self._close()

    async def stop(self) -> None:
        """Alias of :meth:`shutdown` (TorchForge's name)."""
        await self.shutdown()

    # ------------------------------------------------------------------ metrics

    def statistics(self) -> ServiceMetrics:
        """A frozen snapshot of the service's metrics (see :class:`ServiceMetrics`)."""
        now = clock()
        reps = []
        hist: dict[int, int] = {}
        n_lat, sum_lat = 0, 0.0
        completed = self._rec.completed_in_window(now)
        completed += self._retired.completed_in_window(now)
        for rec in (self._rec, self._retired):
            n, s = rec.window_histogram(now, hist)
            n_lat += n
            sum_lat += s
        for r in self._replicas:
            rh: dict[int, int] = {}
            rn, rs = r._rec.window_histogram(now, rh)
            for b, c in rh.items():
                hist[b] = hist.get(b, 0) + c
            n_lat += rn
            sum_lat += rs
            done = r._rec.completed_in_window(now)
            completed += done
            active = r.active_requests
            reps.append(
                ReplicaMetrics(
                    idx=r.idx,
                    state=r._state,
                    healthy=r._state is HEALTHY,
                    restarts=r._restarts,
                    total_requests=r._rec.total,
                    successful_requests=r._rec.successful,
                    failed_requests=r._rec.failed,
                    request_rate=rate(done, now, self._t0),
                    avg_latency=rs / rn if rn else 0.0,
                    p50_latency=percentile(rh, 0.50),
                    p99_latency=percentile(rh, 0.99),
                    active_requests=active,
                    queue_depth=r.queue_depth,
                    assigned_sessions=r._sessions,
                    capacity_utilization=active / self._cap,
                )
            )
        retired = self._retired
        ok = self._rec.successful + retired.successful + sum(r.successful_requests for r in reps)
        bad = self._rec.failed + retired.failed + sum(r.failed_requests for r in reps)
        for b in self._batchers.values():
            # A merged batch counts once per caller here (once per batch on its replica).
            ok += b.items.successful - b.calls.successful
            bad += b.items.failed - b.calls.failed
            completed += b.items.completed_in_window(now) - b.calls.completed_in_window(now)
            n, s = b.items.window_histogram(now, hist)
            n_lat += n
            sum_lat += s
            minus: dict[int, int] = {}
            n, s = b.calls.window_histogram(now, minus)
            n_lat -= n
            sum_lat -= s
            for k, c in minus.items():
                hist[k] -= c
        healthy = sum(r.healthy for r in reps)
        return ServiceMetrics(
            total_requests=ok + bad,
            successful_requests=ok,
            failed_requests=bad,
            retries=self._retries,
            restarts=self._restarts,
            session_migrations=self._migrations,
            active_sessions=len(self._sessions),
            healthy_replicas=healthy,
            total_replicas=len(reps),
            scaling_events=self._scaling_events,
            active_requests=sum(r.active_requests for r in reps),
            queue_depth=self._queued,
            request_rate=rate(completed, now, self._t0),
            avg_latency=sum_lat / n_lat if n_lat else 0.0,
            p50_latency=percentile(hist, 0.50),
            p99_latency=percentile(hist, 0.99),
            capacity_utilization=(
                sum(r.capacity_utilization for r in reps) / len(reps) if reps else 0.0
            ),
            uptime=now - self._t0,
            replicas=tuple(reps),
            batchers=tuple(b.statistics() for b in self._batchers.values()),
        )

    def get_metrics(self) -> ServiceMetrics:
        """TorchForge's name for :meth:`statistics`."""
        return self.statistics()

    def get_metrics_summary(self) -> dict[str, Any]:
        """TorchForge's summary dict: ``{"service": {...}, "replicas": {idx: {...}}}``."""
        return self.statistics().summary()

    # ------------------------------------------------------------- request path

    async def _request(
        self,
        spec: EndpointSpec,
        router: Router,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sess_id: str | None,
        also: Recorder | None = None,
    ) -> Any:
        """Run one request to completion: pick, send, retry on replica death.

        ``also`` (a batcher's) records the outcome too, with the same figures.
        """
        if self._closing or self._failed:
            self._check_open()
        t0 = clock()
        self._inflight += 1
        attempts = 0
        waited = 0.0
        counted = False  # recorded on a replica already
        try:
            while True:
                if sess_id is None:
                    if self._dirty:
                        self._rebuild()
                    avail = self._available
                    if avail and not self._waiters:
                        replica = router.get_replica(avail)
                        if replica not in avail:
                            self._bad_router(router, replica)
                    else:
                        replica, waited = await self._wait_for_slot(router, waited)
                else:
                    replica, waited = await self._session_replica(sess_id, waited)
                # A replica in the available set always has a live incarnation.
                inc: Incarnation = replica._inc  # type: ignore[assignment]
                inc.active += 1
                if inc.active >= self._cap:
                    self._dirty = True
                attempts += 1
                try:
                    result = await inc.call(spec.name, args, kwargs)
                except ReplicaGone as exc:
                    self._release(replica, inc)
                    inc.die(exc)
                    if self._closing:
                        raise ServiceClosedError(
                            f"{spec.name}: the service closed while the request was running"
                        ) from exc
                    if not spec.idempotent:
                        raise ReplicaDiedError(
                            f"{spec.name}: replica {replica.idx} died while running this "
                            "request; it is idempotent=False, so it was not re-sent. Retry "
                            "it yourself if that is safe."
                        ) from exc
                    if attempts >= self._max_attempts:
                        raise ReplicaDiedError(
                            f"{spec.name}: {attempts} replicas died while running this "
                            f"request (max_attempts={self._max_attempts}); raise "
                            "max_attempts or look at why replicas die."
                        ) from exc
                    self._retries += 1
                    continue
                except BaseException as exc:
                    handle = inc.handle
                    if not (
                        handle is not None
                        and handle.detaches_on_cancel
                        and isinstance(exc, anyio.get_cancelled_exc_class())
                    ):
                        self._release(replica, inc)
                    if isinstance(exc, Exception):
                        now = clock()
                        replica._rec.record(now, now - t0, False)
                        if also is not None:
                            also.record(now, now - t0, False)
                        counted = True
                    raise
                inc.active -= 1  # (_release, inlined)
                if inc.active == self._cap - 1:
                    self._dirty = True
                if self._waiters or replica._waiters:
                    self._slot_freed(replica)
                now = clock()
                replica._rec.record(now, now - t0, True)
                if also is not None:
                    also.record(now, now - t0, True)
                return result
        except ServiceError:
            if not counted:
                now = clock()
                self._rec.record(now, now - t0, False)
                if also is not None:
                    also.record(now, now - t0, False)
            raise
        finally:
            self._inflight -= 1
            if self._closing and self._inflight == 0:
                self._drained.set()

    def _release(self, replica: Replica, inc: Incarnation) -> None:
        inc.active -= 1
        if inc.active == self._cap - 1:
            self._dirty = True
        if self._waiters or replica._waiters:
            self._slot_freed(replica)

    def _slot_freed(self, replica: Replica) -> None:
        """A slot of ``replica`` became free: wake who may take it (a draining
        replica's waiter is ``scale_to`` waiting for its last request)."""
        self._dirty = True
        if replica._draining:
            replica._waiters.wake_all()
        elif inc_ok(replica, self._cap) and not replica._waiters.wake_one():
            self._waiters.wake_one()

    def _rebuild(self) -> None:
        cap = self._cap
        self._available = [
            r
            for r in self._replicas
            if r._state is HEALTHY and r._inc is not None and r._inc.active < cap
        ]
        self._dirty = False

    def _check_open(self) -> None:
        if self._failed:  # escalated: that, not the close that followed, is the news
            self._raise_no_healthy()
        if self._closing:
            raise ServiceClosedError(
                "the service is closed; open a new one with open_service() to send requests"
            )

    def _raise_no_healthy(self) -> NoReturn:
        raise self._failed_error()

    def _failed_error(self) -> NoHealthyReplicasError:
        """What a request of a service that escalated gets."""
        return NoHealthyReplicasError(
            "every replica of the service used up its restart budget "
            f"(max_restarts={self._config.max_restarts} within "
            f"restart_window={self._config.restart_window}s); the service has failed"
        )

    async def _escalated(self) -> NoReturn:
        # A caller inside the open_service block was cancelled with the body when the
        # service escalated: let that cancellation out. Callers outside get the error.
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._raise_no_healthy()

    def _bad_router(self, router: Router, replica: Any) -> NoReturn:
        raise TypeError(
            f"router {type(router).__name__}.get_replica() returned {replica!r}, which is not "
            "one of the healthy_replicas it was given; a router must return one of them"
        )

    async def _wait_for_slot(self, router: Router, waited: float) -> tuple[Replica, float]:
        """Queue until some healthy replica has a free slot, then let the router pick."""
        return await self._wait(lambda: self._pick_available(router), waited, None)

    def _pick_available(self, router: Router) -> Replica | None:
        if self._dirty:
            self._rebuild()
        avail = self._available
        if not avail:
            return None
        replica = router.get_replica(avail)
        if replica not in avail:
            self._bad_router(router, replica)
        return replica

    async def _wait(
        self,
        attempt: Callable[[], Replica | None],
        waited: float,
        target: Replica | None,
    ) -> tuple[Replica, float]:
        """Wait in the service queue (or ``target``'s queue) until ``attempt`` yields
        a replica; bounded by what is left of ``request_timeout``."""
        config = self._config
        if self._failed:
            await self._escalated()
        if self._forced:
            raise ServiceClosedError("the service closed before the request could run")
        limit = config.max_queued_requests
        if limit is not None and self._queued >= limit:
            raise ServiceOverloadedError(
                f"the service queue is full (max_queued_requests={limit}); retry later, "
                "add replicas, or raise max_queued_requests"
            )
        timeout = config.request_timeout
        remaining = float("inf") if timeout is None else max(timeout - waited, 0.0)
        queue = self._waiters if target is None else target._waiters
        start = anyio.current_time()
        waiter = Waiter()
        queue.push(waiter)
        self._queued += 1
        try:
            with anyio.move_on_after(remaining):
                while True:
                    await waiter.event.wait()
                    if self._failed:
                        await self._escalated()
                    if self._forced:
                        raise ServiceClosedError("the service closed before the request could run")
                    if target is not None and target._state is not HEALTHY:
                        raise _Moved
                    replica = attempt()
                    if replica is not None:
                        waiter.woken = False
                        if self._waiters and self._available:
                            self._waiters.wake_one()  # more room: pass the baton on
                        return replica, waited + anyio.current_time() - start
                    waiter = Waiter()
                    queue.push(waiter, front=True)
            self._timed_out()
        finally:
            self._queued -= 1
            queue.discard(waiter)
            # Woken but leaving without using the wake-up: pass it on.
            if waiter.woken and not queue.wake_one() and queue is not self._waiters:
                self._waiters.wake_one()

    def _timed_out(self) -> NoReturn:
        timeout = self._config.request_timeout
        if any(r._state is HEALTHY for r in self._replicas):
            raise ServiceOverloadedError(
                f"every healthy replica stayed at capacity (replica_max_concurrent_requests="
                f"{self._cap}) for request_timeout={timeout}s; add replicas or raise the "
                "capacity or the timeout"
            )
        raise NoHealthyReplicasError(
            f"no replica became healthy within request_timeout={timeout}s "
            f"(states: {', '.join(r._state.name for r in self._replicas)})"
        )

    async def _session_replica(self, sess_id: str, waited: float) -> tuple[Replica, float]:
        """The replica of session ``sess_id``: its own while that incarnation lives,
        else a new one chosen by the session router (a migration)."""
        while True:
            inc = self._sessions.get(sess_id)
            if inc is not None:
                replica = inc.replica
                if replica._inc is inc and replica._state is HEALTHY:
                    if inc.active < self._cap and not replica._waiters:
                        return replica, waited
                    try:
                        return await self._wait(
                            lambda r=replica: (
                                r if r._inc is not None and r._inc.active < self._cap else None
                            ),  # type: ignore[misc]
                            waited,
                            replica,
                        )
                    except _Moved:
                        continue
            healthy = [r for r in self._replicas if r._state is HEALTHY]
            if not healthy:
                _, waited = await self._wait(self._any_healthy, waited, None)
                continue
            replica = self._session_router.get_replica(healthy, sess_id, self._session_view)
            if replica not in healthy:
                self._bad_router(self._session_router, replica)
            self._assign(sess_id, replica)

    def _any_healthy(self) -> Replica | None:
        for r in self._replicas:
            if r._state is HEALTHY:
                return r
        return None

    def _assign(self, sess_id: str, replica: Replica) -> None:
        old = self._session_idx.get(sess_id)
        if old is not None:
            self._migrations += 1
            prev = self._by_idx.get(old)
            if prev is not None:
                prev._sessions -= 1
        self._sessions[sess_id] = replica._inc
        self._session_idx[sess_id] = replica.idx
        replica._sessions += 1

    async def _fanout(
        self, spec: EndpointSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[Any]:
        self._check_open()
        targets = [r for r in self._replicas if r._state is HEALTHY]
        if not targets:
            await self._wait(self._any_healthy, 0.0, None)
            targets = [r for r in self._replicas if r._state is HEALTHY]
        results: dict[int, Any] = {}
        errors: dict[int, Exception] = {}
        died: list[int] = []
        self._inflight += 1
        try:
            async with anyio.create_task_group() as tg:
                for r in targets:
                    tg.start_soon(self._fanout_one, spec, r, args, kwargs, results, errors, died)
        finally:
            self._inflight -= 1
            if self._closing and self._inflight == 0:
                self._drained.set()
        if errors:
            from ..errors import FanoutError

            order = sorted(errors)
            raise FanoutError(
                f"{spec.name}: the endpoint raised on replica(s) {order}; "
                f".errors maps index to exception, .results holds the {len(results)} "
                "successful results",
                [errors[i] for i in order],
                results,
                errors,
            )
        if not results and died:
            raise ReplicaDiedError(f"{spec.name}: every replica of the fan-out died ({died})")
        return [results[i] for i in sorted(results)]

    async def _fanout_one(
        self,
        spec: EndpointSpec,
        replica: Replica,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        results: dict[int, Any],
        errors: dict[int, Exception],
        died: list[int],
    ) -> None:
        inc = replica._inc
        if inc is None or inc.handle is None or replica._state is not HEALTHY:
            died.append(replica.idx)
            return
        t0 = clock()
        inc.active += 1
        if inc.active >= self._cap:
            self._dirty = True
        ok = False
        handle = inc.handle
        try:
            results[replica.idx] = await handle.call(spec.name, args, kwargs)
            ok = True
        except ReplicaGone as exc:
            inc.die(exc)
            died.append(replica.idx)
        except Exception as exc:
            errors[replica.idx] = exc
        except BaseException as exc:
            # A call abandoned by a cancelled caller stays counted until the mesh
            # reports it settled (settle_abandoned releases it then).
            if not (handle.detaches_on_cancel and isinstance(exc, anyio.get_cancelled_exc_class())):
                self._release(replica, inc)
            raise
        self._release(replica, inc)
        now = clock()
        if replica.idx not in died:
            replica._rec.record(now, now - t0, ok)
        else:
            self._rec.record(now, now - t0, False)

    # -------------------------------------------------------- supervisor hooks

    def _spawn_spec(self, replica: Replica, inc: Incarnation) -> SpawnSpec:
        c = self._config
        return SpawnSpec(
            idx=replica.idx,
            actor_cls=self._actor_cls,
            args=self._args,
            kwargs=self._kwargs,
            procs=c.procs,
            hosts=c.hosts,
            with_gpus=c.with_gpus,
            return_first_rank_result=c.return_first_rank_result,
            on_abandoned_settled=inc.settle_abandoned,
        )

    def _check_capacity(self, count: int) -> None:
        """Ask the mesh whether ``count`` more replicas can ever be placed (an optional
        part of the protocol: a pool of hosts raises ``PlacementError``)."""
        check = getattr(self._mesh, "check_capacity", None)
        if check is not None:
            c = self._config
            spec = SpawnSpec(
                idx=-1,
                actor_cls=self._actor_cls,
                procs=c.procs,
                hosts=c.hosts,
                with_gpus=c.with_gpus,
            )
            check(spec, count)

    def _replica_healthy(self, replica: Replica) -> None:
        self._dirty = True
        self._wake_everyone()
        if self._starting and all(r._state is HEALTHY for r in self._replicas):
            self._starting = False
            self._started.set()

    def _replica_died(self, replica: Replica) -> None:
        self._dirty = True
        replica._waiters.wake_all()  # session requests queued there move elsewhere

    def _replica_exhausted(self, replica: Replica) -> None:
        from ..errors import ServiceFailedError

        self._dirty = True
        budget = (
            f"max_restarts={self._config.max_restarts} within "
            f"restart_window={self._config.restart_window}s"
        )
        cause = replica._last_error
        escalate = self._starting or all(r._exhausted for r in self._replicas)
        if escalate:
            self._failed = True
            # The body is cancelled before anyone wakes, so the body's own requests
            # end by that cancellation (see _escalated), not by NoHealthyReplicasError.
            if not self._starting and self._body_scope is not None:
                self._body_scope.cancel()
        # Session requests queued there move elsewhere; restart_replica() and
        # scale_to() waiting for this replica learn it failed for good; after an
        # escalation, every waiting request learns the service failed.
        self._wake_everyone()
        if not escalate:
            return
        if self._starting:
            raise ServiceFailedError(
                f"replica {replica.idx} used up its restart budget while the service was "
                f"starting ({budget}); last error: {cause!r}. Fix the cause and retry."
            ) from cause
        raise ServiceFailedError(
            f"every replica used up its restart budget ({budget}); last error: {cause!r}"
        ) from cause

    def _wake_everyone(self) -> None:
        self._waiters.wake_all()
        for r in self._replicas:
            r._waiters.wake_all()

    # ---------------------------------------------------------------- lifecycle

    def _add_replica(self) -> Replica:
        replica = Replica(self._next_idx, self._cap)
        self._next_idx += 1
        self._replicas.append(replica)
        self._by_idx[replica.idx] = replica
        self._dirty = True
        return replica

    def _replica(self, idx: int) -> Replica:
        replica = self._by_idx.get(idx)
        if replica is None:
            raise ValueError(f"no replica with index {idx}; indices: {sorted(self._by_idx)}")
        return replica

    async def _wait_healthy_after(self, replica: Replica, old: Incarnation | None) -> None:
        while not (
            (replica._state is HEALTHY and replica._inc is not old)
            or replica._exhausted
            or replica._done.is_set()
        ):
            waiter = Waiter()
            self._waiters.push(waiter)
            try:
                await waiter.event.wait()
            finally:
                self._waiters.discard(waiter)
                if waiter.woken:
                    self._waiters.wake_one()
        if replica._exhausted:
            raise NoHealthyReplicasError(
                f"replica {replica.idx} could not be (re)started: {replica._last_error!r}"
            )

    async def _retire(self, victims: Sequence[Replica]) -> None:
        for r in victims:
            r._draining = True
            if r._state is HEALTHY:
                r._state = ReplicaState.STOPPING
            self._dirty = True
            r._waiters.wake_all()
        with anyio.move_on_after(self._config.graceful_shutdown_timeout):
            for r in victims:
                while r.active_requests:
                    waiter = Waiter()
                    r._waiters.push(waiter)
                    try:
                        await waiter.event.wait()
                    finally:
                        r._waiters.discard(waiter)
        for r in victims:
            r._state = ReplicaState.STOPPING
            r._scope.cancel()
        for r in victims:
            await r._done.wait()
        for r in victims:
            self._replicas.remove(r)
            del self._by_idx[r.idx]
            self._retired.absorb(r._rec, clock())
            self._retired_restarts += r._restarts
        self._dirty = True

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The service's own task: owns the mesh lifespan and every internal task."""
        from ..batching import Batcher
        from ._autoscaler import autoscale

        try:
            async with self._mesh.lifespan(), anyio.create_task_group() as tg:
                self._itg = tg
                self._check_capacity(len(self._replicas))
                for r in self._replicas:
                    tg.start_soon(supervise, self, r)
                for name, spec in self._specs.items():
                    if spec.batched:
                        batcher = Batcher(self, spec, self._endpoints[name].router)
                        self._batchers[name] = batcher
                        tg.start_soon(batcher.run)
                if self._config.autoscaling:
                    tg.start_soon(autoscale, self)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            for r in self._replicas:
                if r._state is not ReplicaState.FAILED:
                    r._state = ReplicaState.STOPPED
            self._closing = True
            self._forced = True
            self._wake_everyone()
            self._closed.set()

    async def _wait_started(self) -> None:
        await self._started.wait()

    async def _close(self) -> None:
        """Graceful close: refuse new requests, drain, stop replicas, end tasks."""
        if self._close_started:
            await self._closed.wait()
            return
        self._close_started = True
        self._closing = True
        if self._inflight:
            with anyio.move_on_after(self._config.graceful_shutdown_timeout):
                await self._drained.wait()
        self._forced = True
        self._wake_everyone()
        for r in self._replicas:
            if r._state is HEALTHY:
                r._state = ReplicaState.STOPPING
        if self._itg is not None:
            self._itg.cancel_scope.cancel()
            await self._closed.wait()
        else:  # never started: nothing to stop
            self._closed.set()


class _Moved(Exception):
    """Internal: the replica a session request waited for is gone; pick again."""


def inc_ok(replica: Replica, cap: int) -> bool:
    inc = replica._inc
    return inc is not None and inc.active < cap and replica._state is HEALTHY
