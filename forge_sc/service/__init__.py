"""The service core: the handle, the request path, sessions, metrics, lifecycle.

This package never imports Monarch; it talks to backends through
:mod:`forge_sc.mesh`'s protocol.

TorchForge's import path ``from forge.controller.service import service_endpoint,
Router, RoundRobinRouter, ServiceConfig, ...`` works here as ``from forge_sc.service
import ...``: the routers, ``ServiceConfig``, ``Replica`` and ``ReplicaState`` are
re-exported, and ``service_endpoint`` / ``endpoint`` are looked up
in :mod:`forge_sc` on first use (they live beside ``ForgeActor``, which is Monarch's).
"""

from typing import Any

from .._config import ServiceConfig as ServiceConfig
from ..replica import Replica as Replica
from ..replica import ReplicaState as ReplicaState
from ..routing import LeastLoadedRouter as LeastLoadedRouter
from ..routing import PowerOfTwoRouter as PowerOfTwoRouter
from ..routing import RoundRobinRouter as RoundRobinRouter
from ..routing import Router as Router
from ..routing import SessionRouter as SessionRouter
from ._handle import ServiceEndpoint as ServiceEndpoint
from ._scope import ServiceScope as ServiceScope
from ._service import Service as Service
from ._stats import BatcherStatistics as BatcherStatistics
from ._stats import ReplicaMetrics as ReplicaMetrics
from ._stats import ServiceMetrics as ServiceMetrics

__all__ = [
    "BatcherStatistics",
    "LeastLoadedRouter",
    "PowerOfTwoRouter",
    "Replica",
    "ReplicaMetrics",
    "ReplicaState",
    "RoundRobinRouter",
    "Router",
    "Service",
    "ServiceConfig",
    "ServiceEndpoint",
    "ServiceMetrics",
    "ServiceScope",
    "SessionRouter",
    "endpoint",
    "service_endpoint",
]


def __getattr__(name: str) -> Any:
    if name in ("service_endpoint", "endpoint"):
        import forge_sc

        return getattr(forge_sc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
