"""Actor options: an actor class with its service options, and what makes a class
an actor forge_sc can serve.

This sits below ``open_service`` so that it can recognise ``Actor.options(...)``
and ``ForgeActor`` subclasses without importing :mod:`forge_sc._actor` (which imports
Monarch and the TorchForge layer above ``open_service``).
"""

from __future__ import annotations

from typing import Any

from ._config import ServiceConfig, config_field_names

__all__ = ["FORGE_ACTOR_MARK", "ActorOptions", "is_forge_actor"]

#: Set on ``ForgeActor`` (and so inherited by every subclass).
FORGE_ACTOR_MARK = "__forge_sc_actor__"


def is_forge_actor(cls: object) -> bool:
    """Whether ``cls`` is a ``ForgeActor`` subclass."""
    return isinstance(cls, type) and getattr(cls, FORGE_ACTOR_MARK, False) is True


class ActorOptions:
    """An actor class with options (``ForgeActor.options(...)`` returns the
    TorchForge-facing subclass, :class:`forge_sc.ConfiguredActor`)."""

    __slots__ = ("actor_cls", "options_")

    def __init__(self, actor_cls: type[Any], options: dict[str, Any]) -> None:
        if not is_forge_actor(actor_cls):
            raise TypeError(f"{actor_cls!r} is not a ForgeActor subclass")
        unknown = set(options) - config_field_names()
        if unknown:
            raise TypeError(
                f"{actor_cls.__name__}.options() got unknown option(s) {sorted(unknown)}; "
                f"valid options are the ServiceConfig fields: {sorted(config_field_names())}"
            )
        ServiceConfig(**options)  # validate now: a bad value fails here, naming the field
        self.actor_cls = actor_cls
        self.options_ = dict(options)

    def __repr__(self) -> str:
        return f"{self.actor_cls.__name__}.options({self.options_!r})"
