"""Giving a public object its public module name (``forge_sc.X``, not
``forge_sc._private.X``), as trio does, without breaking ``typing.get_type_hints``."""

from __future__ import annotations

import sys
from typing import Any, TypeVar

__all__ = ["public_home"]

_T = TypeVar("_T")


def public_home(obj: _T, module: str) -> _T:
    """Set ``obj.__module__`` to ``module``; a class's own string annotations are
    evaluated first, where they were written.

    ``get_type_hints`` (and what builds on it: attrs' ``resolve_types``, Sphinx,
    cattrs, pydantic) resolves a class's string annotations in the namespace of its
    ``__module__``: once that names the public package, ``ClassVar`` or a name imported
    only by the private module would no longer be found. An annotation that cannot be
    evaluated at import time (a name imported under ``TYPE_CHECKING``) stays a string.
    """
    home = getattr(obj, "__module__", None)
    own = vars(obj).get("__annotations__") if isinstance(obj, type) else None
    if own and home in sys.modules:
        namespace = vars(sys.modules[home])
        local: dict[str, Any] = dict(vars(obj))
        for name, ann in list(own.items()):
            if isinstance(ann, str):
                try:
                    own[name] = eval(ann, namespace, local)
                except Exception:
                    continue
    obj.__module__ = module
    return obj
