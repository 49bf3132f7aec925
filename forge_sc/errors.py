"""Typed errors of forge_sc.

Every request ends in exactly one way: its result, the endpoint's own exception
(re-raised with its original type), or one of the exceptions below. Each message
says what happened and what to do about it.

TorchForge raised ``RuntimeError`` when no replica was healthy, when a replica died or
stopped under a request, and on a stopped service; the errors of those cases here
are ``RuntimeError`` too, so a TorchForge user's ``except RuntimeError`` still
catches them: :class:`NoHealthyReplicasError`, :class:`ReplicaDiedError`,
:class:`ServiceClosedError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

__all__ = [
    "BatchResultError",
    "FanoutError",
    "HostsUnreachableError",
    "NoHealthyReplicasError",
    "PlacementError",
    "ReplicaDiedError",
    "RequestKilledReplicaError",
    "ServiceClosedError",
    "ServiceError",
    "ServiceFailedError",
    "ServiceOverloadedError",
]


class ServiceError(Exception):
    """Base class of every error raised by a forge_sc service."""


class NoHealthyReplicasError(ServiceError, RuntimeError):
    """No replica could take the request: none was healthy within ``request_timeout``,
    or every replica is out of its restart budget. A ``RuntimeError``, as in
    TorchForge (``call_all`` "raises RuntimeError if no healthy replicas")."""


class ServiceClosedError(ServiceError, RuntimeError):
    """The service is closing or closed; it accepts no new requests, and requests
    still running when ``graceful_shutdown_timeout`` ran out were cancelled. Also
    raised by a call to an actor made by ``as_actor()`` after
    ``ForgeActor.shutdown(actor)``. A ``RuntimeError``, as in TorchForge."""


class ReplicaDiedError(ServiceError, RuntimeError):
    """The replica running the request died and the request could not be re-sent:
    ``max_attempts`` sends were used up, or the endpoint is ``idempotent=False``. A
    ``RuntimeError``, as TorchForge's error for a request on a failed replica."""


class RequestKilledReplicaError(ReplicaDiedError):
    """The request killed the replica that ran it, so it was not re-sent (it would kill
    the next replica too). Its endpoint let out an exception that ends the actor: on
    Monarch, a ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``, ``GeneratorExit``, a custom subclass) raised by a plain endpoint,
    or anything raised by an endpoint with an explicit response port; FakeMesh does
    the same. The replica is restarted once, as after any death. The message names
    what was raised; ``__cause__`` is the backend's account (on FakeMesh, its own
    ``__cause__`` is the exception itself). To reach the caller without losing the
    replica, raise an ``Exception`` subclass instead."""


class ServiceOverloadedError(ServiceError):
    """Every healthy replica was at ``replica_max_concurrent_requests`` for longer than
    ``request_timeout``, or the service queue reached ``max_queued_requests``."""


class ServiceFailedError(ServiceError):
    """The service gave up: a replica could not be started while the service was
    starting, or every replica used up its restart budget. The cause is chained."""


class PlacementError(ServiceError, ValueError):
    """The replicas asked for cannot be placed on the mesh's pool of hosts: a replica
    needs more hosts than the pool has, or the hosts have too few free process slots
    or GPUs. Raised by ``open_service`` and ``scale_to`` before anything starts; the
    message names what was asked and what is free. Also raised (as a failed spawn,
    counted against the restart budget) by a recovering replica that found no free
    host for the mesh's ``host_wait`` seconds."""


class HostsUnreachableError(ServiceError, ConnectionError):
    """Hosts of the mesh's pool did not answer in time when the service started: no
    Monarch worker listens at the address, a firewall drops the connection, or the
    transport or its TLS certificates do not match. The message names each host and
    what was tried; nothing was left running."""


class BatchResultError(ServiceError, ValueError):
    """A batched endpoint returned something other than a list with one result per
    merged call; every caller of that batch gets this error."""


class FanoutError(ExceptionGroup[Exception], ServiceError):
    """A fan-out where at least one replica's endpoint raised.

    It is an ``ExceptionGroup`` of the per-replica exceptions (so ``except*`` works);
    ``errors`` maps replica index to its exception and ``results`` maps replica index
    to the value of every replica that succeeded.
    """

    errors: dict[int, Exception]
    results: dict[int, Any]

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[Exception],
        results: Mapping[int, Any] | None = None,
        errors: Mapping[int, Exception] | None = None,
    ) -> Self:
        self = super().__new__(cls, message, exceptions)
        self.results = dict(results or {})
        self.errors = dict(errors or {})
        return self

    def __init__(
        self,
        message: str,
        exceptions: Sequence[Exception],
        results: Mapping[int, Any] | None = None,
        errors: Mapping[int, Exception] | None = None,
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> FanoutError:  # type: ignore[override]
        kept = {i: e for i, e in self.errors.items() if e in excs}
        return FanoutError(self.message, excs, self.results, kept)
