"""Open and close many services on real Monarch processes, many at once.

Starts ``--total`` services (``--replicas`` replicas each) in batches of ``--batch``
that start concurrently, calls every replica once, closes them, and prints every
service that failed to start, with its cause. It checks two things that only show
under such a load: no replica fails to start (an import race in the replicas'
processes used to fail about one replica in forty, ``_DeadlockError: deadlock
detected by _ModuleLock('forge_sc.mesh')``), and, in each replica, forge_sc was
imported before the actor's module (the fix: one thread imports it first).

    python scripts/many_services.py                       # 100 services, batches of 20
    python scripts/many_services.py --total 40 --batch 20 --backend trio

Exit status: 0 when every service started and answered and no process was left; 1
otherwise. It is CPU heavy (``--batch`` x ``--replicas`` processes start at once).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

# The actor lives in tests/adversarial/mesh_actors.py, imported by reference in the
# replicas' processes as a user's module would be (forge_sc passes this sys.path on).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import anyio  # noqa: E402

from forge_sc import open_service  # noqa: E402
from tests.adversarial.mesh_actors import Reader  # noqa: E402
from tests.monarch._support import live_descendants, wait_until  # noqa: E402


def _cause(exc: BaseException) -> str:
    """The innermost cause's last line (Monarch's report ends with the error)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


async def _one(
    n: int, replicas: int, limit: float, failures: list[tuple[int, str]], seen: Counter[bool]
) -> None:
    try:
        with anyio.fail_after(limit):
            async with open_service(Reader, num_replicas=replicas) as svc:
                for preloaded in await svc.forge_sc_was_imported.fanout():
                    seen[bool(preloaded)] += 1
    except Exception as exc:
        failures.append((n, _cause(exc)))


async def _run(args: argparse.Namespace) -> int:
    before = live_descendants()
    failures: list[tuple[int, str]] = []
    seen: Counter[bool] = Counter()
    t_all = time.monotonic()
    for first in range(0, args.total, args.batch):
        batch = range(first, min(first + args.batch, args.total))
        t0 = time.monotonic()
        failed_before = len(failures)
        async with anyio.create_task_group() as tg:
            for n in batch:
                tg.start_soon(_one, n, args.replicas, args.timeout, failures, seen)
        print(
            f"services {batch.start}-{batch.stop - 1}: "
            f"{len(batch) - (len(failures) - failed_before)}/{len(batch)} started and "
            f"closed in {time.monotonic() - t0:.1f}s",
            flush=True,
        )
        for n, cause in failures[failed_before:]:
            print(f"  service {n} failed: {cause}", flush=True)
    left = wait_until(lambda: not (live_descendants() - before), timeout=30.0)
    leftover = sorted(live_descendants() - before)
    print(
        f"\nstart failures: {len(failures)} of {args.total} services "
        f"({args.replicas} replicas each, batches of {args.batch}, {args.backend}), "
        f"{time.monotonic() - t_all:.0f}s"
    )
    print(
        f"replicas whose actor module was imported after forge_sc: {seen[True]} of "
        f"{seen[True] + seen[False]}"
    )
    print(f"processes left: {len(leftover)}{' ' + str(leftover) if leftover else ''}")
    for cause, count in Counter(c for _, c in failures).most_common():
        print(f"  {count} x {cause}")
    return 0 if not failures and left and not seen[False] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total", type=int, default=100, help="services (default 100)")
    parser.add_argument("--batch", type=int, default=20, help="started at once (default 20)")
    parser.add_argument("--replicas", type=int, default=2, help="per service (default 2)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="per service, seconds (default 300)"
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    return anyio.run(_run, args, backend=args.backend)


if __name__ == "__main__":
    sys.exit(main())
