"""Metrics: keys, counts, time-windowed rates (never sample-capped)."""

from __future__ import annotations

import collections
import math

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forge_sc import open_service
from forge_sc._metrics import _K, _MIN_LATENCY, Recorder, percentile
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for

pytestmark = pytest.mark.anyio

SERVICE_KEYS = {
    "total_sessions", "healthy_replicas", "total_replicas", "total_request_rate",
    "avg_queue_depth", "avg_capacity_utilization", "sessions_per_replica",
}  # fmt: skip
REPLICA_KEYS = {
    "total_requests", "successful_requests", "failed_requests", "request_rate",
    "avg_latency", "active_requests", "queue_depth", "assigned_sessions",
    "capacity_utilization",
}  # fmt: skip


async def test_summary_has_torchforge_keys_and_counts() -> None:
    async with open_service(Counter, num_replicas=2, mesh=FakeMesh()) as svc:
        for _ in range(10):
            await svc.incr.route()
        for _ in range(3):
            with pytest.raises(KeyError):
                await svc.boom.route()
        sid = await svc.start_session()
        await svc.incr.route(sess_id=sid)
        summary = svc.get_metrics_summary()
        assert set(summary["service"]) >= SERVICE_KEYS
        assert set(summary["replicas"]) == {0, 1}
        for rep in summary["replicas"].values():
            assert set(rep) >= REPLICA_KEYS
        assert summary["service"]["total_sessions"] == 1
        assert summary["service"]["sessions_per_replica"] == 0.5
        assert summary["service"]["healthy_replicas"] == 2
        stats = svc.get_metrics()
        assert stats.total_requests == 14
        assert stats.successful_requests == 11
        assert stats.failed_requests == 3
        assert sum(r.total_requests for r in stats.replicas) == 14
        assert stats.active_requests == 0
        assert stats.p50_latency > 0 and stats.p99_latency >= stats.p50_latency


async def test_request_rate_is_not_capped() -> None:
    # TorchForge's sample-capped rate topped out near 1.7 req/s (~100/min).
    async with open_service(Counter, num_replicas=2, mesh=FakeMesh()) as svc:
        for _ in range(2000):
            await svc.value.route()
        stats = svc.statistics()
        assert stats.request_rate * 60 > 100 * 10  # far above 100 requests per minute
        assert sum(r.request_rate for r in stats.replicas) == pytest.approx(stats.request_rate)
        assert svc.get_metrics_summary()["service"]["total_request_rate"] * 60 > 1000


async def test_active_requests_and_capacity_utilization() -> None:
    async with open_service(
        Counter, num_replicas=1, mesh=FakeMesh(), replica_max_concurrent_requests=4
    ) as svc:
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(svc.nap.route, 0.2)
            await wait_for(lambda: svc.statistics().active_requests == 2)
            stats = svc.statistics()
            assert stats.replicas[0].capacity_utilization == 0.5
            assert stats.capacity_utilization == 0.5


def test_recorder_windows_by_time_not_by_samples() -> None:
    r = Recorder()
    for i in range(100_000):
        r.record(1000.0 + i * 1e-4, 0.001, True)  # 100k requests over 10 s
    assert r.completed_in_window(1010.0) == 100_000
    # 61 s later, none of them is in the window any more
    assert r.completed_in_window(1071.5) == 0
    assert r.total == 100_000
    hist: dict[int, int] = {}
    n, total = r.window_histogram(1010.0, hist)
    assert n == 100_000 and total == pytest.approx(100.0)
    assert percentile(hist, 0.5) == pytest.approx(0.001, rel=0.03)  # 5% buckets


async def test_queue_depth_counts_each_waiting_request_once() -> None:
    """Two session requests queued on their (full) replica: the service's queue depth
    is 2, and the summary's average is 2 over 2 replicas, not twice that."""
    async with open_service(
        Counter, num_replicas=2, mesh=FakeMesh(), replica_max_concurrent_requests=1
    ) as svc:
        async with anyio.create_task_group() as tg, svc.session():
            for _ in range(3):
                tg.start_soon(svc.nap.route, 0.2)
            await wait_for(lambda: svc.statistics().queue_depth == 2)
            stats = svc.statistics()
            assert sum(r.queue_depth for r in stats.replicas) == 2
            assert svc.get_metrics_summary()["service"]["avg_queue_depth"] == 1.0


