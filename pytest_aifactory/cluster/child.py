"""Child processes of a job's task (servers, exporters): found on PATH, dying with the task and
stopped with a grace period, so nothing a job started outlives it."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import sys

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


def die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the parent task dies, even
    by SIGKILL (no chance to stop its children itself)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    except OSError as err:
        print(f"aifactory: {what} not started: {err}", file=sys.stderr, flush=True)
        return None
