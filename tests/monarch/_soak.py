"""Chaos soak on real Monarch processes: the core of ``python -m scripts.soak`` and of
``tests/monarch/test_soak.py``.

``run_soak(SoakConfig(...))`` opens a service of :class:`SoakActor` on real Monarch
processes, runs many concurrent callers issuing a mix of requests while a killer
task SIGKILLs a random replica's process at random intervals, and returns a
:class:`SoakReport`. Every request is tracked by id and ends in exactly one way:

* ``answered``: the expected result (values are checked: echoes of the request id,
  a per-session counter model, fan-out lists, a user exception re-raised by type);
* ``failed``: an explicit ``forge_sc.errors`` exception, counted by type (an
  ``idempotent=False`` call whose replica died gets ``ReplicaDiedError``);
* ``wrong``: a result that is not the expected one;
* ``unexpected``: any other exception;
* ``hung``: not ended within ``request_bound`` seconds (the caller then gives up);
* ``lost``: none of the above (issued minus everything that ended; must be 0).

The soak passes (``report.ok``) when nothing is lost, hung, wrong or unexpected, the
service did not escalate, sessions never changed replica without a counted migration,
and no process the soak started is alive after the service closed.

Only structured concurrency: one task group of callers, killer and monitor inside
``open_service``; no threads besides forge_sc's own.

The module is imported by the replicas' processes too (``SoakActor`` travels by
reference): keep its top level light.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import sniffio

# forge_sc sets Monarch's supervision poll interval as it loads Monarch: import it first.
from forge_sc import ForgeActor, LeastLoadedRouter, endpoint, open_service, service_endpoint
from forge_sc.errors import ServiceError, ServiceFailedError

from ._support import live_descendants

__all__ = ["SoakActor", "SoakBoomError", "SoakConfig", "SoakReport", "run_soak"]


class SoakBoomError(Exception):
    """The user exception of the ``user_error`` kind: must come back by type."""


class SoakActor(ForgeActor):
    """The replica. State: one counter per session key (lost when the process dies)."""

    def __init__(self, charge_dir: str | None = None) -> None:
        self.counters: dict[str, int] = {}
        self.charge_fd = -1
        if charge_dir is not None:
            path = os.path.join(charge_dir, f"charge-{os.getpid()}.log")
            self.charge_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @endpoint
    async def pid(self) -> int:
        return os.getpid()

    @endpoint
    async def echo(self, rid: int) -> int:
        return rid

    @service_endpoint(idempotent=False)
    async def charge(self, rid: int) -> int:
        """At most once: each execution is appended to this process's charge log (one
        unbuffered write, so it survives a SIGKILL right after)."""
        if self.charge_fd >= 0:
            os.write(self.charge_fd, b"%d\n" % rid)
        return rid

    @service_endpoint(router=LeastLoadedRouter, batch_size=8, batch_timeout=0.005)
    async def double(self, rids: list[int]) -> list[int]:
        return [2 * r for r in rids]

    @endpoint
    async def bump(self, key: str) -> tuple[int, int]:
        """Count the calls of session ``key`` on this process: ``(pid, count)``."""
        n = self.counters.get(key, 0) + 1
        self.counters[key] = n
        return os.getpid(), n

    @endpoint
    async def boom(self, rid: int) -> None:
        raise SoakBoomError(f"boom {rid}")


#: Request kinds and their weights. ``session`` uses a long-lived session per caller
#: (``start_session`` / ``sess_id=``); ``session_block`` an ``async with svc.session()``
#: block of three calls (three requests).
KINDS: dict[str, int] = {
    "echo": 40,
    "charge": 15,
    "batch": 12,
    "session": 20,
    "session_block": 5,
    "fanout": 3,
    "user_error": 5,
}


@dataclass(frozen=True)
class SoakConfig:
    seconds: float = 120.0
    callers: int = 64
    replicas: int = 4
    kill_interval: tuple[float, float] = (1.0, 3.0)
    seed: int = 0
    #: what the killer sends: "KILL" (a crash) or "STOP" (a hang: the process stops
    #: answering; the health ping notices it and the replica is replaced)
    signal: str = "KILL"
    #: a request that has not ended after this many seconds is counted hung
    request_bound: float = 30.0
    #: no kills in the first ``kill_warmup`` and the last ``quiet_tail`` seconds, so
    #: the last replica killed is back before the figures are read
    kill_warmup: float = 1.0
    quiet_tail: float = 3.0
    health_poll_rate: float = 0.2
    health_timeout: float = 1.0
    restart_backoff: float = 0.05
    restart_window: float = 10.0
    max_restarts: int = 50
    #: after the traffic, wait this long at most for every replica to be healthy
    settle_timeout: float = 30.0
    #: after the service closed, wait this long at most for its processes to go
    leftover_timeout: float = 15.0
    #: progress lines (every ``progress_every`` s) go here; None: silent
    progress: Callable[[str], None] | None = field(default=None, compare=False)
    progress_every: float = 5.0


@dataclass
class SoakReport:
    backend: str
    seconds: float
    callers: int
    replicas: int
    seed: int
    kill_interval: tuple[float, float]
    signal: str = "KILL"
    startup_s: float = 0.0
    traffic_s: float = 0.0
    close_s: float = 0.0
    issued: int = 0
    answered: int = 0
    failed: int = 0
    wrong: int = 0
    unexpected: int = 0
    hung: int = 0
    lost: int = 0
    #: requests cancelled by the service's escalation (ServiceFailedError)
    cancelled: int = 0
    failed_by_type: dict[str, int] = field(default_factory=dict)
    unexpected_by_type: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    kills: int = 0
    kill_misses: int = 0
    retries: int = 0
    restarts: int = 0
    session_migrations: int = 0
    sessions_opened: int = 0
    session_moves_seen: int = 0
    #: start_session() / session() that raised (service failed or closing), by type
    session_open_failed: dict[str, int] = field(default_factory=dict)
    #: executions of the idempotent=False ``charge`` found in the replicas' logs
    charge_executions: int = 0
    #: charge ids executed more than once (at-most-once broken; must be 0)
    charge_duplicates: int = 0
    #: charge ids answered but never executed (must be 0)
    charge_unlogged: int = 0
    #: charge requests that failed with ReplicaDiedError yet had run before the death
    charge_failed_but_ran: int = 0
    service_total_requests: int = 0
    service_failed_requests: int = 0
    healthy_at_end: int = 0
    throughput: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    escalated: str | None = None
    leftover_processes: int = 0
    leftover: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = []
        for name in (
            "lost",
            "hung",
            "wrong",
            "unexpected",
            "charge_duplicates",
            "charge_unlogged",
            "leftover_processes",
        ):
            if getattr(self, name):
                out.append(f"{name}={getattr(self, name)}")
        if self.escalated:
            out.append(f"escalated: {self.escalated}")
        if self.session_moves_seen > self.session_migrations:
            out.append(
                f"sessions changed replica {self.session_moves_seen} times but only "
                f"{self.session_migrations} migrations were counted"
            )
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["problems"] = self.problems
        return d

    def format(self) -> str:
        kinds = ", ".join(
            f"{k} {v['answered']}/{v['issued']}" for k, v in sorted(self.by_kind.items())
        )
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed_by_type.items())) or "-"
        lines = [
            f"chaos soak: backend={self.backend} replicas={self.replicas} "
            f"callers={self.callers} seconds={self.seconds:g} kill-interval="
            f"{self.kill_interval[0]:g}-{self.kill_interval[1]:g} s signal=SIG{self.signal} "
            f"seed={self.seed}",
            f"  service up in {self.startup_s:.2f} s; traffic {self.traffic_s:.1f} s; "
            f"closed in {self.close_s:.2f} s",
            f"  requests issued    {self.issued}",
            f"  answered           {self.answered}  ({self.throughput:.0f}/s; caller latency "
            f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.0f} ms)",
            f"  failed explicitly  {self.failed}  ({failed})",
            f"  wrong results      {self.wrong}",
            f"  unexpected errors  {self.unexpected}"
            + (f"  ({self.unexpected_by_type})" if self.unexpected_by_type else ""),
            f"  hung               {self.hung}",
            f"  lost               {self.lost}",
            f"  per kind (answered/issued): {kinds}",
            f"  kills {self.kills} (missed {self.kill_misses}), restarts {self.restarts}, "
            f"retries {self.retries}, session migrations {self.session_migrations} "
            f"(seen by callers {self.session_moves_seen}, sessions {self.sessions_opened})",
            f"  idempotent=False charge: executed {self.charge_executions}, duplicates "
            f"{self.charge_duplicates}, answered but not executed {self.charge_unlogged}, "
            f"failed after running {self.charge_failed_but_ran}",
            f"  service counted {self.service_total_requests} requests, "
            f"{self.service_failed_requests} failed; healthy replicas at the end "
            f"{self.healthy_at_end}/{self.replicas}",
            f"  child processes left after exit: {self.leftover_processes}",
        ]
        if self.session_open_failed:
            lines.append(f"  sessions that could not be opened: {self.session_open_failed}")
        if self.cancelled:
            lines.append(f"  cancelled by the escalation: {self.cancelled}")
        if self.escalated:
            lines.append(f"  ESCALATED: {self.escalated}")
        for ex in self.examples:
            lines.append(f"  example: {ex}")
        for p in self.leftover:
            lines.append(f"  left: {p}")
        lines.append("  OK" if self.ok else f"  FAILED: {'; '.join(self.problems)}")
        return "\n".join(lines)


class _Session:
    """The counter model of one session: on the same process the count goes up by
    one per call; on another process (the session migrated after a death) it starts
    again at 1, because the dead process's counters died with it."""

    __slots__ = ("key", "last_n", "last_pid", "left", "sid")

    def __init__(self, key: str, sid: str | None, calls: int) -> None:
        self.key = key
        self.sid = sid
        self.left = calls
        self.last_pid: int | None = None
        self.last_n = 0


