"""Routers: pick one replica for a request. Synchronous, and never mutate their inputs."""

from ._routers import LeastLoadedRouter as LeastLoadedRouter
from ._routers import PowerOfTwoRouter as PowerOfTwoRouter
from ._routers import RoundRobinRouter as RoundRobinRouter
from ._routers import Router as Router
from ._routers import RouterFactory as RouterFactory
from ._routers import SessionRouter as SessionRouter
from ._routers import make_router_factory as make_router_factory

__all__ = [
    "LeastLoadedRouter",
    "PowerOfTwoRouter",
    "RoundRobinRouter",
    "Router",
    "RouterFactory",
    "SessionRouter",
    "make_router_factory",
]
