"""Lifecycle events as log records: a crash -> restart -> escalation story."""

from __future__ import annotations

import logging

import anyio
import pytest

from forge_sc import open_service
from forge_sc.errors import NoHealthyReplicasError, ServiceFailedError
from forge_sc.observe import service_name
from forge_sc.testing import FakeMesh

from .actors import Counter
from .conftest import wait_for

pytestmark = pytest.mark.anyio


def _events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("forge_sc") and hasattr(r, "event")]


async def test_crash_restart_escalation_story_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="forge_sc")
    mesh = FakeMesh(seed=1)
    name = None
    with pytest.raises(ServiceFailedError):
        async with open_service(
            Counter, num_replicas=1, mesh=mesh, max_restarts=1, restart_backoff=0.01
        ) as svc:
            name = service_name(svc)
            with anyio.fail_after(5):
                mesh.crash(0)
                await wait_for(lambda: svc.replicas[0].healthy and svc.replicas[0].restarts == 1)
                mesh.crash(0)  # the budget (one restart) is spent: the service escalates
                await anyio.sleep_forever()
    records = _events(caplog)
    story = [(r.event, getattr(r, "incarnation", None)) for r in records]  # type: ignore[attr-defined]
    assert story == [
        ("replica.starting", 1),
        ("replica.healthy", 1),
        ("service.started", None),
        ("replica.died", 1),
        ("replica.restarting", 2),
        ("replica.starting", 2),
        ("replica.healthy", 2),
        ("replica.died", 2),
        ("replica.exhausted", None),
        ("service.escalated", None),
        ("service.stopped", None),
    ]
    by_event = {r.event: r for r in records}  # type: ignore[attr-defined]
    assert {r.service for r in records} == {name}  # type: ignore[attr-defined]
    assert all(r.replica == 0 for r in records if r.event.startswith("replica."))  # type: ignore[attr-defined]
    died = by_event["replica.died"]
    assert died.levelno == logging.WARNING
    assert "crashed (injected)" in died.cause  # type: ignore[attr-defined]
    assert "crashed (injected)" in died.getMessage()
    restarting = by_event["replica.restarting"]
    assert restarting.levelno == logging.INFO
    assert restarting.attempt == 1  # type: ignore[attr-defined]
    assert 0.005 <= restarting.backoff <= 0.01  # type: ignore[attr-defined]  # 0.01 x U(0.5, 1)
    assert by_event["replica.exhausted"].levelno == logging.ERROR
    escalated = by_event["service.escalated"]
    assert escalated.levelno == logging.ERROR
    assert escalated.name == "forge_sc.service"
    assert died.name == "forge_sc.replica"
    assert "max_restarts=1" in escalated.getMessage()


async def test_a_failed_respawn_and_scaling_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="forge_sc")
    mesh = FakeMesh(seed=1)
    async with open_service(Counter, num_replicas=1, mesh=mesh, restart_backoff=0.01) as svc:
        with anyio.fail_after(5):
            mesh.fail_spawns(0, 1)
            mesh.crash(0)
            await wait_for(lambda: svc.replicas[0].healthy and svc.replicas[0].restarts == 2)
            await svc.scale_to(2)
            await svc.scale_to(1)
    events = [r.event for r in _events(caplog)]  # type: ignore[attr-defined]
    assert events == [
        "replica.healthy",
        "service.started",
        "replica.died",
        "replica.restarting",
        "replica.spawn_failed",
        "replica.restarting",
        "replica.healthy",
        "replica.healthy",  # replica 1, added by scale_to(2)
        "service.scaled",
        "service.replicas_drained",
        "service.scaled",
        "service.stopped",
    ]
    failed = next(r for r in _events(caplog) if r.event == "replica.spawn_failed")  # type: ignore[attr-defined]
    assert "injected by fail_spawns" in failed.cause  # type: ignore[attr-defined]
    assert failed.incarnation == 2  # type: ignore[attr-defined]
    scaled = [r for r in _events(caplog) if r.event == "service.scaled"]  # type: ignore[attr-defined]
    assert [(r.old, r.new) for r in scaled] == [(1, 2), (2, 1)]  # type: ignore[attr-defined]


async def test_a_scale_up_that_cannot_start_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """It is counted in scaling_events: the log says what happened to it."""
    caplog.set_level(logging.INFO, logger="forge_sc")
    mesh = FakeMesh()
    async with open_service(
        Counter, num_replicas=1, mesh=mesh, max_restarts=0, restart_backoff=0.001
    ) as svc:
        mesh.fail_spawns(1, 5)
        with pytest.raises(NoHealthyReplicasError):
            await svc.scale_to(2)
    failed = [r for r in _events(caplog) if r.event == "service.scale_failed"]  # type: ignore[attr-defined]
    assert [(r.old, r.new, r.levelname) for r in failed] == [(1, 2, "WARNING")]  # type: ignore[attr-defined]


async def test_a_warm_spare_that_fails_to_start_is_a_replica_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="forge_sc")
    mesh = FakeMesh(seed=1)
    mesh.fail_spawns(-1, 1)  # spares spawn as index -1 until promoted
    async with open_service(
        Counter, num_replicas=1, spare_replicas=1, mesh=mesh, restart_backoff=0.01
    ) as svc:
        name = service_name(svc)
        await wait_for(lambda: svc.statistics().ready_spares == 1)
    (failed,) = [r for r in _events(caplog) if r.event == "replica.spare_failed"]  # type: ignore[attr-defined]
    assert failed.name == "forge_sc.replica" and failed.levelno == logging.WARNING
    assert (failed.service, failed.stage) == (name, "start")  # type: ignore[attr-defined]
    assert "injected" in failed.cause  # type: ignore[attr-defined]
