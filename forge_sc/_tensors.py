"""Tensors in forge_sc's call path: a compact wire encoding, shared memory for large
ones, and the opt-in ``collate="stack"`` / ``split="unbind"`` of batched endpoints.

torch is optional: nothing here imports it. A tensor can only exist in a process
that imported torch, so every function first looks for ``sys.modules["torch"]`` and
does nothing when it is absent (a dictionary lookup on the hot path).

**Why an encoding of our own.** Monarch pickles a tensor through ``torch.save`` of
its whole storage: ~130-240 µs for a row of 64 floats (a list of the same floats:
~2-3 µs), and a row that is a view of a larger tensor carries that tensor's whole
storage. forge_sc replaces each eligible tensor in a call's arguments (on the
client) and in an endpoint's result (on the replica, see ``forge_sc._actor``) by a
small object whose pickled form is the tensor's dtype, shape and bytes, rebuilt on
the other side with ``torch.frombuffer`` (no copy beyond the pickle stream's own).
Tensors of ``SHM_MIN_BYTES`` or more go through shared memory instead
(:mod:`forge_sc._shm`): the receiver maps the sender's segment, without a copy.

**Rows.** A list or tuple of two or more eligible tensors of one dtype and shape,
none requiring grad (a batch of tensor rows, as a batched endpoint receives it), is
stacked and travels as that one tensor (one header, one buffer: a batch of 32 rows
of 64 floats pickles in ~20 µs instead of ~200 µs); it arrives as a list (or tuple)
of its rows again, each a contiguous view of the one received buffer (writing into
one row leaves the others alone; the buffer lives while any row does). Conjugate and
negative views among them arrive resolved, with the same values.

**Eligible**: a plain ``torch.Tensor`` (not a subclass such as ``nn.Parameter``), on
the CPU, strided (dense), not quantized, not a conjugate/negative view, and either
not requiring grad or a leaf (``requires_grad`` is kept; the graph never travels).
Every dtype is eligible (bool, ints, uints, floats, bfloat16, float8, complex).
A non-contiguous tensor arrives contiguous with the same values and shape (its
strides and storage offset are not kept, nor storage shared between views). Anything
else (GPU tensors, sparse, subclasses, tensors nested deeper than
``MAX_DEPTH`` containers, inside a list longer than 16 whose ends are neither
tensors nor containers, or in objects other than tuples, lists and dicts) is left
to Monarch's own pickling, as before (Monarch loads tensors with
``map_location="cpu"``: a GPU tensor arrives on the CPU).
"""

from __future__ import annotations

import contextlib
import operator
import os
import pickle
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ._shm import HEADER, SHM_DIR, SegmentPool, receive
from ._shm import available as shm_available

__all__ = [
    "MAX_DEPTH",
    "WIRE_ATTR",
    "SHM_MIN_BYTES",
    "SHM_PREFIX_ENV",
    "CallEncoding",
    "encode_call",
    "encode_result",
    "stack_rows",
    "torch_loaded",
    "unbind_result",
]

#: Tensors of at least this many bytes go through shared memory (when available).
SHM_MIN_BYTES = 1 << 20
#: Seconds after which a replica's result segment that its caller never mapped may
#: be dropped (see forge_sc._shm).
RESULT_STALE_AFTER = 60.0
#: Containers (tuples, lists, dicts) searched for tensors, at most this deep.
MAX_DEPTH = 4
#: Marks (True) the function Monarch runs for a ForgeActor endpoint: the user's own
#: (its ``__wrapped__``) with its result encoded for the wire (see forge_sc._actor).
WIRE_ATTR = "_forge_sc_wire"
#: Set by the parent in a replica's environment: the prefix of its segments.
SHM_PREFIX_ENV = "FORGE_SC_SHM_PREFIX"

_CONTAINERS = (tuple, list, dict)
#: A tuple or list longer than this is searched through its two ends only.
_SAMPLE_ABOVE = 16


def torch_loaded() -> bool:
    """Whether torch is imported in this process (else no tensor can exist)."""
    return "torch" in sys.modules


# ------------------------------------------------------------------ encoding