async def test_statistics_keep_counting_replicas_removed_by_scaling() -> None:
    async with open_service(Counter, num_replicas=3, mesh=FakeMesh()) as svc:
        async with anyio.create_task_group() as tg:
            for i in range(24):  # merged into batches, spread over the replicas
                tg.start_soon(svc.predict.route, i)
        for _ in range(6):
            await svc.value.route()
        before = svc.statistics()
        await svc.scale_to(1)
        after = svc.statistics()  # used to raise KeyError (batch latency of a gone replica)
        assert after.total_replicas == 1
        assert after.total_requests == before.total_requests == 30
        assert after.successful_requests == 30
        # every request of the window still counts towards the rate
        assert after.request_rate * min(after.uptime, 60.0) == pytest.approx(30, rel=0.01)
        assert after.p50_latency > 0 and after.p99_latency >= after.p50_latency


def test_recorder_absorb_merges_counts_and_window() -> None:
    a, b = Recorder(), Recorder()
    for i in range(10):
        a.record(100.0 + i * 0.01, 0.001, True)
    for i in range(5):
        b.record(100.5 + i * 0.01, 0.1, i % 2 == 0)
    a.absorb(b, 101.0)
    assert (a.successful, a.failed) == (13, 2)
    assert a.completed_in_window(101.5) == 15
    hist: dict[int, int] = {}
    n, total = a.window_histogram(101.5, hist)
    assert n == 15 and total == pytest.approx(10 * 0.001 + 5 * 0.1)
    assert percentile(hist, 0.99) == pytest.approx(0.1, rel=0.05)


def test_recorder_counts_are_exact_before_and_after_folding() -> None:
    # The hot path only appends a latency; counts come from what was folded plus
    # what is pending. They must be exact at every point: mid-second with latencies
    # pending, across a fold of 4,096 of them, and after the second rolls over.
    r = Recorder()
    ok = bad = 0
    for i in range(5000):
        good = i % 7 != 0
        r.record(50.0 + i * 1e-5, 1e-5, good)  # all within the second [50, 51)
        ok, bad = ok + good, bad + (not good)
        if i in (0, 4094, 4095, 4096, 4999):
            assert (r.successful, r.failed, r.total) == (ok, bad, ok + bad)
            assert r.completed_in_window(50.5) == ok + bad
    assert r.completed_in_window(52.0) == ok + bad  # rolled: now in the rate ring
    assert (r.successful, r.failed) == (ok, bad)
    hist: dict[int, int] = {}
    assert r.window_histogram(52.0, hist)[0] == ok + bad
    assert sum(hist.values()) == ok + bad


async def test_statistics_from_another_thread_is_taken_on_the_services_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The counters belong to the service's thread; a monitor thread's read is run
    # there (a direct read could tear them mid-fold), also while requests run.
    import threading

    import forge_sc._service._service as service_module

    taken_on: set[int] = set()
    real = service_module.snapshot

    def recording(svc: object) -> object:
        taken_on.add(threading.get_ident())
        return real(svc)  # type: ignore[arg-type]

    monkeypatch.setattr(service_module, "snapshot", recording)
    async with open_service(Counter, num_replicas=2, mesh=FakeMesh()) as svc:
        seen: list[int] = []

        def monitor() -> None:
            for _ in range(50):
                seen.append(svc.statistics().total_requests)

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, monitor)
            for i in range(2000):
                await svc.value.route()
                if i % 100 == 0:
                    await anyio.lowlevel.checkpoint()  # let the loop take the monitor's reads
        assert seen == sorted(seen) and len(seen) == 50
        assert (await anyio.to_thread.run_sync(svc.statistics)).total_requests == 2000
    assert taken_on == {threading.get_ident()}  # every snapshot, on the loop's thread
    # After the block: a plain read, from any thread.
    assert (await anyio.to_thread.run_sync(svc.statistics)).total_requests == 2000


