"""The harness behind the state machines: two services in a blocking portal, a model
of what every request may end with, and the invariants of the request-semantics
table (docs/user_guide.md) and the metrics.

Hypothesis drives the machine from the main thread; every service call runs in the
portal's event loop thread (asyncio or trio). Methods named ``a_*`` are coroutines and
``l_*`` plain functions; both run in the loop thread (through ``portal.call``), so they
see the services between two scheduling points, never half-way through a step.

Service ``A`` takes the faults; service ``B`` never does and sits beside it, so that a
session of one service steering the other shows up.

Checked as each request ends (``judge``):

* it ended exactly once, with its result, the endpoint's own exception (``UserError``
  of the right request, only when asked for), or ``ReplicaDiedError`` (only after a
  death the test caused); never with another error and never past ``CALL_BOUND``;
* its result is the one the ledger says its last execution produced (no crossed
  results, no exception returned as a value);
* it was executed more than once only if every earlier execution was on an incarnation
  that died (retried after a death), and an ``idempotent=False`` request at most once;
* a session's results come from one live incarnation at a time (affinity), and its
  per-session counter on that incarnation counts up without repeats;
* its waits for a replica, added up over every send (its time less the time its
  executions ran, as the ledger measured them), stay within ``request_timeout`` plus
  what noticing each death takes (``WAIT_BOUND``).

Checked after every step (``l_check``): metrics agree with the model (successful and
failed counts within what is in flight, ``total == successful + failed``, monotonic
counters, restarts equal to spawn attempts after the first, no more deaths than
injected kills, retries and session migrations at least what the ledger shows, active
sessions and scaling events as issued, every replica's ``assigned_sessions`` equal to
the open sessions whose last execution ran there, give or take the sessions with a
request in flight and those whose incarnation was killed, which leave it once the
service learns of the death). At quiescence (``drain``) the bounds close: no active or queued
requests left, counts exact but for cancelled callers.

The rule ``queue_in_order`` (``a_queue_in_order``) fills every slot of A, queues
requests one by one and frees the slots: the queued requests must start in the order
they queued (waiters of equal standing are served first come, first served).
At teardown: every request ended, nothing left running in the event loop.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import attrs

from forge_sc import ReplicaState, Service, open_service
from forge_sc.errors import ReplicaDiedError, ServiceClosedError, ServiceError
from forge_sc.testing import running_tasks

from ._actors import Abort, Ledger, LedgerMesh, UserError, Worker

__all__ = ["CALL_BOUND", "CONFIG", "Call", "Harness"]

#: Service configuration: fast health checks and recovery so that steps stay short;
#: ``request_timeout`` ends every wait, well above what any wait needs here.
CONFIG: dict[str, Any] = dict(
    health_poll_rate=0.01,
    health_timeout=0.25,
    replica_max_concurrent_requests=2,
    request_timeout=3.0,
    max_attempts=3,
    max_restarts=20,
    restart_window=0.25,
    restart_backoff=0.02,
    graceful_shutdown_timeout=2.0,
)
#: No request may take longer than this (it would be a hang).
CALL_BOUND = 5.0
#: The harness keeps at most this many background requests in flight.
MAX_BACKGROUND = 12
#: Spawning takes this long on the FakeMesh (so a respawn is never instantaneous).
SPAWN_DELAY = 0.01
#: The longest a request may wait for replicas, all its sends together:
#: ``request_timeout``, plus, per send, what noticing a death may take (a hung
#: replica: ``health_timeout`` and a poll period; a slowed one: its delay), plus
#: scheduling margin. Below CALL_BOUND, so a request that waited past
#: ``request_timeout`` and was then served is caught.
WAIT_BOUND = (
    CONFIG["request_timeout"]
    + CONFIG["max_attempts"] * (CONFIG["health_timeout"] + 2 * CONFIG["health_poll_rate"] + 0.05)
    + 0.25
)

BATCH_TIMEOUT = 0.005  # Worker.batched's

#: The stall watcher's period, and the pause of the event loop from which a replica's
#: death is excused from "nothing killed it" (half of health_timeout: a ping started
#: just before such a pause can end past its deadline).
STALL_TICK = 0.005
STALL_EXCUSES = CONFIG["health_timeout"] / 2

HEALTHY = ReplicaState.HEALTHY
DEAD_STATES = (ReplicaState.FAILED, ReplicaState.RECOVERING)
FANOUT_KINDS = ("fanout", "bfanout")


@attrs.define(eq=False)
class Call:
    """One request the test issued, and how it ended."""

    kind: str  # work | once | batched | step | fanout | bfanout
    svc: str  # "A" or "B"
    rid: str
    fail: bool = False
    sid: str | None = None
    #: The incarnations the result may come from (None: any).
    allowed: frozenset[int] | None = None
    #: fan-outs: the incarnations healthy when it started
    targets: frozenset[int] = frozenset()
    ended: int = 0
    outcome: str = ""  # ok | error | hung | cancelled
    began: float = 0.0  # when the request was issued, ended: when it ended
    finished: float = 0.0
    value: Any = None
    error: BaseException | None = None


@attrs.define
class Model:
    """What the test expects of one service's metrics."""

    ok: int = 0  # requests that ended with a result (a fan-out: one per replica answered)
    failed: int = 0  # requests that ended with an exception
    cancelled: int = 0  # requests whose caller the test cancelled
    slack: int = 0  # fan-out requests to replicas that died (counted failed, or not)
    sessions: int = 0  # sessions started and not terminated
    scaling_events: int = 0
    replicas: int = 0
    last: Any = None  # the previous statistics() snapshot


@attrs.define
class Session:
    """The results one session got: (token, n) where n is its counter on token."""

    svc: str = "A"
    results: list[tuple[int, int | None]] = attrs.field(factory=list)
    open: bool = True


