"""TorchForge's import path: ``from forge.controller.service import ...`` works as
``from forge_sc.service import ...``.

The names are forge_sc's own (the same objects as in :mod:`forge_sc`), gathered where
TorchForge users import them from: the endpoint decorators, the routers,
``ServiceConfig``, the replica view and its states, the service handle and its
statistics.
"""

from ._actor import endpoint as endpoint
from ._actor import service_endpoint as service_endpoint
from ._config import ServiceConfig as ServiceConfig
from ._home import public_home as _set_home
from ._replica import Replica as Replica
from ._replica import ReplicaState as ReplicaState
from ._routing import LeastLoadedRouter as LeastLoadedRouter
from ._routing import PowerOfTwoRouter as PowerOfTwoRouter
from ._routing import RoundRobinRouter as RoundRobinRouter
from ._routing import Router as Router
from ._routing import SessionRouter as SessionRouter
from ._service import Service as Service
from ._service import ServiceEndpoint as ServiceEndpoint
from ._service import ServiceScope as ServiceScope
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

# The two handle classes have no other public home.
_set_home(ServiceEndpoint, "forge_sc.service")
_set_home(ServiceScope, "forge_sc.service")
