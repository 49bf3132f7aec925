"""The services alive in this process, for exporters that read them from any thread.

A service is registered when its ``open_service`` block is entered and removed when
it is left. An exporter (a Prometheus scrape, an OpenTelemetry export thread) reads
a service's figures through :meth:`LiveService.statistics`, which runs
``Service.statistics()`` on the service's own event loop thread: the service's
counters belong to that thread, and reading them from another one could tear them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import sniffio

from . import _events

__all__ = ["LiveService", "closed", "entry", "live_services", "opened"]

#: Called with each service as it is opened (set by per-request features such as
#: tracing; None when none is on).
attach: Callable[[Any], None] | None = None

_lock = threading.Lock()
_live: dict[int, LiveService] = {}


class LiveService:
    """A running service, as exporters see it: its name and a thread-safe snapshot."""

    __slots__ = ("_post", "_thread", "name", "service")

    def __init__(self, service: Any, post: Callable[[Callable[[], None]], None]) -> None:
        #: The :class:`~forge_sc.Service` itself.
        self.service = service
        #: The name it has in logs and metrics (see :func:`service_name`).
        self.name = _events.service_name(service)
        self._post = post
        self._thread = threading.get_ident()

    def __repr__(self) -> str:
        return f"<LiveService {self.name}>"

    def statistics(self, timeout: float = 2.0) -> Any:
        """``service.statistics()``, taken on the service's event loop thread (at once
        when called there). None if that loop does not answer within ``timeout``
        seconds or has ended."""
        if threading.get_ident() == self._thread:
            return self.service.statistics()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(self.service.statistics())
            except BaseException as exc:  # pragma: no cover - statistics() does not raise
                fut.set_exception(exc)

        try:
            self._post(run)
        except RuntimeError:  # the loop has ended (trio's RunFinishedError is one)
            return None
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            return None


def _poster() -> Callable[[Callable[[], None]], None]:
    if sniffio.current_async_library() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        return lambda fn: token.run_sync_soon(fn)
    loop = asyncio.get_running_loop()

    def post(fn: Callable[[], None]) -> None:
        loop.call_soon_threadsafe(fn)

    return post


def opened(service: Any) -> None:
    """Register ``service`` (called on its event loop, as its block is entered)."""
    entry = LiveService(service, _poster())
    with _lock:
        _live[id(service)] = entry
    if attach is not None:
        attach(service)


def closed(service: Any) -> None:
    """Forget ``service`` (its block was left)."""
    with _lock:
        _live.pop(id(service), None)


def entry(service: Any) -> LiveService | None:
    """``service``'s entry while its block runs, else None."""
    with _lock:
        return _live.get(id(service))


def live_services() -> list[LiveService]:
    """The services whose ``open_service`` block is running now, oldest first."""
    with _lock:
        return list(_live.values())
