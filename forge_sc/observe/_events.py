"""Lifecycle events as standard ``logging`` records, one logger per layer.

The service core calls these helpers on its slow paths only (a replica starting,
dying, restarting; the service starting, scaling, escalating, closing): nothing here
runs per request. Each record carries structured fields in ``extra`` (``event``,
``service``, and where they apply ``replica``, ``incarnation``, ``cause``, ``attempt``,
``backoff``...), so a JSON formatter or a log pipeline can read them without parsing
the message. This module imports nothing but the standard library: the core may
import it.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from typing import Any

__all__ = [
    "MESH_LOGGER",
    "REPLICA_LOGGER",
    "SERVICE_LOGGER",
    "replica_died",
    "replica_exhausted",
    "replica_healthy",
    "replica_promoted",
    "replica_restarting",
    "replica_spawn_failed",
    "replica_starting",
    "replicas_drained",
    "service_closing",
    "service_drained",
    "service_escalated",
    "service_name",
    "service_scaled",
    "service_started",
    "service_stopped",
]

SERVICE_LOGGER = logging.getLogger("forge_sc.service")
REPLICA_LOGGER = logging.getLogger("forge_sc.replica")
#: The backends log under ``forge_sc.mesh.*`` (``forge_sc.mesh.monarch``).
MESH_LOGGER = logging.getLogger("forge_sc.mesh")

# A library's loggers stay silent until the application configures logging (without
# this, Python's last-resort handler would print warnings bare on stderr).
logging.getLogger("forge_sc").addHandler(logging.NullHandler())

_names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_taken: dict[str, int] = {}
_names_lock = threading.Lock()  # services may run on several threads' loops


def service_name(svc: Any) -> str:
    """The name a service goes by in logs and metrics: its actor class's name, with
    ``#2``, ``#3``... for later services of the same class in this process."""
    name = _names.get(svc)
    if name is None:
        with _names_lock:
            name = _names.get(svc)
            if name is None:
                base = svc._actor_cls.__name__
                n = _taken.get(base, 0) + 1
                _taken[base] = n
                name = base if n == 1 else f"{base}#{n}"
                _names[svc] = name
    return name


_OWN_PREFIX = re.compile(r"^replica \d+ \([^)]*\) (died|is gone): ")


def _first_line(cause: object) -> str:
    """The first line of a cause, without the backend's "replica N (Cls) died: "."""
    text = str(cause).strip()
    line = _OWN_PREFIX.sub("", text.splitlines()[0]) if text else ""
    return line or type(cause).__name__


def _emit(
    logger: logging.Logger, level: int, event: str, svc: Any, msg: str, **fields: Any
) -> None:
    if not logger.isEnabledFor(level):
        return
    name = service_name(svc)
    extra = {"event": event, "service": name, **fields}
    logger.log(level, "%s: %s", name, msg, extra=extra)


# ------------------------------------------------------------------ replicas


def replica_starting(svc: Any, idx: int, incarnation: int) -> None:
    _emit(
        REPLICA_LOGGER,
        logging.DEBUG,
        "replica.starting",
        svc,
        f"replica {idx} starting (incarnation {incarnation})",
        replica=idx,
        incarnation=incarnation,
    )


def replica_healthy(svc: Any, idx: int, incarnation: int) -> None:
    again = " again" if incarnation > 1 else ""
    _emit(
        REPLICA_LOGGER,
        logging.INFO,
        "replica.healthy",
        svc,
        f"replica {idx} healthy{again} (incarnation {incarnation})",
        replica=idx,
        incarnation=incarnation,
    )


def replica_promoted(svc: Any, idx: int, incarnation: int) -> None:
    """A warm spare (``spare_replicas``) takes replica ``idx``'s place."""
    _emit(
        REPLICA_LOGGER,
        logging.INFO,
        "replica.promoted",
        svc,
        f"replica {idx}: a warm spare takes its place (incarnation {incarnation})",
        replica=idx,
        incarnation=incarnation,
    )


def spare_failed(svc: Any, stage: str, cause: BaseException) -> None:
    """A warm spare failed to start (``stage`` "start"; retried with back-off) or a
    health check (``"health"``; replaced). No replica index: a spare has none yet."""
    what = "failed to start; retrying" if stage == "start" else "failed; replacing it"
    _emit(
        REPLICA_LOGGER,
        logging.WARNING,
        "replica.spare_failed",
        svc,
        f"a warm spare {what}: {_first_line(cause)}",
        stage=stage,
        cause=str(cause),
    )


