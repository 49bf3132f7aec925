"""Testing helpers: :class:`FakeMesh`, an in-process mesh with fault injection, and
:func:`running_tasks`, for checking that nothing was left running."""

from ._fake import FakeMesh as FakeMesh
from ._fake import InjectedSpawnFailure as InjectedSpawnFailure
from ._tasks import running_tasks as running_tasks

__all__ = ["FakeMesh", "InjectedSpawnFailure", "running_tasks"]

for _name in __all__:
    globals()[_name].__module__ = "forge_sc.testing"
del _name
