"""Service-level batching (docs/user_guide.md, "Batching") on FakeMesh."""

from __future__ import annotations

from functools import partial

import anyio
import pytest

from forge_sc import ForgeActor, open_service, service_endpoint
from forge_sc.errors import BatchResultError, FanoutError, ReplicaDiedError
from forge_sc.testing import FakeMesh

from .conftest import running_tasks, wait_for

pytestmark = pytest.mark.anyio


class Model(ForgeActor):
    def __init__(self) -> None:
        self.batches: list[list[object]] = []
        self.cut_by = 0

    @service_endpoint(batch_size=4, batch_timeout=0.05)
    async def double(self, xs: list[int]) -> list[int]:
        self.batches.append(list(xs))
        return [2 * x for x in xs]

    @service_endpoint(batch_size=4, batch_timeout=0.02)
    async def combine(self, a: list[int], b: list[str], *, scale: list[int]) -> list[str]:
        self.batches.append([a, b, scale])
        return [f"{x * s}{y}" for x, y, s in zip(a, b, scale, strict=True)]

    @service_endpoint(batch_size=4, batch_timeout=0.01)
    async def short(self, xs: list[int]) -> list[int]:
        return xs[:-1]

    @service_endpoint(batch_size=4, batch_timeout=0.01)
    async def cut(self, xs: list[int]) -> list[int]:
        return xs[: len(xs) - self.cut_by]

    @service_endpoint(batch_size=8, batch_timeout=0.01)
    async def slow(self, xs: list[float]) -> list[float]:
        self.batches.append(list(xs))
        await anyio.sleep(max(xs))
        return xs

    @service_endpoint(batch_size=4, batch_timeout=0.01, idempotent=False)
    async def once(self, xs: list[float]) -> list[float]:
        self.batches.append(list(xs))
        await anyio.sleep(max(xs))
        return xs


class Shapes(ForgeActor):
    def __init__(self) -> None:
        self.batches: list[tuple[list[int], object]] = []

    @service_endpoint(batch_size=4, batch_timeout=60.0)
    async def f(self, xs: list[int], scale: list[int] | None = None) -> list[int]:
        self.batches.append((list(xs), scale))
        return xs


async def test_a_batch_is_full_with_batch_size_calls_of_one_shape() -> None:
    """Three calls of one shape and one of another do not make a full batch: the
    three wait for a fourth of their shape (then go at once, a flush by size),
    whichever of them came first."""
    mesh = FakeMesh(seed=1)
    async with open_service(Shapes, mesh=mesh) as svc:
        got: list[object] = []

        async def call(*args: object, **kwargs: object) -> None:
            got.append(await svc.f.route(*args, **kwargs))

        async with anyio.create_task_group() as tg:
            for i in (1, 2, 3):
                tg.start_soon(call, i)
            tg.start_soon(partial(call, 4, scale=0))
            await wait_for(lambda: svc.statistics().batchers[0].pending == 4)
            for _ in range(20):  # turns for a wrong early flush to happen
                await anyio.lowlevel.checkpoint()
            assert mesh.actor(0).batches == []
            tg.start_soon(call, 9)
            await wait_for(lambda: len(got) == 4)
            # (trio starts the first four tasks in any order)
            assert [(sorted(xs), scale) for xs, scale in mesh.actor(0).batches] == [
                ([1, 2, 3, 9], None)
            ]
            (b,) = svc.statistics().batchers
            assert (b.flushes_by_size, b.flushes_by_timeout, b.pending) == (1, 0, 1)
            tg.cancel_scope.cancel()  # the odd one out would wait its 60 s


def all_batches(mesh: FakeMesh, n: int) -> list[list[object]]:
    return [b for i in range(n) for b in mesh.actor(i).batches]


