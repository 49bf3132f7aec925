"""Shared-memory segments for large tensors between processes of one host.

A large tensor crosses to a replica on the same host as the name of a file in
``/dev/shm`` instead of a copy inside the pickle stream: the sender copies its bytes
into a segment, the receiver maps the segment and wraps it in a tensor without a copy.

Fresh memory is what costs on a virtual machine: a first touch of a 4 KiB page costs
more than copying it (measured here: writing 100 MB into a new tmpfs file ran at
~1.4 GB/s, into a mapping already faulted in at 5-10 GB/s). So a sender keeps its
segments and reuses them (:class:`SegmentPool`). A reused segment must not change
under a receiver that still holds a tensor on it: the first byte of each segment's
header page says whether it is ``SENT`` (on its way), ``MAPPED`` (a receiver holds
it) or ``FREE``; the receiver writes ``MAPPED`` when it maps the segment and ``FREE``
when its mapping is released (the last tensor viewing it was freed), and only then
may the sender write it again. A segment is never removed while ``SENT`` to a
receiver that may still map it: the sender frees the segments of a call that ended
unmapped (the receiver died first, or the message was never sent:
:meth:`SegmentPool.settle`), and a pool that cannot know (a replica's results) drops
one left ``SENT`` for ``stale_after`` seconds only. A segment for several
receivers (one message unpickled by every rank of a replica) is never reused: it is
``ONE_SHOT``, unlinked by the sender when the call ends.

Every segment's name starts with a prefix per replica incarnation (the parent's
segments and the replica's own), so that stopping a replica, even one that was
killed, removes every segment it left (:func:`sweep`). A file is only a name: a
receiver's mapping stays valid after the name was removed, and the memory is
returned to the system when the last mapping goes.

Limits: Linux (or any system with a ``/dev/shm`` tmpfs); a sender that is itself
SIGKILLed leaves the segments it had sent and not yet swept (its replicas' prefixes
are swept by the service that owns them, so only a killed *client* leaks).
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import secrets
import threading
import time
from collections import deque
from typing import Any

__all__ = [
    "HEADER",
    "SHM_DIR",
    "Received",
    "SegmentPool",
    "available",
    "new_prefix",
    "receive",
    "state",
    "sweep",
]

SHM_DIR = "/dev/shm"
#: Bytes before a segment's data: one page, so that the data is page aligned.
HEADER = mmap.PAGESIZE
FREE, SENT, ONE_SHOT, MAPPED = 0, 1, 2, 3
#: Segment sizes are rounded up to this (so a segment fits tensors of nearby sizes).
_GRAIN = 1 << 21
#: Free segments a pool keeps, in bytes, and segments it tracks at most (beyond that
#: it drops free and mapped ones, and stale ones where it has a ``stale_after``).
_MAX_FREE_BYTES = 1 << 30
_MAX_SEGMENTS = 16


def available() -> bool:
    """Whether this host has a writable ``/dev/shm``."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def new_prefix() -> str:
    """A fresh prefix for the segments of one replica incarnation."""
    return f"forge_sc-{os.getpid()}-{secrets.token_hex(4)}-"


def sweep(prefix: str) -> int:
    """Remove every segment whose name starts with ``prefix``; return how many."""
    if not prefix:
        return 0
    removed = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except OSError:
                continue
            removed += 1
    return removed


class _Segment:
    """The sender's own mapping of one segment (kept for reuse)."""

    __slots__ = ("capacity", "gen", "mm", "name", "sent_at")

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.sent_at = 0.0
        #: One more per send: a late ``settle`` of an earlier send must not free it.
        self.gen = 0
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, HEADER + capacity)
            self.mm = mmap.mmap(fd, HEADER + capacity, flags=mmap.MAP_SHARED)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)

    @property
    def state(self) -> int:
        return self.mm[0]

    def drop(self) -> None:
        """Remove the name and this mapping (a receiver's mapping stays valid)."""
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM_DIR, self.name))
        with contextlib.suppress(BufferError):  # a view of it is alive; freed with it
            self.mm.close()


