"""The one place forge_sc touches private APIs of its dependencies.

:mod:`._monarch` (torchmonarch, pinned to 0.7.0) and :mod:`._trio` (trio, capped in
pyproject.toml to the versions tests/test_shims.py passes on). Every name here is
guarded by that test, which fails loudly, naming the shim, when a release changes it.
"""
