"""forge_sc: a pool of actor replicas behind one Service handle, on structured
concurrency (anyio: trio and asyncio) with PyTorch Monarch as the process runtime."""

import os as _os

# Monarch reads this when its native runtime loads (at `import monarch`); with its
# default (10 s) a dead replica process is noticed ~10 s late. Must precede any
# Monarch import, which the imports below perform.
_os.environ.setdefault("HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY", "500ms")

from ._actor import ConfiguredActor as ConfiguredActor  # noqa: E402
from ._actor import ForgeActor as ForgeActor  # noqa: E402
from ._actor import endpoint as endpoint  # noqa: E402
from ._actor import service_endpoint as service_endpoint  # noqa: E402
from ._config import ServiceConfig as ServiceConfig  # noqa: E402
from ._open import open_service as open_service  # noqa: E402
from .replica import Replica as Replica  # noqa: E402
from .replica import ReplicaState as ReplicaState  # noqa: E402
from .routing import LeastLoadedRouter as LeastLoadedRouter  # noqa: E402
from .routing import PowerOfTwoRouter as PowerOfTwoRouter  # noqa: E402
from .routing import RoundRobinRouter as RoundRobinRouter  # noqa: E402
from .routing import Router as Router  # noqa: E402
from .routing import SessionRouter as SessionRouter  # noqa: E402
from .service import BatcherStatistics as BatcherStatistics  # noqa: E402
from .service import ReplicaMetrics as ReplicaMetrics  # noqa: E402
from .service import Service as Service  # noqa: E402
from .service import ServiceMetrics as ServiceMetrics  # noqa: E402

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
    "endpoint",
    "open_service",
    "service_endpoint",
]

# Show public names as forge_sc.X, not forge_sc._private.X (as trio does).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("forge_sc."):
        try:
            _obj.__module__ = "forge_sc"
        except (AttributeError, TypeError):
            pass
del _name, _obj
