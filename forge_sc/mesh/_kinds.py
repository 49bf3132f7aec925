"""The kind of each endpoint of an actor class, as Monarch runs it.

Both backends need to know it: FakeMesh to run each kind as Monarch does (its own
contract is to agree with Monarch), MonarchMesh to tell which call killed a replica.
Measured on torchmonarch 0.7.0 (``tests/adversarial/test_mesh_kinds.py`` and
``tests/monarch/test_monarch_adversarial.py`` check every row on both backends):

==============  ===========================================  ==============================
kind            what the caller gets                         what ends the actor
==============  ===========================================  ==============================
``ASYNC``       the result, or the endpoint's ``Exception``  a ``BaseException`` that is
                (a ``CancelledError`` of its own: the        not an ``Exception``
                ``RuntimeError`` of ``own_cancel_error``)
``SYNC``        the same (an actor whose endpoints are all   the same
                plain ``def``; mixing raises at spawn)
``CONCURRENT``  the result, or whatever the body raised,     nothing the body raises
                ``BaseException`` included
``PORT``        what the body sent with ``port.send(v)`` or  anything the body raises
                ``port.exception(e)`` (the first one);
                never answers if it sent nothing
``GENERATOR``   ``TypeError`` (a generator cannot be         nothing (the body never runs)
                pickled back); the actor lives
==============  ===========================================  ==============================

Calls of the kinds that hold the mailbox (all but ``CONCURRENT``) run one at a time per
process, in the order they were sent. This module is the one place that reads
Monarch's endpoint internals, each through :mod:`forge_sc._shims._monarch`.
"""

from __future__ import annotations

import enum
import inspect
import os
import re
import traceback
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import attrs

from .._shims._monarch import (
    EndpointProperty,
    actor_kind,
    endpoint_method,
    endpoint_options,
    is_concurrent_wrapper,
)
from .._tensors import WIRE_ATTR

__all__ = ["EndpointInfo", "Kind", "check_actor_kind", "endpoint_kinds", "own_cancel_error"]


class Kind(enum.Enum):
    ASYNC = "async"
    SYNC = "sync"
    CONCURRENT = "concurrent"
    PORT = "port"
    GENERATOR = "generator"


@attrs.frozen
class EndpointInfo:
    """One endpoint: its kind, the user's own function, and where that function is
    (the file's base name and the function's name, as a traceback shows them)."""

    name: str
    kind: Kind
    #: The user's method, ``(self, *args)`` (``(self, port, *args)`` for ``PORT``).
    fn: Callable[..., Any]
    #: Also ``True`` for a concurrent endpoint with an explicit port.
    explicit_port: bool
    where: tuple[str, str]

    @property
    def holds_mailbox(self) -> bool:
        """Whether its calls run one at a time per process, in the order sent."""
        return self.kind is not Kind.CONCURRENT

    @property
    def forwards_everything(self) -> bool:
        """Whether whatever its body raises goes to the caller, ``BaseException``
        included, and the actor lives (a concurrent endpoint without an explicit port)."""
        return self.kind is Kind.CONCURRENT and not self.explicit_port

    def killed(self, what: str) -> str:
        """Why a call of this endpoint killed its replica (``what`` it raised), and
        what to do instead: the message of :class:`~forge_sc.mesh.CallKilledReplica`."""
        if self.explicit_port:
            return (
                f"Its endpoint {self.name!r} (explicit response port) raised {what}; "
                "anything such an endpoint raises ends the actor on Monarch. Answer the "
                "caller with port.exception(e) instead."
            )
        return (
            f"Its endpoint {self.name!r} raised {what}, a BaseException that is not an "
            "Exception, which ends the actor on Monarch. Raise an Exception subclass "
            "instead: it reaches the caller and the replica lives."
        )


