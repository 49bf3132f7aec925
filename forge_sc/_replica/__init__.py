"""Replicas: one per index, stable across restarts, each run by a supervisor task."""

from ._replica import Incarnation as Incarnation
from ._replica import Replica as Replica
from ._replica import ReplicaEvents as ReplicaEvents
from ._replica import ReplicaState as ReplicaState
from ._spares import Relay as Relay
from ._spares import SparePool as SparePool
from ._supervisor import MAX_BACKOFF as MAX_BACKOFF
from ._supervisor import ChildSpec as ChildSpec
from ._supervisor import supervise as supervise

__all__ = [
    "MAX_BACKOFF",
    "ChildSpec",
    "Incarnation",
    "Relay",
    "Replica",
    "ReplicaEvents",
    "ReplicaState",
    "SparePool",
    "supervise",
]
