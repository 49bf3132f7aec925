"""Tensors in the call path: the wire encoding, shared memory, collate and split.

The encoding is checked through ``pickle`` (protocol 5, as Monarch pickles), in this
process; ``tests/monarch/test_monarch_tensors.py`` checks it across real processes.
Every test here needs torch and is skipped without it (``tests/test_no_torch.py``
checks that forge_sc itself never imports torch).
"""

from __future__ import annotations

import gc
import os
import pickle
import threading
from typing import Any

import anyio
import pytest

from forge_sc import ForgeActor, _shm, _tensors, open_service, service_endpoint
from forge_sc._spec import collect_endpoints
from forge_sc.errors import BatchResultError
from forge_sc.testing import FakeMesh

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.anyio


def roundtrip(obj: Any, enc: _tensors.CallEncoding | None = None) -> Any:
    args, _ = _tensors.encode_call((obj,), {}, enc)
    return pickle.loads(pickle.dumps(args, protocol=5))[0]


def same(a: Any, b: Any) -> None:
    assert type(b) is torch.Tensor
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b)


def cases() -> list[Any]:
    base = torch.arange(48, dtype=torch.float32).reshape(4, 12)
    return [
        torch.randn(3, 4),
        torch.tensor(2.5, dtype=torch.float64),  # 0-d
        torch.zeros(0, 5),  # empty
        torch.arange(10, dtype=torch.int64)[::3],  # strided view
        base.t(),  # transposed
        base[1:3, 2:7],  # a view with an offset into a larger storage
        torch.randn(2, 3).to(torch.bfloat16),
        torch.randn(5).to(torch.float16),
        torch.tensor([True, False, True]),
        torch.randint(0, 255, (6,), dtype=torch.uint8),
        torch.randint(-100, 100, (2, 2), dtype=torch.int8),
        torch.randint(-(2**30), 2**30, (3,), dtype=torch.int32),
        torch.randn(3, dtype=torch.complex64),
        torch.randn(2, 2).to(torch.float8_e4m3fn),
        torch.randn(4, 4).expand(2, 4, 4),  # stride 0
    ]


@pytest.mark.parametrize("i", range(15))
def test_tensors_round_trip_exactly(i: int) -> None:
    x = cases()[i]
    y = roundtrip(x)
    if x.dtype == torch.float8_e4m3fn:  # no equal() for float8: compare the bits
        assert y.dtype == x.dtype and y.shape == x.shape
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8))
    else:
        same(x, y)
    assert y.is_contiguous()


def test_older_pickle_protocols_work_too() -> None:
    x = torch.randn(3, 4).t()
    args, _ = _tensors.encode_call((x,), {}, None)
    for protocol in (2, 4):
        same(x, pickle.loads(pickle.dumps(args, protocol=protocol))[0])


def test_nested_tensors_and_others_round_trip() -> None:
    x, y = torch.randn(3), torch.arange(4)
    value = {"a": [x, 1, "s"], "b": (y, {"c": x}), "n": None}
    out = roundtrip(value)
    same(x, out["a"][0])
    assert out["a"][1:] == [1, "s"]
    same(y, out["b"][0])
    same(x, out["b"][1]["c"])
    assert out["n"] is None


def test_values_without_tensors_are_left_alone() -> None:
    args = ([1.0, 2.0], {"k": (1, 2)}, "x")
    assert _tensors.encode_call(args, {"z": [3]}, None) == (args, {"z": [3]})
    out, _ = _tensors.encode_call(args, {}, None)
    assert out is args  # the very objects, not copies


def test_requires_grad_is_kept_and_other_tensors_fall_back() -> None:
    x = torch.randn(3, requires_grad=True)
    y = roundtrip(x)
    assert y.requires_grad and y.is_leaf and torch.equal(x.detach(), y.detach())
    p = torch.nn.Parameter(torch.randn(2))
    out = roundtrip(p)  # a subclass: torch's own pickling, as before
    assert isinstance(out, torch.nn.Parameter) and torch.equal(p, out)
    s = torch.randn(3, 3).to_sparse()
    assert torch.equal(roundtrip(s).to_dense(), s.to_dense())


def test_a_row_travels_without_its_base_storage() -> None:
    big = torch.randn(1000, 64)
    row = big[7]
    compact = pickle.dumps(_tensors.encode_call((row,), {}, None)[0], protocol=5)
    default = pickle.dumps((row,), protocol=5)
    assert len(compact) < 64 * 4 + 200 < len(default)


