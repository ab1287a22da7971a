"""Jobs as processes on this machine, through submitit's local executor."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil
import submitit

from pytest_aifactory.cluster.base import JobExecutor, JobHandle, JobResources

STOP_GRACE_S = 5.0


def stop_pids(pids: list[int], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL what is still there after the grace period."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)


class LocalJobExecutor(JobExecutor):
    """Each job is a child process tree of the driver; cancelling stops the whole tree."""

    name = "local"

    def _executor(self, job_name: str, resources: JobResources) -> submitit.Executor:
        executor = submitit.LocalExecutor(folder=self.run.jobs_dir / job_name)
        # one machine: every node's processes are tasks of the one local job
        executor.update_parameters(
            timeout_min=resources.time_limit_min,
            tasks_per_node=resources.nodes * resources.tasks_per_node,
        )
        return executor

    def cancel(self, handle: JobHandle) -> None:
        """SIGTERM to the job's controller, which forwards it to the task: the job function stops
        its server or load and exits normally (submitit's own cancel, a SIGINT, makes the
        controller print a traceback)."""
        process = getattr(handle.job, "_process", None)
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGTERM)
        self._after_cancel(handle)

    def _after_cancel(self, handle: JobHandle) -> None:
        process = getattr(handle.job, "_process", None)
        tree: list[int] = list(handle.pids)
        if process is not None:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(process.pid)
                tree.extend(child.pid for child in root.children(recursive=True))
                tree.append(root.pid)
            deadline = time.monotonic() + STOP_GRACE_S
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_GRACE_S)
        stop_pids([pid for pid in tree if psutil.pid_exists(pid)], grace_s=2.0)
