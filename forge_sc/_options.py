"""Actor options: an actor class with its service options, and what makes a class
an actor forge_sc can serve.

This sits below ``open_service`` so that it can recognise ``Actor.options(...)``
and ``ForgeActor`` subclasses without importing :mod:`forge_sc._actor` (which imports
Monarch and the TorchForge layer above ``open_service``).
"""

from __future__ import annotations

from typing import Any

from ._config import ServiceConfig, config_field_names

__all__ = ["CLASS_OPTIONS", "FORGE_ACTOR_MARK", "ActorOptions", "class_options", "is_forge_actor"]

#: Set on ``ForgeActor`` (and so inherited by every subclass).
FORGE_ACTOR_MARK = "__forge_sc_actor__"

#: The ForgeActor class attributes that are configuration defaults (TorchForge's).
CLASS_OPTIONS = ("procs", "hosts", "with_gpus", "num_replicas")


def is_forge_actor(cls: object) -> bool:
    """Whether ``cls`` is a ``ForgeActor`` subclass."""
    return isinstance(cls, type) and getattr(cls, FORGE_ACTOR_MARK, False) is True


def class_options(actor_cls: type[Any]) -> dict[str, Any]:
    """The configuration defaults an actor class declares: its ``procs``, ``hosts``,
    ``with_gpus`` and ``num_replicas`` attributes, then its ``_extra_config``."""
    found = {name: getattr(actor_cls, name) for name in CLASS_OPTIONS}
    found.update(getattr(actor_cls, "_extra_config", None) or {})
    return found


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
        # Validate now, with the class defaults: a bad value fails here, naming the field.
        ServiceConfig(**{**class_options(actor_cls), **options})
        self.actor_cls = actor_cls
        self.options_ = dict(options)

    def __repr__(self) -> str:
        return f"{self.actor_cls.__name__}.options({self.options_!r})"

    def config_options(self) -> dict[str, Any]:
        """The class defaults (see :func:`class_options`) with these options on top."""
        return {**class_options(self.actor_cls), **self.options_}
