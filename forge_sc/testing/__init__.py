"""Testing helpers: :class:`FakeMesh`, an in-process mesh with fault injection, and
:func:`running_tasks`, for checking that nothing was left running."""

from .._home import public_home as _set_home
from ._fake import FakeMesh as FakeMesh
from ._fake import InjectedSpawnFailure as InjectedSpawnFailure
from ._tasks import running_tasks as running_tasks

__all__ = ["FakeMesh", "InjectedSpawnFailure", "running_tasks"]

for _name in __all__:
    _set_home(globals()[_name], "forge_sc.testing")
del _name
