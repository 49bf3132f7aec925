"""Sphinx configuration: the Markdown pages (MyST) and an API reference from the
docstrings. Build with warnings as errors, as CI does::

    python -m pip install -e '.[docs]'
    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib
import pkgutil
import os
import sys
from typing import Any

from sphinx.util import logging

sys.path.insert(0, os.path.abspath(".."))

import forge_sc  # noqa: E402

project = "forge_sc"
author = "forge_sc contributors"
release = version = forge_sc.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # the pages link to their own sections by slug
myst_enable_extensions = ["colon_fence"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
# Monarch's Actor and a few third-party bases have docstrings that are not reST.
autodoc_inherit_docstrings = False
html_theme = "alabaster"
html_title = f"forge_sc {release}"
nitpicky = False

#: The public modules (no part of the dotted name starts with ``_``, as
#: tests/test_public_surface.py defines them): every name in their ``__all__`` must
#: be in the API reference.
PUBLIC_MODULES = ["forge_sc"] + [
    info.name
    for info in pkgutil.walk_packages(forge_sc.__path__, "forge_sc.")
    if not any(part.startswith("_") for part in info.name.split("."))
]

_log = logging.getLogger("forge_sc.docs")


def _check_public_names(app: Any, env: Any) -> None:
    """Warn (an error under -W) for each public name the API reference lacks."""
    documented = {name for name, *_ in env.get_domain("py").get_objects()}
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        if modname not in documented:
            _log.warning("module %s has no automodule in the API reference", modname)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            owner = getattr(obj, "__module__", None)
            places = {f"{modname}.{name}"}
            if isinstance(owner, str):
                places.add(f"{owner}.{name}")
            if not places & documented:
                _log.warning("public name %s.%s is missing from the API reference", modname, name)


def setup(app: Any) -> dict[str, Any]:
    app.connect("env-check-consistency", _check_public_names)
    return {"parallel_read_safe": True}
