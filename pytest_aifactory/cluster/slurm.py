"""Jobs as Slurm jobs, through submitit's Slurm executor.

Every job is named `aif-<run id>-<job>` so that `squeue` and `sacct` show which run it belongs
to. The executor remembers every job id it submitted and, at the end, makes sure none of them
is still queued or running. A job that waits in the queue longer than `pending_timeout_s` will
most likely never start (no such nodes free, a reservation, a begin time): it is cancelled, and
whoever waits for it is told Slurm's reason instead of waiting for a generic timeout.

Slurm's commands (squeue, sinfo, scancel) are run and read by `slurm_commands.py`, which
`aifactory status` and `stop` use too; submitit runs sbatch.
"""

from __future__ import annotations

import math
import re
import shutil
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit
from pydantic import ValidationError

from pytest_aifactory.cluster.base import JobExecutor, JobHandle, JobResources, SubmitError
from pytest_aifactory.cluster.local import JOB_STOP_GRACE_S
from pytest_aifactory.cluster.node import LOOPBACK
from pytest_aifactory.cluster.rundir import RunDir
from pytest_aifactory.cluster.slurm_commands import QueueEntry, partitions, scancel, squeue
from pytest_aifactory.recipe import SLURM_OVERRIDE_KEYS, SlurmSettings
from pytest_aifactory.services.launch import AUTO_HOST, ServiceLaunch

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe

SQUEUE_EVERY_S = 1.0
"""At most one `squeue` per second for all the run's jobs, however often they are polled."""
CANCEL_WAIT_S = JOB_STOP_GRACE_S
"""scancel's SIGTERM reaches the job, which stops its processes before it exits: only a job
still listed after this is sent SIGKILL."""
KILL_WAIT_S = 10.0
_SBATCH_ERROR = re.compile(r"sbatch: error: (.*)")


class SlurmError(SubmitError):
    """Slurm is missing or refused the settings; the message is for the user."""


def time_limit_minutes(limit: str) -> int:
    """Slurm's `MM`, `HH:MM:SS` or `D-HH:MM:SS` as whole minutes, rounded up."""
    text = limit.strip()
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        seconds = parts[0] * 60
    elif len(parts) == 3:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:
        raise ValueError(f"time limit {limit!r}: expected MM, HH:MM:SS or D-HH:MM:SS")
    return max(1, math.ceil((days * 86400 + seconds) / 60))


def effective_settings(
    recipe: Recipe | None, overrides: Mapping[str, Any] | None = None
) -> SlurmSettings:
    """The recipe's `platform.slurm` with the command line's values on top (validated alike)."""
    base = recipe.platform.slurm if recipe is not None else SlurmSettings()
    data = base.model_dump()
    for key, value in (overrides or {}).items():
        if key not in SLURM_OVERRIDE_KEYS:
            raise SlurmError(f"unknown Slurm setting '{key}'")
        if value is None or value == [] or value == ():
            continue
        data[key] = [*data["setup"], *value] if key == "setup" else value
    try:
        return SlurmSettings.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise SlurmError(f"invalid Slurm setting: {problems}") from None


def sbatch_parameters(
    settings: SlurmSettings, resources: JobResources, job_name: str
) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for one job."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": time_limit_minutes(settings.time_limit),
        "nodes": resources.nodes,
        "ntasks_per_node": resources.tasks_per_node,
    }
    for key in ("partition", "account", "qos"):
        value = getattr(settings, key)
        if value:
            params[key] = value
    if resources.partition:
        params["partition"] = resources.partition
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    if resources.cpus_per_task:
        params["cpus_per_task"] = resources.cpus_per_task
    if resources.memory:
        params["mem"] = resources.memory
    if settings.setup:
        params["setup"] = list(settings.setup)
    additional = {
        key: value if value is True else str(value)
        for key, value in settings.additional.items()
        if value is not False
    }
    if additional:
        params["additional_parameters"] = additional
    return params


