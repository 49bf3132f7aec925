"""The service core: the handle, the request path, sessions, metrics, lifecycle.

This package never imports Monarch; it talks to backends through
:mod:`forge_sc.mesh`'s protocol.
"""

from .._stats import BatcherStatistics as BatcherStatistics
from .._stats import ReplicaMetrics as ReplicaMetrics
from .._stats import ServiceMetrics as ServiceMetrics
from ._handle import ServiceEndpoint as ServiceEndpoint
from ._scope import ServiceScope as ServiceScope
from ._service import Service as Service

__all__ = [
    "BatcherStatistics",
    "ReplicaMetrics",
    "Service",
    "ServiceEndpoint",
    "ServiceMetrics",
    "ServiceScope",
]
