"""Frozen metric snapshots: ``Service.statistics()`` / ``get_metrics()``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ._replica import ReplicaState

__all__ = ["BatcherStatistics", "ReplicaMetrics", "ServiceMetrics"]


@attrs.frozen
class ReplicaMetrics:
    """One replica at the moment of the snapshot. Rates and latencies cover the last
    60 s (rate: completions over min(60 s, service uptime))."""

    idx: int
    state: ReplicaState
    healthy: bool
    restarts: int
    total_requests: int
    successful_requests: int
    failed_requests: int
    request_rate: float
    avg_latency: float
    p50_latency: float
    p99_latency: float
    active_requests: int
    queue_depth: int
    assigned_sessions: int
    capacity_utilization: float


@attrs.frozen
class BatcherStatistics:
    """One batched endpoint's batcher."""

    endpoint: str
    batch_size: int
    batches_sent: int
    items_sent: int
    mean_batch_size: float
    max_batch_size: int
    flushes_by_size: int
    flushes_by_timeout: int
    pending: int


@attrs.frozen
class ServiceMetrics:
    """A snapshot of a whole service.

    ``total_requests`` counts callers' requests that ended (``successful_requests +
    failed_requests``): a routed call is one request (also when it was merged into a
    batch), a fan-out one per replica it reached. A user exception counts as a request
    and a failure; so do the service's own errors (overloaded, no healthy replica,
    replica died, closed). ``retries`` counts re-sends after a replica death. The
    per-replica figures count the calls each replica ran: there a merged batch is one.
    ``queue_depth`` counts every request waiting for a slot: in the service queue and
    in the replicas' session queues (each replica's ``queue_depth`` is its share of the
    latter).

    TorchForge's read methods are here too, with its signatures:
    :meth:`get_total_request_rate`, :meth:`get_avg_queue_depth`,
    :meth:`get_avg_capacity_utilization` and :meth:`get_sessions_per_replica`.
    """

    total_requests: int
    successful_requests: int
    failed_requests: int
    retries: int
    restarts: int
    session_migrations: int
    active_sessions: int
    healthy_replicas: int
    total_replicas: int
    scaling_events: int
    active_requests: int
    queue_depth: int
    request_rate: float
    avg_latency: float
    p50_latency: float
    p99_latency: float
    capacity_utilization: float
    uptime: float
    replicas: tuple[ReplicaMetrics, ...]
    batchers: tuple[BatcherStatistics, ...] = ()
    #: Warm spares started and waiting (``spare_replicas``), and started in all.
    ready_spares: int = 0
    spares_started: int = 0

    # ------------------------------------------------------ TorchForge's readers

    def get_total_request_rate(self) -> float:
        """Requests per second across the service: ``request_rate`` (requests that
        ended in the last 60 s over min(60 s, uptime))."""
        return self.request_rate

    def get_avg_queue_depth(self, replicas: Iterable[Any] | None = None) -> float:
        """Requests waiting for a slot (``queue_depth``) per replica.

        Without an argument (as the seeds call it) the mean is over every replica,
        as ``summary()["service"]["avg_queue_depth"]``; given ``replicas`` (as
        TorchForge's code calls it: ``service._replicas``), over the healthy ones
        among them. 0.0 when there is none.
        """
        n = len(self.replicas) if replicas is None else len(self._healthy_among(replicas))
        return self.queue_depth / n if n else 0.0

    def get_avg_capacity_utilization(self, replicas: Iterable[Any]) -> float:
        """Mean ``capacity_utilization`` of the replicas among ``replicas`` that were
        healthy at this snapshot (TorchForge's definition), 0.0 if none.

        ``replicas`` is what the seeds pass, ``service._replicas``: replica views (or
        :class:`ReplicaMetrics`, or plain indices); each is looked up here by index.
        """
        healthy = self._healthy_among(replicas)
        if not healthy:
            return 0.0
        return sum(r.capacity_utilization for r in healthy) / len(healthy)

    def get_sessions_per_replica(self) -> float:
        """Active sessions per replica (over every replica), 0.0 without replicas."""
        n = len(self.replicas)
        return self.active_sessions / n if n else 0.0

    def _healthy_among(self, replicas: Iterable[Any]) -> list[ReplicaMetrics]:
        by_idx = {r.idx: r for r in self.replicas}
        wanted = {r if isinstance(r, int) else r.idx for r in replicas}
        return [m for i, m in by_idx.items() if i in wanted and m.healthy]

    def summary(self) -> dict[str, Any]:
        """TorchForge's ``get_metrics_summary()`` layout."""
        n = len(self.replicas)
        return {
            "service": {
                "total_sessions": self.active_sessions,
                "healthy_replicas": self.healthy_replicas,
                "total_replicas": self.total_replicas,
                "total_request_rate": self.request_rate,
                # queue_depth already counts the session requests queued on replicas.
                "avg_queue_depth": self.queue_depth / n if n else 0.0,
                "avg_capacity_utilization": self.capacity_utilization,
                "sessions_per_replica": self.active_sessions / n if n else 0.0,
                "total_requests": self.total_requests,
                "successful_requests": self.successful_requests,
                "failed_requests": self.failed_requests,
                "retries": self.retries,
                "restarts": self.restarts,
                "session_migrations": self.session_migrations,
                "scaling_events": self.scaling_events,
                "avg_latency": self.avg_latency,
                "p50_latency": self.p50_latency,
                "p99_latency": self.p99_latency,
            },
            "replicas": {
                r.idx: {
                    "total_requests": r.total_requests,
                    "successful_requests": r.successful_requests,
                    "failed_requests": r.failed_requests,
                    "request_rate": r.request_rate,
                    "avg_latency": r.avg_latency,
                    "active_requests": r.active_requests,
                    "queue_depth": r.queue_depth,
                    "assigned_sessions": r.assigned_sessions,
                    "capacity_utilization": r.capacity_utilization,
                    "state": r.state.name,
                    "restarts": r.restarts,
                }
                for r in self.replicas
            },
        }
