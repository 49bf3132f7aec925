"""The per-task session context: which session each service is in."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

__all__ = ["CURRENT_SESSIONS", "BlockSession"]


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
