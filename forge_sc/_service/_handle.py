"""ServiceEndpoint: ``svc.<endpoint>`` with ``route()`` and ``fanout()``."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, NoReturn, Protocol

from .._batching import Batcher, merge_one, split_one
from .._metrics import Recorder
from .._routing import Router
from .._spec import EndpointSpec
from ._context import CURRENT_SESSIONS

__all__ = ["Dispatcher", "ServiceEndpoint"]


class Dispatcher(Protocol):
    """What an endpoint handle needs from its service (the service is one)."""

    async def _request(
        self,
        spec: EndpointSpec,
        router: Router,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sess_id: str | None,
        also: Recorder | None = None,
    ) -> Any: ...

    async def _fanout(
        self, spec: EndpointSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[Any]: ...


_NOT_ON_SERVICE = (
    "You tried to use {verb}() on a service, not an actor. "
    "Services only support route() and fanout()."
)


class ServiceEndpoint:
    """One endpoint of a service. ``route`` sends to one replica chosen by the
    endpoint's router (or the session's replica); ``fanout`` to every healthy one."""

    __slots__ = ("_batched", "_batcher", "_request", "_spec", "_svc", "router")

    def __init__(self, svc: Dispatcher, spec: EndpointSpec) -> None:
        self._svc = svc
        self._spec = spec
        self.router: Router = spec.router()
        self._batcher: Batcher | None = None
        # Bound once: the hot path of route() reads two slots instead.
        self._batched = spec.batch_size > 1
        self._request = svc._request

    def _bind(self, batcher: Batcher) -> None:
        """Give a batched endpoint its batcher (made when the service starts)."""
        self._batcher = batcher

    def __repr__(self) -> str:
        return f"<ServiceEndpoint {self._spec.name}>"

    @property
    def name(self) -> str:
        return self._spec.name

    def route(
        self, *args: Any, sess_id: str | None = None, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """Run the endpoint on one replica: ``result = await svc.ep.route(...)``.

        Inside ``async with svc.session()`` (or with ``sess_id=``) the request goes
        to the session's replica. Raises the endpoint's own exception, or a
        :mod:`forge_sc.errors` exception (see the semantics table in the docs).

        (A plain function returning the request's coroutine, rather than an ``async
        def`` wrapping it: one coroutine frame less for every resume of every
        request.)
        """
        if sess_id is None:
            current = CURRENT_SESSIONS.get(None)
            if current is not None:
                sess_id = current.get(self._svc)
        if self._batched:
            spec = self._spec
            if sess_id is None:
                batcher = self._batcher
                if batcher is None:
                    raise RuntimeError(f"{spec.name}: the service was never started")
                return batcher.submit(args, kwargs)
            return _batch_of_one(self._svc, spec, self.router, args, kwargs, sess_id)
        return self._request(self._spec, self.router, args, kwargs, sess_id)

    async def fanout(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Run the endpoint on every replica healthy now, concurrently; return the
        results in replica-index order. Raises ``FanoutError`` if any raised."""
        spec = self._spec
        if spec.batch_size > 1:
            results = await self._svc._fanout(spec, *merge_one(spec, args, kwargs))
            return [split_one(spec, r) for r in results]
        return await self._svc._fanout(spec, args, kwargs)

    def _unsupported(self, verb: str) -> NoReturn:
        raise NotImplementedError(_NOT_ON_SERVICE.format(verb=verb))

    def call(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._unsupported("call")

    def call_one(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._unsupported("call_one")

    def choose(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._unsupported("choose")

    def broadcast(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._unsupported("broadcast")

    def generate(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._unsupported("generate")


async def _batch_of_one(
    svc: Dispatcher,
    spec: EndpointSpec,
    router: Router,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    sess_id: str,
) -> Any:
    """A call in a session is never merged: it goes alone, as a batch of one."""
    bargs, bkwargs = merge_one(spec, args, kwargs)
    return split_one(spec, await svc._request(spec, router, bargs, bkwargs, sess_id))