def for_cluster(
    recipe: Recipe | None, args: tuple[Any, ...], resources: JobResources
) -> tuple[tuple[Any, ...], JobResources]:
    """A service job's orders for a cluster node: bind to the node's own address unless the
    recipe names a host, run in the recipe's container if it has one, and ask for the CPUs and
    memory the recipe gives the service. Other jobs' arguments pass unchanged."""
    if recipe is None:
        return args, resources
    prepared: list[Any] = []
    for arg in args:
        service = recipe.services.get(arg.name) if isinstance(arg, ServiceLaunch) else None
        if service is None:
            prepared.append(arg)
            continue
        changes: dict[str, Any] = {}
        if service.host is None and arg.host == LOOPBACK:
            changes["host"] = AUTO_HOST
        if service.container is not None and arg.container is None:
            changes["container"] = service.container
            changes["gpus"] = service.gpus_per_node > 0
        prepared.append(replace(arg, **changes))
        resources = replace(
            resources,
            cpus_per_task=resources.cpus_per_task or service.cpus_per_task,
            memory=resources.memory or service.memory,
        )
    return tuple(prepared), resources


def check_partition(name: str) -> None:
    """A misspelt partition fails before any job is submitted, listing the real ones (when sinfo
    cannot say, sbatch will)."""
    known = partitions()
    if known and name not in known:
        raise SlurmError(f"Slurm has no partition '{name}' (partitions: {', '.join(known)})")


class SlurmQueue:
    """What `squeue` says of the run's jobs, asked at most once per `every_s`."""

    def __init__(self, every_s: float = SQUEUE_EVERY_S) -> None:
        self.every_s = every_s
        self._ids: set[str] = set()
        self._entries: dict[str, QueueEntry] | None = None
        self._at = float("-inf")
        self._lock = threading.Lock()

    def watch(self, job_id: str) -> None:
        with self._lock:
            self._ids.add(job_id.split("_")[0])
            self._at = float("-inf")

    def entries(self, force: bool = False) -> dict[str, QueueEntry] | None:
        """Queued and running jobs by id; None when squeue could not be asked."""
        with self._lock:
            if force or time.monotonic() - self._at >= self.every_s:
                self._entries = self._ask()
                self._at = time.monotonic()
            return self._entries

    def entry(self, job_id: str, force: bool = False) -> QueueEntry | None:
        entries = self.entries(force)
        return None if entries is None else entries.get(job_id)

    def listed(self, job_id: str, force: bool = False) -> bool | None:
        """Whether squeue still lists the job; None when squeue could not be asked."""
        entries = self.entries(force)
        return None if entries is None else job_id in entries

    def _ask(self) -> dict[str, QueueEntry] | None:
        if not self._ids:
            return {}
        entries = squeue(sorted(self._ids))
        if entries is not None:  # jobs that left the queue need not be asked about again
            self._ids = {i for i in self._ids if i in entries}
        return entries


@dataclass
class SlurmJobHandle(JobHandle):
    """A Slurm job: its state from squeue, and given up when it stays pending too long."""

    queue: SlurmQueue | None = None
    pending_timeout_s: float = math.inf
    gave_up: str | None = None
    """Why the job was cancelled before it ever ran."""
    _cancel: Callable[[SlurmJobHandle], None] | None = field(default=None, repr=False)

    @property
    def stdout_path(self) -> Path:
        return Path(self._first_task().paths.stdout)

    @property
    def stderr_path(self) -> Path:
        return Path(self._first_task().paths.stderr)

    def _first_task(self) -> submitit.Job[Any]:
        """A job over several nodes logs per task: rank 0's log is the one to show."""
        return self.job.task(0) if self.job.num_tasks > 1 else self.job

    def finished(self) -> bool:
        """Done once squeue no longer lists the job. A job still pending after
        `pending_timeout_s` is cancelled here and counts as done, `gave_up` saying why."""
        if self.gave_up is not None:
            return True
        if self.queue is None:
            return super().finished()
        entries = self.queue.entries()
        if entries is None:  # squeue unavailable: submitit asks sacct
            return super().finished()
        entry = entries.get(self.job_id)
        if entry is None:
            return True
        if entry.state == "PENDING" and time.time() - self.submitted_at > self.pending_timeout_s:
            self.gave_up = (
                f"job {self.job_id} never started: still queued after "
                f"{self.pending_timeout_s:g} s (pending_timeout_s), Slurm's reason: "
                f"{entry.reason}; cancelled"
            )
            if self._cancel is not None:
                self._cancel(self)
            return True
        return False

    def state(self) -> str:
        if self.gave_up is not None:
            return "CANCELLED (never started)"
        entry = self.queue.entry(self.job_id) if self.queue is not None else None
        if entry is not None:
            reason = entry.reason if entry.reason not in ("", "None") else ""
            return f"{entry.state} ({reason})" if reason else entry.state
        return super().state()

    def exception_text(self) -> str | None:
        if self.gave_up is not None:
            return self.gave_up
        return super().exception_text()