class _Soak:
    def __init__(self, cfg: SoakConfig, report: SoakReport) -> None:
        self.cfg = cfg
        self.r = report
        self.stop = anyio.Event()
        self.next_id = 0
        self.pending: dict[int, str] = {}
        self.latencies: list[float] = []
        self.failed_by_type: Counter[str] = Counter()
        self.unexpected_by_type: Counter[str] = Counter()
        self.by_kind: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self.t0 = 0.0
        self.charged: set[int] = set()  # ids of the charge requests answered
        self.session_open_failed: Counter[str] = Counter()
        self.signo = signal.Signals[f"SIG{cfg.signal}"]

    # ------------------------------------------------------------ bookkeeping

    def _example(self, text: str) -> None:
        if len(self.r.examples) < 10:
            self.r.examples.append(text[:300])

    async def track(
        self, kind: str, make: Callable[[int], Awaitable[Any]], check: Callable[[int, Any], bool]
    ) -> tuple[str, int]:
        """Issue one request and classify how it ended; return the outcome and the id."""
        rid = self.next_id
        self.next_id += 1
        self.r.issued += 1
        self.by_kind[kind]["issued"] += 1
        self.pending[rid] = kind
        outcome = "hung"
        t0 = time.perf_counter()
        with anyio.move_on_after(self.cfg.request_bound):
            try:
                value = await make(rid)
            except ServiceError as exc:
                outcome = "failed"
                self.failed_by_type[type(exc).__name__] += 1
            except Exception as exc:
                outcome = "unexpected"
                self.unexpected_by_type[type(exc).__name__] += 1
                self._example(f"{kind} #{rid}: {type(exc).__name__}: {exc}")
            else:
                if check(rid, value):
                    outcome = "answered"
                    self.latencies.append(time.perf_counter() - t0)
                else:
                    outcome = "wrong"
                    self._example(f"{kind} #{rid}: wrong result {value!r}")
        if outcome == "hung":
            self._example(f"{kind} #{rid}: no answer within {self.cfg.request_bound} s")
        del self.pending[rid]
        setattr(self.r, outcome, getattr(self.r, outcome) + 1)
        self.by_kind[kind][outcome] += 1
        if outcome != "answered":
            # A request that failed at once (the service escalated) did not
            # checkpoint: let a cancellation of the callers reach them.
            await anyio.lowlevel.checkpoint()
        return outcome, rid

    # ------------------------------------------------------------ callers

    async def caller(self, svc: Any, i: int) -> None:
        rng = random.Random(f"{self.cfg.seed}-{i}")
        kinds, weights = list(KINDS), list(KINDS.values())
        sess: _Session | None = None
        n_sessions = 0
        boom = partial_boom(svc)
        try:
            while not self.stop.is_set():
                kind = rng.choices(kinds, weights)[0]
                if kind == "echo":
                    await self.track(kind, svc.echo.route, _equal)
                elif kind == "charge":
                    outcome, rid = await self.track(kind, svc.charge.route, _equal)
                    if outcome == "answered":
                        self.charged.add(rid)
                elif kind == "batch":
                    await self.track(kind, svc.double.route, _doubled)
                elif kind == "fanout":
                    await self.track(kind, svc.echo.fanout, self._fanned_out)
                elif kind == "user_error":
                    await self.track(kind, boom, _boomed)
                elif kind == "session":
                    if sess is None:
                        n_sessions += 1
                        try:
                            sid = await svc.start_session()
                        except ServiceError as exc:
                            await self.open_failed(exc)
                            continue
                        self.r.sessions_opened += 1
                        sess = _Session(f"c{i}-s{n_sessions}", sid, rng.randint(5, 50))
                    if not await self.session_call(svc, sess, "session"):
                        sess.left = 0  # its model is unknown now: start a new one
                    sess.left -= 1
                    if sess.left <= 0:
                        await svc.terminate_session(sess.sid)
                        sess = None
                else:  # session_block
                    n_sessions += 1
                    try:
                        async with svc.session():
                            self.r.sessions_opened += 1
                            block = _Session(f"c{i}-b{n_sessions}", None, 3)
                            for _ in range(3):
                                if not await self.session_call(svc, block, "session_block"):
                                    break
                    except ServiceError as exc:  # only opening a session raises here
                        await self.open_failed(exc)
        finally:
            if sess is not None:
                with anyio.CancelScope(shield=True):
                    await svc.terminate_session(sess.sid)

    async def open_failed(self, exc: ServiceError) -> None:
        """Opening a session failed (the service escalated or is closing): not a
        request, counted apart."""
        self.session_open_failed[type(exc).__name__] += 1
        await anyio.lowlevel.checkpoint()

    async def session_call(self, svc: Any, sess: _Session, kind: str) -> bool:
        """One call of a session; False when the session's model can no longer be
        trusted (a hung or unexpected outcome: the call may still run somewhere)."""

        def make(rid: int) -> Awaitable[Any]:
            if sess.sid is None:
                return svc.bump.route(sess.key)  # inside ``async with svc.session()``
            return svc.bump.route(sess.key, sess_id=sess.sid)

        def check(rid: int, value: Any) -> bool:
            if not (isinstance(value, tuple) and len(value) == 2):
                return False
            pid, n = value
            if pid == sess.last_pid:
                good = n == sess.last_n + 1
            else:
                good = n == 1
                if sess.last_pid is not None:
                    self.r.session_moves_seen += 1
            sess.last_pid, sess.last_n = pid, n
            return good

        outcome, _ = await self.track(kind, make, check)
        return outcome in ("answered", "failed", "wrong")

    def _fanned_out(self, rid: int, value: Any) -> bool:
        return (
            isinstance(value, list)
            and 1 <= len(value) <= self.cfg.replicas
            and all(v == rid for v in value)
        )

    # ------------------------------------------------------------ killer

    async def killer(self, svc: Any, rng: random.Random) -> None:
        lo, hi = self.cfg.kill_interval
        stop_killing = self.t0 + self.cfg.seconds - self.cfg.quiet_tail
        next_kill = self.t0 + self.cfg.kill_warmup + rng.uniform(lo, hi)
        while True:
            with anyio.move_on_after(max(0.0, next_kill - time.monotonic())):
                await self.stop.wait()
            if self.stop.is_set() or time.monotonic() >= stop_killing:
                return
            next_kill = time.monotonic() + rng.uniform(lo, hi)
            pids: list[int] = []
            # Bounded: no replica may be up (a hang, with --signal STOP).
            with anyio.move_on_after(self.cfg.request_bound), suppress(ServiceError):
                pids = await svc.pid.fanout()
            if not pids:
                continue
            victim = rng.choice(pids)
            # Only ever a process of our own (a pid could have been reused).
            if victim not in live_descendants():
                self.r.kill_misses += 1
                continue
            try:
                os.kill(victim, self.signo)
            except ProcessLookupError:
                self.r.kill_misses += 1
                continue
            self.r.kills += 1

    async def monitor(self, svc: Any) -> None:
        say = self.cfg.progress
        if say is None:
            return
        while not self.stop.is_set():
            with anyio.move_on_after(self.cfg.progress_every):
                await self.stop.wait()
            s = svc.statistics()
            states = " ".join(f"{r.idx}:{r.state.name[:4]}" for r in svc.replicas)
            say(
                f"t={time.monotonic() - self.t0:6.1f}s issued={self.r.issued} "
                f"answered={self.r.answered} failed={self.r.failed} hung={self.r.hung} "
                f"kills={self.r.kills} restarts={s.restarts} retries={s.retries} "
                f"[{states}]"
            )


