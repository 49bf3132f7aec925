"""Memory after many requests and sessions: it must stay flat (DESIGN §8: <= 20 MB
growth after 1,000,000 requests and 10,000 sessions opened and closed).

    python bench/bench_memory.py [--requests 1000000] [--sessions 10000] [--backend asyncio]

Measures the process's resident set (ru_maxrss is a high-water mark, so the current
RSS is read from /proc) after a warm-up, then after the load, on FakeMesh.
"""

from __future__ import annotations

import argparse
import gc

import anyio

from forge_sc import ForgeActor, endpoint, open_service
from forge_sc.testing import FakeMesh


class Echo(ForgeActor):
    @endpoint
    async def echo(self, x: int) -> int:
        return x


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def run(requests: int, sessions: int) -> None:
    async with open_service(Echo, num_replicas=4, mesh=FakeMesh(seed=0)) as svc:
        route = svc.echo.route
        for i in range(20_000):  # warm-up: fill metric windows, caches
            await route(i)
        for _ in range(200):
            async with svc.session():
                await route(0)
        gc.collect()
        before = rss_mb()
        for i in range(requests):
            await route(i)
        for _ in range(sessions):
            async with svc.session():
                await route(0)
        gc.collect()
        after = rss_mb()
        stats = svc.statistics()
    print(
        f"requests {stats.total_requests:,}, sessions opened/closed {sessions:,}: RSS "
        f"{before:.1f} MB -> {after:.1f} MB, growth {after - before:+.1f} MB "
        f"(target <= 20 MB); active sessions left: {stats.active_sessions}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    a = p.parse_args()
    anyio.run(run, a.requests, a.sessions, backend=a.backend)


if __name__ == "__main__":
    main()
