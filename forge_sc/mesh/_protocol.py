"""The mesh protocol: spawn one replica, call it, probe it, stop it.

The service core never imports a runtime; it speaks this small async protocol.
Contract every backend keeps (the core relies on each point):

* ``spawn`` returns only once the actor is constructed and can answer; if the
  constructor raises or the actor's module cannot be imported, ``spawn`` raises that
  error (or an exception whose message says why) and leaves nothing running.
* ``call`` runs in the caller's task. It returns the endpoint's result, re-raises the
  endpoint's own exception (original type), or raises :class:`ReplicaGone` when the
  replica is dead or stopped. After the replica dies or ``stop()`` is called, every
  in-flight ``call`` raises ``ReplicaGone`` promptly: this is how the core interrupts
  the calls registered with a dying incarnation, without paying for a cancel scope
  per request. When the backend knows that this very call killed the replica (its
  endpoint let out an exception that ends the actor: a ``BaseException`` that is not
  an ``Exception``), ``call`` raises :class:`CallKilledReplica` instead, a
  ``ReplicaGone`` the core must not re-send (it would kill the next replica too).
* If the caller is cancelled during ``call`` and the backend cannot abort the remote
  work (``detaches_on_cancel``), the call is abandoned: the backend invokes the
  ``on_abandoned_settled`` callback of the :class:`SpawnSpec`, on the event loop
  thread, when that remote work finally resolves, so the core can count the replica
  busy until then.
* ``ping`` answers quickly while the replica is alive even if its actor is busy; the
  core bounds it with ``health_timeout``.
* ``wait_dead`` returns (with the reason) as soon as the backend learns that the
  replica died; it never returns for a healthy replica.
* ``stop`` is idempotent, safe to call on a half-built or dead replica, bounded in
  time (a process that cannot answer is killed), and is called by the core inside a
  shielded scope.
* Optionally, a mesh has ``check_capacity(spec, count)``: it raises
  :class:`~forge_sc.errors.PlacementError` when ``count`` more replicas like ``spec``
  can never be placed (a pool of hosts too small). The core calls it, once the
  lifespan is entered, before the first spawns and before ``scale_to`` adds replicas.
* A spawn with ``spare=True`` is a warm spare: it takes no traffic until the core
  promotes it to serve replica ``idx`` by calling its optional ``promote(idx)``
  (a backend that files replicas by index, like FakeMesh, files it then); before
  that its ``idx`` is -1. A spare's ``on_abandoned_settled`` is bound late, to
  whichever incarnation it becomes.
* Optionally, a replica whose endpoints run in the caller's own task (an in-process
  backend) offers *direct calls* (:class:`DirectCalls`): the core then awaits the
  endpoint's coroutine in its own frame instead of awaiting ``call``, which saves a
  coroutine frame that every suspension of every request would cross (the largest
  single cost of an in-process request after the event loop's own). The core keeps
  the backend's bookkeeping around such a call exactly as ``call`` would: it adds the
  calling task to ``calls`` before the endpoint starts and removes it when the
  endpoint ends; ``call`` remains the path for everything ``direct`` does not offer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, NoReturn, Protocol, runtime_checkable

import attrs

__all__ = [
    "CallKilledReplica",
    "CallNotSent",
    "CallerGone",
    "DirectCalls",
    "Mesh",
    "MeshReplica",
    "ReplicaGone",
    "ReplicaStartError",
    "SpawnSpec",
]


class ReplicaGone(Exception):
    """Raised by a backend's ``call`` or ``ping`` when the replica's process is dead,
    unreachable, or stopped. Internal to forge_sc: the core turns it into a retry, a
    migration, or a :class:`~forge_sc.errors.ReplicaDiedError`."""


class CallerGone(BaseException):
    """What a backend may throw into a call whose *caller* went away without a
    cancellation of the caller's own: an in-process mesh interrupting the task of a
    replica that died while that task, inside an endpoint, waited on another service.
    The core treats it as a withdrawn request (not a failure of this one), like a
    cancellation, and lets it pass."""


class CallKilledReplica(ReplicaGone):
    """Raised by ``call`` instead of :class:`ReplicaGone` when the backend's account of
    the death shows that this call itself killed the replica: its endpoint let out an
    exception that ends the actor (on Monarch, a ``BaseException`` that is not an
    ``Exception`` raised by a plain endpoint, or anything raised by an endpoint with an
    explicit response port). The message says what was raised. The core does not
    re-send such a call: it raises
    :class:`~forge_sc.errors.RequestKilledReplicaError` to the caller, and the replica
    is restarted as after any death."""


class CallNotSent(ReplicaGone):
    """Raised by ``call`` instead of :class:`ReplicaGone` when the backend knew the
    replica dead (or stopped) before it sent the call: the call ran nowhere. The core
    places the request again without counting a send (``max_attempts``), also for an
    ``idempotent=False`` endpoint. Raise it only with that certainty; when in doubt,
    raise :class:`ReplicaGone`."""


class ReplicaStartError(RuntimeError):
    """A replica's processes or actor could not be started. The message says why: on
    Monarch it carries Monarch's report (the constructor's traceback, the import
    error, or how the process exited)."""


def _noop() -> None:
    return None


@attrs.frozen
class SpawnSpec:
    """Everything a backend needs to start one replica."""

    idx: int
    actor_cls: type[Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    procs: int = 1
    hosts: int | None = None
    with_gpus: bool = False
    return_first_rank_result: bool = True
    #: A warm spare, kept out of rotation until promoted (see the module docstring).
    spare: bool = False
    #: Called (on the event loop thread) when a call abandoned by a cancelled caller
    #: finally resolves on the replica. Only backends that detach on cancel call it.
    on_abandoned_settled: Callable[[], None] = _noop


@runtime_checkable
class MeshReplica(Protocol):
    """One running incarnation of a replica."""

    #: True when a cancelled caller leaves the remote call running (Monarch); False
    #: when cancelling the caller cancels the endpoint itself (FakeMesh).
    detaches_on_cancel: bool

    # Optional, not part of the structural check: ``death``, how the replica died as
    # fully as the backend knows it once ``stop()`` returned (None if it did not).
    # The core quotes it as the escalation cause when present. ``promote(idx)``: a
    # warm spare now serves replica ``idx``. ``stop_before_respawn``: True when the
    # next incarnation must not start before this one's ``stop()`` returned (the core
    # otherwise starts it while the dead one is stopped).

    async def call(self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``endpoint`` on this replica and return its result (the first rank's,
        or a list per rank when ``return_first_rank_result`` is false)."""
        ...

    async def ping(self) -> None:
        """Return when the replica's process is alive; raise ``ReplicaGone`` if not."""
        ...

    async def wait_dead(self) -> BaseException:
        """Return the reason as soon as the backend learns the replica died."""
        ...

    async def stop(self) -> None:
        """Stop the replica and its processes; idempotent; in-flight calls then raise
        ``ReplicaGone``."""
        ...