def replica_spawn_failed(svc: Any, idx: int, incarnation: int, cause: BaseException) -> None:
    _emit(
        REPLICA_LOGGER,
        logging.WARNING,
        "replica.spawn_failed",
        svc,
        f"replica {idx} failed to start (incarnation {incarnation}): {_first_line(cause)}",
        replica=idx,
        incarnation=incarnation,
        cause=str(cause),
    )


def replica_died(svc: Any, idx: int, incarnation: int, cause: BaseException | None) -> None:
    """``cause`` is the backend's account (Monarch's: the exit code or signal)."""
    _emit(
        REPLICA_LOGGER,
        logging.WARNING,
        "replica.died",
        svc,
        f"replica {idx} died (incarnation {incarnation}): {_first_line(cause)}",
        replica=idx,
        incarnation=incarnation,
        cause=str(cause),
    )


def replica_restarting(
    svc: Any, idx: int, incarnation: int, attempt: int, max_restarts: int, backoff: float
) -> None:
    """``incarnation``: the one about to start; ``attempt``: restarts in the window."""
    _emit(
        REPLICA_LOGGER,
        logging.INFO,
        "replica.restarting",
        svc,
        f"replica {idx} restarting in {backoff:.3g} s "
        f"(restart {attempt} of max_restarts={max_restarts} in the window)",
        replica=idx,
        incarnation=incarnation,
        attempt=attempt,
        backoff=backoff,
    )


def replica_exhausted(
    svc: Any, idx: int, max_restarts: int, window: float, cause: BaseException | None
) -> None:
    _emit(
        REPLICA_LOGGER,
        logging.ERROR,
        "replica.exhausted",
        svc,
        f"replica {idx} used up its restart budget (max_restarts={max_restarts} within "
        f"restart_window={window}s) and stays FAILED; last error: {_first_line(cause)}",
        replica=idx,
        cause=str(cause),
    )


def replicas_drained(svc: Any, idxs: list[int], timed_out: bool) -> None:
    how = "timed out draining" if timed_out else "drained"
    _emit(
        SERVICE_LOGGER,
        logging.INFO,
        "service.replicas_drained",
        svc,
        f"replica(s) {idxs} {how}, stopping them (scale down)",
        replicas=idxs,
        timed_out=timed_out,
    )


# ------------------------------------------------------------------ service


def service_started(svc: Any, replicas: int, seconds: float) -> None:
    _emit(
        SERVICE_LOGGER,
        logging.INFO,
        "service.started",
        svc,
        f"started: {replicas} replica(s) healthy in {seconds:.2f} s",
        replicas=replicas,
        seconds=seconds,
    )


def service_scaled(svc: Any, old: int, new: int) -> None:
    _emit(
        SERVICE_LOGGER,
        logging.INFO,
        "service.scaled",
        svc,
        f"scaled from {old} to {new} replicas",
        old=old,
        new=new,
    )


def service_scale_failed(svc: Any, old: int, new: int, cause: BaseException) -> None:
    _emit(
        SERVICE_LOGGER,
        logging.WARNING,
        "service.scale_failed",
        svc,
        f"scaling from {old} to {new} replicas failed: {_first_line(cause)}",
        old=old,
        new=new,
    )


def service_escalated(svc: Any, budget: str, cause: BaseException | None) -> None:
    _emit(
        SERVICE_LOGGER,
        logging.ERROR,
        "service.escalated",
        svc,
        f"escalated: every replica used up its restart budget ({budget}); the "
        f"open_service block is cancelled and raises ServiceFailedError; last error: "
        f"{_first_line(cause)}",
        cause=str(cause),
    )


def service_closing(svc: Any, inflight: int, timeout: float) -> None:
    _emit(
        SERVICE_LOGGER,
        logging.INFO,
        "service.closing",
        svc,
        f"closing: draining {inflight} in-flight request(s) (graceful_shutdown_timeout={timeout}s)",
        inflight=inflight,
    )


def service_drained(svc: Any, left: int) -> None:
    if left:
        msg = f"drain timed out: {left} request(s) still running are cancelled"
    else:
        msg = "drained: every in-flight request ended"
    _emit(
        SERVICE_LOGGER,
        logging.WARNING if left else logging.INFO,
        "service.drained",
        svc,
        msg,
        left=left,
    )


def service_stopped(svc: Any) -> None:
    _emit(SERVICE_LOGGER, logging.INFO, "service.stopped", svc, "stopped")
