"""Placement of replicas on a pool of Monarch hosts, and the pool's view of its hosts.

``MonarchMesh(workers=[...], ca=...)``, ``MonarchMesh(job=...)`` and
``MonarchMesh(host_mesh=...)`` give the mesh a *pool*: a list of hosts, from Monarch.
Placement is bookkeeping over that list, never a scheduler of ours:

* **Sources.** Worker addresses are attached with Monarch's ``attach_to_workers``, one
  1-host ``HostMesh`` per address (so one dead address is one dead host, and a host
  that answers again is attached again; a worker *restarted* at the same address is
  not reliably reachable again from the same client in torchmonarch 0.7, which keeps
  its broken connection to the old one); a replica spanning several
  hosts gets a fresh ``attach_to_workers`` of exactly its hosts. A ``HostMesh`` (given,
  or a ``JobTrait``'s ``state()``) is flattened to one dimension and sliced per host; a
  replica spanning several hosts takes consecutive ones (a slice).
* **Placement.** A replica takes ``hosts`` distinct hosts, each running ``procs`` of
  its processes (and, with ``with_gpus``, ``procs`` distinct GPUs of that host). Hosts
  have ``procs_per_host`` process slots (unlimited when None) and ``gpus_per_host``
  GPUs; among the hosts with room, the least loaded are chosen (ties: pool order), so
  replicas spread. Slots and GPUs are never given to two replicas.
* **What cannot fit** (more hosts per replica than the pool has, more processes or
  GPUs than the hosts hold, counting hosts that are down, which may come back) raises
  :class:`~forge_sc.errors.PlacementError` naming what was asked and what is free:
  at ``open_service`` and ``scale_to`` before anything starts (``check_capacity``), or
  from a spawn. A spawn that could fit but finds no room *now* (hosts down) waits for
  a host, up to ``host_wait`` seconds, then fails (a failed spawn, which counts
  against the replica's restart budget like any other).
* **Host health.** A host is ``UP``, ``SUSPECT`` or ``DOWN``. When a replica dies or
  fails to start, its hosts become ``SUSPECT``: no new replica goes there until a
  probe answers (a fresh attach of the worker address; on a ``HostMesh`` a one-process
  probe actor), bounded by ``attach_timeout``. A host that does not answer is ``DOWN``
  and probed again after ``probe_interval`` seconds, doubling up to 8x, for as long as
  the pool is open; when it answers again (a worker restarted at the same address, a
  job whose ``state()`` shows the host again) it is ``UP``. One prober task does this,
  inside the mesh's lifespan.
* **Processes left behind.** A replica whose stop did not finish within
  ``stop_timeout`` (a host whose processes are stopped, not dead: a partition) is
  handed to the pool, which stops it again when its host answers again and when the
  pool closes.

Death detection: the processes are not this machine's children, so a **watcher**
(:class:`_Watcher`, one process per host, started when a replica is first placed
there) holds their pidfds on their host and answers a pending call when one exits;
besides, Monarch's supervision reports (forge_sc's fault hook), failed calls, and the
health probe of the service core (``health_poll_rate`` / ``health_timeout``).
"""

from __future__ import annotations

import enum
import logging
import math
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
from monarch.actor import (
    Actor,
    attach_to_workers,
    concurrent_endpoint,
    default_bootstrap_cmd,
    endpoint,
)

from ..errors import HostsUnreachableError, PlacementError
from . import _faults
from ._bridge import LoopPoster, loop_poster, wait
from ._gpu import GpuPool

__all__ = [
    "TRUST_ALL",
    "HostPool",
    "HostState",
    "Placement",
    "PoolHost",
    "check_workers",
    "stop_bounded",
]

log = logging.getLogger(__name__)

#: Monarch's own ``ca`` value for "no authentication" (the only one its Python layer
#: accepts in torchmonarch 0.7).
TRUST_ALL = "trust_all_connections"

CA = Literal["trust_all_connections"] | str | os.PathLike[str] | bytes

_SCHEMES = ("tcp", "tls", "ipc", "metatls")
#: How long closing the pool tries to stop processes left on a host that is down.
_LOST_HOST_GRACE = 0.5
_WILDCARDS = {"", "*", "0.0.0.0", "::", "[::]"}
_LOOPBACK_NAMES = {"localhost", "::1", "[::1]"}


# ------------------------------------------------------------------ addresses, TLS


def _host_of(address: str) -> str:
    """The host part of ``scheme://host:port`` (also ``service<id>@scheme://...``)."""
    url = address.rsplit("@", 1)[-1] if "@" in address.split("://", 1)[0] else address
    parts = urlsplit(url)
    if parts.hostname is not None:
        return parts.hostname
    return parts.netloc.rsplit(":", 1)[0]


def _scheme_of(address: str) -> str:
    head = address.split("://", 1)[0]
    return head.rsplit("@", 1)[-1]


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_NAMES or host.startswith("127.")


