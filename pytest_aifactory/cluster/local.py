"""Jobs as processes on this machine, through submitit's local executor, and how processes we
started are stopped: by the executor at the end of a session, by `aifactory stop` after the
driver is gone, and by a job's task stopping its server.

A recorded PID alone does not name a process for long (PIDs are reused): `aifactory stop` only
signals a process whose start time is still the recorded one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psutil

from pytest_aifactory.cluster.base import JobExecutor, JobHandle, JobResources, SubmitError

if TYPE_CHECKING:
    import submitit

STOP_GRACE_S = 15.0
"""From SIGTERM (fio: SIGINT) to SIGKILL: what a process we started gets to stop cleanly. A
server closes its connections and writes its data; fio finishes the I/Os in flight and
reports."""
JOB_STOP_GRACE_S = STOP_GRACE_S + 5.0
"""What the stopper of a job gives it before killing: the job first stops its own processes
(each within STOP_GRACE_S), then reports and exits."""
STRAGGLER_WAIT_S = 2.0
"""What is left of a job's process tree after its grace gets SIGTERM and this long again before
SIGKILL; the same again to see the SIGKILL done."""
CREATE_TIME_TOLERANCE_S = 0.05
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
DEFAULT_TIME_LIMIT_MIN = 60
"""A local job that was given no time limit of its own is stopped after this long."""


def same_process(
    pid: int, create_time: float | None, cmdline: Sequence[str] = ()
) -> psutil.Process | None:
    """The process, if `pid` still names the one recorded as started at `create_time`.

    The start time decides (a server may rewrite its command line, as PostgreSQL does); the
    command line only when no start time was recorded.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if create_time is not None:
            if abs(proc.create_time() - create_time) > CREATE_TIME_TOLERANCE_S:
                return None
        elif not cmdline or proc.cmdline() != list(cmdline):
            return None
    except psutil.Error:
        return None
    return proc


def stop_process_tree(
    roots: Sequence[psutil.Process],
    first: Sequence[psutil.Process] = (),
    grace_s: float = JOB_STOP_GRACE_S,
) -> list[int]:
    """SIGTERM to `first` (a job's controller, which then stops its task and servers cleanly),
    or to every root when there is none; after `grace_s`, SIGTERM and then SIGKILL to whatever
    of the roots' process trees is left. Returns the PIDs of the trees."""
    tree: dict[int, psutil.Process] = {}
    for root in roots:
        tree[root.pid] = root
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                tree.setdefault(child.pid, child)
    if not tree:
        return []
    _signal(first or roots, psutil.Process.terminate)
    alive = _wait_gone(tree.values(), grace_s)
    _signal(alive, psutil.Process.terminate)
    alive = _wait_gone(alive, min(STRAGGLER_WAIT_S, grace_s))
    _signal(alive, psutil.Process.kill)
    _wait_gone(alive, STRAGGLER_WAIT_S)
    return sorted(tree)


def _signal(procs: Iterable[psutil.Process], send: Callable[[psutil.Process], None]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            send(proc)


def _wait_gone(procs: Iterable[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those still running after `timeout_s`. A zombie counts as gone: it runs nothing, and its
    parent (the driver, for a job's controller) reaps it."""
    deadline = time.monotonic() + timeout_s
    alive = list(procs)
    while True:
        alive = [p for p in alive if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def local_gpus(requested: int, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """submitit's parameters for a job's GPUs. submitit sets every local job's
    `CUDA_VISIBLE_DEVICES` itself, to the first `gpus_per_node` of `visible_gpus` (else of
    0, 1, ...), and to none for a job that asks for none: so a job that asks for GPUs gets the
    first of those the driver was given, and a job that asks for more than there are fails."""
    if requested == 0:
        return {}
    given = environ.get(VISIBLE_DEVICES)
    if given is None:
        return {"gpus_per_node": requested}
    devices = [device.strip() for device in given.split(",") if device.strip()]
    if not all(device.isdigit() for device in devices):
        raise SubmitError(
            f"{VISIBLE_DEVICES}={given}: local jobs need GPU indices (0,1,...) to share out"
        )
    if len(devices) < requested:
        raise SubmitError(
            f"{requested} GPU(s) per node asked for, but {VISIBLE_DEVICES}={given} gives this "
            f"machine {len(devices)}"
        )
    return {"gpus_per_node": requested, "visible_gpus": tuple(int(d) for d in devices)}


class LocalJobExecutor(JobExecutor):
    """Each job is a child process tree of the driver; cancelling stops the whole tree."""

    name = "local"

    def _executor(self, job_name: str, resources: JobResources) -> submitit.Executor:
        # deferred: submitit (and the asyncio it loads) is only needed to submit, not to stop
        import submitit

        executor = submitit.LocalExecutor(folder=self.run.job_folder(job_name))
        # one machine: every node's processes are tasks of the one local job
        executor.update_parameters(
            timeout_min=resources.time_limit_min or DEFAULT_TIME_LIMIT_MIN,
            tasks_per_node=resources.nodes * resources.tasks_per_node,
            **local_gpus(resources.gpus),
        )
        return executor

    def cancel(self, handle: JobHandle) -> None:
        """SIGTERM to the job's controller, which forwards it to the task: the job function stops
        its server or load and exits normally (submitit's own cancel, a SIGINT, makes the
        controller print a traceback). What is left of the job's processes and of the servers it
        said it started is then stopped as `stop_process_tree` does."""
        process = getattr(handle.job, "_process", None)
        controller = None
        if process is not None and process.poll() is None:
            controller = _process(process.pid)
        servers = [proc for pid in handle.pids if (proc := _process(pid)) is not None]
        first = [controller] if controller is not None else []
        stop_process_tree([*first, *servers], first=first)
        if process is not None:  # reaped here, so that submitit reads how it ended
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STRAGGLER_WAIT_S)