def rows_cases() -> list[list[Any]]:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    return [
        [torch.randn(64) for _ in range(32)],  # a batch of rows
        [torch.tensor(float(i)) for i in range(3)],  # 0-d rows
        [torch.zeros(0, 2) for _ in range(4)],  # empty rows
        [base[i, ::2] for i in range(6)],  # strided views of one storage
        [torch.randint(-5, 5, (2, 3), dtype=torch.int64) for _ in range(5)],
        [torch.randn(3).to(torch.bfloat16) for _ in range(4)],
        [torch.tensor([True, False]) for _ in range(3)],
        [torch.randn(3, dtype=torch.complex64).conj() for _ in range(3)],  # conj views
        [torch.randn(2, 2).to(torch.float8_e4m3fn) for _ in range(3)],
    ]


def same_bits(a: Any, b: Any) -> None:
    if a.dtype == torch.float8_e4m3fn:  # no equal() for float8: compare the bits
        assert type(b) is torch.Tensor and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    else:
        same(a.resolve_conj(), b)


@pytest.mark.parametrize("i", range(9))
def test_a_list_of_rows_round_trips_exactly_as_one_tensor(i: int) -> None:
    rows = rows_cases()[i]
    args, _ = _tensors.encode_call((rows,), {}, None)
    out = pickle.loads(pickle.dumps(args, protocol=5))[0]
    assert type(out) is list and len(out) == len(rows)
    assert type(args[0]).__name__ == "_WireRows"  # the batch went as one tensor
    for a, b in zip(rows, out, strict=True):
        same_bits(a, b)
        assert b.is_contiguous()
    assert [r.dtype for r in rows] == [o.dtype for o in out]


def test_rows_travel_as_one_encoding_and_arrive_independent() -> None:
    rows = [torch.randn(64) for _ in range(32)]
    args, _ = _tensors.encode_call((rows, tuple(rows[:2])), {}, None)
    assert type(args[0]).__name__ == "_WireRows" and type(args[1]).__name__ == "_WireRows"
    # One header for the batch: barely more than its 8 KiB of floats.
    assert len(pickle.dumps(args[0], protocol=5)) < 32 * 64 * 4 + 200
    data = pickle.dumps(args, protocol=5)
    out, pair = pickle.loads(data)
    assert type(pair) is tuple and len(pair) == 2
    out[0].add_(1.0)  # a row written in place leaves the others as they were
    assert torch.equal(out[0], rows[0] + 1.0) and torch.equal(out[1], rows[1])
    for protocol in (2, 4):
        again = pickle.loads(pickle.dumps(args, protocol=protocol))[0]
        assert all(torch.equal(a, b) for a, b in zip(rows, again, strict=True))


def test_rows_that_differ_are_encoded_one_by_one() -> None:
    grad = torch.randn(3, requires_grad=True)
    mixed = [
        [torch.randn(3), torch.randn(3).double()],  # dtypes differ: no promotion
        [torch.randn(3), torch.randn(4)],  # shapes differ
        [torch.randn(3), grad],  # one requires grad: a leaf of its own
        [torch.randn(3), torch.nn.Parameter(torch.randn(3))],  # a subclass
        [torch.randn(3), 1.0, torch.randn(3)],  # not all tensors
    ]
    for rows in mixed:
        out = roundtrip(rows)
        assert type(out) is list and len(out) == len(rows)
        for a, b in zip(rows, out, strict=True):
            if isinstance(a, torch.Tensor):
                assert type(b) is type(a) and b.dtype == a.dtype and b.shape == a.shape
                assert torch.equal(a.detach(), b.detach())
                assert b.requires_grad == a.requires_grad
            else:
                assert b == a
    assert roundtrip([torch.randn(3), grad])[1].is_leaf
    with torch.no_grad():  # (where a stack of them would not require grad)
        out = roundtrip([grad, grad])
    assert all(o.requires_grad and o.is_leaf for o in out)


@pytest.fixture
def pool() -> Any:
    if not _shm.available():
        pytest.skip("no /dev/shm here")
    p = _shm.SegmentPool(_shm.new_prefix())
    yield p
    p.close()
    _shm.sweep(p.prefix)


def files(prefix: str) -> list[str]:
    return sorted(f for f in os.listdir(_shm.SHM_DIR) if f.startswith(prefix))


