#!/usr/bin/env python
"""Prove that the suites bite: plant known bugs in the core, one at a time, and show
that the tests fail on each (within a bounded time) and pass without them.

Every run happens in a temporary copy of the repository (the tracked files plus the
untracked ones git does not ignore); the working tree is never modified. In the copy,
one bug is planted by exact text substitution (each target must occur exactly once, so a
drifted source fails loudly instead of silently testing nothing), and the bug's test
targets run there with ``PYTHONPATH`` pointing at the copy: the stateful suite (under
the ``bugcheck`` Hypothesis profile: fixed seed, no shrinking) and/or the test files in
``tests/`` that guard that bug. Both backends run for every bug. Each run is bounded
(``--timeout``, and a bug's own ``timeout``): a run that hangs is killed and reported as
NOT caught, for a bug must be caught by a failing test, not by a hang.

    python scripts/bugs/run_bug_check.py              # baseline + every bug
    python scripts/bugs/run_bug_check.py --only b d   # some of them
    python scripts/bugs/run_bug_check.py --list

Exit status 0 when the baseline passes and every bug is caught (a test fails with an
assertion or a bounded-time failure, on at least one backend).

Adding bugs: append ``Bug(...)`` entries to a block of your own (a list named like
``ISSUE_15_BUGS``) and add that list to ``BUGS`` at the bottom of the block section.
Keys are unique; ``targets`` are pytest paths or node ids (default: the stateful suite).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "forge_sc/_service/_service.py"
STATE = "forge_sc/_service/_state.py"
ADMISSION = "forge_sc/_service/_admission.py"
REQUESTS = "forge_sc/_service/_requests.py"
FANOUT = "forge_sc/_service/_fanout.py"
LIFECYCLE = "forge_sc/_service/_lifecycle.py"
HANDLE = "forge_sc/_service/_handle.py"
BATCHER = "forge_sc/_batching/_batcher.py"
SUPERVISOR = "forge_sc/_replica/_supervisor.py"
REPLICA = "forge_sc/_replica/_replica.py"
WAITERS = "forge_sc/_waiters.py"
FAKE = "forge_sc/testing/_fake.py"

STATEFUL = "stateful_tests"
#: Seconds one run may take (the stateful suite on both backends takes 1-3 min).
DEFAULT_TIMEOUT = 900.0


@dataclass
class Bug:
    key: str
    title: str
    #: (file, original text, replacement); each original must occur exactly once
    edits: list[tuple[str, str, str]] = field(default_factory=list)
    #: what to run: pytest paths or node ids, relative to the repository
    targets: tuple[str, ...] = (STATEFUL,)
    #: seconds this bug's run may take (None: --timeout)
    timeout: float | None = None


# The first eight: caught by the stateful suite.
STATEFUL_BUGS = [
    Bug(
        "a",
        "session requests queued on a dead replica are not woken (stranded until it is back)",
        [
            (
                LIFECYCLE,
                "        replica._waiters.wake_all()"
                "  # session requests queued there move elsewhere\n",
                "",
            )
        ],
    ),
    Bug(
        "b",
        "a cancelled caller marks its replica failed",
        [
            (
                REQUESTS,
                "                        self._release(replica, inc)\n"
                "                    if isinstance(exc, Exception):\n",
                "                        self._release(replica, inc)\n"
                "                    if isinstance(exc, anyio.get_cancelled_exc_class()):\n"
                "                        inc.die(RuntimeError('caller cancelled'))\n"
                "                    if isinstance(exc, Exception):\n",
            )
        ],
    ),
    Bug(
        "c",
        "a session of one service steers another (session context not keyed by service)",
        [
            (
                HANDLE,
                "                    sess_id = current.get(self._svc)\n",
                "                    sess_id = next(iter(current.values()), None)\n",
            )
        ],
    ),
    Bug(
        "d",
        "a retry re-sends an idempotent=False request",
        [
            (
                REQUESTS,
                "                    if not spec.idempotent:\n",
                "                    if False:\n",
            )
        ],
    ),
    Bug(
        "e",
        "a slot released on the error/cancel path is not freed",
        [
            (
                STATE,
                "    def _release(self, replica: Replica, inc: Incarnation) -> None:\n"
                "        inc.active -= 1\n",
                "    def _release(self, replica: Replica, inc: Incarnation) -> None:\n",
            )
        ],
    ),
    Bug(
        "f",
        "a batched caller that left is still sent with its batch",
        [
            (
                BATCHER,
                "                if item.state == _PENDING:\n"
                "                    pending.remove(item)  # leaves the batch before it is sent\n",
                "",
            ),
            (
                BATCHER,
                "        items = [i for i in batch if not i.cancelled]\n",
                "        items = list(batch)\n",
            ),
        ],
    ),
    Bug(
        "g",
        "session migrations are not counted in the metrics",
        [
            (ADMISSION, "            self._migrations += 1\n", ""),
            (LIFECYCLE, "                self._migrations += 1\n", ""),
        ],
    ),
    Bug(
        "h",
        "restarts are counted twice in the metrics",
        [
            (
                REPLICA,
                "    def _restarted(self) -> None:\n        self._restarts += 1\n",
                "    def _restarted(self) -> None:\n        self._restarts += 2\n",
            )
        ],
    ),
]

# Issue 15: bugs that the suites used to miss or catch only weakly. Each is caught by
# a test in tests/ that guards it (on both backends), some by the stateful suite too.
ISSUE_15_BUGS = [
    Bug(
        "i",
        "the wait queue serves waiters last-in first-out",
        [
            (
                WAITERS,
                "            self.popleft().wake()\n            return True\n",
                "            self.pop().wake()\n            return True\n",
            )
        ],
        ("tests/test_fairness.py", STATEFUL),
    ),
    Bug(
        "j",
        "request_timeout measured per attempt, not over the whole request",
        [
            (
                REQUESTS,
                "                    self._retries += 1\n                    continue\n",
                "                    self._retries += 1\n"
                "                    waited = 0.0\n"
                "                    continue\n",
            )
        ],
        ("tests/test_request_timeout.py",),
    ),
    Bug(
        "k",
        "terminate_session does not free the replica's session count",
        [
            (
                SERVICE,
                "            replica = self._by_idx.get(idx)\n"
                "            if replica is not None:\n"
                "                replica._drop_session()\n",
                "            replica = self._by_idx.get(idx)\n",
            )
        ],
        ("tests/test_session_accounting.py", STATEFUL),
    ),
    Bug(
        "l",
        "escalation never happens after start-up (only a start-up failure escalates)",
        [
            (
                LIFECYCLE,
                "        escalate = self._starting or all(r._exhausted for r in self._replicas)\n",
                "        escalate = self._starting\n",
            )
        ],
        ("tests/test_escalation_bounded.py",),
    ),
    Bug(
        "m",
        "a session whose replica restarted is not migrated (sticks to the new incarnation)",
        [
            (
                ADMISSION,
                "                if replica._inc is inc and replica._state is HEALTHY:\n",
                "                if replica._state is HEALTHY:\n",
            ),
            (
                LIFECYCLE,
                "        if replica._sessions:\n            self._unplace_sessions(replica)\n",
                "",
            ),
        ],
        ("tests/test_session_accounting.py", STATEFUL),
    ),
    Bug(
        "n",
        "fan-out results in completion order, not replica-index order",
        [
            (
                FANOUT,
                "        return [results[i] for i in sorted(results)]\n",
                "        return list(results.values())\n",
            )
        ],
        ("tests/test_fanout_order.py", STATEFUL),
    ),
]

# Issue 10, service core: two of the defects it fixed, planted back. Each is caught by a
# rule of the stateful suite added with the fix (cancel_batched_caller_while_queued,
# terminate_with_session_requests_queued) and by its regression test.
ISSUE_10_BUGS = [
    Bug(
        "orphan",
        "a batch whose callers all left stays queued and later runs for nobody "
        "(issue 10, item 4)",
        [
            (
                BATCHER,
                "        if self.live == 0:\n            self.scope.cancel()\n",
                "        if self.live == 0:\n            pass\n",
            )
        ],
        ("tests/adversarial/test_batches.py", STATEFUL),
    ),
    Bug(
        "revive",
        "a session terminated while its requests wait is re-created when they move after "
        "a replica death (issue 10, item 10)",
        [
            (
                ADMISSION,
                "            if known and sess_id not in sessions:\n"
                "                raise SessionEnded\n",
                "",
            )
        ],
        ("tests/adversarial/test_sessions_bookkeeping.py", STATEFUL),
    ),
]

# Issue 14's audit stop: defects an audit found (requests at a replica's death, the
# control plane's waiters, FakeMesh's nested interruptions), planted back; each is
# caught by the regression test added with its fix.
DEATHS = "tests/adversarial/test_deaths_and_retries.py"
AUDIT_BUGS = [
    Bug(
        "shed",
        "a running request whose replica died is refused by the full queue it re-enters",
        [
            (
                ADMISSION,
                "        if limit is not None and self._queued >= limit and not admitted:\n",
                "        if limit is not None and self._queued >= limit:\n",
            )
        ],
        (DEATHS,),
    ),
    Bug(
        "resend",
        "a caller cancelled as its replica dies is sent to another replica all the same",
        [
            (
                REQUESTS,
                "                    await anyio.lowlevel.checkpoint()\n"
                "                    if sent:\n",
                "                    if sent:\n",
            )
        ],
        (DEATHS,),
    ),
    Bug(
        "unsent",
        "a call the backend refused unsent (replica known dead) counts as a send",
        [
            (
                REQUESTS,
                "                    sent = not isinstance(exc, CallNotSent)\n",
                "                    sent = True\n",
            )
        ],
        (DEATHS,),
    ),
    Bug(
        "behind",
        "requests wait in the queue behind restart_replica()/scale_to() waiting for a "
        "replica to start",
        [
            (
                LIFECYCLE,
                "            self._watchers.push(waiter)\n",
                "            self._waiters.push(waiter)\n",
            ),
            (
                LIFECYCLE,
                "                self._watchers.discard(waiter)\n",
                "                self._waiters.discard(waiter)\n",
            ),
        ],
        ("tests/adversarial/test_scaling_races.py",),
    ),
    Bug(
        "count",
        "FakeMesh: both replicas of a nested call dying at once leave the asyncio task "
        "'cancelling'",
        [
            (
                FAKE,
                "                self._take_interrupt()\n"
                "            await self._after_interrupt()\n",
                "                pass\n            await self._after_interrupt()\n",
            )
        ],
        ("tests/test_fakemesh.py",),
    ),
]

BUGS = [*STATEFUL_BUGS, *ISSUE_15_BUGS, *ISSUE_10_BUGS, *AUDIT_BUGS]


def source_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


def make_copy(dest: Path, files: list[str]) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def plant(copy: Path, bug: Bug) -> None:
    for rel, old, new in bug.edits:
        path = copy / rel
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            raise SystemExit(
                f"bug {bug.key}: the text to replace occurs {count} times in {rel} "
                "(the source changed; update scripts/bugs/run_bug_check.py)"
            )
        path.write_text(text.replace(old, new))


@dataclass
class Result:
    name: str
    title: str
    targets: tuple[str, ...]
    rc: int  # pytest's exit status; -1: killed at the time bound
    seconds: float
    failed: list[str]  # node ids of the failing tests
    evidence: str
    violation: bool  # the failures are failing tests (assertions, bounded-time failures)


def _backend(nodeid: str) -> str:
    low = nodeid.lower()
    return "trio" if "trio" in low else "asyncio" if "asyncio" in low else "?"


def run_suite(
    copy: Path, name: str, title: str, targets: tuple[str, ...], profile: str, timeout: float
) -> Result:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["FORGE_SC_HYPOTHESIS_PROFILE"] = profile
    env.pop("PYTEST_ADDOPTS", None)
    where = subprocess.run(
        [sys.executable, "-c", "import forge_sc; print(forge_sc.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not where.startswith(str(copy)):
        raise SystemExit(f"the copy's forge_sc is not the one imported ({where})")
    log = Path(tempfile.gettempdir()) / f"forge_sc_bugcheck_{name}.log"
    cmd = [sys.executable, "-m", "pytest", *targets, "-q", "-rf", "-p", "no:cacheprovider"]
    t0 = time.monotonic()
    with open(log, "w+") as out_file:
        # A session of its own, so that a run past its bound is killed whole.
        proc = subprocess.Popen(
            cmd, cwd=copy, env=env, stdout=out_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = -1
        out_file.seek(0)
        out = out_file.read()
    seconds = time.monotonic() - t0
    if rc == -1:
        out += f"\nKILLED: the run took longer than its bound of {timeout:.0f}s"
        with open(log, "a") as f:
            f.write(out[-200:])
    failed = sorted(set(re.findall(r"^FAILED (\S+)", out, re.M)))
    m = re.search(r"AssertionError: (.+)", out) or re.search(r"^E\s+(Failed: .+)$", out, re.M)
    m = m or re.search(r"^E\s+(assert .+)$", out, re.M)
    violation = m is not None and rc == 1 and bool(failed)
    evidence = m.group(1).strip() if m else ""
    if rc == -1:
        evidence = f"hung: killed after {timeout:.0f}s"
    elif not evidence and rc:
        m = re.search(r"^E\s+(\w+(?:Error|Exception)\S*: .+)$", out, re.M)
        evidence = m.group(1).strip() if m else out.strip().splitlines()[-1]
    return Result(name, title, targets, rc, seconds, failed, evidence, violation)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="bug keys to run (baseline always runs)")
    parser.add_argument("--profile", default="bugcheck", help="Hypothesis profile")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per run (a bound)"
    )
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    args = parser.parse_args()
    keys = [b.key for b in BUGS]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"duplicate bug keys: {keys}")
    if args.list:
        for bug in BUGS:
            print(f"({bug.key}) {bug.title}  [{', '.join(bug.targets)}]")
        print(f"{len(BUGS)} bugs")
        return 0
    bugs = [b for b in BUGS if not args.only or b.key in args.only]
    # The baseline runs every target of the bugs selected: each must pass unplanted.
    baseline_targets = tuple(dict.fromkeys(t for b in bugs for t in b.targets))
    files = source_files()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="forge_sc_bugcheck_") as tmp:
        cases: list[tuple[str, str, Bug | None, tuple[str, ...], float]] = [
            ("baseline", "no bug planted", None, baseline_targets, args.timeout)
        ]
        cases += [(f"bug {b.key}", b.title, b, b.targets, b.timeout or args.timeout) for b in bugs]
        for name, title, bug, targets, bound in cases:
            copy = Path(tmp) / name.replace(" ", "_")
            make_copy(copy, files)
            if bug is not None:
                plant(copy, bug)
            print(f"running {name}: {title} [{' '.join(targets)}] ...", flush=True)
            r = run_suite(copy, name.replace(" ", "_"), title, targets, args.profile, bound)
            results.append(r)
            if r.rc == 0:
                verdict = "passed"
            elif r.rc == -1:
                verdict = "HUNG"
            else:
                verdict = f"FAILED {len(r.failed)} test(s)"
            print(f"  {verdict} in {r.seconds:.0f}s {r.evidence[:160]}", flush=True)
            for nodeid in r.failed[:8]:
                print(f"    {nodeid}", flush=True)
            shutil.rmtree(copy, ignore_errors=True)
    print()
    print(f"{'case':<9} {'fails on asyncio / trio':<24} {'time':>6}  first violation reported")
    print("-" * 110)
    ok = True
    for r in results:
        backends = {_backend(n) for n in r.failed}
        per = " / ".join(
            "FAILS" if b in backends else ("passes" if r.rc in (0, 1) else "hung")
            for b in ("asyncio", "trio")
        )
        baseline = r.name == "baseline"
        good = r.rc == 0 if baseline else r.violation
        ok = ok and good
        mark = "" if good else "   <-- NOT AS EXPECTED"
        print(f"{r.name:<9} {per:<24} {r.seconds:>5.0f}s  {r.evidence[:70]}{mark}")
    print()
    for r in results:
        suites = sorted({n.split("::")[0] for n in r.failed})
        caught = f" (failing: {', '.join(suites)})" if suites and r.name != "baseline" else ""
        print(f"{r.name}: {r.title}{caught}")
    n_bugs = sum(r.name != "baseline" for r in results)
    n_caught = sum(r.violation for r in results if r.name != "baseline")
    print(f"\nfull logs: {tempfile.gettempdir()}/forge_sc_bugcheck_<case>.log")
    print(f"bugs planted: {n_bugs}, caught: {n_caught}")
    print("RESULT:", "every bug caught, baseline clean" if ok else "NOT AS EXPECTED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
