"""The health actor spawned beside every replica's actor.

A module of its own, importing nothing but Monarch: a replica's process imports it
(the actor's class travels by reference) and should not pay for the rest of the
Monarch backend (its trio bridge, the fault hook) that only the client uses.
"""

from __future__ import annotations

import os

from monarch.actor import Actor, endpoint

__all__ = ["Health"]


class Health(Actor):  # type: ignore[misc]
    """Answers pings beside the user's actor, so a busy actor is not taken for dead."""

    @endpoint  # type: ignore[untyped-decorator]
    async def ping(self) -> None:
        return None

    @endpoint  # type: ignore[untyped-decorator]
    async def pid(self) -> int:
        return os.getpid()

    @endpoint  # type: ignore[untyped-decorator]
    async def exit(self) -> None:
        """End this process (a replica on a pool whose stop cannot finish: the ranks
        on hosts that still answer end themselves; a frozen host's, once it thaws)."""
        os._exit(0)
