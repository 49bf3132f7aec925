"""The per-task session context: which session each service is in."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Any

__all__ = ["CURRENT_SESSIONS", "BlockSession", "EnterOnce"]


class BlockSession(str):
    """The id of a session opened by ``async with svc.session()``, as the context
    holds it: a ``str`` (so it is the session id everywhere) that also knows whether
    its block has ended. Tasks started inside the block inherit it; one that routes
    after the block ended gets a clear error instead of re-creating the session."""

    ended: bool

    def __new__(cls, sid: str) -> BlockSession:
        self = super().__new__(cls, sid)
        self.ended = False
        return self


#: Service -> session id, set by ``async with svc.session()`` (per service, so a
#: session of service A never steers service B).
CURRENT_SESSIONS: ContextVar[Mapping[Any, str]] = ContextVar("forge_sc_sessions")


class EnterOnce(AbstractAsyncContextManager[str]):
    """What ``svc.session()`` returns (also on an ``as_service`` handle): one block;
    a second ``async with`` of the same object says so, where contextlib's own would
    fail with an AttributeError."""

    __slots__ = ("_cm", "_used")

    def __init__(self, cm: AbstractAsyncContextManager[str]) -> None:
        self._cm = cm
        self._used = False

    async def __aenter__(self) -> str:
        if self._used:
            raise RuntimeError(
                "this svc.session() was entered already; each `async with svc.session()` "
                "needs a call of its own"
            )
        self._used = True
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._cm.__aexit__(*exc_info)
