"""The batcher of one endpoint: merges concurrent stateless calls into batches.

Callers wait in their own tasks; the batcher task (owned by the service) forms a
batch when ``batch_size`` items wait or ``batch_timeout`` after the first one, and
sends each batch from a task of its own task group, so several batches can be in
flight (bounded by replica capacity, since a batch is one request on the usual
request path: router, queue, retry on replica death, ``idempotent`` honoured).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import anyio

from .._metrics import Recorder
from .._routing import Router
from .._spec import EndpointSpec
from .._stats import BatcherStatistics
from ..errors import BatchResultError, ServiceError
from ._wake import Wake, wake_kit

__all__ = ["BatchHost", "Batcher", "merge_one", "split_one"]


class BatchHost(Protocol):
    """What a batcher needs from the service that owns it (the service is one)."""

    def _admit(self) -> None:
        """Count a new request in flight, or raise if the service takes none."""

    def _leave(self) -> None:
        """The request counted by ``_admit`` has ended."""

    def _clock(self) -> float:
        """The service's metrics clock."""
        ...

    def _closed_error(self, message: str) -> ServiceError:
        """What a request that the closing (or failed) service cancelled gets."""
        ...

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
        """Run one request on one replica (routing, queueing, retries)."""


_PENDING, _TAKEN, _SENT = 0, 1, 2


class _Item:
    __slots__ = (
        "args",
        "batch",
        "cancelled",
        "done",
        "error",
        "kwargs",
        "result",
        "state",
        "t",
        "t_clock",
    )

    def __init__(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], t: float, done: Wake, t_clock: float
    ) -> None:
        self.args = args
        self.kwargs = kwargs
        self.t = t  # the backend's clock: batch_timeout follows a virtual clock too
        self.t_clock = t_clock  # the service's metrics clock
        self.state = _PENDING
        self.cancelled = False
        self.done = done
        self.result: Any = None
        self.error: BaseException | None = None
        self.batch: _Batch | None = None


class _Batch:
    """Items taken together, and the scope of their one request: cancelled when the
    last of its callers leaves, so that a batch nobody waits for leaves the service
    queue (and its ``max_queued_requests`` count) and never runs."""

    __slots__ = ("items", "live", "scope")

    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.live = len(items)
        self.scope = anyio.CancelScope()

    def leave(self) -> None:
        """One caller of the batch left (cancelled) before it was answered."""
        self.live -= 1
        if self.live == 0:
            self.scope.cancel()


