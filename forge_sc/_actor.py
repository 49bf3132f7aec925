"""ForgeActor and its endpoint decorators: the user-facing side of an actor class.

ForgeActor is a Monarch ``Actor``, so this module (unlike the service core) imports
Monarch. An endpoint is a Monarch endpoint that also carries the service-level options
(router, batching, idempotence) as an :class:`~forge_sc._spec.EndpointSpec`.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import traceback
from collections.abc import Callable, Mapping, Sequence
from types import CoroutineType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

import cloudpickle  # type: ignore[import-untyped]
from monarch.actor import Actor as _MonarchActor
from monarch.actor import endpoint as _monarch_endpoint

from ._config import ServiceConfig, config_field_names
from ._options import CLASS_OPTIONS, ActorOptions, class_options
from ._routing import RoundRobinRouter
from ._shims._monarch import (
    endpoint_method,
    endpoint_options,
    is_concurrent_wrapper,
    set_endpoint_method,
)
from ._spec import (
    RESERVED_NAMES,
    SETUP_ENDPOINT,
    SPEC_ATTR,
    EndpointSpec,
    make_spec,
)
from ._tensors import WIRE_ATTR, encode_result
from .mesh._kinds import def_returned_coroutine, own_cancel_error
from .observe import _carry

if TYPE_CHECKING:
    from ._compat import HostedService, SpawnedActor

# The TorchForge layer (``_compat``: open_service, anyio, trio) is imported when one
# of its methods is first used: a replica's process imports this module through the
# user's actor class and needs none of it (a tenth of a second less per process).

__all__ = ["ConfiguredActor", "ForgeActor", "endpoint", "service_endpoint"]

F = TypeVar("F", bound=Callable[..., Any])

_MONARCH_NAMES = frozenset(n for n in dir(_MonarchActor) if not n.startswith("__"))


def _sendable(fn: Callable[..., Any], exc: Exception) -> Exception:
    """``exc`` if it survives the trip to the caller (Monarch cloudpickles it there
    and back), else a ``RuntimeError`` that names it: an exception that cannot be
    pickled would end the actor on Monarch, and one that cannot be rebuilt would
    reach the caller as an unrelated ``TypeError``."""
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception as err:
        text = "".join(traceback.format_exception(exc)).rstrip()
        return RuntimeError(
            f"endpoint {fn.__name__!r} raised {type(exc).__qualname__}: {exc}, which "
            f"cannot be sent back to the caller ({type(err).__name__}: {err}). Make the "
            "exception picklable (its args must rebuild it; no locks, sockets or open "
            f"files in it), or raise a plain one. The replica's traceback:\n{text}"
        )
    return exc


def _cancelled_from_outside() -> bool:
    """Whether the running task is being cancelled (not an endpoint's own error)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running asyncio loop
        return False
    return task is not None and task.cancelling() > 0


def _results_on_wire(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What Monarch runs for an endpoint: ``fn``, its result's tensors encoded for the
    trip back (see :mod:`forge_sc._tensors`; nothing happens without torch), an
    exception that cannot travel replaced by one that says so, and an ``async def``
    endpoint's own ``CancelledError`` by :func:`own_cancel_error`. The
    endpoint spec keeps ``fn`` itself: FakeMesh calls it in-process. Endpoints that
    answer through a port (explicit response port, concurrent endpoints) and
    generators are left as they are: their results travel as Monarch pickles them."""
    if getattr(fn, WIRE_ATTR, False):
        return fn
    if is_concurrent_wrapper(fn):
        return fn
    run: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return encode_result(await fn(*args, **kwargs))
            except Exception as exc:
                raise _sendable(fn, exc) from None
            except asyncio.CancelledError as exc:
                if _cancelled_from_outside():
                    raise
                raise own_cancel_error(fn.__name__, exc) from None

    elif inspect.isfunction(fn) and not inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
                if type(result) is CoroutineType:
                    raise def_returned_coroutine(fn.__name__, result)
                return encode_result(result)
            except Exception as exc:
                raise _sendable(fn, exc) from None

    else:  # generators and other callables: as they are
        return fn
    setattr(run, WIRE_ATTR, True)
    return run


def _check_decorated(fn: Any, deco: str) -> None:
    """Refuse at once what cannot become an endpoint (it would fail only at spawn or
    at the first call, with an error that points elsewhere)."""
    if isinstance(fn, (staticmethod, classmethod)):
        kind = type(fn).__name__
        raise TypeError(
            f"@{deco} on a {kind}: an endpoint is an instance method (Monarch runs it on "
            f"the replica's actor, with self). Drop @{kind}, or have a plain method "
            f"endpoint call the {kind}."
        )
    method = endpoint_method(fn)
    if method is not None:
        raise TypeError(
            f"@{deco} on {getattr(method, '__name__', fn)!r}, which is an "
            "endpoint already: use one decorator (@service_endpoint(...) alone when the "
            "endpoint has options)."
        )
    if isinstance(fn, type) or not callable(fn):
        hint = (
            " Its options are keyword-only: @service_endpoint(batch_size=8), "
            "@service_endpoint(router=LeastLoadedRouter)."
            if deco == "service_endpoint"
            else ""
        )
        raise TypeError(
            f"@{deco} decorates a method of a ForgeActor (def or async def), got {fn!r}.{hint}"
        )


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
    _check_decorated(fn, "endpoint")
    return _wrap(fn, make_spec(fn))


def service_endpoint(
    fn: Any = None,
    *,
    router: Any = RoundRobinRouter,
    batch_size: int = 1,
    batch_timeout: float = 0.01,
    idempotent: bool = True,
    collate: str | Callable[[list[Any]], Any] | None = None,
    split: str | Callable[[Any], Sequence[Any]] | None = None,
) -> Any:
    """An endpoint with service options.

    ``router``: a :class:`~forge_sc.Router` instance (a prototype: each endpoint of
    each service gets its own deep copy, so no router state is shared), a Router
    class, or a zero-argument factory. ``batch_size > 1`` merges concurrent calls
    (arguments become lists, the endpoint returns a list of the same length).
    ``idempotent=False`` makes the endpoint at-most-once: it is never re-sent after
    it reached a replica.

    Batched endpoints only, both opt-in: by default each parameter receives the
    batch's values as a list and the endpoint returns a list.
    ``collate="stack"`` passes a parameter whose values are all tensors as one
    tensor, ``torch.stack(values)`` (other parameters stay lists), and
    ``split="unbind"`` accepts a tensor result whose first dimension is the batch
    (``result.unbind(0)``; a list is still taken as it is). Either may instead be a
    callable: ``collate(values) -> what the endpoint receives`` for each parameter,
    ``split(result) -> one result per call, in order``.
    """

    def deco(f: Callable[..., Any]) -> Any:
        _check_decorated(f, "service_endpoint")
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


def _adopt_mixin_endpoints(cls: type[Any]) -> None:
    """Copy onto ``cls`` the endpoints it inherits from classes that are not
    ForgeActors (mixins): no ``__init_subclass__`` of ours ran for them, so they get
    what ``cls``'s own endpoints get (a spec, the wire wrapper, the trace twins) on
    copies, leaving the mixin as it is. An endpoint of a ForgeActor base was done in
    that base's class statement."""
    seen = set(vars(cls))
    for base in cls.__mro__[1:]:
        done = issubclass(base, ForgeActor) or base in _MonarchActor.__mro__
        for name, value in vars(base).items():
            if name in seen:
                continue
            seen.add(name)
            if not done and endpoint_method(value) is not None:
                setattr(cls, name, copy.copy(value))


class ForgeActor(_MonarchActor):  # type: ignore[misc]  # Monarch ships no stubs
    """Base class of actors that forge_sc can serve.

    Decorate methods with :func:`endpoint` or :func:`service_endpoint`. An endpoint
    may not be named like an attribute of the service handle (``session``,
    ``replicas``, ``stop``, ...), of Monarch's ``Actor``, or like one of the
    configuration attributes below: that raises ``TypeError`` when the class is
    defined.

    The class attributes ``procs``, ``hosts``, ``with_gpus`` and ``num_replicas``
    (TorchForge's) are the defaults of ``as_service()``, ``as_actor()`` and
    ``open_service()``; ``options()`` and explicit keywords override them.
    ``_extra_config`` may hold further :class:`ServiceConfig` fields as defaults.

    An ``async def setup(self)`` endpoint, if the class defines one, runs once per
    incarnation on every rank, after ``__init__`` and before the replica takes any
    request (TorchForge's place for heavy, async initialisation such as loading a
    model). It fails like a constructor: the service does not start (or the restart
    counts against the budget in recovery).
    """

    __forge_sc_actor__ = True  # see forge_sc._options.is_forge_actor

    procs: ClassVar[int] = 1
    hosts: ClassVar[int | None] = None
    with_gpus: ClassVar[bool] = False
    num_replicas: ClassVar[int] = 1
    _extra_config: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _adopt_mixin_endpoints(cls)
        for name, value in vars(cls).items():
            method = endpoint_method(value)
            if method is None:
                inner = getattr(value, "__func__", None)
                if isinstance(value, (staticmethod, classmethod)) and endpoint_method(inner):
                    kind = type(value).__name__
                    raise TypeError(
                        f"{cls.__name__}.{name}: @{kind} over an endpoint hides it from "
                        "Monarch and the service; an endpoint is an instance method. "
                        f"Drop @{kind}."
                    )
                if name == SETUP_ENDPOINT and callable(value):
                    raise TypeError(
                        f"{cls.__name__}.setup is not an endpoint. forge_sc runs an "
                        "actor's setup() after construction only when it is one: "
                        "decorate it with @endpoint (as TorchForge does), or rename it."
                    )
                continue
            if not hasattr(value, SPEC_ATTR):
                # A plain monarch.actor.endpoint: give it forge_sc's defaults.
                setattr(value, SPEC_ATTR, make_spec(method))
            if not endpoint_options(value)["explicit_response_port"]:
                set_endpoint_method(value, _results_on_wire(method))
            if name in CLASS_OPTIONS:
                raise TypeError(
                    f"{cls.__name__}.{name}: an endpoint cannot be named {name!r}; that "
                    "class attribute is a configuration default (procs, hosts, "
                    "with_gpus, num_replicas). Rename it."
                )
            if name.startswith("_") or name in RESERVED_NAMES or name in _MONARCH_NAMES:
                raise TypeError(
                    f"{cls.__name__}.{name}: an endpoint cannot be named {name!r}; that "
                    "name belongs to the service handle or to Monarch's Actor (and names "
                    "starting with '_' are the handle's internals). Rename it."
                )
        if any(n in vars(cls) for n in (*CLASS_OPTIONS, "_extra_config")):
            _check_class_options(cls)
        # Hidden twins that carry a trace context into the replica (forge_sc.observe).
        _carry.add_twins(cls, _monarch_endpoint, endpoint_method, endpoint_options)

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
    async def as_actor(cls, *args: Any, **kwargs: Any) -> SpawnedActor:
        """Spawn the actor on new processes (see :meth:`ConfiguredActor.as_actor`)."""
        return await ConfiguredActor(cls, {}).as_actor(*args, **kwargs)

    @classmethod
    async def shutdown(cls, actor: Any) -> None:
        """Stop an actor made by :meth:`as_actor` and its processes (idempotent)."""
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

    async def as_actor(self, *args: Any, **kwargs: Any) -> SpawnedActor:
        """Spawn the actor on ``procs`` new processes (``hosts``, ``with_gpus``
        honoured; ``setup()`` run) and return its handle, whose endpoints have
        Monarch's ``choose``, ``call_one``, ``call`` and ``broadcast``, awaitable on
        asyncio and trio. Stop it with ``await ForgeActor.shutdown(actor)``."""
        from ._compat import spawn_actor

        return await spawn_actor(self, args, kwargs)


def _check_class_options(cls: type[ForgeActor]) -> None:
    extra = getattr(cls, "_extra_config", None) or {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"{cls.__name__}._extra_config must be a dict, got {extra!r}")
    unknown = set(extra) - config_field_names()
    if unknown:
        raise TypeError(
            f"{cls.__name__}._extra_config has unknown option(s) {sorted(unknown)}; "
            f"valid options are the ServiceConfig fields: {sorted(config_field_names())}"
        )
    try:
        ServiceConfig(**class_options(cls))
    except ValueError as exc:
        what = f"{cls.__name__}: a class attribute is not a valid default"
        raise ValueError(f"{what}: {exc}") from None
