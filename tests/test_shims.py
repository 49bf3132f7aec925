"""Guards for the private APIs of Monarch and trio that forge_sc uses (forge_sc._shims).

Each test exercises the private API the way forge_sc does; when a release of
torchmonarch or trio changes it, the test named after the shim fails here, before
anything subtler fails elsewhere.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import trio
import trio.testing
from monarch.actor import Actor, concurrent_endpoint, endpoint

from forge_sc._shims import _monarch, _trio


def test_monarch_supervision_error_is_what_a_dead_process_raises() -> None:
    # forge_sc tells a death from the endpoint's own error by this type.
    assert issubclass(_monarch.SupervisionError, RuntimeError)


def test_monarch_python_task_runs_a_coroutine_on_monarchs_runtime() -> None:
    assert callable(_monarch.PythonTask.from_coroutine)

    async def nothing() -> None:
        return None

    coro = nothing()
    task = _monarch.PythonTask.from_coroutine(coro)
    assert hasattr(task, "spawn")
    coro.close()


def test_monarch_default_fault_hook_lives_in_the_supervision_module() -> None:
    assert callable(_monarch.supervision.unhandled_fault_hook)


def test_monarch_actor_mesh_endpoint_factory() -> None:
    from monarch._src.actor.actor_mesh import ActorMesh, MethodSpecifier

    assert callable(ActorMesh._endpoint)
    params = list(inspect.signature(ActorMesh._endpoint).parameters)
    assert params[:4] == ["self", "name", "impl", "propagator"], params
    MethodSpecifier.ReturnsResponse("__sizeof__")


class _Probe(Actor):  # type: ignore[misc]
    @endpoint  # type: ignore[untyped-decorator]
    async def ping(self, x: int) -> int:
        return x


def test_monarch_endpoint_descriptor_exposes_its_function_and_options() -> None:
    value = vars(_Probe)["ping"]
    method = _monarch.endpoint_method(value)
    assert method is not None and method.__name__ == "ping"
    assert _monarch.endpoint_method(lambda: None) is None
    # The options rebuild an endpoint like it (forge_sc's tracing twins do this).
    opts = _monarch.endpoint_options(value)

    async def twin(self: Any, x: int) -> int:
        return x

    rebuilt = endpoint(twin, **opts)
    assert _monarch.endpoint_method(rebuilt) is twin


def test_trio_attempt_abort_interrupts_a_blocked_task() -> None:
    class Interrupted(BaseException):
        pass

    def raise_interrupted() -> None:
        raise Interrupted

    seen: list[str] = []

    async def main() -> None:
        blocked: list[trio.lowlevel.Task] = []

        async def waiter() -> None:
            blocked.append(trio.lowlevel.current_task())
            with pytest.raises(Interrupted):
                await trio.lowlevel.wait_task_rescheduled(
                    lambda raise_cancel: trio.lowlevel.Abort.SUCCEEDED
                )
            seen.append("interrupted")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert _trio.is_blocked(blocked[0])
            assert not _trio.is_blocked(trio.lowlevel.current_task())
            _trio.attempt_abort(blocked[0], raise_interrupted)

    trio.run(main)
    assert seen == ["interrupted"]


class _Concurrent(Actor):  # type: ignore[misc]
    @concurrent_endpoint  # type: ignore[untyped-decorator]
    async def overlap(self) -> None:
        return None


def test_monarch_endpoint_descriptor_type_and_concurrent_marker() -> None:
    plain, concurrent = vars(_Probe)["ping"], vars(_Concurrent)["overlap"]
    assert isinstance(plain, _monarch.EndpointProperty)
    assert isinstance(concurrent, _monarch.EndpointProperty)
    assert not _monarch.is_concurrent_wrapper(_monarch.endpoint_method(plain))
    assert _monarch.is_concurrent_wrapper(_monarch.endpoint_method(concurrent))


class _Mixed(Actor):  # type: ignore[misc]
    @endpoint  # type: ignore[untyped-decorator]
    async def a(self) -> None:
        return None

    @endpoint  # type: ignore[untyped-decorator]
    def b(self) -> None:
        return None


def test_monarch_actor_kind_refuses_mixed_endpoints() -> None:
    _monarch.actor_kind(_Probe)  # all async: spawnable
    with pytest.raises(ValueError, match="mixes both async and sync"):
        _monarch.actor_kind(_Mixed)


def test_monarch_endpoint_descriptor_function_can_be_replaced() -> None:
    # forge_sc wraps an endpoint's function to encode tensor results on the replica.
    class Probe(Actor):  # type: ignore[misc]
        @endpoint  # type: ignore[untyped-decorator]
        async def ping(self, x: int) -> int:
            return x

    value = vars(Probe)["ping"]

    async def wrapped(self: Any, x: int) -> int:
        return x

    _monarch.set_endpoint_method(value, wrapped)
    assert _monarch.endpoint_method(value) is wrapped
    with pytest.raises(TypeError):
        _monarch.set_endpoint_method(lambda: None, wrapped)
