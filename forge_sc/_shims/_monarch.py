"""Monarch's private APIs that forge_sc relies on (torchmonarch 0.7.0).

Each one is used for a reason Monarch's public API does not cover:

* ``SupervisionError``: the exception a call to a dead process raises; Monarch exports
  it only from its native bindings. It tells a replica's death from the endpoint's own
  exception (``monarch.actor.ActorError``).
* ``PythonTask``: runs a coroutine on Monarch's own runtime; the trio bridge uses it to
  await Monarch futures without an asyncio loop (see ``forge_sc.mesh._bridge``).
* ``supervision``: the module whose ``unhandled_fault_hook`` is Monarch's default
  (which exits the process); the fault hook forge_sc installs chains to whatever was
  installed before, and must recognise that default to replace it.
* ``ready_endpoint``: a call of ``object.__sizeof__`` on an actor mesh, whose answer can
  only follow ``__init__`` (the actor's mailbox is serial): readiness without adding an
  endpoint to the user's class.
* ``endpoint_method`` / ``endpoint_options`` / ``set_endpoint_method``: what a Monarch
  endpoint descriptor wraps (the function, and the options to rebuild an endpoint like
  it), and replacing that function (forge_sc wraps it to encode tensor results).
* ``is_concurrent_wrapper``: the marker Monarch sets on the wrapper of a
  ``concurrent_endpoint`` (such an endpoint does not hold the actor's mailbox).
* ``EndpointProperty`` / ``actor_kind``: the type of an endpoint descriptor on a class,
  and Monarch's own check of an actor class (the one ``spawn`` makes), so that a bad
  class fails before any process starts (see ``forge_sc.mesh._kinds``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monarch._rust_bindings.monarch_hyperactor.pytokio import PythonTask as PythonTask
from monarch._rust_bindings.monarch_hyperactor.supervision import (
    SupervisionError as SupervisionError,
)
from monarch._src.actor import supervision as supervision
from monarch._src.actor.actor_mesh import MethodSpecifier
from monarch._src.actor.actor_mesh import _actor_kind as actor_kind
from monarch._src.actor.endpoint import EndpointProperty as EndpointProperty

__all__ = [
    "EndpointProperty",
    "PythonTask",
    "SupervisionError",
    "actor_kind",
    "endpoint_method",
    "endpoint_options",
    "is_concurrent_wrapper",
    "ready_endpoint",
    "set_endpoint_method",
    "supervision",
]


def ready_endpoint(actor_mesh: Any) -> Any:
    """An endpoint of ``actor_mesh`` whose reply can only follow ``__init__``."""
    return actor_mesh._endpoint(
        MethodSpecifier.ReturnsResponse("__sizeof__"), object.__sizeof__, None
    )


def endpoint_method(value: object) -> Callable[..., Any] | None:
    """The function a Monarch endpoint descriptor wraps, or None if ``value`` is not
    one (``monarch.actor.endpoint`` returns such a descriptor)."""
    method = getattr(value, "_method", None)
    if method is None or not hasattr(value, "_propagator"):
        return None
    return method  # type: ignore[no-any-return]


def set_endpoint_method(value: object, fn: Callable[..., Any]) -> None:
    """Make the Monarch endpoint descriptor ``value`` run ``fn`` (on the replica)."""
    if endpoint_method(value) is None:
        raise TypeError(f"{value!r} is not a Monarch endpoint")
    value._method = fn  # type: ignore[attr-defined]


def endpoint_options(value: object) -> dict[str, Any]:
    """The keyword options of ``monarch.actor.endpoint`` that built ``value``."""
    return {
        "propagate": getattr(value, "_propagator"),  # noqa: B009
        "explicit_response_port": getattr(value, "_explicit_response_port", False),
        "instrument": getattr(value, "_instrument", True),
    }


#: The attribute Monarch sets on the wrapper of a ``concurrent_endpoint``.
_CONCURRENT_MARKER = "_monarch_concurrent_endpoint_wrapper"


def is_concurrent_wrapper(method: object) -> bool:
    """Whether ``method`` is the wrapper ``concurrent_endpoint`` makes."""
    return bool(getattr(method, _CONCURRENT_MARKER, False))