class SlurmJobExecutor(JobExecutor):
    """Each job is a Slurm batch job; a job over N nodes runs its function once per task."""

    name = "slurm"

    def __init__(
        self,
        run: RunDir,
        recipe: Recipe | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(run)
        if shutil.which("sbatch") is None:
            raise SlurmError("Slurm's sbatch is not on PATH: run on a Slurm login node")
        self.recipe = recipe
        self.settings = effective_settings(recipe, overrides)
        if self.settings.partition:
            check_partition(self.settings.partition)
        self.queue = SlurmQueue()
        self.job_ids: list[str] = []
        """Every job this run submitted, in order: nothing of it may be left at the end."""

    def job_name(self, name: str) -> str:
        return f"aif-{self.run.run_id}-{name}"

    def _executor(self, job_name: str, resources: JobResources) -> submitit.Executor:
        executor = submitit.SlurmExecutor(folder=self.run.jobs_dir / job_name)
        executor.update_parameters(
            **sbatch_parameters(self.settings, resources, self.job_name(job_name))
        )
        return executor

    def _handle(self, name: str, role: str, job: submitit.Job[Any]) -> SlurmJobHandle:
        self.job_ids.append(str(job.job_id))
        self.queue.watch(str(job.job_id))
        return SlurmJobHandle(
            name=name,
            role=role,
            job=job,
            queue=self.queue,
            pending_timeout_s=self.settings.pending_timeout_s,
            _cancel=self._scancel,
        )

    def _submit_job(
        self, fn: Callable[..., Any], args: tuple[Any, ...], name: str, resources: JobResources
    ) -> submitit.Job[Any]:
        """The job in a cluster node's terms (`for_cluster`); sbatch's refusal in a sentence."""
        args, resources = for_cluster(self.recipe, args, resources)
        executor = self._executor(name, resources)
        try:
            return executor.submit(fn, *args)
        except submitit.core.utils.FailedJobError as err:
            errors = [m.group(1) for m in _SBATCH_ERROR.finditer(str(err))]
            detail = "; ".join(errors) or str(err).strip()
            raise SlurmError(f"sbatch refused job {self.job_name(name)}: {detail}") from None

    # -- cancelling ---------------------------------------------------------------------------

    def _scancel(self, handle: JobHandle, signal: str | None = None) -> None:
        """Whether it worked shows in squeue, which the caller watches."""
        scancel([handle.job_id], signal)

    def cancel(self, handle: JobHandle) -> None:
        if self._still_queued(handle):
            self._scancel(handle)
        self._after_cancel(handle)

    def _still_queued(self, handle: JobHandle) -> bool:
        listed = self.queue.listed(handle.job_id, force=True)
        return listed is None or listed

    def _after_cancel(self, handle: JobHandle) -> None:
        """Wait until squeue no longer lists the job; a job that ignores the cancel is killed."""
        if self._wait_gone(handle, CANCEL_WAIT_S):
            return
        self._scancel(handle, signal="KILL")
        self._wait_gone(handle, KILL_WAIT_S)

    def _wait_gone(self, handle: JobHandle, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.queue.listed(handle.job_id, force=True) is False:
                return True
            time.sleep(0.2)
        return False

    def cancel_all(self, keep: Collection[JobHandle] = ()) -> list[JobHandle]:
        """Every job of the run but those kept, including any the handles lost track of."""
        cancelled = super().cancel_all(keep=keep)
        kept = {h.job_id for h in keep}
        queued = self.queue.entries(force=True)
        leftover = [
            job_id
            for job_id in self.job_ids
            if job_id not in kept and (queued is None or job_id in queued)
        ]
        scancel(leftover)
        return cancelled
