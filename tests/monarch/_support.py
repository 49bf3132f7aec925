"""Helpers of the Monarch tests: spawning one replica, watching processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from forge_sc.mesh import SpawnSpec
from forge_sc.mesh.monarch import MonarchMesh, MonarchReplica


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command (state, ppid, pgrp,
    session, ...), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _live_processes() -> dict[int, list[str]]:
    table: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields is not None and fields[0] not in ("Z", "X"):
                table[int(entry)] = fields
    return table


def _below(root: int, table: dict[int, list[str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in table.items():
        children.setdefault(int(fields[1]), []).append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.add(child)
            todo.append(child)
    return out


def live_descendants(root: int | None = None) -> set[int]:
    """Pids of every live (not zombie) process below ``root`` (default: this one)."""
    return _below(os.getpid() if root is None else root, _live_processes())


def process_tree(root: int, sessions: set[int] | None = None) -> set[int]:
    """``root`` and every live process below it (parent links), plus the live members
    of its session and of ``sessions`` (Monarch's procs start sessions of their own)."""
    table = _live_processes()
    wanted = set(sessions or ())
    if root in table:
        wanted.add(int(table[root][3]))
    found = {pid for pid, fields in table.items() if int(fields[3]) in wanted}
    return ({root} if root in table else set()) | _below(root, table) | found


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
