"""FakeMesh under trio's MockClock: minutes of backoff and timeouts in no real time,
deterministically under a seed."""

from __future__ import annotations

import time

import anyio
import pytest
from trio.testing import MockClock

from forge_sc import ReplicaState, open_service
from forge_sc.errors import NoHealthyReplicasError
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


async def recovery_time(seed: int) -> float:
    mesh = FakeMesh(seed=seed)
    async with open_service(
        Counter, num_replicas=1, mesh=mesh, restart_backoff=4.0, max_restarts=10,
        health_poll_rate=1.0, health_timeout=2.0,
    ) as svc:  # fmt: skip
        mesh.fail_spawns(0, 3)
        t0 = anyio.current_time()
        mesh.crash(0)
        assert await svc.value.route() == 0  # waits through four respawns
        assert svc.replicas[0].restarts == 4
        return anyio.current_time() - t0


async def test_backoff_runs_in_virtual_time_and_is_deterministic() -> None:
    real = time.perf_counter()
    first = await recovery_time(seed=11)
    second = await recovery_time(seed=11)
    other = await recovery_time(seed=12)
    # 4 + 5 + 5 + 5 s (doubling from 4 s, capped at 5 s), each jittered by U(0.5, 1)
    assert 9.5 <= first <= 19.0
    assert first == second
    assert first != other
    assert time.perf_counter() - real < 5.0


async def test_request_timeout_in_virtual_time() -> None:
    mesh = FakeMesh(seed=1)
    async with open_service(
        Counter, num_replicas=1, mesh=mesh, request_timeout=120.0, restart_backoff=1.0,
        max_restarts=1000, health_poll_rate=1.0,
    ) as svc:  # fmt: skip
        mesh.fail_spawns(0, 10_000)
        mesh.crash(0)
        await wait_for(lambda: svc.replicas[0].state is not ReplicaState.HEALTHY, 60)
        t0 = anyio.current_time()
        with pytest.raises(NoHealthyReplicasError):
            await svc.value.route()
        assert anyio.current_time() - t0 == pytest.approx(120.0, abs=1.0)


async def test_hang_detected_by_health_timeout_in_virtual_time() -> None:
    mesh = FakeMesh(seed=1)
    async with open_service(
        Counter, num_replicas=1, mesh=mesh, health_poll_rate=5.0, health_timeout=30.0,
        restart_backoff=1.0,
    ) as svc:  # fmt: skip
        mesh.hang(0)
        t0 = anyio.current_time()
        assert await svc.nap.route(1.0) == 1.0  # hangs, is detected, retried
        assert 30.0 <= anyio.current_time() - t0 <= 40.0
        assert svc.replicas[0].restarts == 1


async def test_metrics_follow_virtual_time() -> None:
    """Latencies, rates and the 60 s window are measured on the loop's clock when it
    is virtual, as the service's own timeouts are."""
    async with open_service(Counter, num_replicas=1, mesh=FakeMesh()) as svc:
        for _ in range(4):
            assert await svc.nap.route(0.5) == 0.5
        await svc.predict.route(1)  # batched: its callers' latency too
        stats = svc.statistics()
        assert 0.45 <= stats.replicas[0].p50_latency <= 0.55  # (5%-wide buckets)
        assert stats.uptime >= 2.0
        assert stats.request_rate > 0
        await anyio.sleep(71)  # the windows (60 s; 60-70 s) move on, in no real time
        stats = svc.statistics()
        assert stats.request_rate == 0.0 and stats.avg_latency == 0.0
        assert stats.total_requests == 5


@pytest.mark.parametrize(
    ("naps", "p50", "p99"),
    [([1.0, 10.0], 1.0, 10.0), ([0.1] * 9 + [5.0], 0.1, 5.0), ([0.1] * 98 + [5.0] * 2, 0.1, 5.0)],
)
async def test_latency_percentiles_are_nearest_rank(
    naps: list[float], p50: float, p99: float
) -> None:
    """Exact latencies in virtual time: p99 of fewer than 100 requests is the
    slowest one's (never below the mean), within the histogram's 2.5%."""
    async with open_service(Counter, num_replicas=1, mesh=FakeMesh(seed=1)) as svc:
        for seconds in naps:
            await svc.nap.route(seconds)
        s = svc.get_metrics_summary()["replicas"][0]
        stats = svc.statistics()
    assert stats.p50_latency == pytest.approx(p50, rel=0.025)
    assert stats.p99_latency == pytest.approx(p99, rel=0.025)
    assert s["avg_latency"] == pytest.approx(sum(naps) / len(naps))
