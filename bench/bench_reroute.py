"""Crash -> reroute time on real Monarch processes (DESIGN §8: p99 <= 0.5 s, zero lost).

    python bench/bench_reroute.py [--backend asyncio trio] [--kills 20] [--replicas 2]
                                  [--callers 16] [--health-poll-rate 0.2]
                                  [--health-timeout 1.0] [--settle 0.5]
                                  [--remote [--hosts 3] [--kill proc|host]]
                                  [--spares 0] [--json PATH]

``--remote`` places the replicas on ``--hosts`` Monarch worker processes on this
machine, attached over TCP (``MonarchMesh(workers=[...], ca=...)``; each worker in a
session of its own, started through a double fork, so no replica process is a
descendant of this one), with this client on TCP too
(``HYPERACTOR_MESH_DEFAULT_TRANSPORT``, default ``tcp://127.0.0.1:0``). No pidfd
watches any replica from here: deaths are learnt from the watcher forge_sc starts on
each host (a pidfd there), Monarch's supervision reports, failed calls and the health
probe. ``--kill proc`` (default) SIGKILLs the replica's
process on its host; ``--kill host`` kills the whole host (the worker and everything
under it); lost hosts are not restarted (torchmonarch 0.7 does not reliably attach
again to a worker restarted at the same address: docs/deployment.md), so that mode
starts at least ``--replicas + --kills`` hosts.

A service of ``--replicas`` replicas of an echo actor (round-robin router, capacity
= callers, so nothing queues for capacity) serves ``--callers`` callers that issue
``route()`` back to back. ``--kills`` times, once every replica is healthy and the
traffic ran ``--settle`` seconds, the process of one replica (each in turn) is
SIGKILLed. Per kill, from the instant of the ``kill()``:

* detect: until the service marks that replica not HEALTHY (no new request is routed
  to it from then on). Watched from outside every millisecond.
* reroute: until the last *stranded* request is answered, a stranded request being
  one answered after the kill and issued before the replica was marked unhealthy
  (so it was in flight on the dead replica, or was routed to it before detection,
  or ran on the other replica meanwhile). Its answer comes from another replica,
  after a retry. This is the longest any caller waited because of the crash.
* recover: until the replica is HEALTHY again, in a new process: the service has its
  full capacity back. With ``--spares N`` (``spare_replicas=N``) that is a warm
  spare taking the dead replica's place; each kill then waits for a spare to be
  ready first.

``--json PATH`` also writes every figure and a timeline (every 5 ms: healthy
replicas, ready spares, requests answered so far; and the instant of each kill).

Printed per backend: p50 / p99 / max over the kills (with 20 kills, p99 is the
maximum: nearest rank), how many requests were stranded per kill, how each death was
noticed (the process's pidfd; with ``--remote``, the pidfd held by its host's watcher;
Monarch's fault hook; a failed call or ping; a ping slower than ``health_timeout``),
requests answered and requests failed ("lost": any exception).
No assertion on time: these are figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

if "--remote" in sys.argv:  # the client's transport: read when Monarch loads
    os.environ.setdefault("HYPERACTOR_MESH_DEFAULT_TRANSPORT", "tcp://127.0.0.1:0")

import anyio

from forge_sc import ForgeActor, endpoint, open_service
from forge_sc.mesh.monarch import MonarchMesh

clock = time.perf_counter
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


class Echo(ForgeActor):
    @endpoint
    async def echo(self, x: int) -> int:
        return x

    @endpoint
    async def pid(self) -> int:
        return os.getpid()

    @endpoint
    async def host(self) -> int:
        """The worker process above this replica's process (with ``--remote``)."""
        return os.getppid()


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def until(cond: Callable[[], bool], timeout: float = 60.0) -> float:  # noqa: ASYNC109
    """Poll ``cond`` every millisecond; return the clock when it first held."""
    with anyio.fail_after(timeout):
        while not cond():  # noqa: ASYNC110 - a bench watching a state from outside
            await anyio.sleep(0.001)
    return clock()


