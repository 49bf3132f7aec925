"""Time-windowed request metrics: cheap per request, never sample-capped.

The hot path appends the latency to a short list (and counts a failure); once per
second (or every 4,096 requests) that list is folded into the counts and into a
log-spaced histogram (5% wide buckets) of the current 10-second slot. Rates count completions in
1-second slots over the last 60 s; percentiles merge the histograms of the same
window. Memory is fixed however many requests pass.

The fold sorts the latencies (in C) and counts each bucket's run with one binary
search: its cost per request is the sort's, a few tens of nanoseconds, where
computing each latency's bucket (a logarithm, a floor and a counter update per
request) cost ~250 ns, a tenth of an in-process request.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable

__all__ = ["INLINE_RECORDS", "WINDOW", "Recorder", "clock", "loop_clock", "percentile", "rate"]

WINDOW = 60.0
_RATE_SLOTS = 60  # 1 s each
_HIST_SLOT = 10.0
_HIST_SLOTS = 7  # the current 10-second slot and six whole ones: at least 60 s
_FLUSH_AT = 4096
_K = 1.0 / math.log(1.05)
_MIN_LATENCY = 1e-7
#: The request path inlines :meth:`Recorder.record` of a success as
#: ``rec._pending.append(latency)`` while ``now < rec._edge`` (the current second)
#: and ``len(rec._pending) < INLINE_RECORDS`` (the append does not reach the fold):
#: exactly what ``record`` does then, without its call.
INLINE_RECORDS = _FLUSH_AT - 1

clock = time.perf_counter


def loop_clock() -> Callable[[], float]:
    """The clock a service's metrics use, chosen in its event loop: ``clock`` (the
    cheapest), unless the loop runs on a clock of its own (trio's ``MockClock``, an
    asyncio loop whose ``time()`` is overridden): then that one, so that latencies,
    rates and windows follow virtual time as the service's timeouts do."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        own = trio.lowlevel.current_clock()
        if type(own).__name__ != "SystemClock" or type(own).__module__ != "trio._core._run":
            return own.current_time
        return clock
    import asyncio

    loop = asyncio.get_running_loop()
    if type(loop).time is not asyncio.BaseEventLoop.time:
        return loop.time
    return clock


