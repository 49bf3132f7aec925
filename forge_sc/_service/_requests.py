"""The request path: pick a replica, send, retry on a replica's death.

A request runs in its caller's task. The fast path (a replica with a free slot, no
one queued) is plain bookkeeping around one ``await inc.call(...)``: no cancel
scope, no hand-off, no clock read beyond the metrics' (``perf_counter``). Everything
else (waiting for capacity or recovery, sessions, retries) is on slow paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from .._metrics import INLINE_RECORDS, Recorder
from .._replica import Incarnation, Replica
from .._routing import Router
from .._spec import EndpointSpec
from ..errors import (
    ReplicaDiedError,
    RequestKilledReplicaError,
    ServiceClosedError,
)
from ..mesh._protocol import CallerGone, CallKilledReplica, CallNotSent, ReplicaGone
from ._admission import Admission, SessionEnded
from ._state import get_ident

__all__ = ["Requests"]


class Requests(Admission):
    """``route()``: one request to one replica."""

    async def _request(
        self,
        spec: EndpointSpec,
        router: Router,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sess_id: str | None,
        also: Recorder | None = None,
        post: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Run one request to completion: pick, send, retry on replica death.

        ``also`` (a batcher's) records the outcome too, with the same figures.
        ``post`` (a batched endpoint's split) turns the replica's answer into the
        request's result; if it raises, the request failed on that replica (counted
        so there, as a fan-out counts it) and is not re-sent.
        """
        if get_ident() != self._gate:  # closing, failed, or not the service's thread
            if also is None:
                self._refuse()
            elif self._forced or self._failed:
                # A batch (its callers were admitted before the close, so it runs
                # during the drain) refused past it: counted per caller, by the batcher.
                self._check_open()
        # The metrics' clock, loaded once (CPython specializes an attribute load and a
        # call; not a method call of an attribute that is no method).
        clock = self._clock
        t0 = clock()
        self._inflight += 1
        attempts = 0  # placements on a replica
        unsent = 0  # of them, calls the backend refused unsent (CallNotSent)
        waited = 0.0
        counted = False  # recorded on a replica already
        resend = False  # the last placement was sent and its replica died
        try:
            while True:
                if sess_id is None:
                    if self._dirty:
                        self._rebuild()
                    avail = self._available
                    if avail and not self._waiters:
                        replica = router.get_replica(avail)
                        # The type first: ``in`` also asks the returned object's
                        # own __eq__ (mock.ANY is "in" every tuple).
                        if type(replica) is not Replica or replica not in avail:
                            self._bad_router(router, replica)
                    else:
                        replica, waited = await self._wait_for_slot(router, waited, attempts > 0)
                else:
                    try:
                        replica, waited = await self._session_replica(
                            sess_id, waited, attempts == 0
                        )
                    except SessionEnded:
                        # Terminated while this request was pending: it goes on as a
                        # request without a session (the session stays terminated).
                        sess_id = None
                        continue
                inc = replica._inc
                assert inc is not None  # a replica with a free slot has a live incarnation
                inc.active += 1
                if inc.active >= self._cap:
                    self._dirty = True
                attempts += 1
                if resend:  # counted once placed again, not when a caller gives up first
                    resend = False
                    self._retries += 1
                try:
                    fn = inc.direct.get(spec.name)
                    if fn is None:
                        result = await inc.call(spec.name, args, kwargs)
                    else:
                        # The backend's direct call (mesh._protocol.DirectCalls): the
                        # endpoint's coroutine is awaited in this frame, not in a
                        # frame of the backend's ``call``.
                        task = inc.current_task()
                        calls = inc.calls
                        calls.add(task)
                        try:
                            result = await (fn(*args, **kwargs) if kwargs else fn(*args))
                        except Exception:
                            calls.discard(task)
                            if not inc.direct_calls.alive:  # type: ignore[union-attr]
                                # Died while the call ran: no answer (as a dead
                                # process gives none), not the endpoint's error.
                                await inc.direct_calls.direct_failed(spec.name, None)  # type: ignore[union-attr]
                            raise
                        except BaseException as exc:
                            calls.discard(task)
                            assert inc.direct_calls is not None
                            await inc.direct_calls.direct_failed(spec.name, exc)
                        calls.discard(task)
                        if not inc.direct_calls.alive:  # type: ignore[union-attr]
                            await inc.direct_calls.direct_failed(spec.name, None)  # type: ignore[union-attr]
                    if post is not None:
                        result = post(result)
                except ReplicaGone as exc:
                    self._release(replica, inc)
                    inc.die(exc)
                    if isinstance(exc, CallKilledReplica):  # never re-send a poison request
                        raise RequestKilledReplicaError(
                            f"{spec.name}: this request killed replica {replica.idx}, so it "
                            f"was not re-sent; the replica is restarted. {exc.args[0]}"
                        ) from exc
                    if self._closing and (self._forced or self._any_healthy() is None):
                        # Past the drain, or no replica left to finish it on (none is
                        # restarted while the service closes).
                        raise ServiceClosedError(
                            f"{spec.name}: the service closed while the request was running"
                        ) from exc
                    # CallNotSent: the backend knew the replica dead before sending;
                    # the request ran nowhere, so placing it again is not a re-send.
                    sent = not isinstance(exc, CallNotSent)
                    if not sent:
                        unsent += 1
                    else:
                        if not spec.idempotent:
                            raise ReplicaDiedError(
                                f"{spec.name}: replica {replica.idx} died while this "
                                f"request was sent to it ({_why(inc, exc)}); it is "
                                "idempotent=False, so it was not re-sent (it may or may "
                                "not have run). Retry it yourself if that is safe."
                            ) from exc
                        sends = attempts - unsent
                        if sends >= self._max_attempts:
                            raise ReplicaDiedError(
                                f"{spec.name}: {sends} replica{'s' * (sends != 1)} died "
                                f"while running this request (max_attempts="
                                f"{self._max_attempts}; the last: {_why(inc, exc)}); raise "
                                "max_attempts or look at why replicas die."
                            ) from exc
                    # A caller cancelled meanwhile (its cancellation may have come in
                    # the same step as the death) is not sent anywhere again.
                    await anyio.lowlevel.checkpoint()
                    resend = sent
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
                        failed = True
                    else:
                        # A BaseException of the endpoint that is not an Exception
                        # (KeyboardInterrupt, SystemExit, ...) is a failure too; a
                        # cancelled caller is not counted.
                        failed = not isinstance(exc, (anyio.get_cancelled_exc_class(), CallerGone))
                    if failed:
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
                rec = replica._rec
                pending = rec._pending
                if now < rec._edge and len(pending) < INLINE_RECORDS:
                    pending.append(now - t0)  # (Recorder.record of a success, inlined)
                else:
                    rec.record(now, now - t0, True)
                if also is not None:
                    also.record(now, now - t0, True)
                return result
        except BaseException as exc:
            # Failed before a replica answered (a forge_sc error, a router's bug, an
            # ended inherited session): counted once, by the service. A caller that
            # went away (cancelled, or its coroutine closed) is not counted.
            if not counted and not isinstance(
                exc, (anyio.get_cancelled_exc_class(), CallerGone, GeneratorExit)
            ):
                now = clock()
                self._rec.record(now, now - t0, False)
                if also is not None:
                    also.record(now, now - t0, False)
            raise
        finally:
            self._inflight -= 1  # (_leave, inlined)
            if self._closing and self._inflight == 0:
                self._drained.set()


def _why(inc: Incarnation, exc: BaseException) -> str:
    """Why the incarnation died, as the service first learned it (a missed health
    check says more than the mesh's "stopped" that followed)."""
    reason = inc.reason if inc.reason is not None else exc
    return f"{type(reason).__name__}: {reason}"
