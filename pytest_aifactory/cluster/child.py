"""Child processes of a job's task (servers, exporters): found on PATH, dying with the task and
stopped with a grace period, so nothing a job started outlives it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

from pytest_aifactory.cluster.local import STOP_GRACE_S

_PR_SET_PDEATHSIG = 1


def first_on_path(*names: str) -> str | None:
    """The first of `names` on PATH: distributions and upstream name one program differently
    (`prometheus-node-exporter` and `node_exporter`)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


_GUARD_SOURCE = f"""\
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(128 + signal.SIGTERM)
try:
    os.execv(sys.argv[2], sys.argv[2:])
except OSError as err:
    sys.exit(f"aifactory: cannot start {{sys.argv[2]}}: {{err.strerror}}")
"""
"""Sets the death signal, checks the parent did not die before that, then becomes the program
(same PID, so the parent stops it as its own child)."""


def dying_with_parent(argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """`argv` behind a launcher that makes the kernel send it SIGTERM when this task dies, even
    by SIGKILL (no chance to stop its children itself).

    A launcher, not `preexec_fn`: a `preexec_fn` makes Python fork the whole process and run
    its fork handlers in the child, and a process with gRPC loaded (Triton's and Milvus's
    clients) then aborts there. The program is looked up first, on the PATH it will get, so a
    missing one raises `FileNotFoundError` here as `Popen` would."""
    program = argv[0]
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = program if os.sep in program else shutil.which(program, path=path)
    if found is None or not os.access(found, os.X_OK) or os.path.isdir(found):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    guard = [sys.executable, "-I", "-c", _GUARD_SOURCE, str(os.getpid())]
    return [*guard, found, *argv[1:]]


def stop_child(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; always reaped."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_quiet_child(argv: list[str], what: str) -> subprocess.Popen[bytes] | None:
    """A helper process (an exporter) with no output of its own, dying with this task; None,
    said on stderr, when it cannot be started."""
    try:
        return subprocess.Popen(
            dying_with_parent(argv),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as err:
        print(f"aifactory: {what} not started: {err}", file=sys.stderr, flush=True)
        return None
