"""The package's structure, checked: layers without cycles, the core free of Monarch.

The layers are written down in docs/architecture.md; this test is their definition.
Every import counts, wherever it is written (module level, ``TYPE_CHECKING`` block or
inside a function): a cycle hidden behind a function-local import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "forge_sc"

#: Bottom to top. A module may import modules of its own layer or of a lower one.
LAYERS: list[tuple[str, ...]] = [
    # foundation: errors, configuration, metric recorders, wait queues, tensors on the
    # wire and shared memory, public module names
    (
        "forge_sc.errors",
        "forge_sc._config",
        "forge_sc._metrics",
        "forge_sc._waiters",
        "forge_sc._tensors",
        "forge_sc._shm",
        "forge_sc._home",
    ),
    # dependency shims; lifecycle events (stdlib logging) and the live-service registry
    ("forge_sc._shims", "forge_sc.observe"),
    # the mesh boundary: the protocol the core speaks to backends
    ("forge_sc.mesh._protocol",),
    # replicas and their supervisors
    ("forge_sc._replica",),
    # routers
    ("forge_sc._routing",),
    # endpoint specs, actor options, statistics snapshots
    ("forge_sc._spec", "forge_sc._options", "forge_sc._stats"),
    # batching
    ("forge_sc._batching",),
    # the service: handle, request path, lifecycle
    ("forge_sc._service",),
    # backends: Monarch (real processes) and FakeMesh (in-process)
    ("forge_sc.mesh", "forge_sc.testing"),
    # open_service, then the TorchForge layer, then ForgeActor and the package
    ("forge_sc._open",),
    ("forge_sc._compat",),
    ("forge_sc._actor",),
    # the package, TorchForge's import path (forge.controller.service), the exporters
    (
        "forge_sc",
        "forge_sc.service",
        "forge_sc.observe.otel",
        "forge_sc.observe.prometheus",
        "forge_sc.worker",
    ),
]

#: The service core: never imports Monarch, directly or through other modules.
CORE = (
    "forge_sc.errors",
    "forge_sc._config",
    "forge_sc._metrics",
    "forge_sc._waiters",
    "forge_sc._tensors",
    "forge_sc._shm",
    "forge_sc._home",
    "forge_sc.mesh._protocol",
    "forge_sc._replica",
    "forge_sc._routing",
    "forge_sc._spec",
    "forge_sc._options",
    "forge_sc._stats",
    "forge_sc._batching",
    "forge_sc._service",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(forge_sc modules, third-party top-level packages) that ``name`` imports."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    internal: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                mod = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the submodule when there is one.
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            if t.split(".")[0] != "forge_sc":
                if t:
                    external.add(t.split(".")[0])
                continue
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                internal.add(t)
    return internal, external


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = _modules()
    known = set(mods)
    internal: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in mods.items():
        internal[name], external[name] = _imports(name, path, known)
    return internal, external


def _layer(name: str) -> int:
    best, level = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    assert level >= 0, f"{name} is in no layer: add it to LAYERS and docs/architecture.md"
    return level


def test_every_module_has_a_layer() -> None:
    for name in _modules():
        _layer(name)


def test_no_import_goes_up_a_layer() -> None:
    internal, _ = _graph()
    upward = [
        f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})"
        for src, dsts in internal.items()
        for dst in sorted(dsts)
        if _layer(dst) > _layer(src)
        # A package's __init__ re-exports its own submodules.
        and not dst.startswith(src + ".")
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    internal, _ = _graph()
    # A package importing its own submodules is how re-exports work, not a cycle.
    edges = {
        src: {d for d in dsts if not d.startswith(src + ".")} for src, dsts in internal.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_core_never_imports_monarch() -> None:
    internal, external = _graph()
    core = [m for m in internal if _in(m, CORE)]
    assert core
    for start in core:
        seen, todo = {start}, [start]
        while todo:
            mod = todo.pop()
            assert "monarch" not in external[mod], f"{mod} (reached from {start}) imports monarch"
            for dep in internal[mod]:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)


@pytest.mark.parametrize("module", ["forge_sc.mesh.monarch", "forge_sc._actor"])
def test_monarch_is_imported_where_expected(module: str) -> None:
    # The check above must be able to fail: Monarch is seen where it is imported.
    _, external = _graph()
    assert "monarch" in external[module]
