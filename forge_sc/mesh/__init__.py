"""Mesh backends: the boundary between the service core and a process runtime.

The core talks only to the protocol in :mod:`forge_sc.mesh._protocol`. Two
implementations exist: :class:`~forge_sc.mesh.monarch.MonarchMesh` (the default; real
processes) and :class:`forge_sc.testing.FakeMesh` (in-process, with fault injection).
"""

from ._protocol import CallKilledReplica as CallKilledReplica
from ._protocol import Mesh as Mesh
from ._protocol import MeshReplica as MeshReplica
from ._protocol import ReplicaGone as ReplicaGone
from ._protocol import ReplicaStartError as ReplicaStartError
from ._protocol import SpawnSpec as SpawnSpec

__all__ = [
    "CallKilledReplica",
    "Mesh",
    "MeshReplica",
    "ReplicaGone",
    "ReplicaStartError",
    "SpawnSpec",
]