def test_large_tensors_go_through_shared_memory_and_the_segment_is_reused(pool: Any) -> None:
    enc = _tensors.CallEncoding(pool)
    x = torch.randn(_tensors.SHM_MIN_BYTES // 4 + 3)
    stream = pickle.dumps(_tensors.encode_call((x,), {}, enc)[0], protocol=5)
    assert len(stream) < 1000  # only the segment's name travels
    (name,) = files(pool.prefix)
    assert _shm.state(name) == _shm.SENT
    y = pickle.loads(stream)[0]
    same(x, y)
    assert _shm.state(name) == _shm.MAPPED  # the receiver holds it
    del y
    gc.collect()
    assert _shm.state(name) == _shm.FREE  # released with the last tensor on it
    for _ in range(3):  # reused, not a new segment per call
        same(x, pickle.loads(pickle.dumps(_tensors.encode_call((x,), {}, enc)[0], protocol=5))[0])
        gc.collect()
    assert files(pool.prefix) == [name]


def test_rows_of_a_large_batch_share_one_segment_released_with_the_last_row(pool: Any) -> None:
    enc = _tensors.CallEncoding(pool)
    rows = [torch.randn(_tensors.SHM_MIN_BYTES // 4 // 8 + 1) for _ in range(8)]
    stream = pickle.dumps(_tensors.encode_call((rows,), {}, enc)[0], protocol=5)
    assert len(stream) < 1000  # the batch is one segment: only its name travels
    (name,) = files(pool.prefix)
    out = pickle.loads(stream)[0]
    assert len(out) == 8 and all(torch.equal(a, b) for a, b in zip(rows, out, strict=True))
    del out[:7]
    gc.collect()
    assert _shm.state(name) == _shm.MAPPED  # one row still views it
    del out
    gc.collect()
    assert _shm.state(name) == _shm.FREE


def test_a_segment_still_held_is_not_overwritten(pool: Any) -> None:
    enc = _tensors.CallEncoding(pool)
    n = _tensors.SHM_MIN_BYTES // 4
    first = roundtrip(torch.zeros(n), enc)
    second = roundtrip(torch.ones(n), enc)
    assert torch.equal(first, torch.zeros(n)) and torch.equal(second, torch.ones(n))
    assert len(files(pool.prefix)) == 2


def test_one_shot_segments_for_several_receivers_are_removed_by_the_sender(pool: Any) -> None:
    enc = _tensors.CallEncoding(pool, receivers=2)
    x = torch.randn(_tensors.SHM_MIN_BYTES // 4)
    stream = pickle.dumps(_tensors.encode_call((x,), {}, enc)[0], protocol=5)
    a, b = pickle.loads(stream)[0], pickle.loads(stream)[0]  # two ranks
    same(x, a)
    same(x, b)
    assert len(enc.one_shot) == 1
    enc.release()  # the call ended
    assert files(pool.prefix) == []
    same(x, a)  # the receivers' mappings stay valid


def test_segments_on_their_way_are_never_dropped_however_many(pool: Any) -> None:
    """More segments sent and not yet mapped than the pool tracks (many calls in
    flight, or one call with many large tensors): each must still be there for its
    receiver; mapped and free ones are what the pool lets go."""
    n = _tensors.SHM_MIN_BYTES // 4
    # Of different sizes: rows of one size would share one segment.
    xs = [torch.full((n + i,), float(i)) for i in range(_shm._MAX_SEGMENTS + 4)]
    enc = _tensors.CallEncoding(pool, per_call=True)
    stream = pickle.dumps(_tensors.encode_call(tuple(xs), {}, enc)[0], protocol=5)
    assert len(files(pool.prefix)) == len(xs)
    out = pickle.loads(stream)  # FileNotFoundError if one was dropped
    assert all(torch.equal(a, b) for a, b in zip(xs, out, strict=True))
    del out
    gc.collect()
    enc.release()
    # The next new segment (none of the free ones fits it) trims the free ones.
    roundtrip(torch.randn(8 * n), _tensors.CallEncoding(pool))
    assert len(files(pool.prefix)) <= _shm._MAX_SEGMENTS


def test_a_call_that_ended_unmapped_frees_its_segments(pool: Any) -> None:
    """The message was never sent (an argument failed to pickle) or its replica
    died before mapping it: the call's segments are free again, not held for the
    replica's lifetime."""
    enc = _tensors.CallEncoding(pool, per_call=True)
    x = torch.randn(_tensors.SHM_MIN_BYTES // 4)
    with pytest.raises(TypeError):
        pickle.dumps(_tensors.encode_call((x, threading.Lock()), {}, enc)[0], protocol=5)
    (name,) = files(pool.prefix)
    assert _shm.state(name) == _shm.SENT
    enc.release()
    assert _shm.state(name) == _shm.FREE
    again = _tensors.CallEncoding(pool, per_call=True)
    same(x, pickle.loads(pickle.dumps(_tensors.encode_call((x,), {}, again)[0], protocol=5))[0])
    assert files(pool.prefix) == [name]  # reused


def test_a_late_settle_of_an_earlier_call_leaves_a_reused_segment_alone(pool: Any) -> None:
    """Call A's receiver released its segment, call B reused it and is on its way;
    A's caller-side release comes only now: B's segment must stay SENT, or a third
    call would overwrite it under B's receiver."""
    x = torch.randn(_tensors.SHM_MIN_BYTES // 4)
    a = _tensors.CallEncoding(pool, per_call=True)
    got = pickle.loads(pickle.dumps(_tensors.encode_call((x,), {}, a)[0], protocol=5))[0]
    del got
    gc.collect()  # A's receiver released it: FREE
    b = _tensors.CallEncoding(pool, per_call=True)
    stream = pickle.dumps(_tensors.encode_call((x * 2,), {}, b)[0], protocol=5)
    (name,) = files(pool.prefix)  # B reused it
    a.release()  # A ends late
    assert _shm.state(name) == _shm.SENT
    c = _tensors.CallEncoding(pool, per_call=True)
    pickle.dumps(_tensors.encode_call((x * 3,), {}, c)[0], protocol=5)
    same(x * 2, pickle.loads(stream)[0])  # B arrives intact


def test_a_result_left_unmapped_is_dropped_only_once_stale() -> None:
    if not _shm.available():
        pytest.skip("no /dev/shm here")
    pool = _shm.SegmentPool(_shm.new_prefix(), stale_after=0.0)
    try:
        segs = [pool.acquire(10) for _ in range(_shm._MAX_SEGMENTS + 1)]
        # Stale at once here: over the count, the oldest unmapped one goes.
        assert len(pool) == _shm._MAX_SEGMENTS
        assert _shm.state(segs[0].name) is None
    finally:
        pool.close()
        _shm.sweep(pool.prefix)


def test_sweep_removes_what_a_dead_process_left(pool: Any) -> None:
    enc = _tensors.CallEncoding(pool)
    roundtrip(torch.randn(_tensors.SHM_MIN_BYTES // 4), enc)
    # A replica's own segments under the same prefix (as a killed one leaves them).
    other = _shm.SegmentPool(pool.prefix + "child-")
    other.acquire(10)
    assert len(files(pool.prefix)) == 2
    assert _shm.sweep(pool.prefix) == 2
    assert files(pool.prefix) == []


def test_results_of_forge_actors_are_encoded_on_the_way_back() -> None:
    class Maker(ForgeActor):
        @service_endpoint
        async def make(self) -> Any:
            return {"t": torch.arange(3)}

    prop = Maker.__dict__["make"]
    assert prop._method._forge_sc_wire
    wire = anyio.run(prop._method, Maker.__new__(Maker))
    assert type(wire["t"]).__name__ == "_Wire"
    same(torch.arange(3), pickle.loads(pickle.dumps(wire, protocol=5))["t"])
    # In-process (FakeMesh), the endpoint's own function runs: no encoding.
    assert not getattr(collect_endpoints(Maker)["make"].fn, "_forge_sc_wire", False)


# ---------------------------------------------------------------- collate / split


def test_stack_rows_and_unbind_result() -> None:
    rows = [torch.randn(4) for _ in range(3)]
    stacked = _tensors.stack_rows(rows)
    assert stacked.shape == (3, 4) and torch.equal(stacked[1], rows[1])
    assert _tensors.stack_rows([[1.0], [2.0]]) == [[1.0], [2.0]]
    odd = [torch.randn(2), 3]  # not all tensors: the list itself
    assert _tensors.stack_rows(odd) is odd
    with pytest.raises(ValueError, match="cannot stack"):
        _tensors.stack_rows([torch.randn(4), torch.randn(5)])
    with pytest.raises(ValueError, match="cannot stack"):
        _tensors.stack_rows([torch.randn(4), torch.randn(4).double()])
    parts = _tensors.unbind_result(stacked)
    assert len(parts) == 3 and torch.equal(parts[2], rows[2])
    assert _tensors.unbind_result([1, 2]) == [1, 2]


class Model(ForgeActor):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    @service_endpoint(batch_size=4, batch_timeout=0.05)
    async def double(self, xs: list[Any]) -> list[Any]:
        self.seen.append(xs)
        return [x * 2 for x in xs]

    @service_endpoint(batch_size=4, batch_timeout=0.05, collate="stack", split="unbind")
    async def stacked(self, xs: Any, scale: Any = None) -> Any:
        self.seen.append((xs, scale))
        factor = 2 if scale is None else torch.tensor(scale).unsqueeze(1)
        return xs * factor

    @service_endpoint(batch_size=4, batch_timeout=0.05)
    async def as_tensor(self, xs: list[Any]) -> Any:
        return torch.stack(xs) * 2  # a tensor, without split="unbind"

    @service_endpoint(batch_size=4, batch_timeout=0.05, collate="stack", split="unbind")
    async def short(self, xs: Any) -> Any:
        return xs[:1]

    @service_endpoint(
        batch_size=4,
        batch_timeout=0.05,
        collate=lambda values: ("mine", values),
        split=lambda result: result["out"],
    )
    async def custom(self, xs: Any) -> Any:
        self.seen.append(xs)
        tag, values = xs
        return {"out": [f"{tag}:{v}" for v in values]}


async def _gather(fn: Any, rows: list[Any], **kwargs: Any) -> list[Any]:
    out: list[Any] = [None] * len(rows)

    async def one(i: int) -> None:
        out[i] = await fn(rows[i], **kwargs)

    async with anyio.create_task_group() as tg:
        for i in range(len(rows)):
            tg.start_soon(one, i)
    return out


async def test_by_default_a_batch_of_tensor_rows_arrives_as_a_list() -> None:
    # The batching contract: one list per parameter, a list back of the same length.
    mesh = FakeMesh(seed=1)
    async with open_service(Model, mesh=mesh) as svc:
        rows = [torch.full((3,), float(i)) for i in range(4)]
        out = await _gather(svc.double.route, rows)
        for r, o in zip(rows, out, strict=True):
            same(r * 2, o)
        (batch,) = mesh.actor(0).seen
        assert type(batch) is list and len(batch) == 4
        assert all(type(x) is torch.Tensor and x.shape == (3,) for x in batch)
        # A call in a session goes alone, as a list of one.
        async with svc.session():
            same(rows[1] * 2, await svc.double.route(rows[1]))
        assert type(mesh.actor(0).seen[-1]) is list and len(mesh.actor(0).seen[-1]) == 1


async def test_a_tensor_result_needs_split_unbind() -> None:
    async with open_service(Model, mesh=FakeMesh(seed=1)) as svc:
        with pytest.raises(BatchResultError, match="split='unbind'"):
            await svc.as_tensor.route(torch.ones(2))


async def test_collate_stack_and_split_unbind_are_opt_in() -> None:
    mesh = FakeMesh(seed=1)
    async with open_service(Model, mesh=mesh) as svc:
        rows = [torch.full((3,), float(i)) for i in range(4)]
        out = await _gather(svc.stacked.route, rows)
        for r, o in zip(rows, out, strict=True):
            same(r * 2, o)
        ((batch, scale),) = mesh.actor(0).seen
        assert type(batch) is torch.Tensor and batch.shape == (4, 3)
        assert scale is None
        # Values that are not tensors stay a list, as by default (here a keyword).
        out = await _gather(svc.stacked.route, rows, scale=3.0)
        batch, scale = mesh.actor(0).seen[-1]
        assert batch.shape == (4, 3) and scale == [3.0] * 4
        for r, o in zip(rows, out, strict=True):
            same(r * 3, o)
        # A call in a session goes as a batch of one, collated the same way.
        async with svc.session():
            same(rows[1] * 2, await svc.stacked.route(rows[1]))
        assert mesh.actor(0).seen[-1][0].shape == (1, 3)


async def test_tensors_that_cannot_be_stacked_fail_that_batch_only() -> None:
    async with open_service(Model, mesh=FakeMesh(seed=1)) as svc:
        errors: list[BaseException] = []

        async def one(x: Any) -> None:
            try:
                await svc.stacked.route(x)
            except ValueError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, torch.ones(2))
            tg.start_soon(one, torch.ones(3))
        assert len(errors) == 2 and "cannot stack" in str(errors[0])
        # The service goes on.
        same(torch.ones(2) * 2, await svc.stacked.route(torch.ones(2)))


async def test_callables_as_collate_and_split() -> None:
    mesh = FakeMesh(seed=1)
    async with open_service(Model, mesh=mesh) as svc:
        assert await _gather(svc.custom.route, [1, 2]) == ["mine:1", "mine:2"]
        ((tag, values),) = mesh.actor(0).seen  # one batch (callers in any order)
        assert tag == "mine" and sorted(values) == [1, 2]


async def test_a_tensor_result_of_the_wrong_length_fails_the_batch() -> None:
    async with open_service(Model, mesh=FakeMesh(seed=1)) as svc:
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await svc.short.route(torch.ones(2))
            except BatchResultError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
        assert len(errors) == 2
        assert "of length 1 for a batch of 2" in str(errors[0])
