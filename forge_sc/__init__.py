"""forge_sc: a pool of actor replicas behind one Service handle, on structured
concurrency (anyio: trio and asyncio) with PyTorch Monarch as the process runtime."""

import os as _os

# Monarch reads this when its native runtime loads (at `import monarch`); with its
# default (10 s) a dead replica process is noticed ~10 s late. Must precede any
# Monarch import, which the imports below perform.
_os.environ.setdefault("HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY", "500ms")

from ._actor import ConfiguredActor as ConfiguredActor
from ._actor import ForgeActor as ForgeActor
from ._actor import endpoint as endpoint
from ._actor import service_endpoint as service_endpoint
from ._config import ServiceConfig as ServiceConfig
from ._open import open_service as open_service
from ._replica import Replica as Replica
from ._replica import ReplicaState as ReplicaState
from ._routing import LeastLoadedRouter as LeastLoadedRouter
from ._routing import PowerOfTwoRouter as PowerOfTwoRouter
from ._routing import RoundRobinRouter as RoundRobinRouter
from ._routing import Router as Router
from ._routing import SessionRouter as SessionRouter
from ._service import BatcherStatistics as BatcherStatistics
from ._service import ReplicaMetrics as ReplicaMetrics
from ._service import Service as Service
from ._service import ServiceMetrics as ServiceMetrics
from ._tensors import default_collate as default_collate
from ._tensors import default_split as default_split

__version__ = "0.1.0"

__all__ = [
    "BatcherStatistics",
    "ConfiguredActor",
    "ForgeActor",
    "LeastLoadedRouter",
    "PowerOfTwoRouter",
    "Replica",
    "ReplicaMetrics",
    "ReplicaState",
    "RoundRobinRouter",
    "Router",
    "Service",
    "ServiceConfig",
    "ServiceMetrics",
    "SessionRouter",
    "default_collate",
    "default_split",
    "endpoint",
    "open_service",
    "service_endpoint",
]

# Show public names as forge_sc.X, not forge_sc._private.X (as trio does).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("forge_sc."):
        _obj.__module__ = "forge_sc"
del _name, _obj
