"""The exported metric families, computed from one ``Service.statistics()`` snapshot.

One table serves both exporters: OpenTelemetry names (``forge_sc.requests``) and
Prometheus names (``forge_sc_requests_total``) are two spellings of the same family.
Counters are cumulative since the service started; gauges are the value now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import attrs

__all__ = ["FAMILIES", "Family", "Point"]

#: (attributes, value); attribute keys are plain (``service``, ``replica``...).
Point = tuple[dict[str, str], float]

_STATES = ("STARTING", "HEALTHY", "FAILED", "RECOVERING", "STOPPING", "STOPPED")


@attrs.frozen
class Family:
    """One metric family."""

    otel_name: str
    prom_name: str  # without the ``_total`` a Prometheus counter gets on exposition
    kind: Literal["counter", "gauge"]
    unit: str  # UCUM, as OpenTelemetry wants it
    help: str
    points: Callable[[str, Any], Iterator[Point]]


def _requests(name: str, s: Any) -> Iterator[Point]:
    yield {"service": name, "outcome": "ok"}, s.successful_requests
    yield {"service": name, "outcome": "error"}, s.failed_requests


def _replica_calls(name: str, s: Any) -> Iterator[Point]:
    for r in s.replicas:
        idx = str(r.idx)
        yield {"service": name, "replica": idx, "outcome": "ok"}, r.successful_requests
        yield {"service": name, "replica": idx, "outcome": "error"}, r.failed_requests


def _one(field: str) -> Callable[[str, Any], Iterator[Point]]:
    def points(name: str, s: Any) -> Iterator[Point]:
        yield {"service": name}, getattr(s, field)

    return points


def _per_replica(field: str) -> Callable[[str, Any], Iterator[Point]]:
    def points(name: str, s: Any) -> Iterator[Point]:
        for r in s.replicas:
            yield {"service": name, "replica": str(r.idx)}, getattr(r, field)

    return points


def _per_batcher(field: str) -> Callable[[str, Any], Iterator[Point]]:
    def points(name: str, s: Any) -> Iterator[Point]:
        for b in s.batchers:
            yield {"service": name, "endpoint": b.endpoint}, getattr(b, field)

    return points


def _replicas_by_state(name: str, s: Any) -> Iterator[Point]:
    counts = dict.fromkeys(_STATES, 0)
    for r in s.replicas:
        counts[r.state.name] = counts.get(r.state.name, 0) + 1
    for state, n in counts.items():
        yield {"service": name, "state": state}, n


FAMILIES: tuple[Family, ...] = (
    Family(
        "forge_sc.requests",
        "forge_sc_requests",
        "counter",
        "{request}",
        "Callers' requests that ended, by outcome (a user exception or a forge_sc "
        "error is outcome=error); a merged batch counts once per caller.",
        _requests,
    ),
    Family(
        "forge_sc.replica.calls",
        "forge_sc_replica_calls",
        "counter",
        "{call}",
        "Calls each current replica ran, by outcome (a merged batch is one call).",
        _replica_calls,
    ),
    Family(
        "forge_sc.retries",
        "forge_sc_retries",
        "counter",
        "{retry}",
        "Requests re-sent to another replica after a replica death.",
        _one("retries"),
    ),
    Family(
        "forge_sc.restarts",
        "forge_sc_restarts",
        "counter",
        "{restart}",
        "Replica respawn attempts, all replicas.",
        _one("restarts"),
    ),
    Family(
        "forge_sc.replica.restarts",
        "forge_sc_replica_restarts",
        "counter",
        "{restart}",
        "Respawn attempts of each current replica.",
        _per_replica("restarts"),
    ),
    Family(
        "forge_sc.session.migrations",
        "forge_sc_session_migrations",
        "counter",
        "{migration}",
        "Sessions moved to another replica because theirs died.",
        _one("session_migrations"),
    ),
    Family(
        "forge_sc.scaling.events",
        "forge_sc_scaling_events",
        "counter",
        "{event}",
        "scale_to() calls that changed the replica count (the autoscaler's included).",
        _one("scaling_events"),
    ),
    Family(
        "forge_sc.batches",
        "forge_sc_batches",
        "counter",
        "{batch}",
        "Batches sent by each batched endpoint.",
        _per_batcher("batches_sent"),
    ),
    Family(
        "forge_sc.batch.items",
        "forge_sc_batch_items",
        "counter",
        "{request}",
        "Callers' requests carried in those batches.",
        _per_batcher("items_sent"),
    ),
    Family(
        "forge_sc.replicas",
        "forge_sc_replicas",
        "gauge",
        "{replica}",
        "Replicas now, by state.",
        _replicas_by_state,
    ),
    Family(
        "forge_sc.queue.depth",
        "forge_sc_queue_depth",
        "gauge",
        "{request}",
        "Requests waiting now for a replica slot (all queues).",
        _one("queue_depth"),
    ),
    Family(
        "forge_sc.active_requests",
        "forge_sc_active_requests",
        "gauge",
        "{request}",
        "Requests running on replicas now.",
        _one("active_requests"),
    ),
    Family(
        "forge_sc.replica.active_requests",
        "forge_sc_replica_active_requests",
        "gauge",
        "{request}",
        "Requests running on each replica now.",
        _per_replica("active_requests"),
    ),
    Family(
        "forge_sc.sessions",
        "forge_sc_sessions",
        "gauge",
        "{session}",
        "Sessions started and not terminated.",
        _one("active_sessions"),
    ),
    Family(
        "forge_sc.replica.sessions",
        "forge_sc_replica_sessions",
        "gauge",
        "{session}",
        "Sessions assigned to each replica now.",
        _per_replica("assigned_sessions"),
    ),
    Family(
        "forge_sc.replica.queue.depth",
        "forge_sc_replica_queue_depth",
        "gauge",
        "{request}",
        "Session requests waiting now for each replica's slots.",
        _per_replica("queue_depth"),
    ),
    Family(
        "forge_sc.capacity.utilization",
        "forge_sc_capacity_utilization",
        "gauge",
        "1",
        "Mean over the healthy replicas of active requests / replica_max_concurrent_requests.",
        _one("capacity_utilization"),
    ),
    Family(
        "forge_sc.replica.capacity.utilization",
        "forge_sc_replica_capacity_utilization",
        "gauge",
        "1",
        "Each replica's active requests / replica_max_concurrent_requests.",
        _per_replica("capacity_utilization"),
    ),
    Family(
        "forge_sc.request.latency.mean",
        "forge_sc_request_latency_mean_seconds",
        "gauge",
        "s",
        "Mean latency of callers' requests over the last 60 s.",
        _one("avg_latency"),
    ),
    Family(
        "forge_sc.replica.latency.mean",
        "forge_sc_replica_latency_mean_seconds",
        "gauge",
        "s",
        "Mean latency of each replica's calls over the last 60 s.",
        _per_replica("avg_latency"),
    ),
    Family(
        "forge_sc.uptime",
        "forge_sc_uptime_seconds",
        "gauge",
        "s",
        "Seconds since the service was built.",
        _one("uptime"),
    ),
)
