"""Chaos soak on real Monarch processes, bounded in time.

Many concurrent callers issue a mix of requests (idempotent routes, idempotent=False
routes, batched routes, sticky sessions, fan-outs, user exceptions) to a service of
real Monarch replica processes while a killer SIGKILLs a random replica's process at
random intervals. Every request is tracked by id; the soak reports how many were
issued, answered (with the right result), failed explicitly (by forge_sc error
type), wrong, hung (no end within --request-bound s) and lost (must be 0), the
service's retries, restarts and session migrations, throughput, and the child
processes still alive after the service closed (must be 0).

    python -m scripts.soak                                   # 120 s, asyncio
    python -m scripts.soak --seconds 120 --backend trio
    python -m scripts.soak --seconds 30 --kill-interval 0.5 1.5 --json
    python -m scripts.soak --seconds 60 --signal STOP        # hangs instead of crashes

Run it from the repository's root, as a module: its core is the module
``tests.monarch._soak`` (the test suite runs a short version), whose actor the
replicas' processes import by that name.

Exit status: 0 when nothing was lost, hung, wrong or unexpected, the service did
not escalate and no process was left; 1 otherwise; 2 when the soak itself crashed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback

if not __package__:
    sys.exit("run the soak as a module, from the repository's root: python -m scripts.soak")

import anyio

from tests.monarch._soak import SoakConfig, run_soak


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=_positive, default=120.0, help="traffic duration")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument(
        "--kill-interval",
        type=_positive,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(1.0, 3.0),
        help="seconds between two kills, uniform in [MIN, MAX] (default 1 3)",
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument(
        "--signal",
        choices=["KILL", "STOP"],
        default="KILL",
        help="KILL: a crash (default); STOP: a hang, found by the health ping",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--request-bound",
        type=_positive,
        default=30.0,
        help="a request not ended after this many seconds is counted hung (default 30)",
    )
    parser.add_argument("--health-poll-rate", type=_positive, default=0.2)
    parser.add_argument("--restart-backoff", type=float, default=0.05)
    parser.add_argument("--restart-window", type=_positive, default=10.0)
    parser.add_argument("--max-restarts", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--progress-every", type=_positive, default=2.0, help="seconds between progress lines"
    )
    args = parser.parse_args(argv)
    lo, hi = args.kill_interval
    if lo > hi:
        parser.error("--kill-interval: MIN must not exceed MAX")
    if args.callers < 1 or args.replicas < 1:
        parser.error("--callers and --replicas must be >= 1")

    def progress(line: str) -> None:
        # The soak's own line ("t=  12.0s ..." of traffic), behind how far along it is.
        m = re.match(r"t=\s*([\d.]+)s", line)
        done = min(1.0, float(m.group(1)) / args.seconds) if m else 0.0
        print(f"[{done:4.0%} of {args.seconds:.0f} s] {line}", file=sys.stderr, flush=True)

    cfg = SoakConfig(
        seconds=args.seconds,
        callers=args.callers,
        replicas=args.replicas,
        kill_interval=(lo, hi),
        seed=args.seed,
        signal=args.signal,
        request_bound=args.request_bound,
        quiet_tail=min(3.0, args.seconds / 4),
        kill_warmup=min(1.0, args.seconds / 10),
        health_poll_rate=args.health_poll_rate,
        restart_backoff=args.restart_backoff,
        restart_window=args.restart_window,
        max_restarts=args.max_restarts,
        progress=None if args.quiet else progress,
        progress_every=args.progress_every,
    )
    if not args.quiet:
        print(
            f"soak: {args.seconds:.0f} s of traffic, {args.callers} callers, {args.replicas} "
            f"replicas, a SIG{args.signal} every {lo}-{hi} s ({args.backend}); progress "
            f"every {args.progress_every:.0f} s on stderr",
            file=sys.stderr,
            flush=True,
        )
    try:
        report = anyio.run(run_soak, cfg, backend=args.backend)
    except BaseException:
        traceback.print_exc()
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
