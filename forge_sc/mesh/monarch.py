"""MonarchMesh: the default backend. Each replica is its own Monarch ProcMesh.

One replica = one ProcMesh of ``procs`` new processes on this host
(``this_host().spawn_procs``), or on ``hosts`` local host processes of a
``monarch.job.ProcessJob`` when ``hosts > 1``; on it, the user's actor and a tiny
health actor. Recovery is always a new ProcMesh: Monarch hangs ~30 s spawning onto a
mesh with a dead process.

* Readiness: ``spawn`` returns after the actor's ``__init__`` ran on every rank. The
  actor's mailbox is serial, so the answer to a call of ``object.__sizeof__`` (an
  attribute every actor has, cheap, harmless, callable on sync and async actors alike)
  comes only after ``__init__``. No endpoint is added to the user's class.
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
"""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import site
import sys
import sysconfig
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast

import anyio
from monarch._rust_bindings.monarch_hyperactor.supervision import SupervisionError
from monarch._src.actor.actor_mesh import MethodSpecifier
from monarch.actor import ActorError, default_bootstrap_cmd, this_host

from .._shm import SegmentPool, new_prefix, sweep
from .._shm import available as shm_available
from .._tensors import SHM_PREFIX_ENV, CallEncoding, encode_call, torch_loaded
from . import _faults
from ._bridge import CallGroup, get_quietly, loop_poster, wait
from ._gpu import GpuPool, default_gpu_pool
from ._health import Health as _Health
from ._protocol import ReplicaGone, SpawnSpec

__all__ = ["MonarchMesh", "MonarchReplica", "ReplicaStartError", "child_import_path"]

log = logging.getLogger(__name__)


class ReplicaStartError(RuntimeError):
    """A replica's processes or actor could not be started. The message carries
    Monarch's report: the constructor's traceback, the import error, or how the
    process exited."""


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


#: How long stopping a replica whose death its pidfd saw first (without an exit
#: status) waits for Monarch's report of it, which says how the process ended.
REPORT_GRACE = 1.0


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


