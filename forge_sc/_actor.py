"""ForgeActor and its endpoint decorators: the user-facing side of an actor class.

ForgeActor is a Monarch ``Actor``, so this module (unlike the service core) imports
Monarch. An endpoint is a Monarch endpoint that also carries the service-level options
(router, batching, idempotence) as an :class:`~forge_sc.service._endpoints.EndpointSpec`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from monarch.actor import Actor as _MonarchActor
from monarch.actor import endpoint as _monarch_endpoint

from ._config import ServiceConfig, config_field_names
from .observe import _carry
from .routing import RoundRobinRouter
from .service._endpoints import RESERVED_NAMES, SPEC_ATTR, EndpointSpec, make_spec

if TYPE_CHECKING:
    from .mesh.compat import HostedService

__all__ = ["ConfiguredActor", "ForgeActor", "endpoint", "service_endpoint"]

F = TypeVar("F", bound=Callable[..., Any])

_MONARCH_NAMES = frozenset(n for n in dir(_MonarchActor) if not n.startswith("__"))


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
) -> Any:
    """An endpoint with service options.

    ``router``: a :class:`~forge_sc.Router` class or zero-argument factory; each
    service builds its own instance. ``batch_size > 1`` merges concurrent calls
    (arguments become lists, the endpoint returns a list of the same length).
    ``idempotent=False`` makes the endpoint at-most-once: it is never re-sent after
    it reached a replica.
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            is_endpoint = hasattr(value, "_method") and hasattr(value, "_propagator")
            if not is_endpoint:
                continue
            if not hasattr(value, SPEC_ATTR):
                # A plain monarch.actor.endpoint: give it forge_sc's defaults.
                setattr(value, SPEC_ATTR, make_spec(value._method))
            if name.startswith("_") or name in RESERVED_NAMES or name in _MONARCH_NAMES:
                raise TypeError(
                    f"{cls.__name__}.{name}: an endpoint cannot be named {name!r}; that "
                    "name belongs to the service handle or to Monarch's Actor (and names "
                    "starting with '_' are the handle's internals). Rename it."
                )
        # Hidden twins that carry a trace context into the replica (forge_sc.observe).
        _carry.add_twins(cls, _monarch_endpoint)

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
        from .mesh.compat import shutdown_actor

        await shutdown_actor(actor)


class ConfiguredActor:
    """An actor class with options, as returned by ``ForgeActor.options(...)``."""

    __slots__ = ("actor_cls", "options_")

    def __init__(self, actor_cls: type[ForgeActor], options: dict[str, Any]) -> None:
        if not (isinstance(actor_cls, type) and issubclass(actor_cls, ForgeActor)):
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

    def options(self, **options: Any) -> ConfiguredActor:
        return ConfiguredActor(self.actor_cls, {**self.options_, **options})

    async def as_service(self, *args: Any, **kwargs: Any) -> HostedService:
        """Start a service and return its handle; stop it with ``await svc.shutdown()``.

        The service's task group lives in a dedicated host (see
        :mod:`forge_sc.mesh.compat`); prefer ``async with open_service(...)``.
        """
        from .mesh.compat import start_hosted_service

        return await start_hosted_service(self, args, kwargs)

    async def as_actor(self, *args: Any, **kwargs: Any) -> Any:
        """Spawn the actor on ``procs`` new processes and return the Monarch actor mesh."""
        from .mesh.compat import spawn_actor

        return await spawn_actor(self, args, kwargs)