async def gather(svc: object, name: str, args: list[tuple[object, ...]]) -> list[object]:
    out: list[object] = [None] * len(args)

    async def one(i: int) -> None:
        out[i] = await getattr(svc, name).route(*args[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(args)):
            tg.start_soon(one, i)
    return out


async def test_full_batches_flush_by_size_and_results_keep_order() -> None:
    mesh = FakeMesh()
    async with open_service(Model, num_replicas=1, mesh=mesh) as svc:
        assert await gather(svc, "double", [(i,) for i in range(8)]) == [2 * i for i in range(8)]
        assert sorted(len(b) for b in all_batches(mesh, 1)) == [4, 4]
        stats = svc.statistics().batchers[0]
        assert (stats.batches_sent, stats.items_sent, stats.max_batch_size) == (2, 8, 4)
        assert stats.flushes_by_size == 2 and stats.flushes_by_timeout == 0


async def test_partial_batch_flushes_by_timeout() -> None:
    mesh = FakeMesh()
    async with open_service(Model, num_replicas=1, mesh=mesh) as svc:
        t0 = anyio.current_time()
        assert await gather(svc, "double", [(1,), (2,)]) == [2, 4]
        assert anyio.current_time() - t0 >= 0.05
        assert [sorted(b) for b in all_batches(mesh, 1)] == [[1, 2]]  # type: ignore[type-var]
        assert svc.statistics().batchers[0].flushes_by_timeout == 1


async def test_positional_and_keyword_arguments_are_transposed() -> None:
    mesh = FakeMesh()
    async with open_service(Model, num_replicas=1, mesh=mesh) as svc:
        out: list[tuple[int, str]] = []

        async def call(x: int, y: str, s: int) -> None:
            out.append((x, await svc.combine.route(x, y, scale=s)))

        async with anyio.create_task_group() as tg:
            for x, y, s in [(1, "a", 10), (2, "b", 100), (3, "c", 1000)]:
                tg.start_soon(call, x, y, s)
        assert sorted(out) == [(1, "10a"), (2, "200b"), (3, "3000c")]
        [(a, b, scale)] = all_batches(mesh, 1)  # one batch, columns aligned per caller
        assert sorted(zip(a, b, scale, strict=True)) == [
            (1, "a", 10),
            (2, "b", 100),
            (3, "c", 1000),
        ]  # type: ignore[call-overload]


async def test_wrong_length_result_fails_every_caller_of_the_batch() -> None:
    mesh = FakeMesh()
    async with open_service(Model, num_replicas=1, mesh=mesh) as svc:
        errors: list[BaseException] = []

        async def call(x: int) -> None:
            try:
                await svc.short.route(x)
            except BatchResultError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for x in range(3):
                tg.start_soon(call, x)
        assert len(errors) == 3
        assert "'short'" in str(errors[0]) and "length 2" in str(errors[0])
        assert "batch of 3" in str(errors[0])
        assert svc.replicas[0].healthy


async def test_cancelled_caller_leaves_the_pending_batch() -> None:
    mesh = FakeMesh()
    async with open_service(Model, num_replicas=1, mesh=mesh) as svc:
        async with anyio.create_task_group() as tg:
            results: list[int] = []

            async def keep(x: int) -> None:
                results.append(await svc.double.route(x))

            tg.start_soon(keep, 1)
            with anyio.move_on_after(0.01):
                await svc.double.route(99)  # cancelled before the 0.05 s flush
            tg.start_soon(keep, 2)
        assert sorted(results) == [2, 4]
        assert [sorted(b) for b in all_batches(mesh, 1)] == [[1, 2]]  # type: ignore[type-var]


async def test_batch_of_only_cancelled_callers_is_not_sent() -> None:
    mesh = FakeMesh()
    async with open_service(Model, num_replicas=1, mesh=mesh) as svc:
        with anyio.move_on_after(0.01):
            await svc.double.route(7)
        await anyio.sleep(0.1)  # past the batch timeout: nothing may be sent
        assert all_batches(mesh, 1) == []
        assert svc.statistics().batchers[0].batches_sent == 0


async def test_several_batches_in_flight() -> None:
    mesh = FakeMesh()
    async with open_service(Model, num_replicas=2, mesh=mesh) as svc:
        t0 = anyio.current_time()
        assert await gather(svc, "slow", [(0.2,)] * 16) == [0.2] * 16
        # two full batches of 8, concurrently (one per replica): ~0.2 s, not 0.4 s
        assert anyio.current_time() - t0 < 0.35
        assert sorted(len(b) for b in all_batches(mesh, 2)) == [8, 8]


async def test_batch_on_a_dying_replica_is_retried() -> None:
    mesh = FakeMesh()
    async with open_service(
        Model, num_replicas=2, mesh=mesh, health_poll_rate=0.01, restart_backoff=0.001
    ) as svc:
        async with anyio.create_task_group() as tg:
            out: list[list[object]] = []

            async def run() -> None:
                out.append(await gather(svc, "slow", [(0.1,)] * 3))

            tg.start_soon(run)
            await wait_for(lambda: any(r.active_requests for r in svc.replicas))
            mesh.crash(next(r.idx for r in svc.replicas if r.active_requests))
        assert out == [[0.1, 0.1, 0.1]]
        assert svc.statistics().retries == 1


async def test_non_idempotent_batch_is_not_resent() -> None:
    mesh = FakeMesh()
    async with open_service(
        Model, num_replicas=2, mesh=mesh, health_poll_rate=0.01, restart_backoff=0.001
    ) as svc:
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await svc.once.route(0.5)
            except ReplicaDiedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(call)
            await wait_for(lambda: any(r.active_requests for r in svc.replicas))
            mesh.crash(next(r.idx for r in svc.replicas if r.active_requests))
        assert len(errors) == 2


async def test_fanout_on_a_batched_endpoint_is_a_batch_of_one_per_replica() -> None:
    async with open_service(Model, num_replicas=3, mesh=FakeMesh()) as svc:
        assert await svc.double.fanout(5) == [10, 10, 10]


async def test_a_bad_batch_result_in_a_fanout_is_that_replicas_error() -> None:
    mesh = FakeMesh()
    async with open_service(Model, num_replicas=3, mesh=mesh) as svc:
        mesh.actor(1).cut_by = 1  # replica 1 returns one result too few
        with pytest.raises(FanoutError) as info:
            await svc.cut.fanout(5)
        assert info.value.results == {0: 5, 2: 5}
        assert list(info.value.errors) == [1]
        assert isinstance(info.value.errors[1], BatchResultError)
        assert svc.statistics().replicas[1].failed_requests == 1


async def test_no_batcher_task_left_after_exit() -> None:
    before = running_tasks()
    async with open_service(Model, num_replicas=1, mesh=FakeMesh()) as svc:
        await svc.double.route(1)
        assert len(svc.statistics().batchers) == 6
    assert running_tasks() == before


async def test_service_metrics_count_callers_and_replicas_count_batches() -> None:
    async with open_service(Model, num_replicas=1, mesh=FakeMesh()) as svc:
        await gather(svc, "double", [(i,) for i in range(8)])
        stats = svc.statistics()
        assert stats.total_requests == 8  # eight callers
        assert stats.replicas[0].total_requests == 2  # two batches ran on the replica
        assert stats.p50_latency > 0
