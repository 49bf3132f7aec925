"""GPU assignment for ``with_gpus=True``: disjoint GPUs per replica.

The pool knows the GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when it is set,
else ``torch.cuda.device_count()`` when torch is installed (it is optional), else none.
A replica takes ``procs * hosts`` GPUs when it spawns and gives them back when it
stops; its processes see exactly those GPUs through ``CUDA_VISIBLE_DEVICES`` (every
process of the replica sees all of them, in rank order, as TorchForge does).

All hosts of a ``ProcessJob`` run on this machine, so they share this one pool.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["GpuPool", "NotEnoughGpusError", "default_gpu_pool", "visible_gpus"]


class NotEnoughGpusError(ValueError):
    """A replica asked for more GPUs than are free."""


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The device ids this process may hand out, as strings for ``CUDA_VISIBLE_DEVICES``."""
    env = os.environ if environ is None else environ
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids: list[str] = []
        for raw in cvd.split(","):
            dev = raw.strip()
            # CUDA ignores everything from the first invalid entry on ("-1" hides all).
            if not dev or dev.startswith("-"):
                break
            ids.append(dev)
        return ids
    if importlib.util.find_spec("torch") is None:
        return []
    # torch is optional: imported only when GPUs are asked for.
    torch = importlib.import_module("torch")
    return [str(i) for i in range(int(torch.cuda.device_count()))]


class GpuPool:
    """Hands out disjoint GPUs. Thread-safe; one pool per process by default.

    ``devices`` fixes the GPU ids (tests fake a count this way); by default they are
    read from the environment the first time a replica asks.
    """

    def __init__(self, devices: Iterable[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._devices: list[str] | None = None if devices is None else list(devices)
        self._free: list[str] = [] if self._devices is None else list(self._devices)
        self._used: set[str] = set()

    def _known(self) -> list[str]:
        if self._devices is None:
            self._devices = visible_gpus()
            self._free = list(self._devices)
        return self._devices

    @property
    def total(self) -> int:
        with self._lock:
            return len(self._known())

    @property
    def free(self) -> int:
        with self._lock:
            self._known()
            return len(self._free)

    def acquire(self, count: int, who: str) -> tuple[str, ...]:
        """Take ``count`` free GPUs for ``who`` (lowest ids first) or raise
        :class:`NotEnoughGpusError` saying what to change."""
        with self._lock:
            devices = self._known()
            if count > len(self._free):
                in_use = len(devices) - len(self._free)
                raise NotEnoughGpusError(
                    f"with_gpus=True: {who} needs {count} GPU(s) (one per process) but "
                    f"only {len(self._free)} of the {len(devices)} visible GPU(s) are "
                    f"free ({in_use} held by other replicas). Lower num_replicas, procs "
                    "or hosts, stop other services, or make more GPUs visible "
                    "(CUDA_VISIBLE_DEVICES)."
                )
            taken = self._free[:count]
            del self._free[:count]
            self._used.update(taken)
            return tuple(taken)

    def release(self, gpus: Sequence[str]) -> None:
        """Give GPUs back (idempotent per GPU)."""
        if not gpus:
            return  # and never trigger detection (a torch import) for nothing
        with self._lock:
            order = {d: i for i, d in enumerate(self._known())}
            for gpu in gpus:
                if gpu in self._used:
                    self._used.discard(gpu)
                    self._free.append(gpu)
            self._free.sort(key=lambda d: order.get(d, len(order)))


_default_pool: GpuPool | None = None
_default_lock = threading.Lock()


def default_gpu_pool() -> GpuPool:
    """The process-wide pool, shared by every MonarchMesh that has no pool of its own."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = GpuPool()
        return _default_pool