class _Torch:
    """What the codec needs from torch, looked up once torch is imported."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.Tensor = torch.Tensor
        self.strided = torch.strided
        self.uint8 = torch.uint8
        self.dtypes: dict[str, Any] = {}
        self.names: dict[Any, str] = {}
        for name in dir(torch):
            value = getattr(torch, name, None)
            if isinstance(value, torch.dtype):
                canonical = str(value).removeprefix("torch.")
                self.dtypes[canonical] = value
                self.names[value] = canonical
        # dtypes whose tensors ``.numpy()`` exports directly (cheapest path).
        self.numpy_ok: set[Any] = set()
        for name in _NUMPY_DTYPES:
            dt = self.dtypes.get(name)
            if dt is None:
                continue
            try:
                torch.zeros(1, dtype=dt).numpy()
            except Exception:  # no numpy, or this torch cannot export the dtype
                continue
            self.numpy_ok.add(dt)


_NUMPY_DTYPES = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
)

_torch: _Torch | None = None
_torch_lock = threading.Lock()


def _t() -> _Torch:
    global _torch
    t = _torch
    if t is None:
        with _torch_lock:
            if _torch is None:
                import torch

                _torch = _Torch(torch)
            t = _torch
    return t


class CallEncoding:
    """The shared-memory state of one side of a call path.

    ``pool`` is the segments this side sends from (None: no shared memory, every
    tensor goes inline); ``receivers`` is how many processes unpickle each message
    (the ranks of a replica): with more than one, segments are one-shot and their
    names are collected in ``one_shot`` for the sender to remove when the call ends.
    With ``per_call`` (one encoding per call, as the caller's side has), the call's
    reusable segments are kept in ``sent`` for :meth:`release` to settle.
    """

    __slots__ = ("one_shot", "per_call", "pool", "receivers", "sent")

    def __init__(
        self, pool: SegmentPool | None, receivers: int = 1, *, per_call: bool = False
    ) -> None:
        self.pool = pool
        self.receivers = receivers
        self.per_call = per_call
        self.one_shot: list[str] = []
        self.sent: list[Any] = []

    @property
    def holds(self) -> bool:
        """Whether the call has segments to release when it ends."""
        return bool(self.one_shot or self.sent)

    def release(self) -> None:
        """The call ended (every receiver mapped its segments by now, or never
        will): remove its one-shot segments, and free the reusable ones that no
        receiver mapped (the replica died first, or the message never left)."""
        names, self.one_shot = self.one_shot, []
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM_DIR, name))
        sent, self.sent = self.sent, []
        if sent and self.pool is not None:
            self.pool.settle(sent)


class _Wire:
    """A tensor on its way out: pickles as dtype, shape and bytes (or a segment)."""

    __slots__ = ("enc", "tensor")

    def __init__(self, tensor: Any, enc: CallEncoding | None) -> None:
        self.tensor = tensor
        self.enc = enc

    def __reduce_ex__(self, protocol: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        reduced = self.__reduce__()
        if isinstance(protocol, int) and protocol < 5 and reduced[0] is _from_bytes:
            name, shape, data, grad = reduced[1]  # no PickleBuffer before protocol 5
            return (_from_bytes, (name, shape, bytes(data.raw()) if data else b"", grad))
        return reduced

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        t = _t()
        x = self.tensor
        if not x.is_contiguous():
            x = x.contiguous()
        name = t.names[x.dtype]
        shape = tuple(x.shape)
        grad = x.requires_grad
        if grad:
            x = x.detach()
        nbytes = x.nbytes
        enc = self.enc
        if enc is not None and enc.pool is not None and nbytes >= SHM_MIN_BYTES:
            try:
                return self._to_segment(t, x, name, shape, nbytes, grad, enc)
            except OSError:  # /dev/shm full or gone: inline instead
                pass
        if nbytes == 0:
            return (_from_bytes, (name, shape, b"", grad))
        if x.dtype in t.numpy_ok:
            data = pickle.PickleBuffer(x.numpy())
        else:
            data = pickle.PickleBuffer(x.reshape(-1).view(t.uint8).numpy())
        return (_from_bytes, (name, shape, data, grad))

    @staticmethod
    def _to_segment(
        t: _Torch, x: Any, name: str, shape: tuple[int, ...], nbytes: int, grad: bool, enc: Any
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        one_shot = enc.receivers > 1
        seg = enc.pool.acquire(nbytes, one_shot=one_shot)
        dst = t.torch.frombuffer(seg.mm, dtype=t.uint8, count=nbytes, offset=HEADER)
        dst.copy_(x.reshape(-1).view(t.uint8))
        del dst
        if one_shot:
            enc.one_shot.append(seg.name)
            seg.mm.close()  # the sender keeps only the name, to remove it
        elif enc.per_call:
            enc.sent.append((seg, seg.gen))
        return (_from_segment, (seg.name, name, shape, nbytes, grad))


def _from_bytes(dtype: str, shape: tuple[int, ...], data: Any, grad: bool) -> Any:
    t = _t()
    dt = t.dtypes[dtype]
    if not len(data):
        out = t.torch.empty(shape, dtype=dt)
    else:
        if not isinstance(data, bytearray):  # a read-only buffer: frombuffer warns
            data = bytearray(data)
        out = t.torch.frombuffer(data, dtype=dt).view(shape)
    if grad:
        out.requires_grad_(True)
    return out


def _from_segment(segment: str, dtype: str, shape: tuple[int, ...], nbytes: int, grad: bool) -> Any:
    t = _t()
    mm = receive(segment, nbytes)
    dt = t.dtypes[dtype]
    if nbytes == 0:
        out = t.torch.empty(shape, dtype=dt)
    else:
        out = t.torch.frombuffer(mm, dtype=t.uint8, count=nbytes, offset=HEADER)
        out = out.view(dt).view(shape)
    del mm  # the tensor holds the mapping; releasing it frees the segment
    if grad:
        out.requires_grad_(True)
    return out


def _eligible(t: _Torch, x: Any) -> bool:
    return (
        type(x) is t.Tensor
        and x.is_cpu
        and x.layout is t.strided
        and not x.is_quantized
        and not x.is_conj()
        and not x.is_neg()
        and (not x.requires_grad or x.is_leaf)
    )


def _walk(t: _Torch, x: Any, enc: CallEncoding | None, depth: int) -> Any:
    """``x`` with every eligible tensor wrapped; ``x`` itself if it has none."""
    kind = type(x)
    if kind is t.Tensor:
        return _Wire(x, enc) if _eligible(t, x) else x
    if depth >= MAX_DEPTH or kind not in _CONTAINERS:
        return x
    if kind is dict:
        if not _may_hold(t, x):
            return x
        out = {k: _walk(t, v, enc, depth + 1) for k, v in x.items()}
        changed = any(out[k] is not v for k, v in x.items())
        return out if changed else x
    n = len(x)
    if n > 1 and type(x[0]) is t.Tensor and type(x[-1]) is t.Tensor:
        rows = _rows(t, x, enc)
        if rows is not None:
            return rows
    if n > _SAMPLE_ABOVE:
        # A long sequence is taken as homogeneous: its ends tell (see _may_hold).
        first, last = x[0], x[-1]
        if _walk(t, first, enc, depth + 1) is first and _walk(t, last, enc, depth + 1) is last:
            return x
    elif not _may_hold(t, x):
        return x
    items = [_walk(t, v, enc, depth + 1) for v in x]
    if all(a is b for a, b in zip(items, x, strict=True)):
        return x
    return items if kind is list else tuple(items)


class _WireRows:
    """A list (or tuple) of tensor rows of one dtype and shape on its way out: one
    stacked tensor on the wire, rows again on the other side (views of one buffer)."""

    __slots__ = ("stacked", "tuple")

    def __init__(self, stacked: _Wire, is_tuple: bool) -> None:
        self.stacked = stacked
        self.tuple = is_tuple

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (_unstack, (self.stacked, self.tuple))


def _unstack(stacked: Any, is_tuple: bool) -> Any:
    rows = stacked.unbind(0)
    return rows if is_tuple else list(rows)


_dtype_of = operator.attrgetter("dtype")
_requires_grad = operator.attrgetter("requires_grad")


def _rows(t: _Torch, x: Sequence[Any], enc: CallEncoding | None) -> _WireRows | None:
    """``x`` as one stacked tensor if its items are eligible tensors of one dtype and
    shape, none requiring grad (a batch of tensor rows: one encoding instead of one
    per row); else None."""
    if not x[0].is_cpu:  # (not worth stacking: it would not be sent in our form)
        return None
    # One dtype (torch.stack would promote a mixed batch), no subclass, no row
    # requiring grad (it goes alone, as a leaf of its own; the stack would not say so
    # under no_grad), checked in C; shapes and devices are torch.stack's to check.
    if (
        len(set(map(type, x))) != 1
        or len(set(map(_dtype_of, x))) != 1
        or any(map(_requires_grad, x))
    ):
        return None
    try:
        stacked = t.torch.stack(x)  # (resolves conjugate and negative views)
    except (RuntimeError, TypeError):
        return None
    if not _eligible(t, stacked):
        return None
    return _WireRows(_Wire(stacked, enc), type(x) is tuple)


def _may_hold(t: _Torch, values: Any) -> bool:
    """Whether the values of a dict or a short tuple or list hold a tensor or a
    container (one C-level pass). A long sequence is judged by its two ends instead
    (see _walk): a batch of 32 rows of 64 floats must not cost 2,000 type checks.
    Missing a tensor is never wrong: it then travels by Monarch's own pickling, only
    slower."""
    if isinstance(values, dict):
        values = values.values()
    kinds = set(map(type, values))
    return not kinds.isdisjoint(_CONTAINERS) or t.Tensor in kinds


def encode_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], enc: CallEncoding | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call's arguments with their eligible tensors ready for the wire. Call only
    when :func:`torch_loaded` (else there is nothing to encode)."""
    t = _t()
    args = _walk(t, args, enc, 0)
    if kwargs:
        kwargs = _walk(t, kwargs, enc, 0)
    return args, kwargs


#: The replica side's pool (from the prefix its parent set), made on first use.
_result_encoding: CallEncoding | None = None


def _replica_encoding() -> CallEncoding:
    global _result_encoding
    enc = _result_encoding
    if enc is None:
        with _torch_lock:
            if _result_encoding is None:
                prefix = os.environ.get(SHM_PREFIX_ENV)
                # A replica cannot know when its caller has mapped a result (a
                # cancelled caller may never): one left unmapped for a minute is
                # dropped once the pool is over its count.
                pool = (
                    SegmentPool(prefix, stale_after=RESULT_STALE_AFTER)
                    if prefix and shm_available()
                    else None
                )
                _result_encoding = CallEncoding(pool)
            enc = _result_encoding
    return enc


def encode_result(value: Any) -> Any:
    """An endpoint's result with its eligible tensors ready for the wire (on a
    replica; large tensors use the segments of the prefix its parent gave it)."""
    if "torch" not in sys.modules:
        return value
    return _walk(_t(), value, _replica_encoding(), 0)


# ------------------------------------------------------------ collate / split


def stack_rows(values: list[Any]) -> Any:
    """``collate="stack"``: one parameter's values across a batch as one tensor,
    ``torch.stack(values)``, when every value is a tensor; otherwise the list itself
    (numbers, lists, strings, mixed values are passed as by default). Tensors that
    cannot be stacked (shapes, dtypes or devices differ) fail the batch's callers
    with ``ValueError``."""
    torch = sys.modules.get("torch")
    if torch is None or not values:
        return values
    tensor = torch.Tensor
    for v in values:
        if not isinstance(v, tensor):
            return values
    first = values[0]
    shape, dtype, device = first.shape, first.dtype, first.device
    for v in values:
        if v.shape != shape or v.dtype is not dtype or v.device != device:
            raise ValueError(
                "collate='stack' cannot stack this batch's tensors: they differ in "
                f"shape, dtype or device ({tuple(shape)} {dtype} {device} and "
                f"{tuple(v.shape)} {v.dtype} {v.device}). Send rows of one shape, or "
                "leave collate unset to receive them as a list."
            )
    return torch.stack(values)


def unbind_result(result: Any) -> Sequence[Any]:
    """``split="unbind"``: a tensor result is split along its first dimension
    (``result.unbind(0)``, one row per call); a list or tuple is taken as it is."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(result, torch.Tensor) and result.dim() > 0:
        return result.unbind(0)  # type: ignore[no-any-return]
    return result  # type: ignore[no-any-return]
