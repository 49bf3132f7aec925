"""The service's statistics: one frozen snapshot, aggregated from every recorder.

Latencies and request rates are time-windowed (see :mod:`forge_sc._metrics`); a
batched endpoint's merged calls count once per caller in the service totals and
once per batch on the replica that ran them.
"""

from __future__ import annotations

from .._metrics import percentile, rate
from .._stats import ReplicaMetrics, ServiceMetrics
from ._state import HEALTHY, ServiceState

__all__ = ["snapshot"]


def snapshot(svc: ServiceState) -> ServiceMetrics:
    """A frozen snapshot of ``svc``'s metrics (see :class:`ServiceMetrics`)."""
    now = svc._clock()
    reps = []
    hist: dict[int, int] = {}
    n_lat, sum_lat = 0, 0.0
    completed = svc._rec.completed_in_window(now)
    completed += svc._retired.completed_in_window(now)
    for rec in (svc._rec, svc._retired):
        n, s = rec.window_histogram(now, hist)
        n_lat += n
        sum_lat += s
    for r in svc._replicas:
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
                request_rate=rate(done, now, svc._t0),
                avg_latency=rs / rn if rn else 0.0,
                p50_latency=percentile(rh, 0.50),
                p99_latency=percentile(rh, 0.99),
                active_requests=active,
                queue_depth=r.queue_depth,
                assigned_sessions=r._sessions,
                capacity_utilization=active / svc._cap,
            )
        )
    retired = svc._retired
    ok = svc._rec.successful + retired.successful + sum(r.successful_requests for r in reps)
    bad = svc._rec.failed + retired.failed + sum(r.failed_requests for r in reps)
    for batcher in svc._batchers.values():
        # A merged batch counts once per caller here (once per batch on its replica).
        ok += batcher.items.successful - batcher.calls.successful
        bad += batcher.items.failed - batcher.calls.failed
        completed += batcher.items.completed_in_window(now) - batcher.calls.completed_in_window(now)
        n, s = batcher.items.window_histogram(now, hist)
        n_lat += n
        sum_lat += s
        minus: dict[int, int] = {}
        n, s = batcher.calls.window_histogram(now, minus)
        n_lat -= n
        sum_lat -= s
        for k, c in minus.items():
            hist[k] -= c
    healthy = sum(r.healthy for r in reps)
    return ServiceMetrics(
        total_requests=ok + bad,
        successful_requests=ok,
        failed_requests=bad,
        retries=svc._retries,
        restarts=sum(r.restarts for r in reps) + svc._retired_restarts,
        session_migrations=svc._migrations,
        active_sessions=len(svc._sessions),
        healthy_replicas=healthy,
        total_replicas=len(reps),
        scaling_events=svc._scaling_events,
        active_requests=sum(r.active_requests for r in reps),
        queue_depth=svc._queued,
        request_rate=rate(completed, now, svc._t0),
        avg_latency=sum_lat / n_lat if n_lat else 0.0,
        p50_latency=percentile(hist, 0.50),
        p99_latency=percentile(hist, 0.99),
        # Over the healthy replicas (TorchForge's get_avg_capacity_utilization): one
        # recovering is no capacity, busy or idle.
        capacity_utilization=(
            sum(r.capacity_utilization for r in reps if r.healthy) / healthy if healthy else 0.0
        ),
        uptime=now - svc._t0,
        replicas=tuple(reps),
        batchers=tuple(b.statistics() for b in svc._batchers.values()),
        ready_spares=0 if svc._spares is None else svc._spares.ready,
        spares_started=0 if svc._spares is None else svc._spares.started,
    )
