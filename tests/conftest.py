"""Shared fixtures: every async test runs on asyncio and on trio, and every test has a
time bound.

Bounds, so that a hang fails instead of running forever:

* every async test body runs inside a cancel scope with a deadline on its event loop's
  clock (``ASYNC_TEST_BOUND``; ``MONARCH_TEST_BOUND`` for tests marked ``monarch``;
  ``VIRTUAL_TEST_BOUND`` virtual seconds under a trio ``MockClock``, where a hang jumps
  straight to the deadline). When it expires the test is cancelled (its ``finally``
  blocks and the services it opened close as usual) and fails with a message saying so;
* behind it, pytest-timeout (``timeout`` in pyproject.toml) bounds every test in real
  time, sync ones and the stateful suite included (``stateful_tests/`` gives itself a
  larger bound): the last resort, for a hang the cancel scope cannot reach (a shielded
  wait, a blocking call). Its thread method prints every thread's stack and ends the
  whole run (a signal cannot interrupt a trio run that is stuck in a shielded wait).

``@pytest.mark.timeout(N)`` on an async test sets its body's bound to N seconds (and
pytest-timeout's to N + ``TIMEOUT_GRACE``).
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import anyio
import pytest

from forge_sc.testing import running_tasks as running_tasks  # re-exported for the tests

#: Seconds an async FakeMesh test may run (the slowest takes about one under load).
ASYNC_TEST_BOUND = 60.0
#: Seconds an async test on real Monarch processes may run.
MONARCH_TEST_BOUND = 180.0
#: Virtual seconds an async test under a trio ``MockClock`` may run.
VIRTUAL_TEST_BOUND = 3600.0
#: pytest-timeout's real-time bound of a test with a timeout marker: the marker's
#: value plus this, so that the body's own bound fires first and cleans up.
TIMEOUT_GRACE = 30.0
#: Seconds a Monarch test's relays (trio waits still settling) may take to settle.
RELAY_SETTLE_BOUND = 30.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


_BODY_BOUND = pytest.StashKey[float]()


def _body_bound(item: pytest.Function) -> float:
    if _BODY_BOUND in item.stash:
        return item.stash[_BODY_BOUND]
    backend = item.funcargs.get("anyio_backend")
    if isinstance(backend, tuple) and "clock" in backend[1]:
        return VIRTUAL_TEST_BOUND
    if item.get_closest_marker("monarch") is not None:
        return MONARCH_TEST_BOUND
    return ASYNC_TEST_BOUND


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("timeout")
        if (
            marker is not None
            and marker.args
            and inspect.iscoroutinefunction(getattr(item, "obj", None))
        ):
            item.stash[_BODY_BOUND] = seconds = float(marker.args[0])
            # pytest-timeout reads the closest marker: this one, in front.
            item.add_marker(pytest.mark.timeout(seconds + TIMEOUT_GRACE), append=False)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Run an async test's body under a deadline (anyio's plugin then runs it)."""
    fn = pyfuncitem.obj
    if (
        "anyio_backend" not in pyfuncitem.funcargs
        or not inspect.iscoroutinefunction(fn)
        or hasattr(fn, "hypothesis")
    ):
        return (yield)
    bound = _body_bound(pyfuncitem)

    @functools.wraps(fn)
    async def bounded(**kwargs: Any) -> None:
        with anyio.CancelScope(deadline=anyio.current_time() + bound) as scope:
            await fn(**kwargs)
        if scope.cancelled_caught:
            pytest.fail(
                f"{pyfuncitem.name} did not finish within {bound:g} s of its event loop's "
                "clock (a hang?); it was cancelled",
                pytrace=False,
            )

    pyfuncitem.obj = bounded
    try:
        return (yield)
    finally:
        pyfuncitem.obj = fn


@pytest.fixture(autouse=True)
def _relays_settle(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on Monarch leaves no relayed trio wait of its own unsettled (bounded
    wait): the count is process-wide, so a relay still settling after one test would
    otherwise be counted by the next one's ``pending_relays()`` check. Relays of calls
    that Monarch never resolves (a lost host, see the ``lost_host_calls`` marker) stay
    pending; the check counts what this test added on top of those."""
    bridge = sys.modules.get("forge_sc.mesh._bridge")
    before = bridge.pending_relays() if bridge is not None else 0
    yield
    if request.node.get_closest_marker("monarch") is None:
        return
    if request.node.get_closest_marker("lost_host_calls") is not None:
        # Monarch never resolves a call that was in flight to a host that is lost
        # (its worker killed, or its processes stopped): the relay stays pending as
        # long as Monarch's future does. Those calls' callers were answered (the
        # test checks that); the relay itself is Monarch's to drop.
        return
    bridge = sys.modules.get("forge_sc.mesh._bridge")
    if bridge is None:
        return
    deadline = time.monotonic() + RELAY_SETTLE_BOUND
    while bridge.pending_relays() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    left = bridge.pending_relays() - before
    assert left <= 0, (
        f"{left} relayed wait(s) of this test still unsettled "
        f"{RELAY_SETTLE_BOUND:g} s after it ended (a leak)"
    )


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:  # noqa: ASYNC109
    """Wait (bounded) until ``cond()`` holds, re-checking at every scheduler turn.

    For states that no event announces (a replica's state as seen from outside).
    """
    with anyio.fail_after(timeout):
        while not cond():  # noqa: ASYNC110 - a bounded wait-for-condition
            await anyio.sleep(0.001)
    assert cond(), what