def merge_one(
    spec: EndpointSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One call's arguments as a batch of one (collated as a batch would be)."""
    collate = spec.collate
    if collate is None:
        return tuple([a] for a in args), {k: [v] for k, v in kwargs.items()}
    return tuple(collate([a]) for a in args), {k: collate([v]) for k, v in kwargs.items()}


def split_one(spec: EndpointSpec, result: Any) -> Any:
    """The single result of a batch of one."""
    return split_all(spec, 1, result)[0]


def split_all(spec: EndpointSpec, n: int, result: Any) -> Any:
    """The ``n`` results of a batch of ``n`` calls, in order (a list or tuple)."""
    if spec.split is not None:
        result = spec.split(result)
    _check_length(spec, result, n)
    return result


def _check_length(spec: EndpointSpec, result: Any, n: int) -> None:
    if not isinstance(result, list | tuple) or len(result) != n:
        got = (
            f"a {type(result).__name__} of length {len(result)}"
            if isinstance(result, list | tuple)
            else repr(type(result).__name__)
        )
        raise BatchResultError(
            f"batched endpoint {spec.name!r} returned {got} for a batch of {n} calls; "
            "it must return a list with exactly one result per call, in order (for a "
            "tensor whose first dimension is the batch, declare split='unbind')"
        )


class Batcher:
    """Batches the stateless calls of one endpoint of one service."""

    def __init__(self, svc: BatchHost, spec: EndpointSpec, router: Router) -> None:
        self._svc = svc
        self._spec = spec
        self._router = router
        self._size = spec.batch_size
        self._timeout = spec.batch_timeout
        self._pending: deque[_Item] = deque()
        # The running backend's wake-ups and clock (a Batcher is made in its loop).
        self._kit = kit = wake_kit()
        self._wake = kit.new()
        # Batches taken and not yet answered (settled at the end if need be).
        self._taken: set[_Batch] = set()
        self._stopped = False
        self._batches = 0
        self._items = 0
        self._max = 0
        self._by_size = 0
        self._by_timeout = 0
        # Service totals count callers' requests: these swap each batch call (counted
        # once on its replica) for the items it carried.
        self.calls = Recorder()
        self.items = Recorder()

    def statistics(self) -> BatcherStatistics:
        return BatcherStatistics(
            endpoint=self._spec.name,
            batch_size=self._size,
            batches_sent=self._batches,
            items_sent=self._items,
            mean_batch_size=self._items / self._batches if self._batches else 0.0,
            max_batch_size=self._max,
            flushes_by_size=self._by_size,
            flushes_by_timeout=self._by_timeout,
            pending=len(self._pending),
        )

    async def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Add one call to the next batch and wait for its own result."""
        svc = self._svc
        if self._stopped:  # the service's task group is ending: nobody would send it
            raise self._closed_error("before this call was batched")
        svc._admit()
        kit = self._kit
        item = _Item(args, kwargs, kit.now(), kit.new(), svc._clock())
        try:
            pending = self._pending
            pending.append(item)
            if len(pending) == 1 or len(pending) >= self._size:
                self._wake.set()
            try:
                await item.done.wait()
            except BaseException:
                if item.state == _PENDING:
                    pending.remove(item)  # leaves the batch before it is sent
                if item.batch is not None and not item.done.is_set():
                    item.batch.leave()  # the last one out cancels the batch's request
                item.cancelled = True
                raise
            if item.error is not None:
                raise item.error
            return item.result
        finally:
            svc._leave()

    async def run(self) -> None:
        """The batcher task: form batches, send each from its own task.

        However the service ends, every call this batcher accepted ends too: calls
        still pending, and calls of batches whose sending task never ran or ended
        without answering, get the service's closing error here, once every sending
        task has finished.
        """
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    batch = self._take(await self._wait_for_batch())
                    if batch is not None:
                        tg.start_soon(self._send, batch)
        finally:
            self._stopped = True
            leftover = list(self._pending)
            self._pending.clear()
            for batch in self._taken:
                leftover.extend(batch.items)
            self._taken.clear()
            error = self._closed_error("before this call was answered")
            for item in leftover:
                if not item.done.is_set():
                    item.error = error
                    item.done.set()

    async def _wait_for_batch(self) -> Any:
        """Wait until a batch is due: ``batch_size`` calls of one shape (that shape
        is returned), or ``batch_timeout`` after the oldest call (None: its shape)."""
        pending = self._pending
        while True:
            while not pending:
                self._wake = self._kit.new()
                await self._wake.wait()
            full = self._full()
            if full is not None:
                self._by_size += 1
                return full
            # The deadline belongs to the oldest waiting item: when that caller
            # leaves (without waking us), the next item's own deadline applies.
            first = pending[0]
            with anyio.move_on_at(first.t + self._timeout):
                while pending and pending[0] is first and full is None:
                    self._wake = self._kit.new()
                    await self._wake.wait()
                    full = self._full()
            if full is not None:
                self._by_size += 1
                return full
            if not pending or pending[0] is not first:
                continue
            self._by_timeout += 1
            return None

    def _full(self) -> Any:
        """The shape of which ``batch_size`` calls wait (the oldest such), or None.
        Only calls of one shape make a batch; the others wait for their own."""
        pending = self._pending
        size = self._size
        if len(pending) < size:
            return None
        counts: dict[Any, int] = {}
        for item in pending:
            key = _shape(item)
            n = counts.get(key, 0) + 1
            if n == size:
                return key
            counts[key] = n
        return None

    def _take(self, shape: Any = None) -> _Batch | None:
        """Up to ``batch_size`` pending calls of ``shape`` (default: the oldest
        call's), in order; the others keep their places."""
        pending = self._pending
        if not pending:
            return None
        if shape is None:
            shape = _shape(pending[0])
        batch: list[_Item] = []
        keep: list[_Item] = []
        while pending and len(batch) < self._size:
            item = pending.popleft()
            (batch if _shape(item) == shape else keep).append(item)
        pending.extendleft(reversed(keep))
        taken = _Batch(batch)
        for item in batch:
            item.state = _TAKEN
            item.batch = taken
        self._taken.add(taken)
        return taken

    async def _send(self, batch: _Batch) -> None:
        try:
            await self._send_batch(batch)
        finally:
            self._taken.discard(batch)

    async def _send_batch(self, taken: _Batch) -> None:
        batch = taken.items
        items = [i for i in batch if not i.cancelled]
        if not items:
            return
        for item in items:
            item.state = _SENT
        n = len(items)
        self._batches += 1
        self._items += n
        self._max = max(self._max, n)
        nargs = len(items[0].args)
        collate = self._spec.collate
        try:
            # Each parameter's values in one list (DESIGN §3), or what the endpoint's
            # opt-in collate makes of that list (a user's function: its error is the
            # batch's callers', inside this try).
            bargs = tuple([i.args[p] for i in items] for p in range(nargs))
            bkwargs = {k: [i.kwargs[k] for i in items] for k in items[0].kwargs}
            if collate is not None:
                bargs = tuple(collate(values) for values in bargs)
                bkwargs = {k: collate(values) for k, values in bkwargs.items()}
            with taken.scope:
                # Split inside the request: a result that is not one per call is
                # that replica's failure in its metrics (the callers' too).
                result = await self._svc._request(
                    self._spec,
                    self._router,
                    bargs,
                    bkwargs,
                    None,
                    also=self.calls,
                    post=partial(split_all, self._spec, n),
                )
            if taken.scope.cancelled_caught:
                return  # every caller left: the request was withdrawn (or abandoned)
        except anyio.get_cancelled_exc_class():
            self._settle(items, error=self._closed_error("while this batch was running"))
            raise
        except Exception as exc:
            self._settle(items, error=exc)
            return
        except BaseException as exc:
            # Not an Exception and not a cancellation: the endpoint raised a
            # BaseException (KeyboardInterrupt, SystemExit, a subclass of its own).
            # Each caller of the batch gets it, as an unbatched caller would; the
            # service itself goes on.
            self._settle(items, error=exc)
            return
        self._settle(items, results=result)

    def _closed_error(self, when: str) -> ServiceError:
        """For callers whose batch the closing service cancelled: the error any
        request of theirs would get now."""
        return self._svc._closed_error(f"{self._spec.name}: the service closed {when}")

    def _settle(
        self,
        items: list[_Item],
        *,
        results: Any = None,
        error: BaseException | None = None,
    ) -> None:
        now = self._svc._clock()
        ok = error is None
        # A caller that left after the batch was sent is not counted (as an unbatched
        # cancelled caller is not).
        latencies = [now - item.t_clock for item in items if not item.cancelled]
        if latencies:
            self.items.record_many(now, latencies, ok)
        for i, item in enumerate(items):
            if ok:
                item.result = results[i]
            else:
                item.error = error
            item.done.set()


def _shape(item: _Item) -> Any:
    """What calls of one batch share: as many positional arguments, the same keyword
    names."""
    return (len(item.args), frozenset(item.kwargs)) if item.kwargs else len(item.args)