async def wait_until(cond: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
    """Bounded wait for a condition no event announces; True if it came true."""
    with anyio.move_on_after(timeout):
        while not cond():  # noqa: ASYNC110 - a bounded wait-for-condition
            await anyio.sleep(0.001)
        return True
    return False


class Harness:
    """Two services (A takes faults, B does not) in a blocking portal."""

    def __init__(self, backend: str, replicas: int, seed: int) -> None:
        self.backend = backend
        self.violations: list[str] = []
        self.steps: list[str] = []  # the rules run so far (for failures Hypothesis cannot replay)
        self.calls: list[Call] = []
        self.inflight: set[Call] = set()
        self.killed: set[int] = set()  # tokens of incarnations the test crashed or hung
        self.retiring: set[int] = set()  # indices being (or already) removed by scale_to
        self.scaled_down = False
        self.all_idx: set[int] = set(range(replicas))
        self.next_idx = replicas
        self.cancelled_batched: list[str] = []
        self.cancelled_runs: dict[str, int] = {}  # rid -> executions when cancelled
        self.sessions: dict[str, Session] = {}
        self.kind_of: dict[str, str] = {}  # rid -> kind of its request
        self._rids = itertools.count()
        self.ledger = {"A": Ledger(), "B": Ledger()}
        self.model = {"A": Model(replicas=replicas), "B": Model(replicas=2)}
        self._exits: list[Any] = []
        self.stalls: list[float] = []  # pauses of the event loop, seconds (_watch_stalls)
        self._watching = True
        # Real time and a short health_timeout: a pause of the event loop longer than
        # it makes a healthy replica look dead. Python's cyclic GC pauses every thread
        # for a time that grows with the heap (Hypothesis's grows over a run: pauses of
        # 100-180 ms were measured late in a deep run), so it is off while the services
        # run and back on between examples (close()).
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self._portal_cm = anyio.from_thread.start_blocking_portal(backend)
        self.portal = self._portal_cm.__enter__()
        try:
            self.tasks_before = self.portal.call(running_tasks)
            self.mesh = {
                "A": LedgerMesh(
                    self.ledger["A"],
                    seed=seed,
                    spawn_delay=SPAWN_DELAY,
                ),
                "B": LedgerMesh(self.ledger["B"], seed=seed + 1, spawn_delay=SPAWN_DELAY),
            }
            self.svc: dict[str, Service] = {}
            for name, n in (("A", replicas), ("B", 2)):
                scope = self.portal.call(self._open, name, n)
                cm = self.portal.wrap_async_context_manager(scope)
                self.svc[name] = cm.__enter__()
                self._exits.append(cm)
            tg_cm = self.portal.wrap_async_context_manager(
                self.portal.call(anyio.create_task_group)
            )
            self.tg: anyio.abc.TaskGroup = tg_cm.__enter__()
            self._exits.append(tg_cm)
            self.portal.call(self._start_watching)
        except BaseException:
            self._shutdown_quietly()
            raise

    def _open(self, name: str, n: int) -> Any:
        return open_service(
            Worker, ledger=self.ledger[name], num_replicas=n, mesh=self.mesh[name], **CONFIG
        )

    async def _start_watching(self) -> None:
        self.tg.start_soon(self._watch_stalls)

    async def _watch_stalls(self) -> None:
        """Record every pause of the event loop long enough to make a healthy replica's
        ping time out (the probe runs in real time): the invariant that no replica dies
        unless the test killed it holds only while the loop runs. With both cores busy,
        pauses of 0.3 s and more were seen (the whole process not scheduled)."""
        while self._watching:  # ends within a tick of _stop_watching
            before = anyio.current_time()
            await anyio.sleep(STALL_TICK)
            gap = anyio.current_time() - before - STALL_TICK
            if gap >= STALL_EXCUSES:
                self.stalls.append(gap)

    def _stop_watching(self) -> None:
        self._watching = False

    def _shutdown_quietly(self) -> None:
        self._stop_watching()
        for cm in reversed(self._exits):
            try:
                cm.__exit__(None, None, None)
            except BaseException as exc:  # report, but keep closing the rest
                self.violations.append(f"closing raised {exc!r}")
        self._exits.clear()
        self._portal_cm.__exit__(None, None, None)
        self._restore_gc()

    def _restore_gc(self) -> None:
        if self._gc_was_enabled:
            gc.enable()

    # ------------------------------------------------------------------ helpers

    @property
    def A(self) -> Service:
        return self.svc["A"]

    @property
    def B(self) -> Service:
        return self.svc["B"]

    def rid(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._rids)}"

    def violate(self, msg: str) -> None:
        self.violations.append(msg)

    def idx_list(self) -> list[int]:
        return [r.idx for r in self.A.replicas]

    def pick(self, i: int) -> int:
        idx = self.idx_list()
        return idx[i % len(idx)]

    def current_token(self, name: str, idx: int) -> int | None:
        try:
            return int(self.mesh[name].actor(idx).token)
        except KeyError:
            return None

    def replica(self, name: str, idx: int) -> Any:
        for r in self.svc[name].replicas:
            if r.idx == idx:
                return r
        return None

    def died(self, name: str, token: int) -> bool:
        """The incarnation ``token`` is no longer serving because it died (or was
        replaced after dying)."""
        idx = self.ledger[name].idx_of.get(token)
        if idx is None:
            return True
        r = self.replica(name, idx)
        if r is None:
            return True  # removed by scale_to
        return self.current_token(name, idx) != token or r.state in DEAD_STATES

    def gone(self, name: str, token: int) -> bool:
        """``token`` cannot serve a session any more: it died, was killed by the test
        (a hung incarnation is still HEALTHY until the health check notices), or its
        replica is being removed by scale_to."""
        if name == "A" and token in self.killed:
            return True
        idx = self.ledger[name].idx_of.get(token)
        if name == "A" and idx in self.retiring:
            return True
        return self.died(name, token)

    def disrupted(self, name: str) -> bool:
        """Whether the test did anything that may kill a request's replica, or the
        event loop paused long enough for the health probe to (see _watch_stalls)."""
        return (name == "A" and (bool(self.killed) or self.scaled_down)) or bool(self.stalls)

    def weight(self, name: str) -> int:
        """Upper bound of the requests in flight, as the metrics count them."""
        n = 0
        for c in self.inflight:
            if c.svc == name:
                n += len(self.svc[name].replicas) + 1 if c.kind in FANOUT_KINDS else 1
        return n

    # --------------------------------------------------------------- requests

    async def track(self, call: Call, fn: Callable[[], Awaitable[Any]]) -> None:
        """Run one request, bounded by CALL_BOUND, and judge how it ended. A
        cancellation from outside (the test cancelling the caller) passes through."""
        self.calls.append(call)
        self.kind_of[call.rid] = call.kind
        self.inflight.add(call)
        call.began = anyio.current_time()
        try:
            with anyio.move_on_after(CALL_BOUND) as bound:
                try:
                    value = await fn()
                except Exception as exc:
                    self.ended(call, "error", error=exc)
                else:
                    self.ended(call, "ok", value=value)
            if bound.cancelled_caught:
                self.ended(call, "hung")
        finally:
            self.inflight.discard(call)

    def ended(self, call: Call, outcome: str, *, value: Any = None, error: Any = None) -> None:
        call.finished = anyio.current_time()
        call.ended += 1
        if call.ended > 1:
            self.violate(f"{call.kind} {call.rid} ended twice ({call.outcome}, then {outcome})")
            return
        call.outcome, call.value, call.error = outcome, value, error
        self.judge(call)

    def judge(self, c: Call) -> None:
        """Is this ending one that the request-semantics table allows? Update the
        metrics model."""
        m = self.model[c.svc]
        led = self.ledger[c.svc]
        where = f"{c.svc}.{c.kind}({c.rid})"
        if c.outcome == "hung":
            self.violate(f"{where} did not end within {CALL_BOUND}s (hung)")
            m.slack += 1
            return
        if c.kind not in FANOUT_KINDS:
            ran = led.ran.get(c.rid, 0.0)
            waited = c.finished - c.began - ran
            if waited > WAIT_BOUND:
                self.violate(
                    f"{where} waited {waited:.2f}s for replicas over its sends (it took "
                    f"{c.finished - c.began:.2f}s, its executions {ran:.2f}s): more than "
                    f"request_timeout={CONFIG['request_timeout']}s allows ({WAIT_BOUND:.2f}s "
                    "with death detection)"
                )
        if c.outcome == "error":
            e = c.error
            m.failed += 1
            if type(e) is UserError and c.fail and e.rid == c.rid:
                token = led.starts[c.rid][-1]
                self._still_serving(c.svc, token, f"{where} raised the endpoint's own error")
            elif isinstance(e, ReplicaDiedError) and self.disrupted(c.svc):
                if c.kind in FANOUT_KINDS:
                    m.slack += len(c.targets)
                else:
                    for t in led.starts.get(c.rid, []):
                        if not self.gone(c.svc, t):
                            self.violate(
                                f"{where}: ReplicaDiedError but incarnation {t} that ran it "
                                "is alive"
                            )
            else:
                self.violate(f"{where} ended with a disallowed error: {e!r}")
            if c.kind not in FANOUT_KINDS:
                self._check_executions(c)
            return
        # a result
        if c.kind in FANOUT_KINDS:
            self._judge_fanout(c)
            return
        if c.fail:
            self.violate(f"{where} returned {c.value!r} but its endpoint raises")
        m.ok += 1
        expect_len = 3 if c.kind == "step" else 2
        v = c.value
        if not (isinstance(v, tuple) and len(v) == expect_len and v[1] == c.rid):
            self.violate(f"{where} returned {v!r}, not its own result")
            return
        token = v[0]
        starts = led.starts.get(c.rid, [])
        if not starts or starts[-1] != token or token not in led.finishes.get(c.rid, []):
            self.violate(
                f"{where} returned the result of incarnation {token}, but the ledger says "
                f"it was started on {starts} and finished on {led.finishes.get(c.rid)}"
            )
        if c.allowed is not None and token not in c.allowed:
            self.violate(
                f"{where} ran on incarnation {token} (replica {led.idx_of.get(token)}), "
                f"not on one of {sorted(c.allowed)} that were healthy when its session's "
                "replica died: it waited for the dead replica instead of moving"
            )
        self._check_executions(c)
        if c.sid is not None:
            n = v[2] if c.kind == "step" else None
            self._session_result(c, token, n)

    def _still_serving(self, name: str, token: int, why: str) -> None:
        """``token`` ran a request that ended without a replica death: unless the test
        killed it or scale_to removed it, it must still be the replica's healthy one."""
        if self.stalls or (
            name == "A"
            and (token in self.killed or self.ledger[name].idx_of[token] in self.retiring)
        ):
            return
        if self.died(name, token):
            self.violate(f"{why}, and its replica (incarnation {token}) was marked dead")

    def _check_executions(self, c: Call) -> None:
        starts = self.ledger[c.svc].starts.get(c.rid, [])
        if c.kind == "once" and len(starts) > 1:
            self.violate(f"{c.svc}.once({c.rid}) is idempotent=False but was executed on {starts}")
        for t in starts[:-1]:
            if not self.gone(c.svc, t):
                self.violate(
                    f"{c.svc}.{c.kind}({c.rid}) executed again although incarnation {t} that "
                    f"ran it is alive (executions: {starts})"
                )

    def _session_result(self, c: Call, token: int, n: int | None) -> None:
        assert c.sid is not None
        sess = self.sessions.setdefault(c.sid, Session(c.svc))
        if n is not None and (token, n) in sess.results:
            self.violate(f"session {c.sid}: counter {n} on incarnation {token} seen twice")
        sess.results.append((token, n))
        live = {t for t, _ in sess.results if not self.gone(c.svc, t)}
        if len(live) > 1:
            self.violate(
                f"session {c.sid} got results from live incarnations {sorted(live)}: "
                "affinity broken"
            )

    def _judge_fanout(self, c: Call) -> None:
        m = self.model[c.svc]
        led = self.ledger[c.svc]
        v = c.value
        tokens = v
        if c.kind == "bfanout":
            if not (
                isinstance(v, list)
                and all(isinstance(x, tuple) and len(x) == 2 and x[1] == c.rid for x in v)
            ):
                self.violate(f"{c.svc}.batched.fanout returned {v!r}: not its own results")
                return
            tokens = [x[0] for x in v]
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            self.violate(f"{c.svc}.{c.kind} returned {v!r}, not one token per replica")
            return
        m.ok += len(tokens)
        m.slack += max(len(c.targets) - len(tokens), 0)
        order = [led.idx_of.get(t, -1) for t in tokens]
        if order != sorted(set(order)):
            self.violate(f"{c.svc}.{c.kind}: results not in replica-index order: {order}")
        if c.targets:
            extra = set(tokens) - c.targets
            missing = {t for t in c.targets if not self.gone(c.svc, t)} - set(tokens)
            if extra or missing:
                self.violate(
                    f"{c.svc}.{c.kind}: answered by {sorted(tokens)}, healthy at its start "
                    f"{sorted(c.targets)} (missing live {sorted(missing)}, extra {sorted(extra)})"
                )

    def launch(self, call: Call, fn: Callable[[], Awaitable[Any]]) -> None:
        """Start a request in the background (loop thread)."""
        self.tg.start_soon(self.track, call, fn)

    async def room(self) -> None:
        """Backpressure of the harness itself: keep the background load bounded."""
        if not await wait_until(lambda: len(self.inflight) < MAX_BACKGROUND, CALL_BOUND + 1):
            self.violate("background requests did not finish")

    # ------------------------------------------------------------- rule bodies

    async def a_route(self, n: int, delay: float, fails: list[bool]) -> None:
        await self.room()
        for i in range(n):
            rid, fail = self.rid(), i < len(fails) and fails[i]
            self.launch(
                Call("work", "A", rid, fail=fail),
                lambda rid=rid, fail=fail: self.A.work.route(rid, delay, fail),
            )

    async def a_once(self, n: int, delay: float) -> None:
        await self.room()
        for _ in range(n):
            rid = self.rid()
            self.launch(
                Call("once", "A", rid),
                lambda rid=rid: self.A.once.route(rid, delay),
            )

    async def a_batched(self, delays: list[float]) -> None:
        await self.room()
        for d in delays:
            rid = self.rid()
            self.launch(
                Call("batched", "A", rid),
                lambda rid=rid, d=d: self.A.batched.route(rid, d),
            )

    async def a_fanout(self, batched: bool) -> None:
        rid = self.rid("fan")
        targets = frozenset(
            t
            for r in self.A.replicas
            if r.state is HEALTHY and (t := self.current_token("A", r.idx)) is not None
        )
        if batched:
            call = Call("bfanout", "A", rid, targets=targets)
            await self.track(call, lambda: self.A.batched.fanout(rid, 0.0))
        else:
            call = Call("fanout", "A", rid, targets=targets)
            await self.track(call, self.A.snapshot.fanout)

    async def a_start_session(self) -> str:
        sid = await self.A.start_session()
        self.sessions[sid] = Session("A")
        self.model["A"].sessions += 1
        return sid

    async def a_session_calls(self, sid: str, n: int, delay: float) -> None:
        await self.room()
        for _ in range(n):
            rid = self.rid("s")
            self.launch(
                Call("step", "A", rid, sid=sid),
                lambda rid=rid: self.A.step.route(sid, rid, delay, sess_id=sid),
            )

    async def a_terminate(self, sid: str) -> None:
        # Let the session's own requests finish first: a session id is not to be used
        # after it was terminated.
        ok = await wait_until(lambda: not any(c.sid == sid for c in self.inflight), CALL_BOUND + 1)
        if not ok:
            self.violate(f"requests of session {sid} did not finish")
        await self.A.terminate_session(sid)
        self.sessions[sid].open = False
        self.model["A"].sessions -= 1

    async def a_session_block(self, n: int, nest: bool, batched: bool) -> None:
        """``async with A.session()`` around A's calls, with B used inside: B must not
        see A's session (and its own session, if nested, must stay its own)."""
        async with self.A.session() as sid:
            self.sessions[sid] = Session("A")
            for _ in range(n):
                rid = self.rid("s")
                await self.track(
                    Call("step", "A", rid, sid=sid),
                    lambda rid=rid: self.A.step.route(sid, rid),
                )
            if batched:  # inside a session: a batch of one, to the session's replica
                rid = self.rid("s")
                await self.track(
                    Call("batched", "A", rid, sid=sid),
                    lambda rid=rid: self.A.batched.route(rid, 0.0),
                )
            if nest:
                async with self.B.session() as bsid:
                    self.sessions[bsid] = Session("B")
                    for _ in range(2):
                        rid = self.rid("b")
                        await self.track(
                            Call("step", "B", rid, sid=bsid),
                            lambda rid=rid: self.B.step.route(bsid, rid),
                        )
                    rid = self.rid("s")
                    await self.track(
                        Call("step", "A", rid, sid=sid),
                        lambda rid=rid: self.A.step.route(sid, rid),
                    )
                    self._sessions_are(1, 1, "inside A.session() and B.session()")
                self.sessions[bsid].open = False
            for _ in range(2):
                rid = self.rid("b")
                await self.track(
                    Call("work", "B", rid),
                    lambda rid=rid: self.B.work.route(rid),
                )
            self._sessions_are(1, 0, "inside A.session() only")
        self.sessions[sid].open = False
        self._sessions_are(0, 0, "after A.session()")

    def stats(self, name: str) -> Any:
        return self.svc[name].statistics()

    def _sessions_are(self, a: int, b: int, when: str) -> None:
        sa, sb = self.stats("A"), self.stats("B")
        got_a = sa.active_sessions - self.model["A"].sessions
        got_b = sb.active_sessions - self.model["B"].sessions
        if (got_a, got_b) != (a, b):
            self.violate(
                f"{when}: block sessions active on A, B = {got_a}, {got_b}; expected {a}, {b} "
                "(a session of one service steered the other)"
            )

    async def a_cancel_midflight(self) -> None:
        """Cancel a caller while its request runs: the replica must not be marked failed,
        and the request must not come back."""
        rid = self.rid("c")
        call = Call("work", "A", rid)
        scope = anyio.CancelScope()

        async def caller() -> None:
            with scope:
                await self.track(call, lambda: self.A.work.route(rid, 60.0))

        led = self.ledger["A"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            started = await wait_until(lambda: rid in led.starts or call.ended > 0, CALL_BOUND)
            scope.cancel()
        if call.ended:
            return  # ended before the cancellation (judged as any other request)
        if not started:
            self.violate(f"A.work({rid}) never started running")
        call.outcome = "cancelled"
        self.model["A"].cancelled += 1
        if started:
            token = led.starts[rid][-1]
            self._still_serving("A", token, f"the caller of A.work({rid}) was cancelled")
            self.cancelled_runs[rid] = len(led.starts[rid])

    async def a_cancel_batched(self) -> None:
        """A batched caller cancelled before its batch is sent leaves the batch: its
        request never runs."""
        if not await wait_until(
            lambda: not any(c.kind == "batched" for c in self.inflight), CALL_BOUND + 1
        ):
            self.violate("batched requests did not finish")
            return
        rid = self.rid("cb")
        call = Call("batched", "A", rid)
        with anyio.move_on_after(BATCH_TIMEOUT / 5):
            await self.track(call, lambda: self.A.batched.route(rid, 0.0))
        if not call.ended:
            call.outcome = "cancelled"
            self.model["A"].cancelled += 1
            self.cancelled_batched.append(rid)

    async def a_crash_while_running(self, kind: str, hang: bool, n: int) -> None:
        """Start requests, then crash (or hang) the replica that runs one of them."""
        await self.room()
        rids = [self.rid("k") for _ in range(n)]
        calls = []
        for rid in rids:
            call = Call(kind, "A", rid)
            calls.append(call)
            if kind == "work":
                self.launch(call, lambda rid=rid: self.A.work.route(rid, 0.05))
            elif kind == "once":
                self.launch(call, lambda rid=rid: self.A.once.route(rid, 0.05))
            else:
                self.launch(call, lambda rid=rid: self.A.batched.route(rid, 0.05))
        led = self.ledger["A"]
        await wait_until(
            lambda: any(r in led.starts for r in rids) or all(c.ended for c in calls), CALL_BOUND
        )
        for rid in rids:
            if rid in led.starts:
                token = led.starts[rid][-1]
                self.kill(led.idx_of[token], hang)
                return

    async def a_session_queue_then_kill(
        self, sid: str, extra: int, hang: bool, terminate: bool = False
    ) -> None:
        """Fill the session's replica and queue more session requests on it, then crash
        (or hang) it: the queued requests move at once to a replica that is healthy,
        never wait for the dead one to come back. With ``terminate``, the session is
        terminated before the kill: its requests then finish without it, and it
        stays terminated (never re-created by the requests that move)."""
        ok = await wait_until(self._all_fresh, CALL_BOUND)
        if not ok:
            self.violate(
                "replicas did not all recover within "
                f"{CALL_BOUND}s: {[(r.idx, r.state.name) for r in self.A.replicas]}"
            )
            return
        await self.room()
        if not await wait_until(
            lambda: not any(c.sid == sid for c in self.inflight), CALL_BOUND + 1
        ):
            self.violate(f"requests of session {sid} did not finish")
            return
        first = Call("step", "A", self.rid("q"), sid=sid)
        await self.track(first, lambda: self.A.step.route(sid, first.rid, sess_id=sid))
        if first.outcome != "ok" or len(self.A.replicas) < 2 or not self._all_fresh():
            return
        token = first.value[0]
        idx = self.ledger["A"].idx_of[token]
        cap = CONFIG["replica_max_concurrent_requests"]
        calls = []
        for _ in range(cap + extra):
            rid = self.rid("q")
            call = Call("step", "A", rid, sid=sid)
            calls.append(call)
            self.launch(
                call,
                lambda rid=rid: self.A.step.route(sid, rid, 0.1, sess_id=sid),
            )
        r = self.replica("A", idx)
        # Each request placed (run to its first suspension) before the termination:
        # one not started yet would come later with a terminated id, as a new request,
        # and that starts a new session (TorchForge's rule for an unknown id).
        if not await wait_until(lambda: all(c.began for c in calls), CALL_BOUND):
            self.violate("requests launched by the test did not start")
            return
        await wait_until(lambda: r.queue_depth >= 1, 1.0)
        if not self._all_fresh():
            return
        others = frozenset(
            t for i in self.idx_list() if i != idx and (t := self.current_token("A", i))
        )
        for call in calls:
            if not call.ended:
                call.allowed = others
        if terminate:
            await self.A.terminate_session(sid)
            self.sessions[sid].open = False
            self.model["A"].sessions -= 1
            for call in calls:
                if not call.ended:  # no longer a session request: any replica will do
                    call.sid = None
                    call.allowed = None
        self.kill(idx, hang)
        # Wait for them here, so that no later fault moves them again.
        if not await wait_until(lambda: all(c.ended for c in calls), CALL_BOUND + 1):
            self.violate("session requests queued on a crashed replica did not finish")

    async def a_base_exception(self, batched: bool, n: int) -> None:
        """Endpoints raising a BaseException that is not an Exception, alone (nothing
        else in flight): each caller ends, within the bound, with that exception or a
        forge_sc error caused by it, and is counted as a failed request. A replica the
        call killed (a backend may treat such a call as a process death) counts as
        killed by the test."""
        if not await wait_until(lambda: not self.inflight, CALL_BOUND + 1):
            self.violate("background requests did not finish")
            return
        rids = [self.rid("x") for _ in range(n if batched else 1)]
        outcomes: dict[str, BaseException | None] = {}

        async def one(rid: str) -> None:
            with anyio.move_on_after(CALL_BOUND):
                try:
                    if batched:
                        await self.A.babort.route(rid)
                    else:
                        await self.A.abort.route(rid)
                    outcomes[rid] = None
                except (Exception, Abort) as exc:
                    outcomes[rid] = exc

        async with anyio.create_task_group() as tg:
            for rid in rids:
                tg.start_soon(one, rid)
        m = self.model["A"]
        for rid in rids:
            if rid not in outcomes:
                self.violate(f"A.{'b' if batched else ''}abort({rid}) did not end (hung)")
                m.slack += 1
                continue
            exc = outcomes[rid]
            m.failed += 1
            if not _carries(exc, Abort):
                self.violate(f"A.abort({rid}) ended with {exc!r}, not the endpoint's Abort")
        # A backend that treats such a call as the death of its process has marked
        # the replica dead by the time the caller got the error.
        led = self.ledger["A"]
        tokens = {t for rid in rids for t in led.starts.get(rid, [])}
        self.killed.update(t for t in tokens if self.died("A", t))

    async def a_orphan_batch(self) -> None:
        """A batched caller cancelled while its batch waits for a slot (every replica
        busy with held requests, none freed until after the cancel): the batch leaves
        the queue and never runs."""
        ok = await wait_until(self._all_fresh, CALL_BOUND)
        if not ok or not await wait_until(lambda: not self.inflight, CALL_BOUND + 1):
            return
        led = self.ledger["A"]
        cap = CONFIG["replica_max_concurrent_requests"]
        holders: list[str] = []
        try:
            for _ in range(cap * len(self.A.replicas)):
                rid = self.rid("busy")
                led.gates[rid] = anyio.Event()
                holders.append(rid)
                self.launch(Call("held", "A", rid), lambda rid=rid: self.A.held.route(rid))
            full = cap * len(self.A.replicas)
            if not await wait_until(lambda: self.stats("A").active_requests >= full, 1.0):
                return  # the replicas did not fill up (a fault meanwhile): nothing to test
            rid = self.rid("ob")
            call = Call("batched", "A", rid)
            scope = anyio.CancelScope()

            async def caller() -> None:
                with scope:
                    await self.track(call, lambda: self.A.batched.route(rid, 0.0))

            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await wait_until(lambda: self.stats("A").queue_depth >= 1 or call.ended > 0, 1.0)
                # Queued now, with every slot held, means not sent. A replica that died
                # meanwhile (a stall, see _watch_stalls) may have let it through.
                orphaned = (
                    self.stats("A").queue_depth >= 1 and rid not in led.starts and self._all_fresh()
                )
                scope.cancel()
            if not call.ended:
                call.outcome = "cancelled"
                self.model["A"].cancelled += 1
                if orphaned:
                    self.cancelled_batched.append(rid)
        finally:
            for h in holders:
                led.gates[h].set()

    def _all_fresh(self) -> bool:
        for r in self.A.replicas:
            t = self.current_token("A", r.idx)
            if r.state is not HEALTHY or t is None or t in self.killed:
                return False
        return True

    # ------------------------------------------------------------------ faults

    def kill(self, idx: int, hang: bool) -> None:
        token = self.current_token("A", idx)
        if token is not None:
            self.killed.add(token)
        if hang:
            self.mesh["A"].hang(idx)
        else:
            self.mesh["A"].crash(idx)

    def l_crash(self, i: int) -> None:
        self.kill(self.pick(i), hang=False)

    def l_hang(self, i: int) -> None:
        self.kill(self.pick(i), hang=True)

    def l_slow(self, i: int, seconds: float) -> None:
        self.mesh["A"].slow(self.pick(i), seconds)

    def l_fail_spawns(self, i: int, count: int) -> None:
        idx = [*self.idx_list(), self.next_idx]
        self.mesh["A"].fail_spawns(idx[i % len(idx)], count)

    async def a_scale_to(self, n: int) -> None:
        m = self.model["A"]
        current = self.idx_list()
        if n != len(current):
            m.scaling_events += 1
        if n < len(current):
            self.scaled_down = True
            self.retiring.update(current[n:])
        with anyio.fail_after(CALL_BOUND * 2):
            await self.A.scale_to(n)
        m.replicas = n
        if n > len(current):
            self.all_idx.update(range(self.next_idx, self.next_idx + n - len(current)))
            self.next_idx += n - len(current)
        if self.idx_list() != sorted(self.idx_list()) or len(self.idx_list()) != n:
            self.violate(f"scale_to({n}) left replicas {self.idx_list()}")

    # -------------------------------------------------------------- invariants

    def l_check(self, quiet: bool = False) -> None:
        """The invariants that hold after every step (``quiet``: nothing in flight)."""
        for name in ("A", "B"):
            self._check_service(name, quiet)
        led = self.ledger["A"]
        for rid in self.cancelled_batched:
            if rid in led.starts:
                self.violate(f"A.batched({rid}) ran although its caller left before the send")
        for rid, n in self.cancelled_runs.items():
            if len(led.starts[rid]) != n:
                self.violate(f"A.work({rid}) ran again after its caller was cancelled")
        if quiet:
            for sid, sess in self.sessions.items():
                if not sess.open:
                    continue
                name = sess.svc
                by_token: dict[int, list[int]] = {}
                for t, n in sess.results:
                    if n is not None and not self.gone(name, t):
                        by_token.setdefault(t, []).append(n)
                for t, ns in by_token.items():
                    if sorted(ns) != list(range(1, len(ns) + 1)):
                        self.violate(
                            f"session {sid}: counts on live incarnation {t} are {sorted(ns)}"
                        )
        self.raise_violations()

    def raise_violations(self) -> None:
        if self.violations:
            # The steps are repeated here because a failure that depends on timing may
            # not replay, and then Hypothesis prints no falsifying example.
            raise AssertionError("\n".join([*self.violations, "steps:", *self.steps[-60:]]))

    def _check_service(self, name: str, quiet: bool) -> None:
        svc, m, mesh, led = self.svc[name], self.model[name], self.mesh[name], self.ledger[name]
        bad = self.violate
        w = self.weight(name)
        # Through the replica views (always available).
        if len(svc.replicas) != m.replicas:
            bad(f"{name}: {len(svc.replicas)} replicas, model {m.replicas}")
        active = sum(r.active_requests for r in svc.replicas)
        if active > w:
            bad(f"{name}: {active} active requests with {w} requests in flight")
        if quiet and (active or any(r.queue_depth for r in svc.replicas)):
            bad(
                f"{name}: nothing in flight, but active requests "
                f"{[(r.idx, r.active_requests, r.queue_depth) for r in svc.replicas]} "
                "(a slot or a queue entry leaked)"
            )
        # Restarts are the spawn attempts after each replica's first; no replica died
        # more often than the test killed it.
        for r in svc.replicas:
            if r.restarts != max(mesh.spawn_count(r.idx) - 1, 0):
                bad(
                    f"{name}: replica {r.idx} restarts {r.restarts}, "
                    f"spawns {mesh.spawn_count(r.idx)}"
                )
        for idx, tokens in led.incarnations.items():
            kills = sum(1 for t in tokens if name == "A" and t in self.killed)
            if len(tokens) - 1 > kills and not self.stalls:
                bad(
                    f"{name}: replica {idx} had {len(tokens)} incarnations but the test killed "
                    f"{kills}: a replica died that nothing killed"
                )
        s = self.stats(name)
        if s.total_requests != s.successful_requests + s.failed_requests:
            bad(f"{name}: total_requests {s.total_requests} != successful + failed")
        if not m.ok <= s.successful_requests <= m.ok + w + m.cancelled:
            bad(
                f"{name}: successful_requests {s.successful_requests}, model {m.ok} "
                f"(+{w} in flight, +{m.cancelled} cancelled)"
            )
        if not m.failed <= s.failed_requests <= m.failed + w + m.cancelled + m.slack:
            bad(
                f"{name}: failed_requests {s.failed_requests}, model {m.failed} "
                f"(+{w} in flight, +{m.cancelled} cancelled, +{m.slack} fan-out slots)"
            )
        if s.active_sessions != m.sessions:
            bad(f"{name}: active_sessions {s.active_sessions}, model {m.sessions}")
        self._check_session_counts(name, svc)
        if s.scaling_events != m.scaling_events:
            bad(f"{name}: scaling_events {s.scaling_events}, model {m.scaling_events}")
        if s.total_replicas != m.replicas:
            bad(f"{name}: total_replicas {s.total_replicas}, model {m.replicas}")
        if s.active_requests != active or (quiet and s.queue_depth):
            bad(
                f"{name}: active_requests {s.active_requests} (replicas say {active}), "
                f"queue_depth {s.queue_depth}"
            )
        last = m.last
        if last is not None:
            for field in (
                "total_requests",
                "successful_requests",
                "failed_requests",
                "retries",
                "restarts",
                "session_migrations",
                "scaling_events",
            ):
                if getattr(s, field) < getattr(last, field):
                    bad(f"{name}: {field} went down: {getattr(last, field)} -> {getattr(s, field)}")
        m.last = s
        indices = self.all_idx if name == "A" else {0, 1}
        spawned = sum(max(mesh.spawn_count(i) - 1, 0) for i in indices)
        if s.restarts != spawned:
            bad(f"{name}: restarts {s.restarts}, spawn attempts after the first {spawned}")
        # Retries and migrations: at least what the ledger shows; none without a death.
        reexec = sum(
            len(ts) - 1
            for rid, ts in led.starts.items()
            if self.kind_of.get(rid) not in ("batched", "bfanout")
        )
        if s.retries < reexec:
            bad(f"{name}: retries {s.retries}, but {reexec} re-executions in the ledger")
        moved = sum(
            len({t for t, _ in sess.results}) - 1
            for sess in self.sessions.values()
            if sess.results and sess.svc == name
        )
        if s.session_migrations < moved:
            bad(f"{name}: session_migrations {s.session_migrations}, sessions moved {moved} times")
        if not self.disrupted(name) and (s.retries or s.session_migrations):
            bad(
                f"{name}: retries {s.retries}, session_migrations {s.session_migrations} "
                "although no replica was killed or removed"
            )

    def _check_session_counts(self, name: str, svc: Service) -> None:
        """Every replica's ``assigned_sessions`` is the number of open sessions whose
        last execution ran there (a session is assigned before its request runs, and
        moves only for a request that then runs), give or take the open sessions with
        a request in flight (their assignment may be changing)."""
        led = self.ledger[name]
        sid_of = {c.rid: c.sid for c in self.calls if c.sid is not None and c.svc == name}
        last: dict[str, int] = {}
        for rid, token in led.order:
            sid = sid_of.get(rid)
            if sid is not None:
                last[sid] = token
        busy = {c.sid for c in self.inflight if c.sid is not None and c.svc == name}
        expected: dict[int, int] = {}
        # Sessions whose incarnation was killed: they leave it once the service
        # learns of the death (DESIGN §3), which may not have happened yet.
        leaving: dict[int, int] = {}
        unsure = 0
        for sid, sess in self.sessions.items():
            if sess.svc != name or not sess.open:
                continue
            if sid in busy:
                unsure += 1
            elif sid in last:
                idx = led.idx_of[last[sid]]
                into = leaving if self.gone(name, last[sid]) else expected
                into[idx] = into.get(idx, 0) + 1
        for r in svc.replicas:
            want = expected.get(r.idx, 0)
            if not want <= r.assigned_sessions <= want + leaving.get(r.idx, 0) + unsure:
                self.violate(
                    f"{name}: replica {r.idx} has assigned_sessions {r.assigned_sessions}, "
                    f"but {want} open session(s) last ran there (+{unsure} with requests "
                    "in flight): a session count leaked or went missing"
                )

    async def a_queue_in_order(self, k: int) -> None:
        """Fill every slot of A with held requests, queue ``k`` more (held too) one at
        a time, then free one slot at a time, each only once the previous one was
        taken: the queued requests must start in the order they queued (they all wait
        for the same thing, any free slot: waiters of equal standing)."""
        if not await wait_until(lambda: not self.inflight, CALL_BOUND + 1):
            self.violate("background requests did not finish")
            return
        if not self._all_fresh():
            return
        led = self.ledger["A"]
        cap = CONFIG["replica_max_concurrent_requests"]

        def hold(prefix: str) -> str:
            rid = self.rid(prefix)
            led.gates[rid] = anyio.Event()
            self.launch(Call("held", "A", rid), lambda: self.A.held.route(rid))
            return rid

        holders: list[str] = []
        queued: list[str] = []
        try:
            for _ in range(len(self.A.replicas) * cap):
                holders.append(hold("h"))
                if not await wait_until(lambda: holders[-1] in led.starts, 1.0):
                    return  # a replica went away meanwhile: no fixed scenario
            for n in range(1, k + 1):
                queued.append(hold("f"))
                if not await wait_until(
                    lambda n=n: self.A.statistics().queue_depth == n,  # type: ignore[misc]
                    1.0,
                ):
                    self.violate(f"request {queued[-1]} did not queue behind full replicas")
                    return
            order: list[str] = []  # the queued requests, in the order they started

            def one_more_started() -> bool:
                return any(r in led.starts and r not in order for r in queued)

            free = list(holders)  # requests holding a slot, to be freed one by one
            while len(order) < len(queued) and free and self._all_fresh():
                led.gates[free.pop(0)].set()
                if not await wait_until(one_more_started, 1.0):
                    self.violate("a slot was freed but no queued request took it")
                    return
                new = [r for r in queued if r in led.starts and r not in order]
                order += new
                free += new  # it holds its slot now; freed after those before it
            if self._all_fresh() and order != queued:
                self.violate(
                    f"requests queued in the order {queued} started in the order {order} "
                    "(the queue is not first come, first served)"
                )
        finally:
            for rid in [*holders, *queued]:
                led.gates[rid].set()
            if not await wait_until(lambda: not self.inflight, CALL_BOUND + 1):
                self.violate("held requests did not finish")

    async def a_drain(self) -> None:
        """Wait for every background request, then check the quiescent invariants."""
        if not await wait_until(lambda: not self.inflight, CALL_BOUND + 2):
            self.violate(f"{len(self.inflight)} requests still in flight after {CALL_BOUND}s")
        self.l_check(quiet=True)

    # ----------------------------------------------------------------- teardown

    def close(self) -> None:
        """Drain, close both services, and check that nothing is left running."""
        try:
            try:
                self.portal.call(self.a_drain)
            finally:
                self._stop_watching()
                for cm in reversed(self._exits):
                    try:
                        cm.__exit__(None, None, None)
                    except BaseException as exc:
                        self.violate(f"closing raised {exc!r}")
                self._exits.clear()
            for c in self.calls:
                if c.ended != 1 and c.outcome != "cancelled":
                    self.violate(f"{c.svc}.{c.kind}({c.rid}) ended {c.ended} times")
            self.portal.call(self.a_after_close)
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._restore_gc()
        self.raise_violations()

    async def a_after_close(self) -> None:
        for name, svc in self.svc.items():
            states = {r.state for r in svc.replicas}
            if not states <= {ReplicaState.STOPPED}:
                self.violate(f"{name}: replicas after close: {states}")
            try:
                await svc.work.route("late")
            except ServiceClosedError:
                pass
            except Exception as exc:
                self.violate(f"{name}: a request after close raised {exc!r}")
            else:
                self.violate(f"{name}: a request after close succeeded")
        before = self.tasks_before
        if not await wait_until(lambda: not (running_tasks() - before), 1.0):
            self.violate(f"tasks left running after close: {running_tasks() - before}")


def _carries(exc: BaseException | None, kind: type[BaseException]) -> bool:
    """``exc`` is ``kind``, or a forge_sc error whose cause chain holds one."""
    if isinstance(exc, kind):
        return True
    if not isinstance(exc, ServiceError):
        return False
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__
    return False
