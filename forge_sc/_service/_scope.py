"""ServiceScope: the async context manager behind ``open_service``.

It owns the service's task group. The body of ``async with`` runs inside that task
group's cancel scope, so escalation (every replica out of restart budget) cancels
the body; leaving the block closes the service gracefully and waits for every task.
Errors come out bare when there is only one (the body's ``KeyError`` stays a
``KeyError``); several unrelated ones come out as an ExceptionGroup.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import sniffio

from ..errors import ServiceFailedError
from ..observe import _registry
from ._service import Service

__all__ = ["ServiceScope", "single_exception"]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out.extend(_leaves(e))
        return out
    return [exc]


def single_exception(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The only non-cancellation exception inside ``group``, if there is exactly one.

    Several ``ServiceFailedError`` (replicas failing together at start-up) are one
    failure of the service: the first is returned, also beside the errors that the
    failure itself gave the body's requests (marked by ``Service._failed_error``).
    """
    cancelled = anyio.get_cancelled_exc_class()
    leaves = [e for e in _leaves(group) if not isinstance(e, cancelled)]
    failed = [e for e in leaves if isinstance(e, ServiceFailedError)]
    if failed and all(e in failed or getattr(e, "_forge_sc_escalation", False) for e in leaves):
        return failed[0]
    return leaves[0] if len(leaves) == 1 else None


class ServiceScope:
    """``async with open_service(...) as svc`` (use :func:`forge_sc.open_service`)."""

    def __init__(self, svc: Service) -> None:
        self._svc = svc
        self._tg: anyio.abc.TaskGroup | None = None
        self._task: Any = None
        self._start_cancelled = False

    def _cancel_start(self) -> None:
        """From the service's loop: end the start-up (``as_service()``'s caller was
        cancelled, in another thread); ``__aenter__`` raises the cancellation."""
        self._start_cancelled = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def __aenter__(self) -> Service:
        if self._tg is not None:
            raise RuntimeError("an open_service() scope can be entered only once")
        svc = self._svc
        here = sniffio.current_async_library()
        if here != svc._backend or threading.get_ident() != svc._thread:
            raise RuntimeError(
                f"this open_service() scope was made under {svc._backend} in another "
                f"event loop than the one entering it ({here}, thread "
                f"{threading.current_thread().name!r}); a service belongs to the event "
                "loop that made it: call open_service() where you enter it "
                "(async with open_service(...) as svc)"
            )
        self._task = anyio.get_current_task().id
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        self._svc._body_scope = tg.cancel_scope
        if self._start_cancelled:
            tg.cancel_scope.cancel()
        try:
            _registry.opened(self._svc)  # exporters see it from now on (forge_sc.observe)
            await tg.start(self._svc._run)
            await self._svc._wait_started()
        except BaseException as exc:
            tg.cancel_scope.cancel()
            await self._exit(type(exc), exc, exc.__traceback__)
            raise
        return self._svc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._exit(exc_type, exc, tb)

    async def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._tg is not None
        if anyio.get_current_task().id != self._task:
            raise RuntimeError(
                "an open_service() block must be left by the task that entered it (its "
                "task group belongs to that task); the service was not closed. Leave it "
                "with `async with`, or call `await svc.shutdown()` from any task of the "
                "service's event loop."
            )
        close_error: BaseException | None = None
        with anyio.CancelScope(shield=True):
            try:
                await self._svc._close()
            except BaseException as error:
                # The task group is still left below, in order: never a corrupted
                # cancel-scope stack. The error is raised once it has been left.
                close_error = error
                self._tg.cancel_scope.cancel()
        try:
            suppressed = bool(await self._tg.__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as group:
            single = single_exception(group)
            if single is None:
                raise
            if single is exc:
                return False  # the body's own exception, re-raised as it was
            raise single from single.__cause__
        finally:
            _registry.closed(self._svc)
        if close_error is not None:
            raise close_error
        return suppressed
