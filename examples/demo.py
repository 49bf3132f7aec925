"""forge_sc demo: 4 replicas of a small model behind one service, callers sending
requests, one replica killed mid-traffic; a live table per replica while it runs,
then the summary.

    python examples/demo.py                       # asyncio, real Monarch processes
    python examples/demo.py --backend trio
    python examples/demo.py --mesh fake           # in-process FakeMesh, no processes

What to read on the screen:

* ``req/s`` counts callers' requests (each ``route()`` call) answered over the last
  second. The endpoint is batched (up to 16 requests per call), so a replica runs
  *batches*: its ``batches/s``, latency and totals are per batch.
* A third of the way in, replica 1 is killed (SIGKILL on Monarch, ``mesh.crash`` on
  FakeMesh). The events below the table are forge_sc's own lifecycle log records
  (logger ``forge_sc``): the death with its cause, the restart and its backoff, the
  replica healthy again. Batches in flight on it are retried on other replicas
  (``retries``); no caller sees an error.

The live view needs ``rich`` (a dependency of forge_sc); without a terminal it prints a
snapshot of the table every second instead.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import deque
from typing import Any

import anyio

# forge_sc sets Monarch's supervision poll interval as it loads Monarch: import
# forge_sc before anything that imports monarch.
from forge_sc import ForgeActor, LeastLoadedRouter, endpoint, open_service, service_endpoint
from forge_sc.errors import ServiceError

try:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text
except ImportError:  # pragma: no cover - rich is a dependency; degrade to plain lines
    Console = None  # type: ignore[assignment,misc]

BATCH = 16
VICTIM = 1


class TinyModel(ForgeActor):
    """A model-like workload: a fixed random 2-layer MLP in pure Python.

    ``think`` (seconds) stands for compute time where the model runs in-process
    (FakeMesh): without it a batch would finish before the next one is routed, every
    batch would go to replica 0, and the injected crash would hit nothing in flight.
    """

    def __init__(self, seed: int = 0, width: int = 32, think: float = 0.0) -> None:
        rng = random.Random(seed)
        self.w1 = [[rng.gauss(0, 0.3) for _ in range(8)] for _ in range(width)]
        self.w2 = [rng.gauss(0, 0.3) for _ in range(width)]
        self.think = think

    def _forward(self, x: list[float]) -> float:
        hidden = [max(0.0, sum(w * v for w, v in zip(row, x, strict=True))) for row in self.w1]
        return math.tanh(sum(w * h for w, h in zip(self.w2, hidden, strict=True)))

    @endpoint
    async def pid(self) -> int:
        return os.getpid()

    @service_endpoint(router=LeastLoadedRouter, batch_size=BATCH, batch_timeout=0.005)
    async def predict(self, xs: list[list[float]]) -> list[float]:
        if self.think:
            await anyio.sleep(self.think)
        return [self._forward(x) for x in xs]


class Callers:
    """The callers' side: answered and failed counts, latencies."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed: dict[str, int] = {}
        self.latencies: list[float] = []

    async def run(self, svc: Any, stop: anyio.Event) -> None:
        rng = random.Random()
        while not stop.is_set():
            x = [rng.uniform(-1, 1) for _ in range(8)]
            t0 = time.perf_counter()
            try:
                await svc.predict.route(x)
            except ServiceError as exc:
                name = type(exc).__name__
                self.failed[name] = self.failed.get(name, 0) + 1
                continue
            self.ok += 1
            self.latencies.append(time.perf_counter() - t0)


