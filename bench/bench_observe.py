"""What observability costs per routed request: bench_overhead's route() overhead
(FakeMesh, 1 replica, median of sequential calls minus a direct await) with each
feature of forge_sc.observe turned on, against the same measurement with it off.

    python bench/bench_observe.py [--calls 20000] [--backend asyncio|trio|both]

Modes (each measured in a fresh service; observable instruments are read by no one
during the run, as between two collections of a real reader):

* ``off``: nothing enabled (the default; route() pays one attribute check);
* ``metrics``: ``enable_metrics()``: observable instruments only (the default);
* ``histogram``: ``enable_metrics(latency_histogram=True)``: plus the per-request
  duration histogram;
* ``tracing``: ``enable_tracing()`` with an SDK TracerProvider (spans are made and
  ended; no processor exports them);
* ``both``: the histogram and tracing.

Needs the ``dev`` extra (the OpenTelemetry SDK).
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_overhead import overhead
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from forge_sc.observe import otel

MODES = ("off", "metrics", "histogram", "tracing", "both")


def enable(mode: str) -> None:
    otel.disable()
    if mode in ("metrics", "histogram", "both"):
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        otel.enable_metrics(provider, latency_histogram=mode != "metrics")
    if mode in ("tracing", "both"):
        otel.enable_tracing(TracerProvider())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    a = p.parse_args()
    backends = ["asyncio", "trio"] if a.backend == "both" else [a.backend]
    for backend in backends:
        base = None
        for mode in a.modes:
            enable(mode)
            o = anyio.run(overhead, a.calls, backend=backend)
            otel.disable()
            if mode == "off":
                base = o["overhead_us"]
            extra = "" if base is None or mode == "off" else f" (+{o['overhead_us'] - base:.2f})"
            print(
                f"[{backend}] {mode:9s} route() overhead {o['overhead_us']:6.2f} us{extra} "
                f"(route {o['route_us']:.2f} us, direct {o['direct_us']:.2f} us)",
                flush=True,
            )


if __name__ == "__main__":
    main()
