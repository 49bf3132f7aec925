"""ForgeActor and its endpoint decorators: the user-facing side of an actor class.

ForgeActor is a Monarch ``Actor``, so this module (unlike the service core) imports
Monarch. An endpoint is a Monarch endpoint that also carries the service-level options
(router, batching, idempotence) as an :class:`~forge_sc._spec.EndpointSpec`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from monarch.actor import Actor as _MonarchActor
from monarch.actor import endpoint as _monarch_endpoint

from ._options import ActorOptions
from ._routing import RoundRobinRouter
from ._spec import RESERVED_NAMES, SPEC_ATTR, EndpointSpec, make_spec
from ._tensors import default_collate, default_split, encode_result

if TYPE_CHECKING:
    from ._compat import HostedService

# The TorchForge layer (``_compat``: open_service, anyio, trio) is imported when one
# of its methods is first used: a replica's process imports this module through the
# user's actor class and needs none of it (a tenth of a second less per process).

__all__ = ["ConfiguredActor", "ForgeActor", "endpoint", "service_endpoint"]

F = TypeVar("F", bound=Callable[..., Any])

_MONARCH_NAMES = frozenset(n for n in dir(_MonarchActor) if not n.startswith("__"))


def _results_on_wire(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What Monarch runs for an endpoint: ``fn``, its result's tensors encoded for the
    trip back (see :mod:`forge_sc._tensors`; nothing happens without torch). The
    endpoint spec keeps ``fn`` itself: FakeMesh calls it in-process."""
    if getattr(fn, "_forge_sc_wire", False):
        return fn
    run: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            return encode_result(await fn(*args, **kwargs))

    elif inspect.isfunction(fn) and not inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            return encode_result(fn(*args, **kwargs))

    else:  # generators and other callables: as they are
        return fn
    run._forge_sc_wire = True  # type: ignore[attr-defined]
    return run


def _wrap(fn: Callable[..., Any], spec: EndpointSpec) -> Any:
    prop = _monarch_endpoint(fn)
    setattr(prop, SPEC_ATTR, spec)
    return prop


@overload
def endpoint(fn: F) -> F: ...
@overload
def endpoint(fn: None = None) -> Callable[[F], F]: ...
def endpoint(fn: Any = None) -> Any:
    """Mark a method of a :class:`ForgeActor` as an endpoint with TorchForge's defaults
    (``router=RoundRobinRouter, batch_size=1, batch_timeout=0.01, idempotent=True``)."""
    if fn is None:
        return endpoint
    return _wrap(fn, make_spec(fn))


def service_endpoint(
    fn: Any = None,
    *,
    router: Any = RoundRobinRouter,
    batch_size: int = 1,
    batch_timeout: float = 0.01,
    idempotent: bool = True,
    collate: Callable[[list[Any]], Any] = default_collate,
    split: Callable[[Any], Sequence[Any]] = default_split,
) -> Any:
    """An endpoint with service options.

    ``router``: a :class:`~forge_sc.Router` class or zero-argument factory; each
    service builds its own instance. ``batch_size > 1`` merges concurrent calls
    (arguments become lists, the endpoint returns a list of the same length).
    ``idempotent=False`` makes the endpoint at-most-once: it is never re-sent after
    it reached a replica.

    Batched endpoints only: ``collate(values)`` turns one parameter's values across
    a batch into what the endpoint receives, and ``split(result)`` turns its result
    into one result per call. The defaults (:func:`forge_sc.default_collate`,
    :func:`forge_sc.default_split`) stack tensors of one shape into one tensor and
    split a tensor result along its first dimension, as torch's ``default_collate``
    does; other values travel as lists. ``collate=list`` sends tensors as lists too.
    """

    def deco(f: Callable[..., Any]) -> Any:
        return _wrap(
            f,
            make_spec(
                f,
                router=router,
                batch_size=batch_size,
                batch_timeout=batch_timeout,
                idempotent=idempotent,
                collate=collate,
                split=split,
            ),
        )

    if fn is not None:
        return deco(fn)
    return deco


class ForgeActor(_MonarchActor):  # type: ignore[misc]  # Monarch ships no stubs
    """Base class of actors that forge_sc can serve.

    Decorate methods with :func:`endpoint` or :func:`service_endpoint`. An endpoint
    may not be named like an attribute of the service handle (``session``,
    ``replicas``, ``stop``, ...) or of Monarch's ``Actor``: that raises ``TypeError``
    when the class is defined.
    """

    __forge_sc_actor__ = True  # see forge_sc._options.is_forge_actor

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            is_endpoint = hasattr(value, "_method") and hasattr(value, "_propagator")
            if not is_endpoint:
                continue
            if not hasattr(value, SPEC_ATTR):
                # A plain monarch.actor.endpoint: give it forge_sc's defaults.
                setattr(value, SPEC_ATTR, make_spec(value._method))
            value._method = _results_on_wire(value._method)
            if name.startswith("_") or name in RESERVED_NAMES or name in _MONARCH_NAMES:
                raise TypeError(
                    f"{cls.__name__}.{name}: an endpoint cannot be named {name!r}; that "
                    "name belongs to the service handle or to Monarch's Actor (and names "
                    "starting with '_' are the handle's internals). Rename it."
                )

    @classmethod
    def options(cls, **options: Any) -> ConfiguredActor:
        """TorchForge-style configuration: ``Cls.options(num_replicas=2, procs=1)``.

        The keywords are :class:`ServiceConfig` fields; the result can be passed to
        ``open_service`` (explicit keywords there override these) or used with
        ``.as_service(...)`` / ``.as_actor(...)``.
        """
        return ConfiguredActor(cls, options)

    @classmethod
    async def as_service(cls, *args: Any, **kwargs: Any) -> HostedService:
        """Start a service with default options (see :meth:`ConfiguredActor.as_service`)."""
        return await ConfiguredActor(cls, {}).as_service(*args, **kwargs)

    @classmethod
    async def as_actor(cls, *args: Any, **kwargs: Any) -> Any:
        """Spawn a plain Monarch actor mesh (see :meth:`ConfiguredActor.as_actor`)."""
        return await ConfiguredActor(cls, {}).as_actor(*args, **kwargs)

    @classmethod
    async def shutdown(cls, actor: Any) -> None:
        """Stop an actor mesh made by :meth:`as_actor` and its processes."""
        from ._compat import shutdown_actor

        await shutdown_actor(actor)


class ConfiguredActor(ActorOptions):
    """An actor class with options, as returned by ``ForgeActor.options(...)``."""

    __slots__ = ()

    def options(self, **options: Any) -> ConfiguredActor:
        return ConfiguredActor(self.actor_cls, {**self.options_, **options})

    async def as_service(self, *args: Any, **kwargs: Any) -> HostedService:
        """Start a service and return its handle; stop it with ``await svc.shutdown()``.

        The service's task group lives in a dedicated host (see
        :mod:`forge_sc._compat`); prefer ``async with open_service(...)``.
        """
        from ._compat import start_hosted_service

        return await start_hosted_service(self, args, kwargs)

    async def as_actor(self, *args: Any, **kwargs: Any) -> Any:
        """Spawn the actor on ``procs`` new processes and return the Monarch actor mesh."""
        from ._compat import spawn_actor

        return await spawn_actor(self, args, kwargs)
