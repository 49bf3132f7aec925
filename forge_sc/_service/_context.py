"""The per-task session context: which session each service is in."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

__all__ = ["CURRENT_SESSIONS"]

#: Service -> session id, set by ``async with svc.session()`` (per service, so a
#: session of service A never steers service B).
CURRENT_SESSIONS: ContextVar[Mapping[Any, str]] = ContextVar("forge_sc_sessions")
