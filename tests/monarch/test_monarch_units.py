"""The Monarch backend's pieces that need no process: fault routing, GPU pool,
the child's import path."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import monarch.actor
import pytest
from monarch._src.actor import supervision

from forge_sc.mesh import GpuPool, NotEnoughGpusError, _faults, _gpu
from forge_sc.mesh._gpu import visible_gpus
from forge_sc.mesh.monarch import child_import_path


class FakeFailure:
    def __init__(self, mesh_name: str, report: str = "it broke") -> None:
        self.mesh_name = mesh_name
        self._report = report

    def report(self) -> str:
        return self._report


@pytest.fixture
def hook_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with Monarch's default hook installed and forge_sc's registry empty."""
    monkeypatch.setattr(monarch.actor, "unhandled_fault_hook", supervision.unhandled_fault_hook)
    monkeypatch.setattr(_faults, "_listeners", {})
    monkeypatch.setattr(_faults, "_retired", type(_faults._retired)())
    monkeypatch.setattr(_faults, "_previous", None)
    yield


def test_fault_hook_routes_by_mesh_name(hook_state: None) -> None:
    _faults.install_fault_hook()
    _faults.install_fault_hook()  # idempotent
    hook = monarch.actor.unhandled_fault_hook
    assert hook is _faults._hook
    seen: list[str] = []
    _faults.register("Worker_r0_ab12", seen.append)
    # Monarch reports the name lowercased, with "-<uid>" appended.
    hook(FakeFailure("worker_r0_ab12-XyZ123", "dead process"))
    assert seen == ["dead process"]
    _faults.unregister("Worker_r0_ab12")
    hook(FakeFailure("worker_r0_ab12-XyZ123"))  # late: dropped
    hook(FakeFailure("logger-Qq9"))  # Monarch's own logger mesh: dropped
    assert seen == ["dead process"]


def test_fault_hook_never_exits_or_raises(
    hook_state: None, caplog: pytest.LogCaptureFixture
) -> None:
    _faults.install_fault_hook()

    def broken(report: str) -> None:
        raise RuntimeError("listener bug")

    _faults.register("x_r0_1", broken)
    monarch.actor.unhandled_fault_hook(FakeFailure("x_r0_1-a"))  # logged, not raised
    # Not forge_sc's, and the previous hook was Monarch's default (which exits):
    monarch.actor.unhandled_fault_hook(FakeFailure("someone_else-b", "their mesh"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("fault hook failed" in m for m in messages)
    assert any("does not own" in m and "their mesh" in m for m in messages)


def test_fault_hook_keeps_a_user_hook_for_foreign_meshes(
    hook_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs: list[str] = []

    def user_hook(failure: Any) -> None:
        theirs.append(failure.mesh_name)

    monkeypatch.setattr(monarch.actor, "unhandled_fault_hook", user_hook)
    _faults.install_fault_hook()
    mine: list[str] = []
    _faults.register("mine_r0_1", mine.append)
    monarch.actor.unhandled_fault_hook(FakeFailure("mine_r0_1-a", "r"))
    monarch.actor.unhandled_fault_hook(FakeFailure("theirs-b"))
    assert mine == ["r"] and theirs == ["theirs-b"]


def test_visible_gpus_from_cuda_visible_devices() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5,7"}) == ["2", "5", "7"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,3"}) == ["0"]  # CUDA stops at -1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-1a2b,GPU-3c4d"}) == [
        "GPU-1a2b",
        "GPU-3c4d",
    ]


def test_visible_gpus_without_torch_or_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_gpu.importlib.util, "find_spec", lambda name: None)
    assert visible_gpus({}) == []


def test_gpu_pool_hands_out_disjoint_gpus() -> None:
    pool = GpuPool(["0", "1", "2", "3"])
    a = pool.acquire(2, "replica 0")
    b = pool.acquire(1, "replica 1")
    assert a == ("0", "1") and b == ("2",)
    with pytest.raises(NotEnoughGpusError) as info:
        pool.acquire(2, "replica 2 (Trainer)")
    message = str(info.value)
    assert "replica 2 (Trainer) needs 2 GPU(s)" in message
    assert "only 1 of the 4" in message and "CUDA_VISIBLE_DEVICES" in message
    assert isinstance(info.value, ValueError)
    pool.release(a)
    pool.release(a)  # idempotent
    assert pool.free == 3
    assert pool.acquire(3, "replica 3") == ("0", "1", "3")


def test_gpu_pool_release_of_nothing_detects_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Detection may import torch (seconds): a replica without GPUs must never cause it.
    def forbidden() -> list[str]:
        raise AssertionError("GPU detection ran")

    monkeypatch.setattr(_gpu, "visible_gpus", forbidden)
    GpuPool().release(())


def test_gpu_pool_reads_the_environment_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    pool = GpuPool()
    assert pool.total == 2
    assert pool.acquire(2, "replica 0") == ("4", "6")


def test_child_import_path_carries_run_time_insertions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    paths = child_import_path()
    assert paths[0] == str(tmp_path)  # "" (the working directory) made absolute
    assert paths.count(str(tmp_path)) == 1
    # The interpreter's own directories are the child's already.
    assert not any(p.endswith("site-packages") for p in paths)
    assert all(os.path.isabs(p) for p in paths)
