"""MonarchMesh: the default backend. Each replica is its own Monarch ProcMesh.

One replica = one ProcMesh of ``procs`` new processes on this host
(``this_host().spawn_procs``), or on ``hosts`` local host processes of a
``monarch.job.ProcessJob`` when ``hosts > 1``; on it, the user's actor and a tiny
health actor. Recovery is always a new ProcMesh: Monarch hangs ~30 s spawning onto a
mesh with a dead process.

* Readiness: ``spawn`` returns after the actor's ``__init__`` ran on every rank. The
  actor's mailbox is serial, so the answer to a call of ``object.__sizeof__`` (an
  attribute every actor has, cheap, harmless, callable on sync and async actors alike)
  comes only after ``__init__``. No endpoint is added to the user's class. If the
  actor has a ``setup`` endpoint, it is then called on every rank, and ``spawn``
  returns after it; its exception fails the spawn (as the constructor's would).
* Import path: the children get the parent's ``sys.path`` (minus the interpreter's own
  directories) as ``PYTHONPATH``, so an actor class from a test folder or a script's
  folder imports there too.
* Errors: ``ActorError`` (user code raised) becomes the user's own exception, with the
  remote traceback as a note; ``SupervisionError`` (process or actor dead, mesh
  stopped) becomes :class:`~forge_sc.mesh.ReplicaGone`. A failed spawn raises
  :class:`ReplicaStartError` carrying Monarch's report (the constructor's traceback,
  the import error, the exit code) and stops whatever was built. Constructor
  arguments that do not fit ``__init__`` raise ``TypeError`` before any process starts.
* Death: two signals, the first wins; ``wait_dead`` returns and every in-flight call
  raises ``ReplicaGone``. (1) The replica's processes are local, so ``wait_dead``
  watches a pidfd of each (Linux): readable the moment the process exits,
  milliseconds after a SIGKILL. (2) forge_sc's fault hook (:mod:`._faults`) routes
  each ``MeshFailure`` to its replica: 0.1-0.5 s after a death, and occasionally
  over a second under load (measured), only if the poll interval
  (``HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY``) was set before Monarch was
  imported: ``import forge_sc`` sets it, so import forge_sc before monarch. It also
  covers an actor that died while its process lives on.
* Cancellation: a cancelled caller abandons the remote call (Monarch cannot abort it);
  the spec's ``on_abandoned_settled`` runs when it resolves (see :mod:`._bridge`).
* A call that kills its replica: an endpoint that lets out what ends the actor (see
  :mod:`._kinds`) gets Monarch's report of it to every call in flight. The report's
  traceback names the endpoint's function; calls of endpoints that hold the mailbox
  run one at a time in the order they were sent, so the oldest such call in flight
  (abandoned ones included, until they resolve) is the one that raised. That call
  raises :class:`~forge_sc.mesh.CallKilledReplica` (with several processes per
  replica, whose ranks may be at different calls, every call of that endpoint in
  flight does); the others raise ``ReplicaGone``.
* Stop is bounded: Monarch's stop waits ~20 s for a process that cannot answer (a
  SIGSTOPped one); after :data:`STOP_GRACE` (at once for a stopped process) the
  replica's processes are killed (SIGKILL through their pidfds), and Monarch's stop
  returns then; if it does not within :data:`KILLED_STOP_GRACE` (a mesh whose
  processes died while it was spawned held it ~30 s), it is given up.
* Imports in the children: Monarch builds each actor of a process on a thread of its
  own, and two threads importing forge_sc at once can deadlock in Python's import
  locks (``_DeadlockError``). So the health actor (whose class is forge_sc's) is
  built first, alone, and the user's actor (whose module imports forge_sc) only once
  the health actor answered.
* A pool of hosts (``MonarchMesh(workers=[...], ca=...)``, ``job=``, ``host_mesh=``):
  each replica's ProcMesh runs on the hosts :mod:`._placement` reserves for it; no
  pidfd is opened here (the processes are not this machine's children): the watcher
  of each of its hosts (``_placement._Watcher``) holds them there, and ``wait_dead``
  waits for its answer as a third signal; stopping is
  bounded by ``stop_timeout``, and the hosts of a replica that died are probed
  before they take another one.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import os
import re
import secrets
import signal
import site
import sys
import sysconfig
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, cast

import anyio
from monarch.actor import ActorError, default_bootstrap_cmd, this_host

from .._shims._monarch import SupervisionError, ready_endpoint
from .._shm import SegmentPool, new_prefix, sweep
from .._shm import available as shm_available
from .._spec import SETUP_ENDPOINT, setup_endpoint
from .._tensors import SHM_PREFIX_ENV, CallEncoding, encode_call, torch_loaded
from . import _faults
from ._bridge import CallGroup, loop_poster, wait
from ._gpu import GpuPool, default_gpu_pool
from ._health import Health as _Health
from ._kinds import EndpointInfo, check_actor_kind, endpoint_kinds
from ._placement import (
    _CA_REQUIRED,
    CA,
    HostPool,
    Placement,
    PoolHost,
    check_workers,
    pool_of,
    stop_bounded,
)
from ._protocol import CallKilledReplica, CallNotSent, ReplicaGone, ReplicaStartError, SpawnSpec

__all__ = ["MonarchMesh", "MonarchReplica", "ReplicaStartError", "child_import_path"]

log = logging.getLogger(__name__)


def _release_then(enc: CallEncoding, then: Callable[[], None]) -> None:
    """An abandoned call resolved: release its segments, then ``then()``."""
    enc.release()
    then()


def _open_pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once it exits), or None where Linux has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or the process is gone
        return None


def _exit_status(pid: int, fd: int) -> str | None:
    """How ``pid`` ended, read without reaping it; None once Monarch reaped it."""
    try:
        info = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (AttributeError, OSError):  # not our child, or reaped already
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return f"process {pid} exited with code {info.si_status}"
    return f"process {pid} was killed by signal {info.si_status}"


#: How long stopping a replica on a pool of hosts waits when its host may be lost
#: (a health timeout, a death, a failed start): a dead host's processes need no
#: stop, a partitioned host's cannot be stopped now; the pool retries later.
SUSPECT_STOP_GRACE = 0.5

#: How long stopping a replica whose death its pidfd saw first (without an exit
#: status) waits for Monarch's report of it, which says how the process ended.
REPORT_GRACE = 1.0

#: How long ``stop()`` lets Monarch stop a replica's processes before killing them.
#: A healthy 1-2 process mesh stops in ~0.5 s; one that cannot answer (SIGSTOPped,
#: stuck in native code) would hold Monarch's stop ~20 s.
STOP_GRACE = 2.0

#: How long Monarch's stop of a local replica may take once its processes were
#: killed (``STOP_GRACE``) before it is given up: a mesh whose processes died while
#: it was spawned can hold Monarch's stop ~30 s (measured), for processes already
#: gone. (Monarch ends its own stop when the time runs out: no thread outlives it.)
KILLED_STOP_GRACE = 2.0


def _stopped_by_signal(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, SIGTSTP): it can answer nothing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split(" ", 1)[0] == "T"


#: Set in the environment of every process of a replica (its mesh name), so that the
#: processes of a replica still starting, whose pids it has not learnt, can be found.
_TAG = "FORGE_SC_REPLICA"


def _tagged_children(name: str, *, anywhere: bool = False) -> list[int]:
    """This process's children whose environment carries ``_TAG=name`` (Linux); with
    ``anywhere``, every such process (those the replica's own code started inherit
    the tag, also once reparented)."""
    me = str(os.getpid())
    tag = f"{_TAG}={name}".encode()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if entry == me or (
                not anywhere and stat[stat.rindex(")") + 2 :].split(" ", 2)[1] != me
            ):
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if tag in f.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _kill_leftovers(name: str, label: str) -> None:
    """SIGKILL what is left of a stopped local replica: processes its code started
    (they carry its tag, and outlive it once reparented). The tag names this one
    incarnation (a random suffix), so nothing else can match."""
    for pid in _tagged_children(name, anywhere=True):
        fd = _open_pidfd(pid)
        if fd is None:
            continue
        try:
            if pid in _tagged_children(name, anywhere=True):  # not a reused pid
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                log.info("forge_sc: killed process %d left by %s", pid, label)
        except (AttributeError, OSError):  # gone meanwhile, or no pidfd signals
            pass
        finally:
            os.close(fd)


_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')
#: Monarch's frames that run an endpoint's body (``actor_mesh.py``).
_DISPATCH = frozenset({"handle", "handle_sync"})
#: ``co_filename`` of code that cloudpickle sent by value.
_BY_VALUE = "<dynamic-code>"


def _killing_endpoint(report: str, kinds: dict[str, EndpointInfo]) -> EndpointInfo | None:
    """The endpoint whose body let out what ended the actor, if Monarch's ``report``
    shows one: its traceback runs through Monarch's dispatch into the body of an
    endpoint that holds the mailbox (only those end the actor by raising)."""
    frames = [(os.path.basename(path), name) for path, name in _FRAME.findall(report)]
    start = next(
        (
            i
            for i, (file, name) in enumerate(frames)
            if file == "actor_mesh.py" and name in _DISPATCH
        ),
        None,
    )
    if start is None:
        return None
    by_place: dict[tuple[str, str], EndpointInfo] = {}
    for info in kinds.values():
        if info.holds_mailbox:
            by_place[info.where] = info
            # A class the replica got by value (defined in the script's __main__):
            # cloudpickle names its code's file "<dynamic-code>" there.
            by_place.setdefault((_BY_VALUE, info.where[1]), info)
    for frame in frames[start + 1 :]:
        found = by_place.get(frame)
        if found is not None:
            return found
    return None


_kinds_cache: dict[type[Any], dict[str, EndpointInfo]] = {}


def _kinds_of(actor_cls: type[Any]) -> dict[str, EndpointInfo]:
    kinds = _kinds_cache.get(actor_cls)
    if kinds is None:
        kinds = _kinds_cache[actor_cls] = dict(endpoint_kinds(actor_cls))
    return kinds


_TextFile = io.TextIOWrapper


def _file_argument(endpoint: str, where: str, f: Any) -> TypeError:
    return TypeError(
        f"{endpoint}: {where} is an open text file ({getattr(f, 'name', f)!r}); a file "
        "cannot travel to the replica's process (Monarch would send a copy of what is "
        "left of its contents, as a StringIO). Pass its path, or its contents (f.read())."
    )


def child_import_path() -> list[str]:
    """The parent's ``sys.path`` entries a child would not have by itself: the script's
    folder, the working directory, folders added at run time (pytest's rootdir)."""
    own: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            own.add(os.path.realpath(p))
    for p in [*site.getsitepackages(), site.getusersitepackages()]:
        own.add(os.path.realpath(p))
    paths: list[str] = []
    seen: set[str] = set()
    for entry in sys.path:
        path = os.path.abspath(entry or os.getcwd())
        real = os.path.realpath(path)
        if real in own or real in seen or path.endswith(".zip"):
            continue
        seen.add(real)
        paths.append(path)
    return paths


def _child_env(gpus: tuple[str, ...], shm_prefix: str | None = None) -> dict[str, str]:
    env = {"PYTHONPATH": os.pathsep.join(child_import_path())}
    if shm_prefix:  # large tensor results go through shared memory (forge_sc._tensors)
        env[SHM_PREFIX_ENV] = shm_prefix
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def _summary(report: str) -> str:
    """The last line of a Monarch report: the exception or the exit status."""
    lines = [ln.strip() for ln in report.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown failure"


def _user_exception(err: ActorError) -> BaseException:
    """The user's own exception from an ``ActorError``, the remote traceback noted."""
    exc: object = err.exception
    if not isinstance(exc, BaseException):
        return cast(BaseException, err)
    exc.add_note(err.exception_formatted.rstrip())
    return exc


class MonarchReplica:
    """One running incarnation of a replica on Monarch (see the module docstring)."""

    #: A cancelled caller leaves the remote call running (Monarch cannot abort it).
    detaches_on_cancel: bool = True

    __slots__ = (
        "_actor",
        "_blamed",
        "_culprits",
        "_dead",
        "_death",
        "_first",
        "_gpus",
        "_group",
        "_health",
        "_held",
        "_job",
        "_kinds",
        "_label",
        "_mailbox",
        "_name",
        "_on_abandoned",
        "_on_stopped",
        "_pidfds",
        "_ping_cut",
        "_placement",
        "_pool",
        "_post",
        "_procs",
        "_ranks",
        "_remote_pids",
        "_reported",
        "_seq",
        "_shm_pool",
        "_single",
        "_spec",
        "_started",
        "_stop_done",
        "_stopping",
        "_watching",
        "_where",
        "_why",
    )

    def __init__(
        self,
        spec: SpawnSpec,
        pool: GpuPool,
        on_stopped: Callable[[MonarchReplica], None] = lambda _: None,
        where: tuple[HostPool, Placement] | None = None,
    ) -> None:
        self._spec = spec
        # On a pool of hosts: the pool and this replica's hosts there.
        self._where = where
        self._placement = None if where is None else where[1]
        self._started = False
        self._ping_cut = False
        self._pool = pool
        self._on_stopped = on_stopped
        self._label = f"{_who(spec)} ({spec.actor_cls.__name__})"
        # Monarch reports a mesh as "<name, lowercased>-<uid>"; the fault hook maps it back.
        tag = "spare" if spec.spare else f"r{spec.idx}"
        self._name = f"{spec.actor_cls.__name__}_{tag}_{secrets.token_hex(4)}".lower()
        self._first = spec.return_first_rank_result
        self._single = spec.procs == 1 and (spec.hosts or 1) == 1
        self._on_abandoned = spec.on_abandoned_settled
        self._post = loop_poster()
        self._group = CallGroup()
        self._dead = anyio.Event()
        self._death: ReplicaGone | None = None
        self._stopping = False
        self._stop_done: anyio.Event | None = None
        self._gpus: tuple[str, ...] = ()
        self._procs: Any = None
        self._job: Any = None
        self._actor: Any = None
        self._health: Any = None
        self._pidfds: dict[int, int] = {}  # pid -> pidfd of each process
        # On a pool of hosts: each host's processes of this replica (its watcher's).
        self._remote_pids: list[tuple[PoolHost, list[int]]] = []
        self._watching = False
        # Set when the death is known with how it happened (Monarch's report).
        self._reported = anyio.Event()
        # Calls in flight of endpoints that hold the mailbox, in the order sent
        # (token -> endpoint); abandoned ones stay until their remote work resolves.
        self._kinds = _kinds_of(spec.actor_cls)
        self._held = frozenset(n for n, i in self._kinds.items() if i.holds_mailbox)
        self._mailbox: dict[int, str] = {}
        self._seq = 0
        # The calls that killed the replica, once Monarch's report said so.
        self._blamed = False
        self._culprits: frozenset[int] = frozenset()
        self._why = ""
        # Large tensors go through shared memory when the processes are on this host
        # (this_host(), one host; a pool's hosts may be other machines).
        self._ranks = spec.procs * (spec.hosts or 1)
        local = where is None and (spec.hosts or 1) == 1 and shm_available()
        self._shm_pool = SegmentPool(new_prefix()) if local else None

    def __repr__(self) -> str:
        return f"<MonarchReplica {self._label} mesh={self._name}>"

    def promote(self, idx: int) -> None:
        """This warm spare now serves replica ``idx`` (its messages say so)."""
        self._label = f"replica {idx} ({self._spec.actor_cls.__name__})"

    @property
    def mesh_name(self) -> str:
        """The name the actor mesh was spawned with (Monarch's logs show it)."""
        return self._name

    @property
    def death(self) -> BaseException | None:
        """How this replica died (None if it did not): once ``stop()`` returned, with
        Monarch's report of the exit code or signal when it came in time."""
        return self._death

    @property
    def gpus(self) -> tuple[str, ...]:
        """The GPU ids this replica's processes see (empty without ``with_gpus``); on a
        pool of hosts, each host's ids in turn (see ``placement``)."""
        if self._placement is not None:
            return tuple(g for per_host in self._placement.gpus for g in per_host)
        return self._gpus

    @property
    def stop_before_respawn(self) -> bool:
        """On a pool of hosts: the next incarnation waits for this one's stop, which
        gives back its room and marks its hosts suspect when it died (so that the
        next one is not placed on a lost host)."""
        return self._where is not None

    @property
    def placement(self) -> Placement | None:
        """The hosts of the pool this replica runs on (None off a pool)."""
        return self._placement

    # ------------------------------------------------------------ start

    async def _start(self) -> None:
        spec = self._spec
        hosts = spec.hosts or 1
        if spec.with_gpus and self._placement is None:
            # The first acquire may import torch to count GPUs: seconds, off the loop.
            self._gpus = await anyio.to_thread.run_sync(
                self._pool.acquire, spec.procs * hosts, self._label
            )
        prefix = None if self._shm_pool is None else self._shm_pool.prefix
        env = {**_child_env(self._gpus, prefix), _TAG: self._name}
        _faults.register(self._name, self._on_failure)
        _faults.register(self._name + "_health", self._on_failure)
        # Spawning blocks for 10-20 ms (seconds for a ProcessJob): keep it off the loop.
        await anyio.to_thread.run_sync(partial(self._build, env, hosts))
        # The health actor first, alone: building it imports forge_sc in each process.
        # Only then the user's actor, whose module imports forge_sc too: two threads
        # importing forge_sc at once can deadlock in Python's import locks.
        pids: Any = await wait(self._health.pid.call(), self._group)
        self._started = True
        if self._placement is None:
            for pid in pids.values():
                fd = _open_pidfd(pid)
                if fd is not None:
                    self._pidfds[pid] = fd
        else:  # not our children: the watcher of each host watches them (rank order)
            ranks = [int(pid) for pid in pids.values()]
            n = self._placement.procs
            self._remote_pids = [
                (host, ranks[i * n : (i + 1) * n]) for i, host in enumerate(self._placement.hosts)
            ]
        await anyio.to_thread.run_sync(self._spawn_actor)
        await wait(ready_endpoint(self._actor).call(), self._group)
        if self._where is not None:
            # Watched from the start: each host's watcher is up (or failed to start).
            for host, _ in self._remote_pids:
                await self._where[0].watcher(host)
        if setup_endpoint(self._spec.actor_cls) is not None:
            # The actor's setup() on every rank, before the replica takes traffic;
            # if it raises, the spawn fails with the user's own exception.
            try:
                await wait(getattr(self._actor, SETUP_ENDPOINT).call(), self._group)
            except ActorError as exc:
                raise _user_exception(exc) from None

    def _build(self, env: dict[str, str], hosts: int) -> None:
        spec = self._spec
        cmd: Any = default_bootstrap_cmd().with_env(env)
        if self._where is not None:
            hostpool, placement = self._where
            host_mesh = hostpool.mesh_for(placement)
            if spec.with_gpus:
                # Each host's processes see that host's GPUs (ranks run host by host).
                cmds = [default_bootstrap_cmd().with_env(_child_env(g)) for g in placement.gpus]
                cmd = partial(_per_host, cmds, spec.procs)
        elif hosts > 1:
            from monarch.job import ProcessJob

            job = ProcessJob({"hosts": hosts}, env=env)
            self._job = job  # before it starts, so stop() can kill a half-started job
            host_mesh = job.state(cached_path=None).hosts
        else:
            host_mesh = this_host()
        self._procs = host_mesh.spawn_procs(per_host={"procs": spec.procs}, bootstrap_command=cmd)
        self._health = self._procs.spawn(self._name + "_health", _Health)

    def _spawn_actor(self) -> None:
        spec = self._spec
        self._actor = self._procs.spawn(self._name, spec.actor_cls, *spec.args, **spec.kwargs)

    # ------------------------------------------------------------ protocol

    async def call(self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``endpoint`` on every rank; return the first rank's result, or the list
        of all ranks' results when ``return_first_rank_result`` is false."""
        if self._group.closed:  # dead or stopped already: nothing is sent
            raise self._gone(unsent=True)
        for i, arg in enumerate(args):
            if type(arg) is _TextFile:
                raise _file_argument(endpoint, f"argument {i}", arg)
        if kwargs:
            for key, arg in kwargs.items():
                if type(arg) is _TextFile:
                    raise _file_argument(endpoint, f"argument {key!r}", arg)
        enc = None
        if torch_loaded():  # else no tensor can be among the arguments
            enc = CallEncoding(self._shm_pool, self._ranks, per_call=True)
            args, kwargs = encode_call(args, kwargs, enc)
        ep = getattr(self._actor, endpoint)
        try:
            fut = ep.call_one(*args, **kwargs) if self._single else ep.call(*args, **kwargs)
        except BaseException:
            if enc is not None:  # pickled in part (an argument failed): never sent
                enc.release()
            raise
        token = 0
        on_abandoned = self._on_abandoned
        if endpoint in self._held:
            self._seq = token = self._seq + 1
            self._mailbox[token] = endpoint
            on_abandoned = partial(self._abandoned_settled, token)
        if enc is not None and enc.holds:  # (known once the message is pickled)
            on_abandoned = partial(_release_then, enc, on_abandoned)
        try:
            value: Any = await wait(fut, self._group, on_abandoned)
        except ActorError as exc:
            raise _user_exception(exc) from None
        except SupervisionError as exc:
            self._blame(str(exc))
            if token in self._culprits:
                raise self._culprit_error() from exc
            raise self._gone(exc) from exc
        except ReplicaGone:
            if token in self._culprits:
                raise self._culprit_error()  # noqa: B904 - its cause is the death
            raise
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                token = 0  # abandoned: it holds the mailbox until it resolves
                if enc is not None and enc.holds:
                    # The ranks may not have mapped its segments yet: they are
                    # released when the abandoned call resolves (or at stop()).
                    enc = None
            raise
        finally:
            if token:
                del self._mailbox[token]
            if enc is not None and enc.holds:
                enc.release()
        if self._single:
            return value if self._first else [value]
        if self._first:
            return value.get(0)
        return list(value.values())

    def _abandoned_settled(self, token: int) -> None:
        self._mailbox.pop(token, None)
        self._on_abandoned()

    def _blame(self, report: str) -> None:
        """Once, at the first account of the death: the calls that caused it, if
        Monarch's ``report`` shows an endpoint's body ended the actor."""
        if self._blamed or self._stopping:
            return
        self._blamed = True
        info = _killing_endpoint(report, self._kinds)
        if info is None:
            return
        mine = [token for token, name in self._mailbox.items() if name == info.name]
        if mine:
            # One process runs them in the order sent: the oldest is the one that
            # raised. Several processes may each be at a different one of them.
            self._culprits = frozenset(mine[:1] if self._single else mine)
            self._why = info.killed(_summary(report))

    def _culprit_error(self) -> CallKilledReplica:
        err = CallKilledReplica(self._why)
        err.__cause__ = self._death
        return err

    async def ping(self) -> None:
        """Ask the health actor on every process; ``ReplicaGone`` if one is dead."""
        try:
            await wait(self._health.ping.call(), self._group)
        except SupervisionError as exc:
            raise self._gone(exc) from exc
        except BaseException:
            # Cut short: the core's health_timeout ran out (or the service closes).
            self._ping_cut = True
            raise

    async def wait_dead(self) -> BaseException:
        """Return (a ``ReplicaGone`` with Monarch's report) once the fault hook
        reported a mesh of this replica failed, or one of its processes exited. Never
        returns for a stopped replica."""
        if (self._pidfds or self._remote_pids) and not self._watching:
            self._watching = True
            try:
                async with anyio.create_task_group() as tg:
                    for pid, fd in self._pidfds.items():
                        tg.start_soon(self._watch_exit, pid, fd)
                    for host, pids in self._remote_pids:
                        tg.start_soon(self._watch_remote, host, pids)
                    await self._dead.wait()
                    tg.cancel_scope.cancel()
            finally:
                self._watching = False
        else:
            await self._dead.wait()
        assert self._death is not None
        return self._death

    async def _watch_exit(self, pid: int, fd: int) -> None:
        try:
            await anyio.wait_readable(fd)
        except anyio.ClosedResourceError:  # stop() closed it
            return
        status = _exit_status(pid, fd)
        self._died(status or f"process {pid} exited", reported=status is not None)

    async def _watch_remote(self, host: PoolHost, pids: list[int]) -> None:
        """The watcher of ``host`` (a pool's) says when one of ``pids`` exits."""
        assert self._where is not None
        watcher = await self._where[0].watcher(host)
        if watcher is None:
            return
        try:
            seen: Any = await wait(watcher.watch.call_one(pids), self._group)
        except (ReplicaGone, SupervisionError):  # stopped, or the watcher is lost
            return
        except Exception as exc:  # no evidence of a death: nothing to do
            log.debug("forge_sc: watching %s on %s: %r", self._label, host.label, exc)
            return
        if seen is not None:
            pid, how = seen
            self._died(
                f"process {pid} on {host.label} {how} (seen by forge_sc's watcher there)",
                reported=False,
            )

    async def stop(self) -> None:
        """Stop the processes (and the ProcessJob's hosts) and give the GPUs back.
        Idempotent; safe on a half-built or dead replica; shielded from cancellation.
        In-flight calls raise ``ReplicaGone`` at once."""
        if self._stop_done is not None:
            await self._stop_done.wait()
            return
        self._stop_done = done = anyio.Event()
        self._stopping = True
        # On a pool: a ping cut short (a health timeout), a death, a start that did
        # not finish or a stop that does not finish says the host may be lost.
        suspect = True
        with anyio.CancelScope(shield=True):
            try:
                if self._death is not None and not self._reported.is_set():
                    # The pidfd saw the death first; Monarch's report (the exit code
                    # or signal) follows within ~0.5 s, and not once the mesh is stopped.
                    with anyio.move_on_after(REPORT_GRACE):
                        await self._reported.wait()
                self._group.close(partial(ReplicaGone, f"{self._label} was stopped"))
                suspect = self._ping_cut or self._death is not None or not self._started
                if self._procs is not None and self._where is not None:
                    hostpool, placement = self._where
                    # A host that may be lost is not waited for: the pool stops these
                    # processes again once the host answers.
                    limit = min(hostpool.stop_timeout, SUSPECT_STOP_GRACE if suspect else math.inf)
                    if suspect and self._health is not None:
                        # Monarch's stop of a mesh with a lost host leaves the ranks on
                        # the other hosts running for a minute: they end themselves.
                        with contextlib.suppress(Exception):
                            self._health.exit.broadcast()
                    if not await stop_bounded(self._procs, limit):
                        log.log(
                            logging.INFO if suspect else logging.WARNING,
                            "forge_sc: %s on %s did not stop within %ss; it is stopped "
                            "again when its host answers",
                            self._label,
                            placement,
                            limit,
                        )
                        hostpool.abandon(placement, self._procs)
                        suspect = True
                elif self._procs is not None:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._kill_after, STOP_GRACE)
                        stopped = await stop_bounded(self._procs, STOP_GRACE + KILLED_STOP_GRACE)
                        tg.cancel_scope.cancel()
                    if not stopped:
                        log.debug(
                            "forge_sc: Monarch's stop of %s did not end %ss after its "
                            "processes were killed; given up",
                            self._label,
                            KILLED_STOP_GRACE,
                        )
                if self._job is not None:
                    await anyio.to_thread.run_sync(self._job.kill)
                if self._where is None and self._job is None:
                    _kill_leftovers(self._name, self._label)
            finally:
                if self._shm_pool is not None:  # segments of both sides, even a killed one's
                    self._shm_pool.close()
                    sweep(self._shm_pool.prefix)
                _faults.unregister(self._name)
                _faults.unregister(self._name + "_health")
                for fd in self._pidfds.values():
                    anyio.notify_closing(fd)
                    os.close(fd)
                self._pidfds.clear()
                self._pool.release(self._gpus)
                if self._where is not None:
                    self._where[0].release(self._where[1], died=suspect)
                self._on_stopped(self)
                done.set()

    async def _kill_after(self, grace: float) -> None:
        """Kill the replica's processes if Monarch has not stopped them within
        ``grace`` seconds (at once if one is stopped by a signal: it cannot answer).
        A replica still starting has not told its pids: its processes are found by
        the tag in their environment."""
        pids = set(self._pidfds) or set(_tagged_children(self._name))
        if not any(_stopped_by_signal(pid) for pid in pids):
            await anyio.sleep(grace)
        fds = dict(self._pidfds)
        opened: list[int] = []
        try:
            if not fds:
                for pid in _tagged_children(self._name):
                    fd = _open_pidfd(pid)
                    if fd is not None:
                        opened.append(fd)
                        fds[pid] = fd
                # A pid read before its pidfd was opened may have been reused since.
                still = set(_tagged_children(self._name))
                fds = {pid: fd for pid, fd in fds.items() if pid in still}
            for pid, fd in fds.items():
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except (AttributeError, OSError):  # gone already, or no pidfd support
                    continue
                log.info("forge_sc: killed process %d of %s (it did not stop)", pid, self._label)
        finally:
            for fd in opened:
                os.close(fd)

    # ------------------------------------------------------------ death

    def _gone(self, cause: BaseException | None = None, *, unsent: bool = False) -> ReplicaGone:
        """The death as the core gets it; ``unsent``: known before sending a call."""
        kind = CallNotSent if unsent else ReplicaGone
        if self._death is not None:
            return kind(str(self._death))
        if self._stopping:
            return kind(f"{self._label} was stopped")
        detail = _summary(str(cause)) if cause is not None else "unreachable"
        return kind(f"{self._label} is gone: {detail}")

    def _on_failure(self, report: str) -> None:
        # Monarch thread: hand over to the event loop thread, nothing else.
        self._post(partial(self._died, report))

    def _died(self, report: str, *, reported: bool = True) -> None:
        """The replica died: ``report`` says how, unless ``reported`` is false (a
        pidfd saw the exit; Monarch's report, when it comes, replaces the text)."""
        text = f"{self._label} died: {_summary(report)}\n{report}"
        if self._death is not None:
            if reported and not self._reported.is_set():
                # The exception callers and logs hold.
                first = "its host's watcher" if self._remote_pids else "the process's pidfd"
                self._death.args = (f"{text}\n(noticed first by {first})",)
                self._reported.set()
            return
        if self._stopping:
            return
        self._death = ReplicaGone(text)
        if reported:
            self._reported.set()
            self._blame(report)
        self._group.close(partial(ReplicaGone, str(self._death)))
        self._dead.set()


_MISSING: Any = object()


class MonarchMesh:
    """The Monarch backend: real processes, one ProcMesh per replica.

    By default every replica runs on this host. Give at most one pool of hosts to
    place replicas beyond it (see :mod:`._placement` and docs/deployment.md):

    * ``workers=["tcp://10.0.0.5:26600", ...]`` with ``ca=``: hosts running Monarch's
      ``run_worker_loop_forever`` (or ``python -m forge_sc.worker``), attached with
      ``attach_to_workers``. ``ca`` is Monarch's own argument and has no default:
      ``ca="trust_all_connections"`` attaches over plain, unauthenticated TCP (anyone
      who can reach a worker's port runs code there); the path (or bytes) of a CA
      certificate needs ``tls://`` workers and Monarch's TLS environment
      (``HYPERACTOR_TLS_CA``/``CERT``/``KEY``, the same CA), which it checks.
    * ``job=``: a ``monarch.job`` ``JobTrait`` (``SlurmJob``, ``KubernetesJob``,
      ``ProcessJob``, ...); its host mesh ``job_mesh_name`` from ``job.state()``.
    * ``host_mesh=``: a Monarch ``HostMesh``.

    On a pool, each replica takes ``hosts`` hosts x ``procs`` processes, disjoint
    from other replicas' slots: ``procs_per_host`` process slots per host (None:
    unlimited) and, with ``with_gpus``, ``gpus_per_host`` GPUs per host.
    ``attach_timeout`` bounds attaching (and each probe of a host);
    ``host_wait`` how long a recovering replica waits for a free host before its
    spawn fails; ``stop_timeout`` how long a replica's stop may take (a host whose
    processes are stopped never answers); ``probe_interval`` the first delay
    before a host that is down is probed again (doubling up to 8x).

    ``gpu_pool`` replaces the process-wide GPU pool of this host (tests fake a GPU
    count with ``GpuPool(["0", "1"])``).
    """

    def __init__(
        self,
        *,
        workers: Sequence[str] | None = None,
        ca: CA = _MISSING,
        job: Any = None,
        host_mesh: Any = None,
        job_mesh_name: str = "hosts",
        procs_per_host: int | None = None,
        gpus_per_host: int | None = None,
        attach_timeout: float = 10.0,
        host_wait: float | None = 30.0,
        stop_timeout: float = 5.0,
        probe_interval: float = 1.0,
        gpu_pool: GpuPool | None = None,
    ) -> None:
        kind = pool_of(workers, job, host_mesh)
        if kind == "workers":
            assert workers is not None
            if ca is _MISSING or ca is None:
                raise TypeError(_CA_REQUIRED)
            workers = check_workers(workers, ca)
        elif ca is not _MISSING:
            raise ValueError("MonarchMesh(ca=...) applies to workers=[...] only")
        if kind is None:
            extra = [
                name
                for name, value, default in (
                    ("procs_per_host", procs_per_host, None),
                    ("gpus_per_host", gpus_per_host, None),
                )
                if value != default
            ]
            if extra:
                raise ValueError(
                    f"MonarchMesh({extra[0]}=...) applies to a pool of hosts "
                    "(workers=, job= or host_mesh=)"
                )
        for name, value, low in (
            ("procs_per_host", procs_per_host, 1),
            ("gpus_per_host", gpus_per_host, 1),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ValueError(
                    f"MonarchMesh({name}=...) must be an int >= {low} or None, got {value!r}"
                )
        for name, number in (
            ("attach_timeout", attach_timeout),
            ("stop_timeout", stop_timeout),
            ("probe_interval", probe_interval),
            ("host_wait", 1.0 if host_wait is None else host_wait),
        ):
            if (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or not 0 < number < float("inf")
            ):
                raise ValueError(f"MonarchMesh({name}=...) must be a number > 0, got {number!r}")
        self._pool = gpu_pool
        self._live: set[MonarchReplica] = set()
        self._depth = 0
        self._hostpool: HostPool | None = None
        if kind is not None:
            self._hostpool = HostPool(
                workers=workers,
                job=job,
                host_mesh=host_mesh,
                job_mesh_name=job_mesh_name,
                procs_per_host=procs_per_host,
                gpus_per_host=gpus_per_host,
                attach_timeout=attach_timeout,
                probe_interval=probe_interval,
                host_wait=host_wait,
                stop_timeout=stop_timeout,
                child_env=partial(_child_env, ()),
            )

    def __repr__(self) -> str:
        where = "this host" if self._hostpool is None else repr(self._hostpool)
        return f"<MonarchMesh {where}, {len(self._live)} replica(s) running>"

    @property
    def host_pool(self) -> HostPool | None:
        """The pool of hosts replicas are placed on (None: this host only)."""
        return self._hostpool

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Install forge_sc's Monarch fault hook (it stays installed: failures can
        arrive after a clean stop). With a pool of hosts, the first lifespan attaches
        them (raising :class:`~forge_sc.errors.HostsUnreachableError` when they do
        not answer within ``attach_timeout``) and each runs the pool's prober."""
        _faults.install_fault_hook()  # stays installed: failures can arrive late
        async with AsyncExitStack() as stack:
            if self._hostpool is not None:
                await stack.enter_async_context(self._hostpool.session())
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._live:
                    # The core stops every replica first; this only catches leaks.
                    with anyio.CancelScope(shield=True):
                        for replica in list(self._live):
                            await replica.stop()

    def check_capacity(self, spec: SpawnSpec, count: int) -> None:
        """Raise :class:`~forge_sc.errors.PlacementError` if ``count`` more replicas
        like ``spec`` can never be placed on the pool (no-op without a pool)."""
        if self._hostpool is not None and self._hostpool.hosts:
            self._hostpool.check_capacity(
                spec.procs,
                spec.hosts,
                spec.with_gpus,
                count,
                who=spec.actor_cls.__name__,
            )

    async def spawn(self, spec: SpawnSpec) -> MonarchReplica:
        """Start one replica; return once its actor is constructed on every rank.

        Raises :class:`ReplicaStartError` (with Monarch's report) when the processes
        or the actor fail to start, and ``NotEnoughGpusError`` when ``with_gpus`` asks
        for more GPUs than are free; whatever was built is stopped first. On a pool
        of hosts, first reserves room (waiting up to ``host_wait`` while hosts are
        down), raising :class:`~forge_sc.errors.PlacementError` when there is none.
        """
        _faults.install_fault_hook()
        _check_arguments(spec)
        check_actor_kind(spec.actor_cls)  # Monarch's verdict, before any process
        where: tuple[HostPool, Placement] | None = None
        if self._hostpool is not None:
            placement = await self._hostpool.acquire(
                spec.procs,
                spec.hosts,
                spec.with_gpus,
                f"{_who(spec)} ({spec.actor_cls.__name__})",
            )
            where = (self._hostpool, placement)
        replica = MonarchReplica(
            spec, self._pool or default_gpu_pool(), self._live.discard, where=where
        )
        self._live.add(replica)
        try:
            await replica._start()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await replica.stop()
            if isinstance(exc, SupervisionError | ReplicaGone):
                raise _start_error(spec, exc) from None
            raise
        return replica


def _who(spec: SpawnSpec) -> str:
    return "a warm spare" if spec.spare else f"replica {spec.idx}"


def _per_host(cmds: list[Any], procs: int, point: Any) -> Any:
    """The bootstrap command of the process at ``point``: its host's (ranks run host
    by host, ``procs`` per host)."""
    return cmds[point.rank // procs]


def _check_arguments(spec: SpawnSpec) -> None:
    # Monarch checks this too, but only after the processes started.
    cls = spec.actor_cls
    try:
        inspect.signature(cls.__init__).bind(None, *spec.args, **spec.kwargs)
    except TypeError as exc:
        raise TypeError(f"{cls.__name__}() cannot take these arguments: {exc}") from None


def _start_error(spec: SpawnSpec, exc: BaseException) -> ReplicaStartError:
    report = str(exc)
    summary = _summary(report)
    hint = ""
    if "ModuleNotFoundError" in report or "ImportError" in report:
        hint = (
            "\nThe replica's process could not import the actor's module. forge_sc "
            "passes the parent's sys.path to it as PYTHONPATH; define the actor in a "
            "module importable from there (not in a module loaded by file path)."
        )
    return ReplicaStartError(
        f"{_who(spec)} ({spec.actor_cls.__name__}) failed to start: {summary}{hint}"
        f"\n\nMonarch's report:\n{report}"
    )
