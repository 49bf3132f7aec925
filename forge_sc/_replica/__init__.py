"""Replicas: one per index, stable across restarts, each run by a supervisor task."""

from ._replica import Incarnation as Incarnation
from ._replica import Replica as Replica
from ._replica import ReplicaEvents as ReplicaEvents
from ._replica import ReplicaState as ReplicaState
from ._supervisor import ChildSpec as ChildSpec
from ._supervisor import supervise as supervise

__all__ = ["ChildSpec", "Incarnation", "Replica", "ReplicaEvents", "ReplicaState", "supervise"]