class EventLog(logging.Handler):
    """Keeps the last forge_sc lifecycle records (and the demo's own notes) for the view."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        #: When the traffic started (event times count from there); None before.
        self.t0: float | None = None
        self.lines: deque[tuple[float | None, int, str]] = deque(maxlen=7)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage().split(": ", 1)[-1]  # drop the "<Service>: " prefix
        self.note(msg, record.levelno)

    def note(self, msg: str, level: int = logging.INFO) -> None:
        t = None if self.t0 is None else time.perf_counter() - self.t0
        self.lines.append((t, level, msg))


class Rates:
    """Per-second rates from successive samples of cumulative counts."""

    def __init__(self, span: float = 1.0) -> None:
        self.span = span
        self.samples: dict[Any, deque[tuple[float, int]]] = {}

    def add(self, key: Any, now: float, total: int) -> float:
        hist = self.samples.setdefault(key, deque())
        hist.append((now, total))
        while len(hist) > 2 and now - hist[1][0] >= self.span:
            hist.popleft()
        (t_old, v_old), (t_new, v_new) = hist[0], hist[-1]
        return (v_new - v_old) / (t_new - t_old) if t_new > t_old else 0.0


_STATE_STYLE = {
    "HEALTHY": "green",
    "FAILED": "bold red",
    "RECOVERING": "yellow",
    "STARTING": "cyan",
    "STOPPING": "magenta",
    "STOPPED": "dim",
}
_LEVEL_STYLE = {logging.WARNING: "yellow", logging.ERROR: "bold red"}


class View:
    """What the screen shows, as rich renderables or plain text."""

    def __init__(self, mesh_kind: str, events: EventLog) -> None:
        self.mesh_kind = mesh_kind
        self.events = events
        self.rates = Rates()
        self.pids: dict[int, int] = {}

    def frame(self, elapsed: float, seconds: float, callers: Callers, stats: Any) -> Any:
        now = time.perf_counter()
        req_rate = self.rates.add("callers", now, callers.ok)
        failed = sum(callers.failed.values())
        head = (
            f"t={elapsed:4.1f}s of {seconds:.0f}   answered {callers.ok:,} "
            f"({req_rate:,.0f} req/s)   failed {failed}   retries {stats.retries}   "
            f"restarts {stats.restarts}"
        )
        rows = []
        for r in stats.replicas:
            rows.append(
                (
                    str(r.idx),
                    r.state.name,
                    str(self.pids.get(r.idx, "-")) if self.mesh_kind == "monarch" else "in-proc",
                    f"{self.rates.add(r.idx, now, r.total_requests):,.0f}",
                    f"{r.p50_latency * 1e3:.2f}",
                    f"{r.p99_latency * 1e3:.2f}",
                    str(r.active_requests),
                    str(r.restarts),
                )
            )
        if Console is None:
            lines = [head]
            lines += [
                f"  [{i}] {st:10s} pid {pid:>7s} {b:>7s} batches/s p50 {p50} ms p99 {p99} ms "
                f"active {a} restarts {rs}"
                for i, st, pid, b, p50, p99, a, rs in rows
            ]
            for t, _, msg in self.events.lines:
                lines.append(f"  {'start-up' if t is None else f't={t:4.1f}s':>8s}  {msg}")
            return "\n".join(lines)
        table = Table(
            caption="batch/s: batches run over the last second; p50/p99: per batch, last 60 s",
            caption_justify="left",
        )
        for col, justify in [
            ("replica", "right"),
            ("state", "left"),
            ("pid", "right"),
            ("batch/s", "right"),
            ("p50 ms", "right"),
            ("p99 ms", "right"),
            ("active", "right"),
            ("restarts", "right"),
        ]:
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            style = _STATE_STYLE.get(row[1], "")
            table.add_row(*row[:1], Text(row[1], style=style), *row[2:])
        log = Text()
        for t, level, msg in self.events.lines:
            when = "start-up" if t is None else f"t={t:4.1f}s"
            log.append(f"  {when:>8s}  {msg}\n", style=_LEVEL_STYLE.get(level, ""))
        return Group(
            Text(head, style="bold"),
            table,
            Text("events (forge_sc's log records):", style="bold"),
            log,
        )


class StderrCapture:
    """Sends fd 2 to a file while the replicas start: Monarch prints there where its
    own log goes, noise on the first screen. ``stop()`` restores it (idempotent)."""

    def __init__(self) -> None:
        self._saved: int | None = None
        self._tmp: Any = None

    def start(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._tmp = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in stop()
        os.dup2(self._tmp.fileno(), 2)

    def stop(self) -> str:
        """Restore stderr; return what was written meanwhile."""
        if self._saved is None:
            return ""
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
        self._tmp.seek(0)
        text = str(self._tmp.read().decode(errors="replace"))
        self._tmp.close()
        return text


async def replica_pids(svc: Any) -> dict[int, int]:
    """Each healthy replica's process id, by replica index. The fan-out picks its
    targets (the healthy replicas, in index order) before it first waits."""
    idxs = [r.idx for r in svc.replicas if r.healthy]
    pids = await svc.pid.fanout()
    return dict(zip(idxs, pids, strict=True))


def _say(console: Any, text: str, style: str = "") -> None:
    if console is None:
        print(text)
    else:
        console.print(text, style=style, highlight=False)


async def main(mesh_kind: str, seconds: float, ncallers: int) -> int:
    console = Console() if Console is not None else None
    live_ok = console is not None and console.is_terminal
    mesh: Any = None
    think = 0.0
    if mesh_kind == "fake":
        from forge_sc.testing import FakeMesh

        mesh = FakeMesh(seed=1)
        think = 0.002
    _say(
        console,
        f"forge_sc demo: backend={BACKEND}, mesh={mesh_kind}, 4 replicas, {ncallers} callers "
        f"sending single requests (batched by the service, up to {BATCH} per call), "
        f"{seconds:.0f} s; replica {VICTIM} is killed at t={seconds / 3:.1f}s",
        "bold",
    )
    t_start = time.perf_counter()
    events = EventLog()
    forge_log = logging.getLogger("forge_sc")
    forge_log.addHandler(events)
    forge_log.setLevel(logging.INFO)
    view = View(mesh_kind, events)
    callers = Callers()
    capture = StderrCapture()
    if mesh_kind == "monarch":
        capture.start()
    try:
        async with open_service(
            TinyModel,
            7,
            think=think,
            num_replicas=4,
            mesh=mesh,
            health_poll_rate=0.2,
            health_timeout=1.0,
        ) as svc:
            up = time.perf_counter() - t_start
            text = capture.stop()
            m = re.search(r"Monarch internal logs are being written to (\S+?);", text)
            if m:
                _say(console, f"  (Monarch writes its own log to {m.group(1)})", "dim")
            rest = re.sub(r"Monarch internal logs are being written to .*\n?", "", text)
            if rest.strip():
                sys.stderr.write(rest)
            _say(console, f"  service up in {up:.2f} s: {svc!r}")
            if mesh_kind == "monarch":
                view.pids = await replica_pids(svc)
                _say(console, f"  replica pids: {view.pids}", "dim")
            stats = await traffic(
                svc, mesh, view, callers, events, console, live_ok, seconds, ncallers
            )
    finally:
        sys.stderr.write(capture.stop())  # start-up failed: show what it said
        forge_log.removeHandler(events)
    summary(console, mesh_kind, callers, stats, up, seconds)
    return 0


async def traffic(
    svc: Any,
    mesh: Any,
    view: View,
    callers: Callers,
    events: EventLog,
    console: Any,
    live_ok: bool,
    seconds: float,
    ncallers: int,
) -> Any:
    """Run the callers for ``seconds``, kill the victim, refresh the view; return the
    service's statistics at the end."""
    restarts_seen = 0
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(ncallers):
            tg.start_soon(callers.run, svc, stop)
        t0 = events.t0 = time.perf_counter()
        killed = False
        last_print = 0.0
        live: Any = None
        if live_ok:
            live = Live(console=console, refresh_per_second=8, auto_refresh=False)
            live.start()
        try:
            while True:
                await anyio.sleep(0.25)
                elapsed = time.perf_counter() - t0  # measured after the wait: no lag
                if not killed and elapsed >= seconds / 3:
                    killed = True
                    # Strike while the victim runs a batch, so there is one to retry.
                    with anyio.move_on_after(1.0):
                        while not svc.replicas[VICTIM].active_requests:  # noqa: ASYNC110
                            await anyio.sleep(0.0005)
                    if mesh is None:
                        pid = view.pids[VICTIM]
                        os.kill(pid, signal.SIGKILL)
                        events.note(f"!! SIGKILL sent to replica {VICTIM} (pid {pid})")
                    else:
                        mesh.crash(VICTIM)
                        events.note(f"!! replica {VICTIM} crashed (FakeMesh.crash)")
                stats = svc.statistics()
                if (
                    mesh is None
                    and stats.restarts != restarts_seen
                    and all(r.healthy for r in stats.replicas)
                ):  # a replaced replica runs in a new process: show its pid
                    restarts_seen = stats.restarts
                    view.pids = await replica_pids(svc)
                frame = view.frame(min(elapsed, seconds), seconds, callers, stats)
                if live is not None:
                    live.update(frame, refresh=True)
                elif elapsed - last_print >= 1.0 or elapsed >= seconds:
                    last_print = elapsed
                    if console is None:
                        print(frame)
                    else:
                        console.print(frame)
                if elapsed >= seconds:
                    break
        finally:
            if live is not None:
                live.stop()
        stop.set()
    return svc.statistics()


