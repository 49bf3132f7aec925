"""Prometheus: a collector over the live forge_sc services.

Needs ``prometheus-client`` (the ``prometheus`` extra)::

    from prometheus_client import REGISTRY, start_http_server
    from forge_sc.observe.prometheus import ForgeCollector

    REGISTRY.register(ForgeCollector())
    start_http_server(9464)          # then scrape http://host:9464/metrics

Each scrape reads every live service's ``statistics()`` on that service's own event
loop thread (see :class:`~forge_sc.observe.LiveService`), so nothing is recorded per
request. Metric names follow Prometheus conventions: the ``forge_sc_`` prefix,
``_total`` on counters, base units (seconds). Labels: ``service`` (see
:func:`~forge_sc.observe.service_name`), and ``replica``, ``endpoint``, ``outcome``,
``state``, ``quantile`` where they apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._registry import LiveService, live_services
from ._samples import FAMILIES

__all__ = ["ForgeCollector"]


class ForgeCollector(Collector):
    """Exposes the metrics of live services.

    ``services``: the :class:`~forge_sc.Service` objects to expose; None (the
    default) means every service whose ``open_service`` block is running, whenever
    the scrape happens. ``timeout``: how long a scrape waits for a service's event
    loop to answer before leaving that service out.

    Families (counters are cumulative since each service started): ``forge_sc_requests_total``
    (``outcome``), ``forge_sc_replica_calls_total`` (``replica``, ``outcome``),
    ``forge_sc_retries_total``, ``forge_sc_restarts_total``,
    ``forge_sc_replica_restarts_total``, ``forge_sc_session_migrations_total``,
    ``forge_sc_scaling_events_total``, ``forge_sc_batches_total`` and
    ``forge_sc_batch_items_total`` (``endpoint``); gauges ``forge_sc_replicas``
    (``state``), ``forge_sc_queue_depth``, ``forge_sc_active_requests``,
    ``forge_sc_replica_active_requests``, ``forge_sc_sessions``,
    ``forge_sc_replica_sessions``, ``forge_sc_replica_queue_depth``,
    ``forge_sc_capacity_utilization``, ``forge_sc_replica_capacity_utilization``,
    ``forge_sc_request_latency_mean_seconds``, ``forge_sc_replica_latency_mean_seconds``,
    ``forge_sc_uptime_seconds``, and ``forge_sc_request_latency_seconds`` /
    ``forge_sc_replica_request_latency_seconds`` (``quantile`` 0.5 and 0.99 over the
    last 60 s, the window of ``statistics()``).
    """

    def __init__(self, services: Iterable[Any] | None = None, *, timeout: float = 2.0) -> None:
        self._services = None if services is None else list(services)
        self._timeout = timeout

    def _live(self) -> list[LiveService]:
        live = live_services()
        if self._services is None:
            return live
        wanted = {id(s) for s in self._services}
        return [entry for entry in live if id(entry.service) in wanted]

    def describe(self) -> list[Metric]:
        # An empty description: the registry then calls collect() lazily per scrape
        # instead of at registration time.
        return []

    def collect(self) -> Iterator[Metric]:
        snaps = []
        for entry in self._live():
            stats = entry.statistics(self._timeout)
            if stats is not None:
                snaps.append((entry.name, stats))
        for family in FAMILIES:
            metric: CounterMetricFamily | GaugeMetricFamily
            if family.kind == "counter":
                metric = CounterMetricFamily(family.prom_name, family.help, labels=None)
            else:
                metric = GaugeMetricFamily(family.prom_name, family.help, labels=None)
            for name, stats in snaps:
                for attrs, value in family.points(name, stats):
                    metric.add_sample(
                        metric.name + ("_total" if family.kind == "counter" else ""),
                        attrs,
                        value,
                    )
            yield metric
        latency = GaugeMetricFamily(
            "forge_sc_request_latency_seconds",
            "Latency quantiles of callers' requests over the last 60 s.",
            labels=["service", "quantile"],
        )
        replica_latency = GaugeMetricFamily(
            "forge_sc_replica_request_latency_seconds",
            "Latency quantiles of each replica's calls over the last 60 s.",
            labels=["service", "replica", "quantile"],
        )
        for name, stats in snaps:
            latency.add_metric([name, "0.5"], stats.p50_latency)
            latency.add_metric([name, "0.99"], stats.p99_latency)
            for r in stats.replicas:
                replica_latency.add_metric([name, str(r.idx), "0.5"], r.p50_latency)
                replica_latency.add_metric([name, str(r.idx), "0.99"], r.p99_latency)
        yield latency
        yield replica_latency
