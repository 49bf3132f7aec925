"""Monarch worker processes that act as remote hosts, for the tests on a pool of hosts.

Each "host" is ``python -m forge_sc.worker tcp://127.0.0.1:<port>`` started through a
double fork: the worker runs in a session of its own and is not a child (nor a
descendant) of the test's process, as on another machine. Killing a host kills the
worker and every process under it: Monarch's procs start process groups of their
own, so they are found by following parent links in ``/proc`` (and by session).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ._support import pid_alive, proc_stat, process_tree

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: fork, setsid, fork again, exec the worker; print its pid.
_LAUNCHER = r"""
import os, sys
address, log = sys.argv[1], sys.argv[2]
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0); os.dup2(out, 1); os.dup2(out, 2)
        os.write(w, str(os.getpid()).encode()); os.close(w)
        os.execv(sys.executable, [sys.executable, "-m", "forge_sc.worker", address])
    os._exit(0)
os.close(w)
print(os.read(r, 32).decode(), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1] == want and parts[3] == "0A":
                return True
    return False


class Host:
    """One worker process acting as a host at ``tcp://127.0.0.1:<port>``."""

    def __init__(self, port: int | None = None, log_dir: str | None = None) -> None:
        self.port = port or free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log = os.path.join(log_dir or tempfile.gettempdir(), f"forge_sc_host_{self.port}.log")
        self.pid: int | None = None
        self.sessions: set[int] = set()  # of every worker started here, for cleanup

    def __repr__(self) -> str:
        return f"<Host {self.address} pid={self.pid}>"

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        )
        out = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, self.address, self.log],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        self.pid = int(out.stdout.strip())
        fields = proc_stat(self.pid)
        if fields is not None:
            self.sessions.add(int(fields[3]))
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if not pid_alive(self.pid):
                raise RuntimeError(f"{self} exited at start; its log:\n{self.read_log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self} does not listen after {timeout}s:\n{self.read_log()}")
            time.sleep(0.05)

    def read_log(self) -> str:
        with contextlib.suppress(OSError), open(self.log) as f:
            return f.read()[-4000:]
        return ""

    def processes(self) -> set[int]:
        """The worker and everything under it (and whatever is left of the workers
        started here before)."""
        return set() if self.pid is None else process_tree(self.pid, self.sessions)

    def replica_processes(self) -> set[int]:
        """The processes under the worker (the replicas' procs), not the worker."""
        return self.processes() - {self.pid}

    def signal(self, sig: int) -> set[int]:
        pids = self.processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def kill(self) -> None:
        """The whole host at once: freeze every process (so none reacts to another's
        death), then SIGKILL them all; wait until they are gone."""
        for _ in range(3):  # a process forked meanwhile is caught by the next round
            pids = self.signal(signal.SIGSTOP)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in self.processes()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(pid_alive(p) for p in self.processes()), f"{self} survived SIGKILL"

    def stop_all(self) -> set[int]:
        """SIGSTOP every process of the host (a partition: alive, not answering)."""
        return self.signal(signal.SIGSTOP)

    def cont_all(self) -> set[int]:
        return self.signal(signal.SIGCONT)


@contextlib.contextmanager
def hosts(n: int) -> Iterator[list[Host]]:
    """``n`` worker hosts, killed (with everything under them) however the test ends."""
    started: list[Host] = []
    try:
        for _ in range(n):
            host = Host()
            started.append(host)
            host.start()
        yield started
    finally:
        for host in started:
            with contextlib.suppress(Exception):
                host.cont_all()
            host.kill()  # raises if a process of the host survives
            with contextlib.suppress(OSError):
                os.unlink(host.log)
