"""forge_sc's Monarch fault hook: every mesh failure goes to the replica that owns it.

Monarch reports a failed mesh (its process died, its actor failed) to the client's
``monarch.actor.unhandled_fault_hook``, on a Monarch thread, once per mesh on the dead
process. Monarch's default hook exits the client, so forge_sc installs its own, once
per process, and leaves it installed: a failure can arrive after its mesh was stopped
cleanly (a killed process is reported after ``stop()`` returned).

The hook never raises and never exits. It looks the failed mesh up by name:

* a live forge_sc mesh: its listener is called (it posts the death to its replica's
  event loop);
* a forge_sc mesh already stopped, or Monarch's internal ``logger`` mesh: dropped;
* a message Monarch could not deliver to a process that is gone (no mesh named; a
  host of a pool was lost): logged at DEBUG;
* anything else: handed to the hook that was installed before forge_sc's, if that
  was not Monarch's default; otherwise logged at WARNING.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import monarch.actor

from .._shims._monarch import supervision as _supervision

__all__ = ["install_fault_hook", "mesh_key", "register", "unregister"]

log = logging.getLogger(__name__)

Listener = Callable[[str], None]

_lock = threading.Lock()
_listeners: dict[str, Listener] = {}
_retired: OrderedDict[str, None] = OrderedDict()
_RETIRED_MAX = 4096
_previous: Callable[[Any], object] | None = None


def mesh_key(mesh_name: str) -> str:
    """The name an actor mesh was spawned with, as Monarch reports it: lowercased,
    with ``-<uid>`` appended."""
    return mesh_name.rsplit("-", 1)[0].lower()


def install_fault_hook() -> None:
    """Install forge_sc's hook (idempotent). A hook the user installed earlier keeps
    receiving the failures of meshes forge_sc does not own."""
    global _previous
    with _lock:
        current = monarch.actor.unhandled_fault_hook
        if current is _hook:
            return
        _previous = None if current is _supervision.unhandled_fault_hook else current
        # Monarch looks the hook up on ``monarch.actor`` at every failure.
        monarch.actor.unhandled_fault_hook = _hook


def register(name: str, listener: Listener) -> None:
    """Route failures of the actor mesh spawned as ``name`` to ``listener(report)``.
    The listener runs on a Monarch thread: it must only hand the report over."""
    with _lock:
        _listeners[mesh_key(name)] = listener


def unregister(name: str) -> None:
    """Stop routing ``name``; its late failures are dropped from now on."""
    name = mesh_key(name)
    with _lock:
        if _listeners.pop(name, None) is None:
            return
        _retired[name] = None
        if len(_retired) > _RETIRED_MAX:
            _retired.popitem(last=False)


def _hook(failure: Any) -> None:
    previous: Callable[[Any], object] | None = None
    try:
        name = mesh_key(str(failure.mesh_name))
        with _lock:
            listener = _listeners.get(name)
            known = name in _retired or name == "logger"
            previous = None if listener is not None or known else _previous
        if listener is not None:
            listener(failure.report())
            return
        if known:
            log.debug("forge_sc: dropped a late failure of mesh %s", failure.mesh_name)
            return
        if previous is None and name == "<none>" and "undeliverable message" in failure.report():
            # Messages still queued for processes of a host that was lost (a worker
            # restarted at its address refuses them): the deaths are handled already.
            log.debug("forge_sc: Monarch could not deliver:\n%s", failure.report())
            return
        if previous is None:
            log.warning(
                "forge_sc: a Monarch mesh that forge_sc does not own failed "
                "(forge_sc's fault hook keeps the process running):\n%s",
                failure.report(),
            )
            return
    except Exception:
        log.exception("forge_sc: the fault hook failed while routing a mesh failure")
        return
    # Outside the try: a user's own hook keeps its own semantics, raising included.
    previous(failure)
