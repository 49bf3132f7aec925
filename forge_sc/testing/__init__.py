"""Testing helpers: :class:`FakeMesh`, an in-process mesh with fault injection."""

from ._fake import FakeMesh as FakeMesh
from ._fake import InjectedSpawnFailure as InjectedSpawnFailure

__all__ = ["FakeMesh", "InjectedSpawnFailure"]

for _name in __all__:
    globals()[_name].__module__ = "forge_sc.testing"
del _name