def _read_ca(ca: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(ca, bytes):
        return ca
    try:
        return Path(ca).read_bytes()
    except OSError as exc:
        raise ValueError(f"MonarchMesh(ca={ca!r}): cannot read the CA certificate: {exc}") from None


def check_workers(workers: Sequence[str], ca: object) -> tuple[str, ...]:
    """Validate worker addresses and ``ca`` before anything starts; return the
    addresses. Raises ``TypeError``/``ValueError`` saying what to write instead."""
    if isinstance(workers, str) or not isinstance(workers, Sequence):
        raise TypeError(
            f"MonarchMesh(workers=...) takes a list of addresses such as "
            f'["tcp://10.0.0.5:26600"], got {workers!r}'
        )
    addresses = tuple(workers)
    if not addresses:
        raise ValueError("MonarchMesh(workers=[]) has no worker: give at least one address")
    seen: set[str] = set()
    for address in addresses:
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(
                f"MonarchMesh(workers=...): {address!r} is not a worker address; write "
                '"tcp://<host>:<port>" (or "tls://<host>:<port>") as given to '
                "run_worker_loop_forever(address=...)"
            )
        scheme = _scheme_of(address)
        if scheme not in _SCHEMES:
            raise ValueError(
                f"MonarchMesh(workers=...): {address!r} uses transport {scheme!r}; "
                f"Monarch workers listen on one of {', '.join(s + '://' for s in _SCHEMES)}"
            )
        if scheme != "ipc" and _host_of(address) in _WILDCARDS:
            raise ValueError(
                f"MonarchMesh(workers=...): {address!r} names no host (a wildcard): "
                "write the address the worker listens on, e.g. tcp://10.0.0.5:26600"
            )
        if address in seen:
            raise ValueError(f"MonarchMesh(workers=...): {address!r} is listed twice")
        seen.add(address)
    if ca is None:
        raise TypeError(_CA_REQUIRED)
    tls = [a for a in addresses if _scheme_of(a) == "tls"]
    if isinstance(ca, str) and ca == TRUST_ALL:
        if tls:
            raise ValueError(
                f"MonarchMesh(workers=[{tls[0]!r}, ...], ca='trust_all_connections'): "
                "tls:// workers check every peer against the CA in HYPERACTOR_TLS_CA; "
                "pass that CA certificate as ca= so the mesh can check it is the one "
                "Monarch uses"
            )
        return addresses
    if not isinstance(ca, str | bytes | os.PathLike):
        raise TypeError(
            f"MonarchMesh(ca=...) takes 'trust_all_connections' or a CA path, got {ca!r}"
        )
    plain = [a for a in addresses if _scheme_of(a) not in ("tls", "metatls", "ipc")]
    if plain:
        raise ValueError(
            f"MonarchMesh(ca=<a CA certificate>): {plain[0]!r} is plain TCP, which "
            "Monarch neither encrypts nor authenticates; use tls://<host>:<port> workers "
            "(run_worker_loop_forever(address='tls://...') with HYPERACTOR_TLS_CA, "
            "HYPERACTOR_TLS_CERT and HYPERACTOR_TLS_KEY set)"
        )
    _check_tls_environment(_read_ca(ca))
    return addresses


_CA_REQUIRED = (
    "MonarchMesh(workers=[...]) needs ca=, Monarch's own argument of attach_to_workers. "
    "A Monarch worker runs whatever code its client sends: anyone who can reach its "
    "port can run code there. Write ca='trust_all_connections' to attach over plain, "
    "unauthenticated TCP (keep the ports on a private network, see "
    "docs/deployment.md), or pass the CA certificate of tls:// workers."
)


def _check_tls_environment(ca_pem: bytes) -> None:
    env = {
        k: os.environ.get(k)
        for k in ("HYPERACTOR_TLS_CA", "HYPERACTOR_TLS_CERT", "HYPERACTOR_TLS_KEY")
    }
    missing = [k for k, v in env.items() if not v]
    if missing:
        raise ValueError(
            "tls:// workers: Monarch reads its TLS files from the environment when it "
            f"loads, and {', '.join(missing)} is not set. Export HYPERACTOR_TLS_CA (the "
            "CA), HYPERACTOR_TLS_CERT and HYPERACTOR_TLS_KEY (this client's certificate, "
            "signed by that CA) before starting Python"
        )
    ca_file = env["HYPERACTOR_TLS_CA"]
    assert ca_file is not None
    try:
        used = Path(ca_file).read_bytes()
    except OSError as exc:
        raise ValueError(f"HYPERACTOR_TLS_CA={ca_file!r} cannot be read: {exc}") from None
    if used.strip() != ca_pem.strip():
        raise ValueError(
            f"MonarchMesh(ca=...) is not the CA Monarch uses (HYPERACTOR_TLS_CA={ca_file!r}); "
            "the channel checks peers against HYPERACTOR_TLS_CA only, so make them the same"
        )


def _client_transport() -> str:
    from monarch.config import get_global_config

    return str(get_global_config().get("default_transport", ""))


def check_client_transport(addresses: Sequence[str]) -> None:
    """The workers must be able to reach this client: refuse a Unix-socket client with
    remote workers, and a non-TLS client with tls:// workers, with what to set."""
    transport = _client_transport().lower()
    schemes = {_scheme_of(a) for a in addresses}
    if "tls" in schemes and not transport.startswith("tls"):
        raise ValueError(
            f"tls:// workers need this client on Monarch's TLS transport too (it uses "
            f"{transport or 'the default'}): set HYPERACTOR_MESH_DEFAULT_TRANSPORT="
            "tls://<this host's address>:0 before starting Python, or call "
            "monarch.actor.enable_transport('tls://<address>:0') before anything "
            "else uses Monarch"
        )
    remote = [a for a in addresses if _scheme_of(a) != "ipc" and not _is_loopback(_host_of(a))]
    if remote and transport.startswith("unix"):
        raise ValueError(
            f"worker {remote[0]!r} is on another machine, but this client listens on a "
            "Unix socket (Monarch's default), which it cannot reach: set "
            "HYPERACTOR_MESH_DEFAULT_TRANSPORT=tcp://<this host's address>:0 (or tls://...) "
            "before starting Python, or call monarch.actor.enable_transport(...) "
            "before anything else uses Monarch"
        )


# ------------------------------------------------------------------ bounded stop


def _get_within(fut: Any, timeout: float) -> bool:
    """Block this worker thread on a Monarch future for at most ``timeout`` seconds;
    True when it resolved (with a value or an error), False when the time ran out."""
    try:
        fut.get(timeout=timeout)
    except TimeoutError:
        return False
    except BaseException:  # a stop racing a failure may raise anything
        return True
    return True


async def stop_bounded(proc_mesh: Any, within: float) -> bool:
    """Stop a ProcMesh, giving up after ``within`` seconds (a host whose processes
    are stopped never answers); True when the stop finished. Monarch cancels its own
    stop when the time runs out, so no thread outlives this call."""
    return await anyio.to_thread.run_sync(_get_within, proc_mesh.stop(), within)


# ------------------------------------------------------------------ hosts


class HostState(enum.Enum):
    """``UP``: takes replicas. ``SUSPECT``: a replica died there; probed before reuse.
    ``DOWN``: did not answer a probe; probed again later."""

    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


@attrs.define(eq=False)
class PoolHost:
    """One host of the pool, as the pool sees it."""

    index: int
    label: str
    mesh: Any
    slots: int | None
    gpus: GpuPool | None
    state: HostState = HostState.UP
    procs: int = 0
    replicas: int = 0
    probing: bool = False
    next_probe: float = 0.0
    failures: int = 0
    abandoned: list[Any] = attrs.field(factory=list)
    #: This host's watcher (see :class:`_Watcher`): its actor, its ProcMesh, whether
    #: starting one was tried since the host last came up, and the lock that starts it.
    watcher: Any = None
    watcher_procs: Any = None
    watcher_name: str | None = None
    watcher_tried: bool = False
    watcher_ready: anyio.Event | None = None

    def free_slots(self) -> float:
        return math.inf if self.slots is None else self.slots - self.procs

    def room(self, procs: int, with_gpus: bool) -> bool:
        if self.free_slots() < procs:
            return False
        return not with_gpus or (self.gpus is not None and self.gpus.free >= procs)

    def describe(self) -> str:
        if self.state is not HostState.UP:
            return f"{self.label} ({self.state.value})"
        used = f"{self.procs} process(es)"
        if self.slots is not None:
            used = f"{self.procs} of {self.slots} process slots used"
        if self.gpus is not None:
            used += f", {self.gpus.total - self.gpus.free} of {self.gpus.total} GPUs used"
        return f"{self.label} (up, {self.replicas} replica(s), {used})"


@attrs.frozen(eq=False)
class Placement:
    """Where one replica runs: its hosts (in rank order), processes per host, and the
    GPU ids it holds on each host (empty tuples without ``with_gpus``)."""

    hosts: tuple[PoolHost, ...]
    procs: int
    gpus: tuple[tuple[str, ...], ...]

    def __str__(self) -> str:
        return ", ".join(h.label for h in self.hosts)


@attrs.define(eq=False)
class _Claim:
    """A spawn waiting for room: counted as demand by the fit checks of others."""

    procs: int
    hosts: int


class _Probe(Actor):  # type: ignore[misc]
    """Answers the pool's probe of a host (HostMesh pools)."""

    @endpoint  # type: ignore[untyped-decorator]
    async def ping(self) -> int:
        return os.getpid()


class _Watcher(Actor):  # type: ignore[misc]
    """One per host of a pool, in a process of its own there: tells the client when a
    replica's process on this host exits, from a Linux pidfd (readable the moment the
    process is gone), as the pidfds of local replicas do. Monarch's supervision
    reports a death within its poll interval, but a mesh whose state query was in
    flight when its process died waits for that query to time out (30 s by
    default, ``HYPERACTOR_MESH_GET_ACTOR_STATE_MAX_IDLE``); the health probe then
    takes ``health_timeout``. The answer travels as a Monarch reply."""

    @endpoint  # type: ignore[untyped-decorator]
    async def pid(self) -> int:
        return os.getpid()

    @concurrent_endpoint  # type: ignore[untyped-decorator]
    async def watch(self, pids: list[int]) -> tuple[int, str] | None:
        """Return ``(pid, how)`` once one of ``pids`` exits (at once if one is gone
        already); None where this host has no pidfds (not Linux >= 5.3)."""
        import asyncio

        fds: dict[int, int] = {}
        try:
            for pid in pids:
                try:
                    fds[os.pidfd_open(pid)] = pid
                except ProcessLookupError:
                    return pid, "is gone"
                except (AttributeError, OSError):  # no pidfds here
                    return None
            loop = asyncio.get_running_loop()
            done: asyncio.Future[int] = loop.create_future()

            def readable(pid: int) -> None:
                if not done.done():
                    done.set_result(pid)

            for fd, pid in fds.items():
                loop.add_reader(fd, readable, pid)
            try:
                return await done, "exited"
            finally:
                for fd in fds:
                    loop.remove_reader(fd)
        finally:
            for fd in fds:
                os.close(fd)


# ------------------------------------------------------------------ sources


class _Source:
    """Where the pool's hosts come from. ``contiguous``: a replica spanning several
    hosts must take consecutive ones."""

    contiguous = False

    async def open(self, within: float) -> list[tuple[str, Any]]:
        raise NotImplementedError

    async def probe(self, host: PoolHost, within: float) -> Any | None:
        """A usable 1-host mesh for ``host`` if it answers within ``within`` seconds."""
        raise NotImplementedError

    def span(self, hosts: Sequence[PoolHost]) -> Any:
        """A HostMesh spanning ``hosts`` (called in a worker thread)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


async def _initialized(mesh: Any, within: float) -> bool:
    with anyio.move_on_after(within):
        await wait(mesh.initialized)
        return True
    return False


class _Workers(_Source):
    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = tuple(addresses)

    def describe(self) -> str:
        return f"{len(self.addresses)} attached worker(s)"

    @staticmethod
    def _attach(addresses: Sequence[str]) -> Any:
        # Monarch's Python layer accepts only this ca; TLS is the channel's (see
        # check_workers: the CA was checked against HYPERACTOR_TLS_CA).
        return attach_to_workers(ca=TRUST_ALL, workers=list(addresses))

    async def _attach_one(self, address: str, within: float) -> Any | None:
        mesh = await anyio.to_thread.run_sync(self._attach, [address])
        return mesh if await _initialized(mesh, within) else None

    async def open(self, within: float) -> list[tuple[str, Any]]:
        check_client_transport(self.addresses)
        meshes: dict[str, Any] = {}

        async def one(address: str) -> None:
            meshes[address] = await self._attach_one(address, within)

        async with anyio.create_task_group() as tg:
            for address in self.addresses:
                tg.start_soon(one, address)
        dead = [a for a in self.addresses if meshes[a] is None]
        if dead:
            raise HostsUnreachableError(
                f"{len(dead)} of {len(self.addresses)} worker(s) did not answer within "
                f"attach_timeout={within}s: {', '.join(dead)}. Check that each host runs "
                "a Monarch worker (python -m forge_sc.worker <address>, or "
                "run_worker_loop_forever) at exactly that address, that its port is "
                "reachable from here, and that both sides use the same transport "
                "(tcp://, or tls:// with certificates of the same CA). Nothing was started."
            )
        return [(a, meshes[a]) for a in self.addresses]

    async def probe(self, host: PoolHost, within: float) -> Any | None:
        return await self._attach_one(host.label, within)

    def span(self, hosts: Sequence[PoolHost]) -> Any:
        return self._attach([h.label for h in hosts])


class _HostMesh(_Source):
    contiguous = True

    def __init__(self, host_mesh: Any, what: str = "host_mesh") -> None:
        self.mesh: Any = host_mesh
        self.what = what
        self.label = "hosts"
        self.child_env: Callable[[], dict[str, str]] = dict

    def describe(self) -> str:
        return f"{self.what} {dict(self.mesh.sizes) if self.mesh is not None else '(not open)'}"

    def _flat(self, mesh: Any) -> Any:
        labels = tuple(mesh.region.labels)
        if len(labels) == 1:
            self.label = labels[0]
            return mesh
        self.label = "hosts"
        return mesh.flatten("hosts")

    async def _host_mesh(self) -> Any:
        return self.mesh

    async def open(self, within: float) -> list[tuple[str, Any]]:
        mesh = self._flat(await self._host_mesh())
        self.mesh = mesh
        if not await _initialized(mesh, within):
            raise HostsUnreachableError(
                f"the {self.what} {dict(mesh.sizes)} did not come up within "
                f"attach_timeout={within}s; nothing was started"
            )
        n = mesh.size(self.label)
        return [(f"{self.what}[{self.label}={i}]", mesh.slice(**{self.label: i})) for i in range(n)]

    async def probe(self, host: PoolHost, within: float) -> Any | None:
        name = f"forge_sc_probe_{secrets.token_hex(4)}"
        _faults.register(name, lambda _report: None)
        procs: Any = None
        try:

            def start() -> Any:
                cmd = default_bootstrap_cmd().with_env(self.child_env())
                pm = host.mesh.spawn_procs(per_host={"procs": 1}, bootstrap_command=cmd)
                return pm, pm.spawn(name, _Probe)

            procs, actor = await anyio.to_thread.run_sync(start)
            with anyio.move_on_after(within):
                try:
                    await wait(actor.ping.call_one())
                except Exception:  # any failure means "did not answer"
                    return None
                return host.mesh
            return None
        finally:
            with anyio.CancelScope(shield=True):
                if procs is not None:
                    await stop_bounded(procs, within)
            _faults.unregister(name)

    def span(self, hosts: Sequence[PoolHost]) -> Any:
        first = hosts[0].index
        return self.mesh.slice(**{self.label: slice(first, first + len(hosts))})


class _Job(_HostMesh):
    def __init__(self, job: Any, mesh_name: str) -> None:
        super().__init__(None, f"job mesh {mesh_name!r}")
        self.job = job
        self.mesh_name = mesh_name

    def _state_mesh(self) -> Any:
        state = self.job.state(cached_path=None)
        return getattr(state, self.mesh_name)

    async def _host_mesh(self) -> Any:
        # May wait for the scheduler (an allocation in a queue): the job's own time.
        return await anyio.to_thread.run_sync(self._state_mesh)

    async def probe(self, host: PoolHost, within: float) -> Any | None:
        found = await super().probe(host, within)
        if found is not None:
            return found
        # The job may show a replacement for the lost host: ask its state again.
        try:
            mesh = self._flat(await anyio.to_thread.run_sync(self._state_mesh))
        except Exception as exc:  # the job says the host is gone
            log.debug("forge_sc: job.state() while probing %s: %r", host.label, exc)
            return None
        if mesh.size(self.label) <= host.index:
            return None
        candidate = mesh.slice(**{self.label: host.index})
        old, host.mesh = host.mesh, candidate
        try:
            found = await super().probe(host, within)
        finally:
            host.mesh = old
        if found is not None:
            self.mesh = mesh  # later multi-host spans use the job's new hosts
        return found


# ------------------------------------------------------------------ the pool


class HostPool:
    """The hosts of one MonarchMesh and the replicas placed on them. Used from one
    event loop thread (a service's); see the module docstring."""

    def __init__(
        self,
        *,
        workers: Sequence[str] | None = None,
        job: Any = None,
        host_mesh: Any = None,
        job_mesh_name: str = "hosts",
        procs_per_host: int | None = None,
        gpus_per_host: int | None = None,
        attach_timeout: float = 10.0,
        probe_interval: float = 1.0,
        host_wait: float | None = 30.0,
        stop_timeout: float = 5.0,
        child_env: Callable[[], dict[str, str]] = dict,
    ) -> None:
        source: _Source
        if workers is not None:
            source = _Workers(workers)
        elif job is not None:
            source = _Job(job, job_mesh_name)
        else:
            source = _HostMesh(host_mesh)
        if isinstance(source, _HostMesh):
            source.child_env = child_env
        self._source = source
        self.procs_per_host = procs_per_host
        self.gpus_per_host = gpus_per_host
        self.attach_timeout = attach_timeout
        self.probe_interval = probe_interval
        self.host_wait = host_wait
        self.stop_timeout = stop_timeout
        self.hosts: list[PoolHost] = []
        self._claims: list[_Claim] = []
        self._sessions = 0
        self._thread: int | None = None
        self._changed: anyio.Event | None = None
        self._prober_lock: anyio.Lock | None = None
        self._opened = False
        self._child_env = child_env
        self._post: LoopPoster | None = None
        # The task groups of the open sessions (watchers start in the newest one).
        self._groups: list[anyio.abc.TaskGroup] = []

    def __repr__(self) -> str:
        return f"<HostPool {self._source.describe()}: {self.describe()}>"

    # -------------------------------------------------------------- sessions

    def session(self) -> _Session:
        """The pool's part of a lifespan: attach at the first, probe while open,
        clean up at the last (an async context manager)."""
        return _Session(self)

    async def _open(self) -> None:
        pairs = await self._source.open(self.attach_timeout)
        self.hosts = [
            PoolHost(
                index=i,
                label=label,
                mesh=mesh,
                slots=self.procs_per_host,
                gpus=None
                if self.gpus_per_host is None
                else GpuPool([str(g) for g in range(self.gpus_per_host)]),
            )
            for i, (label, mesh) in enumerate(pairs)
        ]
        self._opened = True
        log.info("forge_sc: host pool open: %s", self.describe())

    async def _close(self) -> None:
        # A host that does not answer gets a short try: a worker ends its clients'
        # processes itself when this client disconnects.
        for host in self.hosts:
            self._retire_watcher(host)
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for host in self.hosts:
                    up = host.state is HostState.UP
                    tg.start_soon(self._stop_abandoned, host, None if up else _LOST_HOST_GRACE)

    # -------------------------------------------------------------- watchers

    async def watcher(self, host: PoolHost) -> Any | None:
        """The :class:`_Watcher` actor of ``host``: started there (in the pool's own
        task, bounded by ``attach_timeout``) the first time it is asked for since the
        host came up; None if it could not be started (deaths there are then learnt
        from Monarch's supervision and the health probe only)."""
        self.start_watcher(host)
        if host.watcher_ready is not None:
            await host.watcher_ready.wait()
        return host.watcher

    def start_watcher(self, host: PoolHost) -> None:
        """Start ``host``'s watcher in the background unless it was tried already."""
        if not host.watcher_tried and self._groups:
            host.watcher_tried = True
            host.watcher_ready = ready = anyio.Event()
            self._groups[-1].start_soon(self._start_watcher, host, ready)

    async def _start_watcher(self, host: PoolHost, ready: anyio.Event) -> None:
        name = f"forge_sc_watcher_{secrets.token_hex(4)}"
        _faults.register(name, partial(self._watcher_failed, host, name))
        mesh = host.mesh

        def start() -> tuple[Any, Any]:
            cmd = default_bootstrap_cmd().with_env(self._child_env())
            pm = mesh.spawn_procs(per_host={"procs": 1}, bootstrap_command=cmd)
            return pm, pm.spawn(name, _Watcher)

        procs: Any = None
        started = False
        try:
            # Shielded (and bounded): a ProcMesh stopped while its process is still
            # starting can leave that process running.
            with anyio.CancelScope(shield=True):
                procs, actor = await anyio.to_thread.run_sync(start)
                with anyio.move_on_after(self.attach_timeout):
                    await wait(actor.pid.call_one())
                    # (A host that went down meanwhile dropped this start.)
                    started = host.watcher_ready is ready
            if started:
                host.watcher, host.watcher_procs, host.watcher_name = actor, procs, name
                return
            if host.watcher_ready is ready:
                log.info(
                    "forge_sc: no watcher on host %s (it did not start within %ss); "
                    "deaths there are learnt from Monarch's supervision and the health "
                    "probe",
                    host.label,
                    self.attach_timeout,
                )
        except Exception as exc:  # no watcher: Monarch and the health probe still tell
            log.info("forge_sc: no watcher on host %s: %r", host.label, exc)
        except BaseException:  # the pool closes: a later session may try again
            if host.watcher_ready is ready:
                host.watcher_tried = False
            raise
        finally:
            if not started:
                _faults.unregister(name)
                if procs is not None:
                    host.abandoned.append(procs)
            if host.watcher_ready is ready:
                host.watcher_ready = None
            ready.set()

    def _watcher_failed(self, host: PoolHost, name: str, _report: str) -> None:
        # A Monarch thread: hand over to the pool's event loop.
        if self._post is not None:
            self._post(partial(self._forget_watcher, host, name))

    def _forget_watcher(self, host: PoolHost, name: str) -> None:
        if host.watcher is not None and host.watcher_name == name:
            self._retire_watcher(host)

    def _retire_watcher(self, host: PoolHost) -> None:
        """Drop ``host``'s watcher; its process is stopped with the abandoned ones."""
        if host.watcher_procs is not None:
            host.abandoned.append(host.watcher_procs)
        if host.watcher_name is not None:
            _faults.unregister(host.watcher_name)
        host.watcher = host.watcher_procs = host.watcher_name = None

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = anyio.Event()

    async def _wait_changed(self, within: float) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        event = self._changed
        with anyio.move_on_after(within):
            await event.wait()

    # -------------------------------------------------------------- probing

    async def run_prober(self) -> None:
        """Probe SUSPECT hosts at once and DOWN hosts every ``probe_interval``
        (doubling up to 8x). Several lifespans may run one each: one probes, the
        others wait to take over when it ends."""
        assert self._prober_lock is not None
        async with self._prober_lock:
            while True:
                now = anyio.current_time()
                due = [
                    h
                    for h in self.hosts
                    if h.state is not HostState.UP and not h.probing and h.next_probe <= now
                ]
                if due:
                    async with anyio.create_task_group() as tg:
                        for host in due:
                            tg.start_soon(self._probe, host)
                    continue
                later = [h.next_probe for h in self.hosts if h.state is HostState.DOWN]
                await self._wait_changed(min(later) - now if later else math.inf)

    async def _probe(self, host: PoolHost) -> None:
        host.probing = True
        try:
            mesh = await self._source.probe(host, self.attach_timeout)
        finally:
            host.probing = False
        if mesh is not None:
            if host.state is not HostState.UP:
                log.log(
                    logging.WARNING if host.state is HostState.DOWN else logging.DEBUG,
                    "forge_sc: host %s answers again; it takes replicas",
                    host.label,
                )
            host.mesh = mesh
            host.state = HostState.UP
            host.failures = 0
            self._notify()
            await self._stop_abandoned(host)
            return
        if host.state is not HostState.DOWN:
            log.warning(
                "forge_sc: host %s did not answer within %ss: it is down; its replicas "
                "are placed on other hosts, and it is probed again until it answers",
                host.label,
                self.attach_timeout,
            )
        host.state = HostState.DOWN
        self._retire_watcher(host)  # it may be lost with its host
        host.watcher_tried = False  # a new one when the host answers again
        host.watcher_ready = None
        host.failures += 1
        delay = min(self.probe_interval * 2 ** (host.failures - 1), 8 * self.probe_interval)
        host.next_probe = anyio.current_time() + delay
        self._notify()

    async def _stop_abandoned(self, host: PoolHost, limit: float | None = None) -> None:
        while host.abandoned:
            procs = host.abandoned.pop()
            if not await stop_bounded(procs, self.stop_timeout if limit is None else limit):
                log.debug("forge_sc: processes on %s still do not stop", host.label)

    # -------------------------------------------------------------- placement

    def describe(self) -> str:
        if not self.hosts:
            return "no host attached yet"
        return f"{len(self.hosts)} host(s): " + "; ".join(h.describe() for h in self.hosts)

    def check_capacity(
        self, procs: int, hosts: int | None, with_gpus: bool, count: int, *, who: str = ""
    ) -> None:
        """Raise :class:`PlacementError` if ``count`` more replicas of ``hosts`` hosts
        x ``procs`` processes can never be placed beside those already placed (hosts
        that are down count as hosts that may come back)."""
        self._check_fits(procs, hosts or 1, with_gpus, count, None, who)

    def _check_fits(
        self,
        procs: int,
        k: int,
        with_gpus: bool,
        count: int,
        exclude: _Claim | None,
        who: str,
        prefix: str = "",
    ) -> None:
        n = len(self.hosts)
        placed = any(h.replicas for h in self.hosts)
        asked = (
            f"{count} replica(s){f' of {who}' if who else ''} ({k} host(s) x {procs} "
            f"process(es) each{', with GPUs' if with_gpus else ''})"
            + (" beside those already placed" if placed else "")
        )
        fix = "Lower num_replicas, procs or hosts, or give the mesh more hosts."
        if k > n:
            raise PlacementError(
                f"{prefix}cannot place {asked}: each replica needs {k} distinct hosts and the "
                f"pool has {n}. {fix} Pool: {self.describe()}"
            )
        if self.procs_per_host is not None and procs > self.procs_per_host:
            raise PlacementError(
                f"{prefix}cannot place {asked}: procs={procs} exceeds procs_per_host="
                f"{self.procs_per_host}. {fix}"
            )
        if with_gpus:
            if self.gpus_per_host is None:
                raise PlacementError(
                    f"{prefix}cannot place {asked}: with_gpus=True on a pool of hosts needs "
                    "MonarchMesh(..., gpus_per_host=N), the GPUs each host has"
                )
            if procs > self.gpus_per_host:
                raise PlacementError(
                    f"{prefix}cannot place {asked}: procs={procs} GPUs per host exceed "
                    f"gpus_per_host={self.gpus_per_host}. {fix}"
                )
        others = [c for c in self._claims if c is not exclude]
        for unit, free_of in (
            ("process slots", (lambda h: h.free_slots()) if self.procs_per_host else None),
            ("GPUs", (lambda h: h.gpus.free if h.gpus else 0) if with_gpus else None),
        ):
            if free_of is None:
                continue
            free = [free_of(h) for h in self.hosts]
            waiting = sum(c.procs * c.hosts for c in others)
            hosts_with_room = sum(1 for f in free if f >= procs)
            if sum(free) - waiting < count * k * procs or hosts_with_room < k:
                raise PlacementError(
                    f"{prefix}cannot place {asked}: that needs {count * k * procs} free {unit} "
                    f"({procs} on each of {k} host(s) per replica), and "
                    f"{max(0, int(sum(free) - waiting))} are free"
                    + (f" ({waiting} claimed by recovering replicas)" if waiting else "")
                    + f". {fix} Pool: {self.describe()}"
                )

    def _place(self, procs: int, k: int, with_gpus: bool) -> Placement | None:
        ok = [h for h in self.hosts if h.state is HostState.UP and h.room(procs, with_gpus)]
        if len(ok) < k:
            return None

        def load(h: PoolHost) -> tuple[int, int, int]:
            return (h.replicas, h.procs, h.index)

        chosen: list[PoolHost]
        if k > 1 and self._source.contiguous:
            usable = {h.index for h in ok}
            windows = [
                self.hosts[i : i + k]
                for i in range(len(self.hosts) - k + 1)
                if all(j in usable for j in range(i, i + k))
            ]
            if not windows:
                return None
            chosen = min(windows, key=lambda w: (sum(h.replicas for h in w), w[0].index))
        else:
            chosen = sorted(ok, key=load)[:k]
            chosen.sort(key=lambda h: h.index)  # ranks in pool order
        gpus: list[tuple[str, ...]] = []
        for h in chosen:
            h.procs += procs
            h.replicas += 1
            if with_gpus and h.gpus is not None:
                gpus.append(h.gpus.acquire(procs, f"a replica on {h.label}"))
            else:
                gpus.append(())
        return Placement(tuple(chosen), procs, tuple(gpus))

    async def acquire(self, procs: int, hosts: int | None, with_gpus: bool, who: str) -> Placement:
        """Reserve room for one replica; wait (up to ``host_wait``) while the pool
        could hold it but hosts are down or suspect. Raises :class:`PlacementError`."""
        k = hosts or 1
        claim = _Claim(procs, k)
        self._claims.append(claim)
        deadline = None if self.host_wait is None else anyio.current_time() + self.host_wait
        try:
            while True:
                self._check_fits(procs, k, with_gpus, 1, claim, "", f"{who}: ")
                placement = self._place(procs, k, with_gpus)
                if placement is not None:
                    for host in placement.hosts:  # up by the time the replica is
                        self.start_watcher(host)
                    return placement
                remaining = math.inf if deadline is None else deadline - anyio.current_time()
                if remaining <= 0:
                    raise PlacementError(
                        f"{who}: no host of the pool had room for {k} host(s) x {procs} "
                        f"process(es) for host_wait={self.host_wait}s (hosts down or "
                        f"not answering yet). Pool: {self.describe()}"
                    )
                await self._wait_changed(remaining)
        finally:
            self._claims.remove(claim)

    def release(self, placement: Placement, *, died: bool) -> None:
        """Give a replica's room back. ``died``: it died or failed to start, so its
        hosts are probed before they take another replica."""
        for host, gpus in zip(placement.hosts, placement.gpus, strict=True):
            host.procs -= placement.procs
            host.replicas -= 1
            if gpus and host.gpus is not None:
                host.gpus.release(gpus)
            if died and host.state is HostState.UP:
                host.state = HostState.SUSPECT
                host.next_probe = 0.0
        self._notify()

    def abandon(self, placement: Placement, proc_mesh: Any) -> None:
        """A replica's stop did not finish: stop ``proc_mesh`` again when its host
        answers again, and when the pool closes."""
        placement.hosts[0].abandoned.append(proc_mesh)
        for host in placement.hosts:
            if host.state is HostState.UP:
                host.state = HostState.SUSPECT
                host.next_probe = 0.0
        self._notify()

    def mesh_for(self, placement: Placement) -> Any:
        """The HostMesh to spawn the replica's processes on (a worker thread)."""
        if len(placement.hosts) == 1:
            return placement.hosts[0].mesh
        return self._source.span(placement.hosts)


class _Session:
    """One lifespan's share of the pool: the first opens it (attaching its hosts,
    bounded by ``attach_timeout``), each runs a prober, the last cleans up. An
    exception of the body passes through unchanged (never wrapped in a group)."""

    def __init__(self, pool: HostPool) -> None:
        self._pool = pool
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> HostPool:
        pool = self._pool
        me = threading.get_ident()
        if pool._sessions and pool._thread != me:
            raise RuntimeError(
                "a MonarchMesh with a pool of hosts serves services of one event loop "
                "thread at a time; make one MonarchMesh per thread"
            )
        pool._sessions += 1
        pool._thread = me
        try:
            if pool._sessions == 1:
                pool._post = loop_poster()
                pool._changed = anyio.Event()
                pool._prober_lock = anyio.Lock()
                if not pool._opened:
                    await pool._open()
            tg = anyio.create_task_group()
            await tg.__aenter__()
            self._tg = tg
            pool._groups.append(tg)
            tg.start_soon(pool.run_prober)
        except BaseException:
            pool._sessions -= 1
            raise
        return pool

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        pool = self._pool
        try:
            if self._tg is not None:
                pool._groups.remove(self._tg)
                self._tg.cancel_scope.cancel()
                # The body's exception is not the task group's: it passes on as is.
                await self._tg.__aexit__(None, None, None)
        finally:
            pool._sessions -= 1
            if pool._sessions == 0:
                await pool._close()
        return False


def pool_of(
    workers: Iterable[str] | None, job: Any, host_mesh: Any
) -> Literal["workers", "job", "host_mesh"] | None:
    """Which pool argument was given (at most one), for error messages."""
    given = [
        name
        for name, value in (("workers", workers), ("job", job), ("host_mesh", host_mesh))
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(
            f"MonarchMesh() takes at most one of workers=, job= and host_mesh=; got "
            f"{' and '.join(given)}"
        )
    return given[0] if given else None  # type: ignore[return-value]
