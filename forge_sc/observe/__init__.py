"""Observability: lifecycle logs, OpenTelemetry metrics and traces, Prometheus.

* **Logs** (always on, standard :mod:`logging`): ``forge_sc.service`` (started,
  scaled, escalated, closing, drained, stopped), ``forge_sc.replica`` (starting,
  healthy, died with the backend's cause, restarting with attempt and backoff,
  restart budget exhausted) and ``forge_sc.mesh`` (the backends). Every record
  carries ``extra`` fields: ``event``, ``service``, and ``replica``, ``incarnation``,
  ``cause``... where they apply. Nothing is logged per request. Turn them on with
  ``logging.basicConfig(level=logging.INFO)`` or a handler on ``forge_sc``.
* **OpenTelemetry** (:mod:`forge_sc.observe.otel`, needs ``opentelemetry-api``):
  observable counters and gauges over every live service, an opt-in latency
  histogram, and opt-in tracing with the context carried into the replicas.
* **Prometheus** (:mod:`forge_sc.observe.prometheus`, needs ``prometheus-client``):
  a collector over every live service, for a registry or ``start_http_server``.

Nothing here costs anything per request unless a per-request feature (tracing, the
latency histogram) was turned on before the service was opened. This package and
its private modules import only the standard library and anyio, so the core may
import them; the exporters import their optional dependency when imported.
"""

from .._home import public_home as _set_home
from . import _events
from ._events import service_name as service_name
from ._registry import LiveService as LiveService
from ._registry import live_services as live_services

#: ``forge_sc.service``: ``service.started``, ``service.scaled``,
#: ``service.replicas_drained``, ``service.escalated`` (ERROR), ``service.closing``,
#: ``service.drained``, ``service.stopped``.
SERVICE_LOGGER = _events.SERVICE_LOGGER
#: ``forge_sc.replica``: ``replica.starting`` (DEBUG), ``replica.healthy``,
#: ``replica.died`` and ``replica.spawn_failed`` (WARNING), ``replica.restarting``,
#: ``replica.exhausted`` (ERROR).
REPLICA_LOGGER = _events.REPLICA_LOGGER
#: ``forge_sc.mesh``: the backends (``forge_sc.mesh.monarch`` logs at DEBUG).
MESH_LOGGER = _events.MESH_LOGGER

__all__ = [
    "MESH_LOGGER",
    "REPLICA_LOGGER",
    "SERVICE_LOGGER",
    "LiveService",
    "live_services",
    "service_name",
]

# Show public names as forge_sc.observe.X, not forge_sc.observe._registry.X.
for _obj in (LiveService, live_services, service_name):
    _set_home(_obj, "forge_sc.observe")
del _obj
