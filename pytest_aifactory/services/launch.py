"""The function a service job runs: pick the port, announce it, run the server, stay its parent.

It runs inside the job (a local process or a Slurm allocation), never in the driver. The server
is its child with a parent-death signal, so however the job ends the server ends with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pytest_aifactory.cluster.rendezvous import Rendezvous, free_port, write_rendezvous
from pytest_aifactory.cluster.rundir import driver_gone

_PR_SET_PDEATHSIG = 1
POLL_S = 0.2
STOP_GRACE_S = 10.0


class ServiceExited(RuntimeError):
    """The server ended by itself; the driver shows this with the log tail."""


@dataclass(frozen=True)
class ServiceLaunch:
    """One service job's orders (built by the driver, pickled to the job)."""

    name: str
    argv: list[str]
    rendezvous_path: str
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = None
    heartbeat_path: str | None = None


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when this job's process dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def fill_placeholders(argv: list[str], host: str, port: int) -> list[str]:
    """`{host}` and `{port}` only; other braces (JSON arguments) are left alone."""
    return [a.replace("{host}", host).replace("{port}", str(port)) for a in argv]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_service(launch: ServiceLaunch) -> int:
    """Start the server and wait for it; returns only when the server ended."""
    port = launch.port or free_port(launch.host)
    argv = fill_placeholders(launch.argv, launch.host, port)
    env = {**os.environ, **launch.env, "AIFACTORY_SERVICE": launch.name}
    env.update({"AIFACTORY_HOST": launch.host, "AIFACTORY_PORT": str(port)})
    print(f"aifactory: starting {launch.name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)
    except OSError as err:
        raise ServiceExited(f"cannot start {argv[0]}: {err.strerror or err}") from None
    stop_requested: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda sig, _frame: stop_requested.append(sig))
    node = socket.gethostname()
    info = Rendezvous(launch.name, launch.host, port, node, proc.pid, nodes=[node])
    write_rendezvous(Path(launch.rendezvous_path), info)
    try:
        while proc.poll() is None:
            if stop_requested:
                print("aifactory: job cancelled, stopping", file=sys.stderr, flush=True)
                _stop(proc)
                return 0
            if driver_gone(launch.heartbeat_path):
                print("aifactory: driver is gone, stopping", file=sys.stderr, flush=True)
                _stop(proc)
                return 0
            time.sleep(POLL_S)
    finally:
        _stop(proc)
    raise ServiceExited(f"{launch.name} {describe_exit(proc.returncode)}")


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"