def cause(reason: BaseException | None) -> str:
    text = str(reason)
    if type(reason).__name__ == "HealthCheckFailed":
        return "ping timeout"
    if "watcher" in text:
        return "host watcher"
    if " died: process " in text or "pidfd" in text:
        return "pidfd"
    if " died: " in text:
        return "fault hook"
    if " is gone: " in text:
        return "failed call/ping"
    return f"{type(reason).__name__}: {text.splitlines()[0][:60] if text else ''}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if not args.remote:
        return await _run(args, None, [])
    sys.path.insert(0, ROOT)
    from tests.monarch._hosts import hosts

    with hosts(args.hosts) as hs:
        mesh = MonarchMesh(workers=[h.address for h in hs], ca="trust_all_connections")
        return await _run(args, mesh, hs)


async def _run(args: argparse.Namespace, mesh: MonarchMesh | None, hs: list[Any]) -> dict[str, Any]:
    detect: list[float] = []
    reroute: list[float] = []
    recover: list[float] = []
    stranded_counts: list[int] = []
    causes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    answered = 0
    log: list[tuple[float, float]] = []  # (issued, answered) of requests answered since reset
    current: dict[int, float] = {}  # caller -> issue time of its request in flight
    stop = False
    timeline: list[tuple[float, int, int, int]] = []  # (t, healthy, spares ready, answered)
    kills_at: list[float] = []
    t_start = clock()

    async with open_service(
        Echo,
        num_replicas=args.replicas,
        health_poll_rate=args.health_poll_rate,
        health_timeout=args.health_timeout,
        replica_max_concurrent_requests=args.callers,
        restart_backoff=0.05,
        restart_window=1.0,  # kills of one replica are further apart: no growing backoff
        max_restarts=10 * args.kills + 10,
        mesh=mesh,
        **({"spare_replicas": args.spares} if args.spares else {}),
    ) as svc:

        async def sample() -> None:
            while not stop:
                stats = svc.statistics()
                timeline.append(
                    (clock() - t_start, stats.healthy_replicas, stats.ready_spares, answered)
                )
                await anyio.sleep(0.005)

        async def caller(c: int) -> None:
            nonlocal answered
            i = 0
            while not stop:
                t0 = current[c] = clock()
                try:
                    value = await svc.echo.route(i)
                except Exception as exc:
                    errors[type(exc).__name__] += 1
                else:
                    assert value == i, (value, i)
                    answered += 1
                t1 = clock()
                del current[c]
                log.append((t0, t1))
                i += 1

        async with anyio.create_task_group() as tg:
            for c in range(args.callers):
                tg.start_soon(caller, c)
            if args.json:
                tg.start_soon(sample)
            for k in range(args.kills):
                victim = k % args.replicas
                replica = svc.replicas[victim]
                await until(lambda: all(r.healthy for r in svc.replicas))
                if args.spares:
                    await until(lambda: svc.statistics().ready_spares >= args.spares)
                await anyio.sleep(args.settle)
                pid = (await svc.pid.fanout())[victim]
                inc = replica._inc  # bench-only: to tell the new incarnation apart
                lost = None
                if args.remote and args.kill == "host":
                    ppid = (await svc.host.fanout())[victim]
                    lost = next(h for h in hs if h.pid == ppid)
                log.clear()
                kill_at = clock()
                if lost is not None:
                    lost.kill()
                else:
                    os.kill(pid, signal.SIGKILL)
                kills_at.append(kill_at - t_start)
                # (With a spare the replica may be healthy again before a poll sees it
                # unhealthy: its incarnation's death tells.)
                detect_at = await until(
                    lambda r=replica, i=inc: not r.healthy or i.dead.is_set()  # type: ignore[misc]
                )
                recovered_at = await until(
                    lambda r=replica, i=inc: r.healthy and r._inc is not i  # type: ignore[misc]
                )
                # Every request issued before detection has been answered.
                await until(lambda d=detect_at: all(t > d for t in current.values()))
                stranded = [t1 for t0, t1 in log if t0 < detect_at and t1 > kill_at]
                detect.append(detect_at - kill_at)
                reroute.append((max(stranded) if stranded else detect_at) - kill_at)
                recover.append(recovered_at - kill_at)
                stranded_counts.append(len(stranded))
                causes[cause(replica._last_error)] += 1
                if args.verbose:
                    print(
                        f"  kill {k + 1:2d} replica {victim}: detect {detect[-1] * 1e3:6.1f} ms"
                        f"  reroute {reroute[-1] * 1e3:6.1f} ms  recover {recover[-1]:.2f} s"
                        f"  stranded {len(stranded)}  ({cause(replica._last_error)})"
                    )
            stop = True
    return {
        "detect": detect,
        "reroute": reroute,
        "recover": recover,
        "stranded": stranded_counts,
        "causes": causes,
        "errors": errors,
        "answered": answered,
        "timeline": timeline,
        "kills_at": kills_at,
    }