def partial_boom(svc: Any) -> Callable[[int], Awaitable[Any]]:
    async def call(rid: int) -> Any:
        try:
            await svc.boom.route(rid)
        except SoakBoomError as exc:
            return ("raised", str(exc))
        return ("returned", None)

    return call


def _equal(rid: int, value: Any) -> bool:
    return bool(value == rid)


def _doubled(rid: int, value: Any) -> bool:
    return bool(value == 2 * rid)


def _boomed(rid: int, value: Any) -> bool:
    return bool(value == ("raised", f"boom {rid}"))


def _read_statistics(report: SoakReport, stats: Any) -> None:
    report.retries = stats.retries
    report.restarts = stats.restarts
    report.session_migrations = stats.session_migrations
    report.service_total_requests = stats.total_requests
    report.service_failed_requests = stats.failed_requests
    report.healthy_at_end = stats.healthy_replicas


def _charge_runs(charge_dir: str) -> Counter[int]:
    """How many times each charge id ran, from every replica process's log."""
    runs: Counter[int] = Counter()
    for name in os.listdir(charge_dir):
        with open(os.path.join(charge_dir, name)) as f:
            runs.update(int(line) for line in f if line.strip())
    return runs


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"{pid}: {cmd[:200]}"


async def run_soak(cfg: SoakConfig) -> SoakReport:
    """Run one soak on the current event loop (asyncio or trio) and report."""
    report = SoakReport(
        backend=sniffio.current_async_library(),
        seconds=cfg.seconds,
        callers=cfg.callers,
        replicas=cfg.replicas,
        seed=cfg.seed,
        kill_interval=cfg.kill_interval,
        signal=cfg.signal,
    )
    with tempfile.TemporaryDirectory(prefix="forge_sc_soak_") as charge_dir:
        await _run(cfg, report, charge_dir)
    return report


