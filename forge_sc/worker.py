"""Run this host as a Monarch worker for ``MonarchMesh(workers=[...], ca=...)``.

    python -m forge_sc.worker tcp://10.0.0.5:26600
    python -m forge_sc.worker tls://worker-7.cluster.internal:26600

It is Monarch's ``run_worker_loop_forever(address=..., ca="trust_all_connections")``,
with checks first, because a Monarch worker runs whatever code its client sends: anyone
who can open a connection to its port can run code on this host as this user.

* The address must name the interface to listen on. A wildcard (``0.0.0.0``, ``*``,
  ``::``) is refused: it would open the port on every network this host is on.
* ``tcp://`` is neither encrypted nor authenticated; on an address other than loopback
  a warning says so. Keep such ports on a private network (see docs/deployment.md).
* ``tls://`` is Monarch's mutual TLS: the worker accepts only clients whose certificate
  is signed by the CA in ``HYPERACTOR_TLS_CA`` and presents ``HYPERACTOR_TLS_CERT`` /
  ``HYPERACTOR_TLS_KEY``; those must be set (and readable) before this starts.

The processes of the replicas placed here are this worker's children; they import the
actor's module, so install the same code (and the same Python environment) here.
"""

from __future__ import annotations

import argparse
import os
import sys

from .mesh._placement import _host_of, _is_loopback, _scheme_of

__all__ = ["check_listen_address", "main"]

_WILDCARDS = {"", "*", "0.0.0.0", "::", "[::]"}


def check_listen_address(address: str, environ: dict[str, str] | None = None) -> list[str]:
    """Validate the address a worker listens on; return warnings, raise ``ValueError``
    for addresses it must not use."""
    env = dict(os.environ) if environ is None else environ
    if "://" not in address:
        raise ValueError(f"{address!r} is not an address; write tcp://<host>:<port>")
    scheme = _scheme_of(address)
    if scheme not in ("tcp", "tls", "ipc", "metatls"):
        raise ValueError(f"{address!r}: a worker listens on tcp://, tls:// or ipc://")
    warnings: list[str] = []
    if scheme == "ipc":
        return warnings
    # "advertised@bind": both parts must name a host.
    for part in address.split("@"):
        if "://" in part and _host_of(part) in _WILDCARDS:
            raise ValueError(
                f"{address!r} listens on every interface; name the one to listen on "
                "(the host's private address, or 127.0.0.1 behind an SSH tunnel)"
            )
    if scheme == "tls":
        for key in ("HYPERACTOR_TLS_CA", "HYPERACTOR_TLS_CERT", "HYPERACTOR_TLS_KEY"):
            path = env.get(key)
            if not path or not os.access(path, os.R_OK):
                raise ValueError(
                    f"tls:// needs {key} set to a readable file before the worker starts "
                    "(HYPERACTOR_TLS_CA: the CA; _CERT/_KEY: this worker's certificate "
                    "and key, signed by that CA)"
                )
    elif scheme == "tcp" and not _is_loopback(_host_of(address)):
        warnings.append(
            f"forge_sc.worker: {address} is plain TCP, neither encrypted nor "
            "authenticated: anyone who can reach this port can run code here. Keep it on "
            "a private network or use tls:// (docs/deployment.md)."
        )
    return warnings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m forge_sc.worker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("address", help="where to listen: tcp://<host>:<port> or tls://...")
    args = parser.parse_args(argv)
    try:
        warnings = check_listen_address(args.address)
    except ValueError as exc:
        parser.error(str(exc))
    for line in warnings:
        print(line, file=sys.stderr, flush=True)
    from monarch.actor import run_worker_loop_forever

    print(f"forge_sc.worker: listening on {args.address}", file=sys.stderr, flush=True)
    run_worker_loop_forever(address=args.address, ca="trust_all_connections")


if __name__ == "__main__":
    main()