class SegmentPool:
    """The segments one sender writes to, reused once their receiver released them.

    Thread-safe. ``acquire(nbytes, one_shot)`` returns a segment ready to be
    written (marked ``SENT``, or ``ONE_SHOT`` for several receivers).
    ``stale_after``: seconds after which a segment still ``SENT`` may be dropped
    (None: never; the sender settles its calls' segments itself).
    """

    def __init__(self, prefix: str, stale_after: float | None = None) -> None:
        self.prefix = prefix
        self._stale_after = stale_after
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._ids = itertools.count()
        self._closed = False

    def __len__(self) -> int:
        return len(self._segments)

    def acquire(self, nbytes: int, *, one_shot: bool = False) -> _Segment:
        with self._lock:
            if self._closed:
                raise RuntimeError("the segment pool is closed")
            seg = None if one_shot else self._reusable(nbytes)
            fresh = seg is None
            if seg is None:
                capacity = max(_GRAIN, -(-nbytes // _GRAIN) * _GRAIN)
                seg = _Segment(f"{self.prefix}{os.getpid()}-{next(self._ids)}", capacity)
            seg.mm[0] = ONE_SHOT if one_shot else SENT  # before a trim sees it
            seg.sent_at = time.monotonic()
            seg.gen += 1
            if fresh and not one_shot:
                self._segments.append(seg)
                self._trim()
            return seg

    def settle(self, sends: list[tuple[_Segment, int]]) -> None:
        """The call that made ``sends`` (each a segment and its ``gen`` when it was
        acquired) ended, or its message was never sent: a segment its receiver did
        not map is free again (no one will map it now). One reused since (its
        receiver released it, and another call sent it) is not touched."""
        with self._lock:
            for seg, gen in sends:
                if seg.gen == gen and not seg.mm.closed and seg.mm[0] == SENT:
                    seg.mm[0] = FREE

    def _reusable(self, nbytes: int) -> _Segment | None:
        best: _Segment | None = None
        for seg in self._segments:
            fits = seg.mm[0] == FREE and nbytes <= seg.capacity <= 2 * nbytes + _GRAIN
            if fits and (best is None or seg.capacity < best.capacity):
                best = seg
        if best is not None:  # most recently used last
            self._segments.remove(best)
            self._segments.append(best)
        return best

    def _trim(self) -> None:
        free = sum(s.capacity for s in self._segments if s.mm[0] == FREE)
        stale = None if self._stale_after is None else time.monotonic() - self._stale_after
        for seg in list(self._segments):
            too_many = len(self._segments) > _MAX_SEGMENTS
            if not too_many and free <= _MAX_FREE_BYTES:
                break
            st = seg.mm[0]
            if st == FREE:
                free -= seg.capacity
            elif not too_many:
                continue
            elif st == SENT and (stale is None or seg.sent_at > stale):
                continue  # its receiver may still map it: removing it would lose it
            # Free, or held by its receiver (whose mapping outlives the name), or
            # stale: no longer tracked for reuse.
            self._segments.remove(seg)
            seg.drop()

    def close(self) -> None:
        """Drop every segment (idempotent)."""
        with self._lock:
            self._closed = True
            while self._segments:
                self._segments.popleft().drop()


class Received(mmap.mmap):
    """A receiver's mapping of one segment. When it is released (the last tensor on
    it was freed), a reusable segment is marked ``FREE`` for its sender."""

    def __del__(self) -> None:
        try:
            if not self.closed and self[0] in (SENT, MAPPED):
                self[0] = FREE
        except (ValueError, OSError):  # pragma: no cover - closed meanwhile
            pass


def receive(name: str, nbytes: int) -> Received:
    """Map segment ``name`` (header and ``nbytes`` of data) for reading and writing."""
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        mm = Received(fd, HEADER + nbytes, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)
    if mm[0] == SENT:
        mm[0] = MAPPED
    return mm


def state(name: str) -> Any:
    """The header state of segment ``name`` (for tests), or None if it is gone."""
    try:
        with open(os.path.join(SHM_DIR, name), "rb") as f:
            return f.read(1)[0]
    except OSError:
        return None
