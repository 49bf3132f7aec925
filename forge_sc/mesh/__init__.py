"""Mesh backends: the boundary between the service core and a process runtime.

The core talks only to the protocol in this module (:class:`Mesh`,
:class:`MeshReplica`, :class:`SpawnSpec`, :class:`ReplicaGone`; optionally
:class:`DirectCalls` for a backend that runs endpoints in the caller's task); a
third-party backend implements it. Two implementations ship: :class:`MonarchMesh` (the default; real
processes) and :class:`forge_sc.testing.FakeMesh` (in-process, with fault injection).

``MonarchMesh`` is loaded on first use, so that importing the protocol (as the core
does) does not load the Monarch backend.
"""

from typing import TYPE_CHECKING, Any

from .._home import public_home as _set_home
from ._gpu import GpuPool as GpuPool
from ._gpu import NotEnoughGpusError as NotEnoughGpusError
from ._protocol import CallKilledReplica as CallKilledReplica
from ._protocol import CallNotSent as CallNotSent
from ._protocol import DirectCalls as DirectCalls
from ._protocol import Mesh as Mesh
from ._protocol import MeshReplica as MeshReplica
from ._protocol import ReplicaGone as ReplicaGone
from ._protocol import ReplicaStartError as ReplicaStartError
from ._protocol import SpawnSpec as SpawnSpec

if TYPE_CHECKING:
    from .monarch import MonarchMesh as MonarchMesh

__all__ = [
    "CallKilledReplica",
    "CallNotSent",
    "DirectCalls",
    "GpuPool",
    "Mesh",
    "MeshReplica",
    "MonarchMesh",
    "NotEnoughGpusError",
    "ReplicaGone",
    "ReplicaStartError",
    "SpawnSpec",
]

for _name in __all__:
    if _name in globals():
        _set_home(globals()[_name], "forge_sc.mesh")
del _name


def __getattr__(name: str) -> Any:
    if name == "MonarchMesh":
        from .monarch import MonarchMesh

        return MonarchMesh
    raise AttributeError(f"module 'forge_sc.mesh' has no attribute {name!r}")
