"""``open_service``: validate everything, then return the service's scope."""

from __future__ import annotations

from typing import Any

from ._config import ServiceConfig, config_field_names
from ._options import ActorOptions, class_options, is_forge_actor
from ._service._scope import ServiceScope
from ._service._service import Service
from ._spec import collect_endpoints
from .mesh._protocol import Mesh

__all__ = ["open_service"]

_UNSET: Any = object()


def open_service(
    actor_cls: type[Any] | ActorOptions,
    *args: Any,
    mesh: Mesh | None = None,
    num_replicas: int = _UNSET,
    spare_replicas: int = _UNSET,
    procs: int = _UNSET,
    hosts: int | None = _UNSET,
    with_gpus: bool = _UNSET,
    health_poll_rate: float = _UNSET,
    replica_max_concurrent_requests: int = _UNSET,
    return_first_rank_result: bool = _UNSET,
    health_timeout: float = _UNSET,
    max_queued_requests: int | None = _UNSET,
    request_timeout: float | None = _UNSET,
    max_attempts: int = _UNSET,
    max_restarts: int = _UNSET,
    restart_window: float = _UNSET,
    restart_backoff: float = _UNSET,
    graceful_shutdown_timeout: float = _UNSET,
    min_replicas: int | None = _UNSET,
    max_replicas: int | None = _UNSET,
    target_ongoing_requests: float = _UNSET,
    upscale_delay: float = _UNSET,
    downscale_delay: float = _UNSET,
    **kwargs: Any,
) -> ServiceScope:
    """Open a service: ``async with open_service(Actor, *args, num_replicas=4) as svc``.

    The keyword-only parameters are :class:`ServiceConfig` fields; every other keyword
    goes to the actor's constructor. ``actor_cls`` may be ``Actor.options(...)``,
    whose values are defaults that explicit keywords override. ``mesh`` defaults to
    :class:`~forge_sc.mesh.monarch.MonarchMesh` (real processes); pass
    ``forge_sc.testing.FakeMesh()`` to run in-process.

    Everything is validated here, before anything starts: a class that is not a
    ``ForgeActor`` raises ``TypeError``, a bad config value ``ValueError`` naming the
    field. The body is entered once every replica is healthy; if a replica cannot be
    built, ``ServiceFailedError`` is raised with the cause chained. Leaving the block
    closes admission, lets in-flight requests finish (``graceful_shutdown_timeout``)
    and stops every replica and process.
    """
    explicit = {
        name: value
        for name, value in locals().items()
        if name in config_field_names() and value is not _UNSET
    }
    return ServiceScope(build_service(actor_cls, args, kwargs, explicit, mesh))


def build_service(
    actor_cls: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    explicit: dict[str, Any],
    mesh: Mesh | None,
) -> Service:
    """Validate and construct a (not yet running) Service."""
    configured = actor_cls if isinstance(actor_cls, ActorOptions) else None
    if configured is not None:
        actor_cls = configured.actor_cls
    if not is_forge_actor(actor_cls):
        raise TypeError(
            f"open_service() needs a ForgeActor subclass, got {actor_cls!r}; "
            "derive your actor from forge_sc.ForgeActor"
        )
    # Class attributes < options() < explicit keywords.
    options = configured.config_options() if configured else class_options(actor_cls)
    config = ServiceConfig(**{**options, **explicit})
    endpoints = collect_endpoints(actor_cls)
    if mesh is None:
        from .mesh.monarch import MonarchMesh

        mesh = MonarchMesh()
    elif isinstance(mesh, type):
        raise TypeError(
            f"mesh= needs a mesh instance, got the class {mesh.__name__}; "
            f"write mesh={mesh.__name__}() (one per service)"
        )
    elif not isinstance(mesh, Mesh):
        raise TypeError(f"mesh= must implement forge_sc.mesh.Mesh, got {mesh!r}")
    return Service._create(actor_cls, tuple(args), kwargs, config, mesh, endpoints)