@given(
    st.lists(
        st.one_of(
            # a latency inside a bucket, away from its rounding edges: from a few
            # neighbouring buckets (runs side by side) or from anywhere
            st.tuples(
                st.one_of(st.integers(-160, -155), st.integers(-400, 200)),
                st.floats(0.01, 0.99),
            ).map(lambda bf: math.exp((bf[0] + bf[1]) / _K)),
            st.sampled_from([0.0, 1e-9, _MIN_LATENCY]),  # clamped to the lowest bucket
        ),
        max_size=300,
    )
)
def test_the_fold_counts_each_latency_in_its_log_bucket(latencies: list[float]) -> None:
    # The fold counts runs of the sorted latencies; each must land where the bucket
    # formula puts it, and the percentiles follow.
    expected = collections.Counter(
        math.floor(math.log(max(x, _MIN_LATENCY)) * _K) for x in latencies
    )
    r = Recorder()
    for x in latencies:
        r.record(10.25, x, True)
    hist: dict[int, int] = {}
    n, total = r.window_histogram(10.5, hist)
    assert n == len(latencies) and total == pytest.approx(sum(latencies))
    assert {b: c for b, c in hist.items() if c} == dict(expected)


def test_the_fold_counts_latencies_on_bucket_edges_once() -> None:
    # exp(b / K) rounds to either side of its edge; each is counted, once.
    edges = [math.exp(b / _K) for b in range(-300, 100)] * 3
    r = Recorder()
    for x in edges:
        r.record(20.5, x, True)
    hist: dict[int, int] = {}
    assert r.window_histogram(20.75, hist)[0] == len(edges)
    assert sum(hist.values()) == len(edges)


def test_the_metrics_clock_is_the_loops_own_when_that_is_virtual() -> None:
    """perf_counter on a plain loop; the loop's time() where a loop overrides it (a
    virtual-time asyncio loop, trio's MockClock: see test_virtual_time.py)."""
    import asyncio

    from forge_sc._metrics import clock, loop_clock

    class Frozen(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return 1234.5

    async def which() -> float:
        return loop_clock()()

    assert anyio.run(which, backend="asyncio") != 1234.5
    assert anyio.run(lambda: _clock_is(clock), backend="asyncio")
    assert anyio.run(lambda: _clock_is(clock), backend="trio")
    assert anyio.run(which, backend="asyncio", backend_options={"loop_factory": Frozen}) == 1234.5


async def _clock_is(expected: object) -> bool:
    from forge_sc._metrics import loop_clock

    return loop_clock() is expected


def test_the_rate_window_is_the_last_60_seconds() -> None:
    """DESIGN §6: requests completed in the last 60 s. Steady traffic of 10 per
    second reads what ended in ``(now - 60, now]``, within one request, wherever
    ``now`` falls within its second (whole 1-second slots alone miss up to 10)."""
    t = 1000.0
    for now in (t + 180.0, t + 180.05, t + 180.5, t + 180.95):
        rec = Recorder()
        times = [t + i / 10 for i in range(10 * 180) if t + i / 10 <= now]
        for at in times:
            rec.record(at, 0.001, True)
        truth = sum(now - 60 < at <= now for at in times)
        assert abs(rec.completed_in_window(now) - truth) <= 1.0, (now, truth)


def test_the_latency_window_holds_every_request_of_the_last_60_seconds() -> None:
    rec = Recorder()
    for i in range(10):
        rec.record(1005.0 + i / 2, 0.25, True)
    into: dict[int, int] = {}
    n, total = rec.window_histogram(1064.0, into)  # all ten ended in (1004, 1064]
    assert n == 10 and total == pytest.approx(2.5)
    assert rec.window_histogram(1080.0, {})[0] == 0  # and they leave it in time


async def test_capacity_utilization_is_over_the_healthy_replicas() -> None:
    """TorchForge's definition (get_avg_capacity_utilization, the summary's key): a
    recovering replica is no capacity, busy or idle."""
    mesh = FakeMesh(seed=1)
    async with open_service(
        Counter, num_replicas=2, mesh=mesh, replica_max_concurrent_requests=1,
        restart_backoff=30.0,
    ) as svc:  # fmt: skip
        mesh.crash(1)
        await wait_for(lambda: not svc.replicas[1].healthy)
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.nap.route, 0.3)
            await wait_for(lambda: svc.statistics().active_requests == 1)
            stats = svc.statistics()
            assert stats.capacity_utilization == 1.0
            assert stats.summary()["service"]["avg_capacity_utilization"] == 1.0
            assert stats.get_avg_capacity_utilization(svc.replicas) == 1.0
        tg.cancel_scope.cancel()