def _endpoint_properties(actor_cls: type[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for klass in reversed(actor_cls.__mro__):
        for attr_name, value in vars(klass).items():
            if isinstance(value, EndpointProperty):
                found[attr_name] = value
            else:
                found.pop(attr_name, None)
    return found


def _info(name: str, prop: Any) -> EndpointInfo:
    method = endpoint_method(prop)
    assert method is not None  # an EndpointProperty wraps a function
    if getattr(method, WIRE_ATTR, False):
        # A ForgeActor's endpoint as Monarch runs it (its result's tensors encoded
        # for the wire); the kind, and what FakeMesh calls, are the user's own.
        method = method.__wrapped__  # type: ignore[attr-defined]
    explicit = bool(endpoint_options(prop)["explicit_response_port"])
    if is_concurrent_wrapper(method):
        user = inspect.unwrap(method)
        # The wrapper always takes a port; it added one unless the user's method has it.
        explicit = len(inspect.signature(method).parameters) == len(
            inspect.signature(user).parameters
        )
        kind = Kind.CONCURRENT
    else:
        user = method
        if inspect.isgeneratorfunction(user) or inspect.isasyncgenfunction(user):
            kind = Kind.GENERATOR
        elif explicit:
            kind = Kind.PORT
        elif inspect.iscoroutinefunction(user):
            kind = Kind.ASYNC
        else:
            kind = Kind.SYNC
    code = getattr(inspect.unwrap(user), "__code__", None)
    where = ("", name) if code is None else (os.path.basename(code.co_filename), code.co_name)
    return EndpointInfo(name=name, kind=kind, fn=user, explicit_port=explicit, where=where)


def endpoint_kinds(actor_cls: type[Any]) -> Mapping[str, EndpointInfo]:
    """Every Monarch endpoint of ``actor_cls`` (its own and inherited), by name."""
    return {name: _info(name, prop) for name, prop in _endpoint_properties(actor_cls).items()}


#: forge_sc's hidden tracing twins of each endpoint, in a Monarch message's name lists.
_TWIN_NAMES = re.compile(r"'_forge_sc_traced_\w+'(, )?")


def check_actor_kind(actor_cls: type[Any]) -> None:
    """Raise Monarch's own ``ValueError`` for a class Monarch refuses to spawn (sync
    and async endpoints mixed, a hook of the other kind), naming the user's endpoints
    only; a generator endpoint, which Monarch counts as sync, is pointed out."""
    try:
        actor_kind(actor_cls)
    except ValueError as exc:
        message = _TWIN_NAMES.sub("", str(exc)).replace(", ]", "]")
        gens = sorted(n for n, i in endpoint_kinds(actor_cls).items() if i.kind is Kind.GENERATOR)
        if gens:
            message += (
                f" (Monarch counts the generator endpoint(s) {gens} as sync; a generator "
                "cannot be sent back to a caller anyway: return a list instead.)"
            )
        raise ValueError(message) from None


def own_cancel_error(name: str, exc: BaseException) -> RuntimeError:
    """What the caller gets for an ``async def`` endpoint that let out a
    ``CancelledError`` of its own (it awaited a future or task that something else
    cancelled; its caller was not cancelled): an error of that call. Let out as it
    is, it would end the actor on Monarch 0.7.0 (measured: that call and every later
    one never answer, while the actor's process lives)."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    return RuntimeError(
        f"endpoint {name!r} let out a CancelledError of its own (it awaited a future "
        "or task that something else cancelled; its caller was not cancelled). Catch "
        "it inside the endpoint, or shield what must not be cancelled under it "
        f"(asyncio.shield). The replica's traceback:\n{text}"
    )


def def_returned_coroutine(name: str, coro: Coroutine[Any, Any, Any]) -> TypeError:
    """What the caller gets for a plain ``def`` endpoint that returned a coroutine:
    Monarch sends a plain def's return value back as it is, and a coroutine cannot
    be pickled (FakeMesh, which passes results by reference, refuses it too, so a
    test does not pass on what fails on processes). The coroutine is closed unrun."""
    coro.close()
    return TypeError(
        f"endpoint {name!r} is a plain def that returned a coroutine "
        f"({getattr(coro, '__qualname__', coro)!r}), which it never awaited; a "
        "coroutine cannot be sent back to the caller. Make the endpoint async def and "
        "await it."
    )
