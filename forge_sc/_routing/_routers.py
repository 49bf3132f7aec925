"""The built-in routers and the Router protocol.

A router is asked for one replica out of ``healthy_replicas``: the healthy replicas
that can take a request now, in replica-index order, never empty. It returns one of
them. Routers are synchronous (they run on the request's hot path) and never mutate
what they are given: the service, not the router, records session assignments.
"""

from __future__ import annotations

import copy
import inspect
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._replica import Replica

__all__ = [
    "LeastLoadedRouter",
    "PowerOfTwoRouter",
    "RoundRobinRouter",
    "Router",
    "RouterFactory",
    "SessionRouter",
    "make_router_factory",
]


class Router:
    """Base class of routers. Subclass it and implement :meth:`get_replica`."""

    def get_replica(
        self,
        healthy_replicas: Sequence[Replica],
        sess_id: str | None = None,
        session_map: Mapping[str, int] | None = None,
    ) -> Replica:
        """Return one replica of ``healthy_replicas`` (never empty).

        ``sess_id`` and ``session_map`` (session id to replica index, read-only) are
        given when the request belongs to a session.
        """
        raise NotImplementedError


RouterFactory = Callable[[], Router]


class RoundRobinRouter(Router):
    """Each request goes to the next replica in turn."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def get_replica(
        self,
        healthy_replicas: Sequence[Replica],
        sess_id: str | None = None,
        session_map: Mapping[str, int] | None = None,
    ) -> Replica:
        n = len(healthy_replicas)
        i = self._next
        if i >= n:
            i = 0
        self._next = i + 1
        return healthy_replicas[i]


class LeastLoadedRouter(Router):
    """The replica with the fewest requests in flight (queued ones included); ties go
    to the one with fewest assigned sessions, then to the lowest index. (The session
    tie-break spreads sessions that start one after another over the replicas.)"""

    __slots__ = ()

    def get_replica(
        self,
        healthy_replicas: Sequence[Replica],
        sess_id: str | None = None,
        session_map: Mapping[str, int] | None = None,
    ) -> Replica:
        best = healthy_replicas[0]
        best_key = (best.current_load, best.assigned_sessions)
        for r in healthy_replicas:
            key = (r.current_load, r.assigned_sessions)
            if key < best_key:
                best, best_key = r, key
        return best


class PowerOfTwoRouter(Router):
    """Two replicas drawn at random; the less loaded one wins. Seedable."""

    __slots__ = ("_rng",)

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def get_replica(
        self,
        healthy_replicas: Sequence[Replica],
        sess_id: str | None = None,
        session_map: Mapping[str, int] | None = None,
    ) -> Replica:
        n = len(healthy_replicas)
        if n == 1:
            return healthy_replicas[0]
        a, b = self._rng.sample(range(n), 2)
        ra, rb = healthy_replicas[a], healthy_replicas[b]
        return ra if ra.current_load <= rb.current_load else rb


class SessionRouter(Router):
    """Sticky: a session's requests go to the replica recorded for it in
    ``session_map`` while that replica is among ``healthy_replicas``; otherwise (and
    for requests without a session) ``fallback_router`` chooses."""

    __slots__ = ("fallback_router",)

    def __init__(self, fallback_router: Router | None = None) -> None:
        if fallback_router is None:
            fallback_router = LeastLoadedRouter()
        if not isinstance(fallback_router, Router):
            raise TypeError(
                f"SessionRouter(fallback_router=...) needs a Router instance, "
                f"got {fallback_router!r}"
            )
        self.fallback_router = fallback_router

    def get_replica(
        self,
        healthy_replicas: Sequence[Replica],
        sess_id: str | None = None,
        session_map: Mapping[str, int] | None = None,
    ) -> Replica:
        if sess_id is not None and session_map is not None:
            idx = session_map.get(sess_id)
            if idx is not None:
                for r in healthy_replicas:
                    if r.idx == idx:
                        return r
        return self.fallback_router.get_replica(healthy_replicas, None, None)


def make_router_factory(router: Any, *, where: str) -> RouterFactory:
    """Turn what a user passed as ``router=`` into a zero-argument factory.

    Accepts a :class:`Router` subclass, a zero-argument callable returning a Router, or
    a Router *instance* (as TorchForge writes it: ``router=RoundRobinRouter()``). An
    instance is a prototype: it is deep-copied now, and the factory returns a fresh
    deep copy of that snapshot each time, so every endpoint of every service gets its
    own router and no state is shared (the user's own object is never used).
    """
    if isinstance(router, type):
        if not issubclass(router, Router):
            raise TypeError(
                f"{where}: router={router.__name__} is not a subclass of forge_sc.Router; "
                "pass a Router instance, a Router class or a zero-argument factory"
            )
        try:
            inspect.signature(router).bind()
        except TypeError as exc:
            raise TypeError(
                f"{where}: router={router.__name__} cannot be made without arguments "
                f"({exc}); pass an instance (router={router.__name__}(...)) or a "
                f"zero-argument factory (router=lambda: {router.__name__}(...))"
            ) from None
        except ValueError:  # no signature to read (a builtin): found out when made
            pass
        _check_get_replica(router.get_replica, where, bound=False)
        return router
    if isinstance(router, Router):
        _check_get_replica(router.get_replica, where, bound=True)
        return _prototype_factory(router, where)
    if callable(router):
        return _checked_factory(router, where)
    raise TypeError(
        f"{where}: router= must be a Router instance, a Router class or a zero-argument "
        f"factory, got {router!r}"
    )


def _prototype_factory(router: Router, where: str) -> RouterFactory:
    try:
        prototype = copy.deepcopy(router)
    except Exception as exc:
        raise TypeError(
            f"{where}: router={router!r} cannot be copied ({exc!r}); each endpoint of "
            "each service needs its own router, so pass the class or a zero-argument "
            "factory instead (e.g. lambda: MyRouter(...))"
        ) from exc

    def make() -> Router:
        copied: Router = copy.deepcopy(prototype)
        return copied

    return make


def _checked_factory(factory: Callable[[], Any], where: str) -> RouterFactory:
    def make() -> Router:
        try:
            made = factory()
        except Exception as exc:
            exc.add_note(f"(raised by {where}'s router={factory!r}, making the endpoint's router)")
            raise
        if not isinstance(made, Router):
            raise TypeError(
                f"{where}: the router factory returned {made!r}, which is not a forge_sc.Router"
            )
        _check_get_replica(made.get_replica, where, bound=True)
        return made

    return make


def _check_get_replica(fn: Callable[..., Any], where: str, *, bound: bool) -> None:
    """An endpoint's router's ``get_replica`` must take what the service passes it:
    the healthy replicas (sessions go through the service's session router)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read: found out when called
        return
    first: tuple[Any, ...] = () if bound else (None,)
    try:
        sig.bind(*first, ())
    except TypeError:
        raise TypeError(
            f"{where}: the router's get_replica{sig} does not match the router protocol, "
            "get_replica(self, healthy_replicas, sess_id=None, session_map=None)"
        ) from None