def _ready_endpoint(actor_mesh: Any) -> Any:
    # ``object.__sizeof__`` as an endpoint: its reply can only follow __init__.
    return actor_mesh._endpoint(
        MethodSpecifier.ReturnsResponse("__sizeof__"), object.__sizeof__, None
    )


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
        "_dead",
        "_death",
        "_first",
        "_gpus",
        "_group",
        "_health",
        "_job",
        "_label",
        "_name",
        "_on_abandoned",
        "_on_stopped",
        "_pidfds",
        "_pool",
        "_post",
        "_procs",
        "_ranks",
        "_reported",
        "_shm_pool",
        "_single",
        "_spec",
        "_stop_done",
        "_stopping",
        "_watching",
    )

    def __init__(
        self,
        spec: SpawnSpec,
        pool: GpuPool,
        on_stopped: Callable[[MonarchReplica], None] = lambda _: None,
    ) -> None:
        self._spec = spec
        self._pool = pool
        self._on_stopped = on_stopped
        who = "a warm spare" if spec.spare else f"replica {spec.idx}"
        self._label = f"{who} ({spec.actor_cls.__name__})"
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
        self._watching = False
        # Set when the death is known with how it happened (Monarch's report).
        self._reported = anyio.Event()
        # Large tensors go through shared memory when the processes are on this host.
        self._ranks = spec.procs * (spec.hosts or 1)
        local = (spec.hosts or 1) == 1 and shm_available()
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
        """The GPU ids this replica's processes see (empty without ``with_gpus``)."""
        return self._gpus

    # ------------------------------------------------------------ start

    async def _start(self) -> None:
        spec = self._spec
        hosts = spec.hosts or 1
        if spec.with_gpus:
            # The first acquire may import torch to count GPUs: seconds, off the loop.
            self._gpus = await anyio.to_thread.run_sync(
                self._pool.acquire, spec.procs * hosts, self._label
            )
        env = _child_env(self._gpus, None if self._shm_pool is None else self._shm_pool.prefix)
        _faults.register(self._name, self._on_failure)
        _faults.register(self._name + "_health", self._on_failure)
        # Spawning blocks for 10-20 ms (seconds for a ProcessJob): keep it off the loop.
        await anyio.to_thread.run_sync(partial(self._build, env, hosts))
        # The health actor first, the user's actor once it answered: each actor
        # unpickles its class on a thread of its own, and two of them importing
        # forge_sc at once in a fresh process deadlock on the import locks
        # (_DeadlockError). The health actor's class imports all of forge_sc.
        pids: Any = await wait(self._health.pid.call(), self._group)
        for pid in pids.values():
            fd = _open_pidfd(pid)
            if fd is not None:
                self._pidfds[pid] = fd
        spec = self._spec
        self._actor = self._procs.spawn(self._name, spec.actor_cls, *spec.args, **spec.kwargs)
        await wait(_ready_endpoint(self._actor).call(), self._group)

    def _build(self, env: dict[str, str], hosts: int) -> None:
        spec = self._spec
        cmd = default_bootstrap_cmd().with_env(env)
        if hosts > 1:
            from monarch.job import ProcessJob

            job = ProcessJob({"hosts": hosts}, env=env)
            self._job = job  # before it starts, so stop() can kill a half-started job
            host_mesh = job.state(cached_path=None).hosts
        else:
            host_mesh = this_host()
        self._procs = host_mesh.spawn_procs(per_host={"procs": spec.procs}, bootstrap_command=cmd)
        self._health = self._procs.spawn(self._name + "_health", _Health)

    # ------------------------------------------------------------ protocol

    async def call(self, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``endpoint`` on every rank; return the first rank's result, or the list
        of all ranks' results when ``return_first_rank_result`` is false."""
        if self._group.closed:
            raise self._gone()
        enc = None
        if torch_loaded():  # else no tensor can be among the arguments
            enc = CallEncoding(self._shm_pool, self._ranks)
            args, kwargs = encode_call(args, kwargs, enc)
        ep = getattr(self._actor, endpoint)
        fut = ep.call_one(*args, **kwargs) if self._single else ep.call(*args, **kwargs)
        try:
            value: Any = await wait(fut, self._group, self._on_abandoned)
        except ActorError as exc:
            raise _user_exception(exc) from None
        except SupervisionError as exc:
            raise self._gone(exc) from exc
        finally:
            if enc is not None and enc.one_shot:
                enc.release()
        if self._single:
            return value if self._first else [value]
        if self._first:
            return value.get(0)
        return list(value.values())

    async def ping(self) -> None:
        """Ask the health actor on every process; ``ReplicaGone`` if one is dead."""
        try:
            await wait(self._health.ping.call(), self._group)
        except SupervisionError as exc:
            raise self._gone(exc) from exc

    async def wait_dead(self) -> BaseException:
        """Return (a ``ReplicaGone`` with Monarch's report) once the fault hook
        reported a mesh of this replica failed, or one of its processes exited. Never
        returns for a stopped replica."""
        if self._pidfds and not self._watching:
            self._watching = True
            try:
                async with anyio.create_task_group() as tg:
                    for pid, fd in self._pidfds.items():
                        tg.start_soon(self._watch_exit, pid, fd)
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

    async def stop(self) -> None:
        """Stop the processes (and the ProcessJob's hosts) and give the GPUs back.
        Idempotent; safe on a half-built or dead replica; shielded from cancellation.
        In-flight calls raise ``ReplicaGone`` at once."""
        if self._stop_done is not None:
            await self._stop_done.wait()
            return
        self._stop_done = done = anyio.Event()
        self._stopping = True
        with anyio.CancelScope(shield=True):
            try:
                if self._death is not None and not self._reported.is_set():
                    # The pidfd saw the death first; Monarch's report (the exit code
                    # or signal) follows within ~0.5 s, and not once the mesh is stopped.
                    with anyio.move_on_after(REPORT_GRACE):
                        await self._reported.wait()
                self._group.close(partial(ReplicaGone, f"{self._label} was stopped"))
                if self._procs is not None:
                    err = await anyio.to_thread.run_sync(get_quietly, self._procs.stop())
                    if err is not None:
                        log.debug("forge_sc: stopping %s: %r", self._label, err)
                if self._job is not None:
                    await anyio.to_thread.run_sync(self._job.kill)
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
                self._on_stopped(self)
                done.set()

    # ------------------------------------------------------------ death

    def _gone(self, cause: BaseException | None = None) -> ReplicaGone:
        if self._death is not None:
            return ReplicaGone(str(self._death))
        if self._stopping:
            return ReplicaGone(f"{self._label} was stopped")
        detail = _summary(str(cause)) if cause is not None else "unreachable"
        return ReplicaGone(f"{self._label} is gone: {detail}")

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
                self._death.args = (f"{text}\n(noticed first by the process's pidfd)",)
                self._reported.set()
            return
        if self._stopping:
            return
        self._death = ReplicaGone(text)
        if reported:
            self._reported.set()
        self._group.close(partial(ReplicaGone, str(self._death)))
        self._dead.set()


class MonarchMesh:
    """The Monarch backend: real processes, one ProcMesh per replica.

    ``gpu_pool`` replaces the process-wide GPU pool (tests fake a GPU count with
    ``GpuPool(["0", "1"])``).
    """

    def __init__(self, *, gpu_pool: GpuPool | None = None) -> None:
        self._pool = gpu_pool
        self._live: set[MonarchReplica] = set()
        self._depth = 0

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Install forge_sc's Monarch fault hook (it stays installed: failures can
        arrive after a clean stop). The trio bridge has no thread to start."""
        _faults.install_fault_hook()  # stays installed: failures can arrive late
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

    async def spawn(self, spec: SpawnSpec) -> MonarchReplica:
        """Start one replica; return once its actor is constructed on every rank.

        Raises :class:`ReplicaStartError` (with Monarch's report) when the processes
        or the actor fail to start, and ``NotEnoughGpusError`` when ``with_gpus`` asks
        for more GPUs than are free; whatever was built is stopped first.
        """
        _faults.install_fault_hook()
        _check_arguments(spec)
        replica = MonarchReplica(spec, self._pool or default_gpu_pool(), self._live.discard)
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
        f"replica {spec.idx} ({spec.actor_cls.__name__}) failed to start: {summary}{hint}"
        f"\n\nMonarch's report:\n{report}"
    )
