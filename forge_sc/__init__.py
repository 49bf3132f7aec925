"""forge_sc: a pool of actor replicas behind one Service handle, on structured
concurrency (anyio: trio and asyncio) with PyTorch Monarch as the process runtime."""

import os as _os

# Monarch reads this when its native runtime loads (at `import monarch`); with its
# default (10 s) a dead replica process is noticed ~10 s late. Must precede any
# Monarch import, which the imports below perform.
_os.environ.setdefault("HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY", "500ms")

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._actor import ConfiguredActor as ConfiguredActor
from ._actor import ForgeActor as ForgeActor
from ._actor import endpoint as endpoint
from ._actor import service_endpoint as service_endpoint
from ._config import ServiceConfig as ServiceConfig
from ._home import public_home as _set_home
from ._routing import LeastLoadedRouter as LeastLoadedRouter
from ._routing import PowerOfTwoRouter as PowerOfTwoRouter
from ._routing import RoundRobinRouter as RoundRobinRouter
from ._routing import Router as Router
from ._routing import SessionRouter as SessionRouter
from ._stats import BatcherStatistics as BatcherStatistics
from ._stats import ReplicaMetrics as ReplicaMetrics
from ._stats import ServiceMetrics as ServiceMetrics

if _TYPE_CHECKING:
    from ._open import open_service as open_service
    from ._replica import Replica as Replica
    from ._replica import ReplicaState as ReplicaState
    from ._service import Service as Service

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

#: Loaded on first use: a replica's process imports forge_sc for ForgeActor and its
#: decorators only, and need not import the service (anyio, trio, the request path).
_LAZY = {
    "open_service": "._open",
    "Replica": "._replica",
    "ReplicaState": "._replica",
    "Service": "._service",
}


def _public_home(obj: _Any) -> _Any:
    # Show public names as forge_sc.X, not forge_sc._private.X (as trio does).
    if getattr(obj, "__module__", "").startswith("forge_sc."):
        _set_home(obj, "forge_sc")
    return obj


def __getattr__(name: str) -> _Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'forge_sc' has no attribute {name!r}")
    import importlib

    obj = _public_home(getattr(importlib.import_module(home, __name__), name))
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


for _name in __all__:
    if _name not in _LAZY:
        _public_home(globals()[_name])
del _name
