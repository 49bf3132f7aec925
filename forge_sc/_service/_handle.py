"""ServiceEndpoint: ``svc.<endpoint>`` with ``route()`` and ``fanout()``."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from typing import Any, NoReturn, Protocol

from .._batching import Batcher, merge_one, split_one
from .._metrics import Recorder
from .._routing import Router
from .._spec import EndpointSpec
from ._context import CURRENT_SESSIONS

__all__ = ["Dispatcher", "ServiceEndpoint"]


class RouteObserver(Protocol):
    """Wraps each routed request (``forge_sc.observe.otel`` installs one)."""

    def route(
        self, spec: EndpointSpec, coro: Coroutine[Any, Any, Any], sess_id: str | None
    ) -> Coroutine[Any, Any, Any]: ...


class RequestPath(Protocol):
    """What sends one request (the service, or its request-path view)."""

    #: Whether an ``async with svc.session()`` block was ever entered on the service:
    #: until then no task can be in one, and ``route()`` skips the context lookup.
    _session_blocks: bool

    async def _request(
        self,
        spec: EndpointSpec,
        router: Router,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sess_id: str | None,
        also: Recorder | None = None,
        post: Callable[[Any], Any] | None = None,
    ) -> Any: ...


class Dispatcher(RequestPath, Protocol):
    """What an endpoint handle needs from its service (the service is one)."""

    @property
    def _sessions(self) -> Mapping[str, object]:
        """The open sessions, by id."""
        ...

    async def _fanout(
        self,
        spec: EndpointSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        post: Callable[[Any], Any] | None = None,
    ) -> list[Any]: ...


_NOT_ON_SERVICE = (
    "You tried to use {verb}() on a service, not an actor. "
    "Services only support route() and fanout()."
)


class ServiceEndpoint:
    """One endpoint of a service. ``route`` sends to one replica chosen by the
    endpoint's router (or the session's replica); ``fanout`` to every healthy one."""

    __slots__ = ("_batcher", "_obs", "_path", "_plain", "_send", "_spec", "_svc", "router")

    def __init__(
        self, svc: Dispatcher, spec: EndpointSpec, path: RequestPath | None = None
    ) -> None:
        self._svc = svc
        #: The service's request-path view (attribute reads there are specialized).
        self._path: RequestPath = svc if path is None else path
        #: ``_request`` of ``path``, bound once.
        self._send = self._path._request
        self._spec = spec
        self.router: Router = spec.router()
        self._batcher: Batcher | None = None
        #: The per-request observer (tracing, latency histogram), when one was
        #: turned on before the service opened (forge_sc.observe.otel); else None.
        self._obs: RouteObserver | None = None
        #: Unbatched and unobserved: ``route()`` is the request path's coroutine.
        self._plain = not spec.batched

    def _bind(self, batcher: Batcher) -> None:
        """Give a batched endpoint its batcher (made when the service starts)."""
        self._batcher = batcher

    def _observe(self, observer: RouteObserver) -> None:
        """Wrap every routed request of this endpoint in ``observer``."""
        self._obs = observer
        self._plain = False

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
            if self._path._session_blocks:  # a task may be in a session() block
                current = CURRENT_SESSIONS.get(None)
                if current is not None:
                    sess_id = current.get(self._svc)
        elif not isinstance(sess_id, str):
            raise TypeError(
                f"{self._spec.name}.route(sess_id=...): a session id is a str (from "
                f"start_session(), or one of your own), got {sess_id!r}"
            )
        if self._plain:
            return self._send(self._spec, self.router, args, kwargs, sess_id)
        svc = self._svc
        spec = self._spec
        if spec.batch_size > 1:
            if sess_id is None:
                batcher = self._batcher
                if batcher is None:
                    raise RuntimeError(f"{spec.name}: the service was never started")
                coro = batcher.submit(args, kwargs)
            else:
                coro = _batch_of_one(svc, spec, self.router, args, kwargs, sess_id)
        else:
            coro = self._send(spec, self.router, args, kwargs, sess_id)
        if self._obs is not None:  # tracing or the latency histogram is on: one check
            return self._obs.route(spec, coro, sess_id)
        return coro

    async def __call__(self, sess_id: str | None, *args: Any, **kwargs: Any) -> Any:
        """TorchForge's older call form, ``await svc.ep(session_id, *args)``: the same
        as ``svc.ep.route(*args, sess_id=session_id)``. ``sess_id`` must be a session
        of this service that is open (from ``start_session()``), or None."""
        if sess_id is not None and (
            not isinstance(sess_id, str) or sess_id not in self._svc._sessions
        ):
            raise TypeError(
                f"{self._spec.name}(sess_id, *args): {sess_id!r} is not an open session of "
                "this service. The first argument is a session id from start_session() "
                f"(or None); to pass arguments alone, call {self._spec.name}.route(*args)."
            )
        return await self.route(*args, sess_id=sess_id, **kwargs)

    async def fanout(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Run the endpoint on every replica healthy now, concurrently; return the
        results in replica-index order. Raises ``FanoutError`` if any raised."""
        spec = self._spec
        if spec.batch_size > 1:
            # Each replica's batch of one is split where it arrives: a bad result is
            # that replica's error (in a FanoutError), not the whole fan-out's.
            bargs, bkwargs = merge_one(spec, args, kwargs)
            return await self._svc._fanout(spec, bargs, bkwargs, partial(split_one, spec))
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

    def stream(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._unsupported("stream")

    def rref(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._unsupported("rref")


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
    # Split inside the request: a result that is not one result for the one call
    # is that replica's failure in the metrics, as in a fan-out.
    return await svc._request(spec, router, bargs, bkwargs, sess_id, post=partial(split_one, spec))
