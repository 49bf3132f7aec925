#!/usr/bin/env python
"""Prove that the stateful suite bites: plant known bugs in the core, one at a time, and
show that ``stateful_tests/`` fails on each and passes without them.

Every run happens in a temporary copy of the repository (the tracked files plus the
untracked ones git does not ignore); the working tree is never modified. In the copy,
one bug is planted by exact text substitution (each target must occur exactly once, so a
drifted source fails loudly instead of silently testing nothing), and the stateful suite
runs there with ``PYTHONPATH`` pointing at the copy, under the ``bugcheck`` Hypothesis
profile (fixed seed, no shrinking). Both backends run for every bug.

    python scripts/bugs/run_bug_check.py              # baseline + every bug
    python scripts/bugs/run_bug_check.py --only b d   # some of them
    python scripts/bugs/run_bug_check.py --list

Exit status 0 when the baseline passes on both backends and every bug is caught on at
least one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HANDLE = "forge_sc/_service/_handle.py"
REQUESTS = "forge_sc/_service/_requests.py"
ADMISSION = "forge_sc/_service/_admission.py"
LIFECYCLE = "forge_sc/_service/_lifecycle.py"
STATE = "forge_sc/_service/_state.py"
BATCHER = "forge_sc/_batching/_batcher.py"
REPLICA = "forge_sc/_replica/_replica.py"


@dataclass
class Bug:
    key: str
    title: str
    #: (file, original text, replacement); each original must occur exactly once
    edits: list[tuple[str, str, str]] = field(default_factory=list)


BUGS = [
    Bug(
        "a",
        "session requests queued on a dead replica are not woken (stranded until it is back)",
        [
            (
                LIFECYCLE,
                "        self._dirty = True\n"
                "        replica._waiters.wake_all()"
                "  # session requests queued there move elsewhere\n",
                "        self._dirty = True\n",
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
                "                sess_id = current.get(svc)\n",
                "                sess_id = next(iter(current.values()), None)\n",
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
        [(ADMISSION, "            self._migrations += 1\n", "")],
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

# ------------------------------------------------------------------------------------
# Issue 10, service core: two of the defects it fixed, planted back. Each is caught by a
# rule of the stateful suite added with the fix (cancel_batched_caller_while_queued,
# terminate_with_session_requests_queued).
BUGS += [
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
    ),
]
# ------------------------------------------------------------------------------------


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
    rc: int
    seconds: float
    failed: list[str]
    evidence: str
    violation: bool  # the failure is an invariant the suite checks (an AssertionError)


def run_suite(copy: Path, name: str, title: str, profile: str, timeout: float) -> Result:
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
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "stateful_tests", "-q", "-p", "no:cacheprovider"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = -1
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        out += f"\nTIMEOUT after {timeout}s"
    seconds = time.monotonic() - t0
    failed = sorted(set(re.findall(r"FAILED \S+::TestServiceOn(\w+)::", out)))
    m = re.search(r"AssertionError: (.+)", out)
    violation = m is not None
    evidence = m.group(1).strip() if m else ("timeout" if rc == -1 else "")
    if not evidence and rc:
        m = re.search(r"^E\s+(\w+(?:Error|Exception)\S*: .+)$", out, re.M)
        evidence = m.group(1).strip() if m else out.strip().splitlines()[-1]
    log = Path(tempfile.gettempdir()) / f"forge_sc_bugcheck_{name}.log"
    log.write_text(out)
    return Result(name, title, rc, seconds, failed, evidence, violation)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="bug keys to run (baseline always runs)")
    parser.add_argument("--profile", default="bugcheck", help="Hypothesis profile")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    args = parser.parse_args()
    if args.list:
        for bug in BUGS:
            print(f"({bug.key}) {bug.title}")
        return 0
    bugs = [b for b in BUGS if not args.only or b.key in args.only]
    files = source_files()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="forge_sc_bugcheck_") as tmp:
        cases: list[tuple[str, str, Bug | None]] = [("baseline", "no bug planted", None)]
        cases += [(f"bug {b.key}", b.title, b) for b in bugs]
        for name, title, bug in cases:
            copy = Path(tmp) / name.replace(" ", "_")
            make_copy(copy, files)
            if bug is not None:
                plant(copy, bug)
            print(f"running {name}: {title} ...", flush=True)
            r = run_suite(copy, name.replace(" ", "_"), title, args.profile, args.timeout)
            results.append(r)
            verdict = "passed" if r.rc == 0 else f"FAILED on {', '.join(r.failed) or '?'}"
            print(f"  {verdict} in {r.seconds:.0f}s {r.evidence[:160]}", flush=True)
            shutil.rmtree(copy, ignore_errors=True)
    print()
    print(f"{'case':<9} {'suite on asyncio / trio':<24} {'time':>6}  first violation reported")
    print("-" * 110)
    ok = True
    for r in results:
        per = " / ".join(
            "FAILS" if b in r.failed else ("passes" if r.rc in (0, 1) else "error")
            for b in ("Asyncio", "Trio")
        )
        baseline = r.name == "baseline"
        good = r.rc == 0 if baseline else r.rc == 1 and bool(r.failed) and r.violation
        ok = ok and good
        mark = "" if good else "   <-- NOT AS EXPECTED"
        print(f"{r.name:<9} {per:<24} {r.seconds:>5.0f}s  {r.evidence[:70]}{mark}")
    print()
    for r in results:
        print(f"{r.name}: {r.title}")
    print(f"\nfull logs: {tempfile.gettempdir()}/forge_sc_bugcheck_<case>.log")
    print("RESULT:", "every bug caught, baseline clean" if ok else "NOT AS EXPECTED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