class Recorder:
    """Counts and latency of the requests that completed on one replica (or that the
    service itself failed before they reached one)."""

    __slots__ = (
        "_done",
        "_edge",
        "_hist",
        "_hist_ids",
        "_lat",
        "_pending",
        "_rate",
        "_rate_ids",
        "_sec",
        "_sec_count",
        "failed",
        "latency_sum",
    )

    def __init__(self) -> None:
        # Completions folded so far (both outcomes); those in ``_pending`` are not
        # yet counted there. Failures are counted as they happen.
        self._done = 0
        self.failed = 0
        self.latency_sum = 0.0
        self._rate = [0] * _RATE_SLOTS
        self._rate_ids = [-1] * _RATE_SLOTS
        self._hist: list[Counter[int]] = [Counter() for _ in range(_HIST_SLOTS)]
        self._hist_ids = [-1] * _HIST_SLOTS
        self._lat = [[0, 0.0] for _ in range(_HIST_SLOTS)]  # count, sum per hist slot
        self._pending: list[float] = []
        self._sec = -1
        self._sec_count = 0
        self._edge = -1.0  # end of the current 1-second slot

    @property
    def total(self) -> int:
        return self._done + len(self._pending)

    @property
    def successful(self) -> int:
        return self._done + len(self._pending) - self.failed

    def record(self, now: float, latency: float, ok: bool) -> None:
        """One completed request (the hot path: an append; a success counts as the
        latency it adds, folded into the counts with it)."""
        if now >= self._edge:
            self._roll(now)
        if not ok:
            self.failed += 1
        pending = self._pending
        pending.append(latency)
        if len(pending) >= _FLUSH_AT:
            self._fold()

    def record_many(self, now: float, latencies: list[float], ok: bool) -> None:
        """Requests that completed together (the calls of one batch)."""
        if now >= self._edge:
            self._roll(now)
        if not ok:
            self.failed += len(latencies)
        pending = self._pending
        pending.extend(latencies)
        if len(pending) >= _FLUSH_AT:
            self._fold()

    def _roll(self, now: float) -> None:
        """Close the current second: its count goes to the rate ring, its latencies
        to the histogram of the 10-second slot they belong to."""
        self._fold()
        if self._sec >= 0:
            i = self._sec % _RATE_SLOTS
            self._rate_ids[i] = self._sec
            self._rate[i] = self._sec_count
        self._sec = int(now)
        self._sec_count = 0
        self._edge = self._sec + 1.0

    def _fold(self) -> None:
        pending = self._pending
        if not pending:
            return
        slot = int(self._sec / _HIST_SLOT)
        j = slot % _HIST_SLOTS
        if self._hist_ids[j] != slot:
            self._hist_ids[j] = slot
            self._hist[j] = Counter()
            self._lat[j] = [0, 0.0]
        total = sum(pending)
        n = len(pending)
        _count_buckets(pending, self._hist[j])
        lat = self._lat[j]
        lat[0] += n
        lat[1] += total
        self.latency_sum += total
        self._done += n
        self._sec_count += n  # every pending latency is of the current second
        pending.clear()

    def absorb(self, other: Recorder, now: float) -> None:
        """Add ``other``'s counts and window into this one (a replica removed by
        scaling keeps counting in the service's figures)."""
        for rec in (self, other):
            if now >= rec._edge:
                rec._roll(now)
            rec._fold()
        self._done += other._done
        self.failed += other.failed
        self.latency_sum += other.latency_sum
        self._sec_count += other._sec_count  # both are in the second of ``now``
        for i, sid in enumerate(other._rate_ids):
            if sid > self._rate_ids[i]:
                self._rate_ids[i], self._rate[i] = sid, other._rate[i]
            elif sid == self._rate_ids[i] and sid >= 0:
                self._rate[i] += other._rate[i]
        for j, hid in enumerate(other._hist_ids):
            if hid > self._hist_ids[j]:
                self._hist_ids[j] = hid
                self._hist[j] = Counter(other._hist[j])
                self._lat[j] = list(other._lat[j])
            elif hid == self._hist_ids[j] and hid >= 0:
                h = self._hist[j]
                for b, c in other._hist[j].items():
                    h[b] = h.get(b, 0) + c
                self._lat[j][0] += other._lat[j][0]
                self._lat[j][1] += other._lat[j][1]

    def completed_in_window(self, now: float) -> float:
        """Completions in the last 60 s, ``(now - 60, now]``: the current second, the
        59 whole seconds before it, and the share of the second before those that
        lies in the window (its count pro rata, as if spread evenly over it)."""
        if now >= self._edge:
            self._roll(now)
        sec = int(now)
        low = sec - _RATE_SLOTS
        done = 0.0
        for c, s in zip(self._rate, self._rate_ids, strict=True):
            if s > low:
                done += c
            elif s == low:
                done += c * (1.0 - (now - sec))
        return done + self._sec_count + len(self._pending)

    def window_histogram(self, now: float, into: dict[int, int]) -> tuple[int, float]:
        """Add this recorder's latency buckets of the last 60-70 s (the current
        10-second slot and the six before it) into ``into``; return (count, latency
        sum) of that window."""
        if now >= self._edge:
            self._roll(now)
        self._fold()
        low = int(now / _HIST_SLOT) - _HIST_SLOTS
        n, total = 0, 0.0
        for h, s, lat in zip(self._hist, self._hist_ids, self._lat, strict=True):
            if s > low:
                for b, c in h.items():
                    into[b] = into.get(b, 0) + c
                n += int(lat[0])
                total += lat[1]
        return n, total


def _count_buckets(latencies: list[float], hist: Counter[int]) -> None:
    """Add ``latencies`` to ``hist`` (bucket ``floor(log(x) / log(1.05))``); sorts them.

    Sorted, each bucket's latencies form one run, found by a binary search for the
    bucket's upper edge: the work per latency is the sort's.
    """
    latencies.sort()
    log, exp, floor, k, low = math.log, math.exp, math.floor, _K, _MIN_LATENCY
    n = len(latencies)
    i = 0
    while i < n:
        x = latencies[i]
        b = floor(log(x if x > low else low) * k)
        # The first latency past bucket b (at least the next one: a value at the
        # rounding edge of its bucket is not counted twice, nor skipped).
        end = bisect_left(latencies, exp((b + 1) / k), i + 1)
        hist[b] += end - i
        i = end


def percentile(hist: dict[int, int], q: float) -> float:
    """The ``q`` quantile (0..1) of a merged histogram by nearest rank (the
    ``ceil(q * n)``-th smallest latency's bucket: p99 of 2 latencies is the larger,
    as of any n <= 100 the largest), 0.0 when empty."""
    n = sum(hist.values())
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q * n - 1e-9))  # (0.99 * 100 must be 99, not 99.0000001)
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return math.exp((b + 0.5) / _K)
    return math.exp((max(hist) + 0.5) / _K)  # pragma: no cover - unreachable


def rate(completed: float, now: float, started: float) -> float:
    """Requests per second: completions in the window over min(60 s, uptime)."""
    span = min(WINDOW, max(now - started, 1e-9))
    return completed / span