class DirectCalls(Protocol):
    """The optional direct-call interface of a :class:`MeshReplica` (see the module
    docstring). A request that uses it runs, in the caller's task::

        fn = direct.get(endpoint)                  # None: use call() instead
        task = current_task(); calls.add(task)
        try:
            result = await fn(*args, **kwargs)
        except Exception:                          # the endpoint's own exception
            calls.discard(task); raise
        except BaseException as exc:               # cancelled, interrupted, killed...
            calls.discard(task)
            await direct_failed(endpoint, exc)     # raises what call() would have
        calls.discard(task)
        if not alive:                              # it died while the call ran
            await direct_failed(endpoint, None)
    """

    #: Endpoint name -> the endpoint bound to the replica's actor, returning the
    #: endpoint's coroutine, for the endpoints that may be called directly *now*. The
    #: backend updates this mapping in place (the core keeps a reference): it holds
    #: no entry while calls must go through ``call`` (the replica is dead, slowed,
    #: has several ranks, or answers with a list per rank).
    direct: Mapping[str, Callable[..., Any]]
    #: The tasks running a direct call on this replica; when it dies, the backend
    #: interrupts them where they wait (as ``call`` does with its own).
    calls: set[Any]
    #: False once the replica died or stopped: a direct call that returned meanwhile
    #: has no answer.
    alive: bool

    def current_task(self) -> Any:
        """The calling task, as ``calls`` holds it."""
        ...

    async def direct_failed(self, endpoint: str, exc: BaseException | None) -> NoReturn:
        """A direct call of ``endpoint`` let out ``exc`` (a ``BaseException`` that is
        not an ``Exception``), or returned after the replica died (``exc`` None); the
        calling task has left ``calls``. Raise what ``call`` would have raised: the
        exception itself, :class:`ReplicaGone` (waiting first, for a hung replica,
        until it is stopped), or :class:`CallKilledReplica`."""
        ...


@runtime_checkable
class Mesh(Protocol):
    """A backend that spawns replicas."""

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """Entered by the service before the first spawn and left after the last
        replica stopped: backend-wide resources (a runtime bridge, a fault hook) live
        exactly this long."""
        ...

    async def spawn(self, spec: SpawnSpec) -> MeshReplica:
        """Start one replica; see the module docstring for the contract."""
        ...
