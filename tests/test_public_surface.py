"""The public surface: what users can import is exactly what the public modules export.

A module is public when no part of its dotted name starts with ``_`` (trio's rule).
Everything a public module exports is listed in its ``__all__`` and shows its public
home in ``__module__`` (``forge_sc.Replica``, never ``forge_sc._replica._replica``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from types import ModuleType

import pytest

import forge_sc
from forge_sc._compat import HostedService
from forge_sc._service import Service
from forge_sc._spec import RESERVED_NAMES


def _public_modules() -> list[str]:
    names = ["forge_sc"]
    for info in pkgutil.walk_packages(forge_sc.__path__, "forge_sc."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


PUBLIC = _public_modules()


def test_the_public_modules_are_the_documented_ones() -> None:
    assert PUBLIC == [
        "forge_sc",
        "forge_sc.errors",
        "forge_sc.mesh",
        "forge_sc.mesh.monarch",
        "forge_sc.observe",
        "forge_sc.observe.otel",
        "forge_sc.observe.prometheus",
        "forge_sc.service",
        "forge_sc.testing",
        "forge_sc.worker",
    ]


def _ours(obj: object) -> bool:
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(
        obj, "__module__", ""
    ).startswith("forge_sc")


@pytest.mark.parametrize("name", PUBLIC)
def test_exports_are_listed_and_show_their_public_home(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    for attr in exported:
        obj = getattr(module, attr)  # every listed name exists
        if _ours(obj):
            home = obj.__module__
            assert not any(p.startswith("_") for p in home.split(".")), (
                f"{name}.{attr} shows the private module {home!r} as its home"
            )
    # Nothing public hides outside __all__: a class or function of ours reachable
    # under a public name of a public module is listed.
    for attr, obj in vars(module).items():
        if attr.startswith("_") or inspect.ismodule(obj) or not _ours(obj):
            continue
        if obj.__module__ == name:
            assert attr in exported, f"{name}.{attr} is public but not in __all__"


@pytest.mark.parametrize("name", PUBLIC)
def test_type_hints_of_exported_classes_resolve(name: str) -> None:
    # A class shown under its public home must still resolve its string annotations
    # (get_type_hints looks them up in the module that __module__ names): attrs'
    # resolve_types, Sphinx, cattrs and pydantic depend on it.
    module = importlib.import_module(name)
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.isclass(obj) and _ours(obj):
            typing.get_type_hints(obj)


def test_type_hints_of_a_user_actor_resolve() -> None:
    class Model(forge_sc.ForgeActor):
        procs = 2
        name: str = "m"

    hints = typing.get_type_hints(Model)
    assert hints["name"] is str
    assert hints["procs"] == typing.ClassVar[int]


def test_the_design_names_are_exported() -> None:
    # The public API of docs/user_guide.md and docs/api.md.
    for attr in [
        "ForgeActor",
        "endpoint",
        "service_endpoint",
        "open_service",
        "Router",
        "RoundRobinRouter",
        "LeastLoadedRouter",
        "SessionRouter",
        "PowerOfTwoRouter",
        "ServiceConfig",
        "ServiceMetrics",
        "ReplicaMetrics",
        "ReplicaState",
    ]:
        assert attr in forge_sc.__all__
    import forge_sc.errors as errors

    for attr in [
        "ServiceError",
        "NoHealthyReplicasError",
        "ServiceClosedError",
        "ReplicaDiedError",
        "ServiceOverloadedError",
        "FanoutError",
        "ServiceFailedError",
    ]:
        assert attr in errors.__all__
    from forge_sc.testing import FakeMesh

    assert FakeMesh.__module__ == "forge_sc.testing"


def test_a_service_has_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="open_service"):
        Service()


def _handle_api(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_handle_api_and_reserved_names_agree() -> None:
    service_api = _handle_api(Service)
    # An endpoint may not shadow any attribute of the handle...
    assert service_api <= RESERVED_NAMES, service_api - RESERVED_NAMES
    # ...and the TorchForge-style hosted handle offers the same API.
    assert _handle_api(HostedService) == service_api
    # The rest of the reserved names are ForgeActor's TorchForge class methods.
    assert RESERVED_NAMES - service_api <= _handle_api(forge_sc.ForgeActor) | {"launch"}


def test_the_torchforge_import_path_holds_forge_sc_s_own_objects() -> None:
    # forge_sc.service gathers names for TorchForge's import path; each is forge_sc's
    # own object (not a copy that could drift), except the two handle classes that
    # live only there.
    import forge_sc
    import forge_sc.service as service

    only_there = {"ServiceEndpoint", "ServiceScope"}
    for attr in service.__all__:
        if attr in only_there:
            assert not hasattr(forge_sc, attr), attr
            assert getattr(service, attr).__module__ == "forge_sc.service", attr
        else:
            assert getattr(service, attr) is getattr(forge_sc, attr), attr
