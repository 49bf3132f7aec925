"""Fan-out: one call on every replica healthy when it starts, concurrently."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from .._replica import Replica
from .._spec import EndpointSpec
from ..errors import FanoutError, ReplicaDiedError, RequestKilledReplicaError, ServiceClosedError
from ..mesh._protocol import CallerGone, CallKilledReplica, ReplicaGone
from ._admission import Admission
from ._state import HEALTHY

__all__ = ["Fanout"]


class Fanout(Admission):
    """``fanout()``: results in replica-index order, errors as a ``FanoutError``."""

    async def _fanout(
        self,
        spec: EndpointSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        post: Callable[[Any], Any] | None = None,
    ) -> list[Any]:
        """``post`` (a batched endpoint's split) turns each replica's result into
        what the caller gets; if it raises, that is the replica's error."""
        self._check_open()
        targets = [r for r in self._replicas if r._state is HEALTHY]
        if not targets:
            await self._wait(self._any_healthy, 0.0, None, claims=False)
            targets = [r for r in self._replicas if r._state is HEALTHY]
        results: dict[int, Any] = {}
        errors: dict[int, Exception] = {}
        died: list[int] = []
        cut: list[int] = []  # those of ``died`` stopped by the service's end
        self._admit(counted=False)  # (a fan-out counts per replica it reached)
        try:
            async with anyio.create_task_group() as tg:
                for r in targets:
                    tg.start_soon(
                        self._fanout_one, spec, r, args, kwargs, post, results, errors, died, cut
                    )
        finally:
            self._leave()
        if cut:
            # Cut off by the service's own end (past the drain, or escalated), not by
            # one replica's death: the caller learns that, as a route() would,
            # whatever had answered.
            if self._failed:
                await self._escalated()
            raise ServiceClosedError(
                f"{spec.name}: the service closed while the fan-out ran; replica(s) "
                f"{sorted(cut)} were stopped before answering ({len(results)} had answered)"
            )
        if errors:
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
            raise ReplicaDiedError(
                f"{spec.name}: every replica of the fan-out died ({sorted(died)})"
            )
        return [results[i] for i in sorted(results)]

    async def _fanout_one(
        self,
        spec: EndpointSpec,
        replica: Replica,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        post: Callable[[Any], Any] | None,
        results: dict[int, Any],
        errors: dict[int, Exception],
        died: list[int],
        cut: list[int],
    ) -> None:
        inc = replica._inc
        if inc is None or inc.handle is None or replica._state is not HEALTHY:
            died.append(replica.idx)
            return
        t0 = self._clock()
        inc.active += 1
        if inc.active >= self._cap:
            self._dirty = True
        ok = False
        handle = inc.handle
        try:
            value = await handle.call(spec.name, args, kwargs)
            results[replica.idx] = value if post is None else post(value)
            ok = True
        except CallKilledReplica as exc:
            inc.die(exc)
            err = RequestKilledReplicaError(
                f"{spec.name}: this call killed replica {replica.idx}; the replica is "
                f"restarted. {exc.args[0]}"
            )
            err.__cause__ = exc
            errors[replica.idx] = err
        except ReplicaGone as exc:
            inc.die(exc)
            died.append(replica.idx)
            if self._forced or self._failed:
                cut.append(replica.idx)
        except Exception as exc:
            errors[replica.idx] = exc
        except BaseException as exc:
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            # A call abandoned by a cancelled caller stays counted until the mesh
            # reports it settled (settle_abandoned releases it then).
            if not (handle.detaches_on_cancel and cancelled):
                self._release(replica, inc)
            if not (cancelled or isinstance(exc, CallerGone)):  # the endpoint's: a failure
                now = self._clock()
                replica._rec.record(now, now - t0, False)
            raise
        self._release(replica, inc)
        now = self._clock()
        if replica.idx not in died:
            replica._rec.record(now, now - t0, ok)
        else:
            self._rec.record(now, now - t0, False)