def summary(
    console: Any, mesh_kind: str, callers: Callers, stats: Any, up: float, seconds: float
) -> None:
    lat = sorted(callers.latencies)
    failed = sum(callers.failed.values())
    b = stats.batchers[0]

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else 0.0

    lines = [
        "",
        "summary",
        f"  callers' requests: {callers.ok:,} answered, {failed} failed explicitly"
        + (f" {callers.failed}" if failed else ""),
        f"  caller-side latency: p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, "
        f"max {(lat[-1] * 1e3 if lat else 0.0):.1f} ms (route() to answer, batching included)",
        f"  {b.items_sent:,} requests went in {b.batches_sent:,} batches "
        f"(mean {b.mean_batch_size:.1f}, max {b.max_batch_size} of {b.batch_size}); "
        f"replicas count batches",
        f"  retries {stats.retries} (batches re-sent after replica {VICTIM} died), "
        f"restarts {stats.restarts}, healthy {stats.healthy_replicas}/{stats.total_replicas}",
        f"  service request_rate {stats.request_rate:,.0f}/s: requests of the last 60 s over "
        f"min(60 s, uptime {stats.uptime:.1f} s), start-up ({up:.1f} s) included; about "
        f"{callers.ok / seconds:,.0f}/s over the {seconds:.0f} s of traffic",
        "  per replica (batches):",
    ]
    for r in stats.replicas:
        lines.append(
            f"    [{r.idx}] {r.state.name:8s} restarts {r.restarts}  batches {r.total_requests:,} "
            f"(ok {r.successful_requests:,}, failed {r.failed_requests})  "
            f"p50 {r.p50_latency * 1e3:.2f} ms  p99 {r.p99_latency * 1e3:.2f} ms"
        )
    for line in lines:
        _say(console, line, "bold" if line == "summary" else "")


BACKEND = "asyncio"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--mesh", choices=["monarch", "fake"], default="monarch")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--callers", type=int, default=64)
    args = parser.parse_args()
    BACKEND = args.backend
    sys.exit(anyio.run(main, args.mesh, args.seconds, args.callers, backend=args.backend))
