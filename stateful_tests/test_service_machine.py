"""The stateful fault-injection suite: one Hypothesis state machine, run on asyncio and
on trio, interleaving requests, sessions, fan-outs, batches, caller cancellation,
scaling and injected faults against FakeMesh (see ``_harness.py`` for what is checked).

hypothesis-trio does not work with current Hypothesis, so the machine is a plain
``RuleBasedStateMachine`` that holds a blocking portal (``anyio.from_thread``) on the
backend under test; every rule runs its service calls in the portal's event loop.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from ._harness import Harness

DELAYS = st.sampled_from([0.0, 0.0, 0.002, 0.01, 0.03])
INDEX = st.integers(0, 7)  # taken modulo the current replica count


class ServiceMachine(RuleBasedStateMachine):
    backend = "asyncio"

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.h: Harness | None = None

    @property
    def harness(self) -> Harness:
        assert self.h is not None
        return self.h

    def call(self, fn: Any, *args: Any) -> Any:
        if fn.__name__ != "l_check":
            self.harness.steps.append(f"{fn.__name__}{args!r}")
        return self.harness.portal.call(fn, *args)

    @initialize(replicas=st.integers(2, 4), seed=st.integers(0, 2**16))
    def open_services(self, replicas: int, seed: int) -> None:
        self.h = Harness(self.backend, replicas, seed)

    def teardown(self) -> None:
        if self.h is not None:
            self.h.close()

    @invariant()
    def invariants_hold(self) -> None:
        if self.h is not None:
            self.call(self.h.l_check)

    # ------------------------------------------------------------- requests

    @rule(n=st.integers(1, 5), delay=DELAYS, fails=st.lists(st.booleans(), max_size=5))
    def route(self, n: int, delay: float, fails: list[bool]) -> None:
        self.call(self.harness.a_route, n, delay, fails)

    @rule(n=st.integers(1, 3), delay=DELAYS)
    def route_not_idempotent(self, n: int, delay: float) -> None:
        self.call(self.harness.a_once, n, delay)

    @rule(delays=st.lists(DELAYS, min_size=1, max_size=7))
    def batched(self, delays: list[float]) -> None:
        self.call(self.harness.a_batched, delays)

    @rule(batched=st.booleans())
    def fanout(self, batched: bool) -> None:
        self.call(self.harness.a_fanout, batched)

    @rule(target=sessions)
    def start_session(self) -> str:
        return str(self.call(self.harness.a_start_session))

    @rule(sid=sessions, n=st.integers(1, 3), delay=DELAYS)
    def route_in_session(self, sid: str, n: int, delay: float) -> None:
        self.call(self.harness.a_session_calls, sid, n, delay)

    @rule(sid=consumes(sessions))
    def terminate_session(self, sid: str) -> None:
        self.call(self.harness.a_terminate, sid)

    @rule(n=st.integers(1, 3), nest=st.booleans(), batched=st.booleans())
    def session_block_beside_other_service(self, n: int, nest: bool, batched: bool) -> None:
        self.call(self.harness.a_session_block, n, nest, batched)

    @rule()
    def cancel_caller_midflight(self) -> None:
        self.call(self.harness.a_cancel_midflight)

    @rule()
    def cancel_batched_caller(self) -> None:
        self.call(self.harness.a_cancel_batched)

    @rule(k=st.integers(2, 5))
    def queue_in_order(self, k: int) -> None:
        self.call(self.harness.a_queue_in_order, k)

    @rule()
    def drain(self) -> None:
        self.call(self.harness.a_drain)

    # --------------------------------------------------------------- faults

    @rule(i=INDEX)
    def crash(self, i: int) -> None:
        self.call(self.harness.l_crash, i)

    @rule(i=INDEX)
    def hang(self, i: int) -> None:
        self.call(self.harness.l_hang, i)

    @rule(i=INDEX, seconds=st.sampled_from([0.0, 0.005, 0.02]))
    def slow(self, i: int, seconds: float) -> None:
        self.call(self.harness.l_slow, i, seconds)

    @rule(i=INDEX, count=st.integers(1, 3))
    def fail_spawns(self, i: int, count: int) -> None:
        self.call(self.harness.l_fail_spawns, i, count)

    @rule(
        kind=st.sampled_from(["work", "once", "batched"]),
        hang=st.booleans(),
        n=st.integers(1, 4),
    )
    def kill_while_running(self, kind: str, hang: bool, n: int) -> None:
        self.call(self.harness.a_crash_while_running, kind, hang, n)

    @rule(sid=sessions, extra=st.integers(3, 5), hang=st.booleans())
    def kill_with_session_requests_queued(self, sid: str, extra: int, hang: bool) -> None:
        self.call(self.harness.a_session_queue_then_kill, sid, extra, hang)

    @rule(sid=consumes(sessions), extra=st.integers(3, 5), hang=st.booleans())
    def terminate_with_session_requests_queued(self, sid: str, extra: int, hang: bool) -> None:
        self.call(self.harness.a_session_queue_then_kill, sid, extra, hang, True)

    @rule(batched=st.booleans(), n=st.integers(1, 4))
    def endpoint_raises_base_exception(self, batched: bool, n: int) -> None:
        self.call(self.harness.a_base_exception, batched, n)

    @rule()
    def cancel_batched_caller_while_queued(self) -> None:
        self.call(self.harness.a_orphan_batch)

    @rule(n=st.integers(1, 4))
    def scale_to(self, n: int) -> None:
        self.call(self.harness.a_scale_to, n)


class AsyncioServiceMachine(ServiceMachine):
    backend = "asyncio"


class TrioServiceMachine(ServiceMachine):
    backend = "trio"


TestServiceOnAsyncio = AsyncioServiceMachine.TestCase
TestServiceOnTrio = TrioServiceMachine.TestCase
