"""Prometheus: a real HTTP scrape of the collector, parsed with prometheus_client."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from forge_sc import open_service
from forge_sc.observe import service_name
from forge_sc.observe.prometheus import ForgeCollector
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for
from .observe_actors import Traced

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> Iterator[tuple[CollectorRegistry, int]]:
    registry = CollectorRegistry()
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield registry, httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _scrape(port: int) -> dict[str, dict[Any, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[Any, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("forge_sc_"):
                key = tuple(sorted(sample.labels.items()))
                out.setdefault(sample.name, {})[key] = sample.value
    return out


async def test_a_scrape_reports_exact_counts(server: tuple[CollectorRegistry, int]) -> None:
    registry, port = server
    mesh = FakeMesh(seed=1)
    async with open_service(Counter, num_replicas=2, mesh=mesh, restart_backoff=0.01) as svc:
        registry.register(ForgeCollector([svc]))
        name = service_name(svc)
        with anyio.fail_after(10):
            for _ in range(6):
                await svc.incr.route()
            with pytest.raises(KeyError):
                await svc.boom.route()
            mesh.crash(1)
            await wait_for(lambda: svc.replicas[1].healthy and svc.replicas[1].restarts == 1)
            await svc.start_session()
            got = await anyio.to_thread.run_sync(_scrape, port)
    s = ("service", name)
    assert got["forge_sc_requests_total"] == {
        (("outcome", "error"), s): 1.0,
        (("outcome", "ok"), s): 6.0,
    }
    assert got["forge_sc_replica_calls_total"] == {
        (("outcome", "ok"), ("replica", "0"), s): 3.0,
        (("outcome", "error"), ("replica", "0"), s): 1.0,
        (("outcome", "ok"), ("replica", "1"), s): 3.0,
        (("outcome", "error"), ("replica", "1"), s): 0.0,
    }
    assert got["forge_sc_restarts_total"] == {(s,): 1.0}
    assert got["forge_sc_replica_restarts_total"] == {
        (("replica", "0"), s): 0.0,
        (("replica", "1"), s): 1.0,
    }
    assert got["forge_sc_retries_total"] == {(s,): 0.0}
    assert got["forge_sc_sessions"] == {(s,): 1.0}
    assert got["forge_sc_replicas"][(s, ("state", "HEALTHY"))] == 2.0
    assert sum(got["forge_sc_replicas"].values()) == 2.0
    assert got["forge_sc_queue_depth"] == {(s,): 0.0}
    assert got["forge_sc_active_requests"] == {(s,): 0.0}
    assert set(got["forge_sc_request_latency_seconds"]) == {
        (("quantile", "0.5"), s),
        (("quantile", "0.99"), s),
    }
    assert all(v > 0 for v in got["forge_sc_request_latency_seconds"].values())
    assert got["forge_sc_uptime_seconds"][(s,)] > 0
    # Every figure of DESIGN §6 has a family: capacity, mean latency, per-replica
    # queues and sessions too.
    assert got["forge_sc_capacity_utilization"] == {(s,): 0.0}
    assert set(got["forge_sc_replica_capacity_utilization"]) == {
        (("replica", "0"), s),
        (("replica", "1"), s),
    }
    assert got["forge_sc_request_latency_mean_seconds"][(s,)] > 0
    assert all(v >= 0 for v in got["forge_sc_replica_latency_mean_seconds"].values())
    assert sum(got["forge_sc_replica_queue_depth"].values()) == 0.0
    assert sum(got["forge_sc_replica_sessions"].values()) == 0.0  # not placed yet


async def test_the_default_collector_follows_the_live_services(
    server: tuple[CollectorRegistry, int],
) -> None:
    registry, port = server
    registry.register(ForgeCollector())
    async with open_service(Traced, num_replicas=1, mesh=FakeMesh(seed=1)) as svc:
        name = service_name(svc)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for i in range(8):  # two full batches of 4
                    tg.start_soon(svc.links.route, i)
            got = await anyio.to_thread.run_sync(_scrape, port)
    assert got["forge_sc_batch_items_total"][(("endpoint", "links"), ("service", name))] == 8.0
    assert got["forge_sc_batches_total"][(("endpoint", "links"), ("service", name))] == 2.0
    assert got["forge_sc_requests_total"][(("outcome", "ok"), ("service", name))] == 8.0
    after = await anyio.to_thread.run_sync(_scrape, port)
    assert not any(("service", name) in key for v in after.values() for key in v)
