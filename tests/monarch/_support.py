"""Helpers of the Monarch tests: spawning one replica, watching processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from forge_sc.mesh import SpawnSpec
from forge_sc.mesh.monarch import MonarchMesh, MonarchReplica


def live_descendants(root: int | None = None) -> set[int]:
    """Pids of every live (not zombie) process below ``root`` (default: this one)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    todo = [os.getpid() if root is None else root]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.add(child)
            todo.append(child)
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def wait_until(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    """Bounded wait for a condition no event announces (a process being reaped)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return bool(cond())
        time.sleep(0.01)
    return True


async def spawn(
    mesh: MonarchMesh, actor_cls: type[Any], *args: Any, **options: Any
) -> MonarchReplica:
    """Spawn one replica with ``SpawnSpec`` options; ``kwargs=`` goes to the actor."""
    spec = SpawnSpec(actor_cls=actor_cls, args=args, **{"idx": 0, **options})
    return await mesh.spawn(spec)


#: ``health_timeout`` for tests that count restarts exactly but do not test the health
#: probe: with both cores busy a ping can take over the default 1 s, and the probe then
#: (rightly) restarts a healthy replica, which those counts do not expect.
STEADY_HEALTH_TIMEOUT = 30.0