def fmt(values: list[float], unit: float = 1e3, suffix: str = "ms") -> str:
    return (
        f"p50 {statistics.median(values) * unit:7.1f} {suffix}  p99 {pct(values, 0.99) * unit:7.1f}"
        f" {suffix}  max {max(values) * unit:7.1f} {suffix}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", nargs="+", default=["asyncio", "trio"])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--callers", type=int, default=16)
    p.add_argument("--health-poll-rate", type=float, default=0.2)
    p.add_argument("--health-timeout", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=0.5, help="traffic before each kill, s")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per kill")
    p.add_argument("--remote", action="store_true", help="replicas on attached TCP workers")
    p.add_argument("--hosts", type=int, default=3, help="worker hosts with --remote")
    p.add_argument("--kill", choices=["proc", "host"], default="proc", help="with --remote")
    p.add_argument("--spares", type=int, default=0, help="spare_replicas of the service")
    p.add_argument("--json", metavar="PATH", help="also write the figures and a timeline")
    args = p.parse_args()
    if args.remote and args.kill == "host":
        args.hosts = max(args.hosts, args.replicas + args.kills)
    if args.remote:
        print(
            f"--remote: {args.hosts} worker hosts on tcp://127.0.0.1, client transport "
            f"{os.environ['HYPERACTOR_MESH_DEFAULT_TRANSPORT']}, no pidfd; each kill: "
            + ("the whole host" if args.kill == "host" else "the replica's process")
        )
    print(
        f"{args.replicas} replicas ({args.spares} spares), {args.callers} callers, "
        f"{args.kills} SIGKILLs, load {os.getloadavg()[0]:.1f}, "
        f"health_poll_rate={args.health_poll_rate}, health_timeout={args.health_timeout}, "
        f"HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY="
        f"{os.environ.get('HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY', '(forge_sc default)')}"
    )
    results: dict[str, dict[str, Any]] = {}
    for backend in args.backend:
        r = anyio.run(run, args, backend=backend)
        lost = sum(r["errors"].values())
        print(f"[{backend}]")
        print(f"  kill -> marked unhealthy : {fmt(r['detect'])}")
        print(f"  kill -> rerouted         : {fmt(r['reroute'])}   (target p99 <= 500 ms)")
        print(
            f"  kill -> healthy again    : {fmt(r['recover'])}   (capacity back;"
            " target p99 <= 0.1 s with spares, p50 <= 1.0 s without)"
        )
        print(
            f"  stranded requests per kill: mean {statistics.mean(r['stranded']):.1f}, "
            f"max {max(r['stranded'])}; noticed by: {dict(r['causes'])}"
        )
        print(
            f"  answered {r['answered']:,}, lost {lost}"
            + (f" {dict(r['errors'])}" if lost else "")
            + "  (target: zero lost)"
        )
        results[backend] = r
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "bench": "reroute",
                    "args": vars(args),
                    "load_1min": os.getloadavg()[0],
                    "results": {
                        b: {**r, "causes": dict(r["causes"]), "errors": dict(r["errors"])}
                        for b, r in results.items()
                    },
                },
                f,
            )


if __name__ == "__main__":
    main()