async def _run(cfg: SoakConfig, report: SoakReport, charge_dir: str) -> None:
    soak = _Soak(cfg, report)
    before = live_descendants()
    t_open = time.monotonic()
    t_closing: float | None = None
    service: Any = None
    try:
        async with open_service(
            SoakActor,
            charge_dir,
            num_replicas=cfg.replicas,
            health_poll_rate=cfg.health_poll_rate,
            health_timeout=cfg.health_timeout,
            restart_backoff=cfg.restart_backoff,
            restart_window=cfg.restart_window,
            max_restarts=cfg.max_restarts,
        ) as svc:
            service = svc
            report.startup_s = time.monotonic() - t_open
            soak.t0 = time.monotonic()
            try:
                # The whole traffic phase is bounded too: if even cancelling a request
                # did not end it, the soak still ends and reports it as lost.
                with anyio.move_on_after(cfg.seconds + cfg.request_bound + 60):
                    async with anyio.create_task_group() as tg:
                        for i in range(cfg.callers):
                            tg.start_soon(soak.caller, svc, i)
                        tg.start_soon(soak.killer, svc, random.Random(cfg.seed))
                        tg.start_soon(soak.monitor, svc)
                        await anyio.sleep(cfg.seconds)
                        soak.stop.set()  # callers finish the request they are in
                report.traffic_s = time.monotonic() - soak.t0
                with anyio.move_on_after(cfg.settle_timeout):
                    while not all(r.healthy for r in svc.replicas):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                _read_statistics(report, svc.statistics())
            finally:
                t_closing = time.monotonic()  # the body ended (also when cancelled)
    except ServiceFailedError as exc:
        report.escalated = f"ServiceFailedError: {exc}".splitlines()[0]
        if service is not None:
            _read_statistics(report, service.statistics())  # after the close
    if t_closing is not None:
        report.close_s = time.monotonic() - t_closing
    if report.traffic_s == 0.0:
        report.traffic_s = time.monotonic() - (soak.t0 or t_open)

    if report.escalated:
        report.cancelled = len(soak.pending)
    else:
        report.lost = len(soak.pending)
    ended = (
        report.answered + report.failed + report.wrong + report.unexpected + report.hung
    ) + report.cancelled
    assert report.issued - ended == report.lost, "bookkeeping"
    report.failed_by_type = dict(soak.failed_by_type)
    report.unexpected_by_type = dict(soak.unexpected_by_type)
    report.session_open_failed = dict(soak.session_open_failed)
    report.by_kind = {k: dict(v) for k, v in soak.by_kind.items()}
    for v in report.by_kind.values():
        for key in ("issued", "answered", "failed", "wrong", "unexpected", "hung"):
            v.setdefault(key, 0)
    report.throughput = report.answered / report.traffic_s if report.traffic_s else 0.0
    lat = sorted(soak.latencies)
    if lat:
        report.p50_ms = lat[len(lat) // 2] * 1e3
        report.p99_ms = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3
        report.max_ms = lat[-1] * 1e3

    # Every process the service started must be gone (bounded wait: reaping is not
    # announced by any event).
    deadline = time.monotonic() + cfg.leftover_timeout
    while (left := live_descendants() - before) and time.monotonic() < deadline:  # noqa: ASYNC110
        await anyio.sleep(0.05)
    report.leftover_processes = len(left)
    report.leftover = [_describe(p) for p in sorted(left)]

    # At most once for the idempotent=False endpoint: every execution was logged.
    runs = _charge_runs(charge_dir)
    report.charge_executions = sum(runs.values())
    report.charge_duplicates = sum(1 for n in runs.values() if n > 1)
    report.charge_unlogged = len(soak.charged - runs.keys())
    report.charge_failed_but_ran = len(runs.keys() - soak.charged)
