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

import datetime
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

from pytest_aifactory.cluster.base import Job, JobExecutor, JobHandle, JobResources, SubmitError
from pytest_aifactory.cluster.local import JOB_STOP_GRACE_S
from pytest_aifactory.cluster.node import LOOPBACK
from pytest_aifactory.cluster.rundir import RunDir
from pytest_aifactory.cluster.slurm_commands import (
    QueueEntry,
    expected_start,
    partitions,
    scancel,
    squeue,
)
from pytest_aifactory.job_time import minutes, session_seconds
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


NO_REQUEUE = "no_requeue"
"""sbatch's `--no-requeue`, on every job unless `platform.slurm.additional` says otherwise: a
requeued client would run its level again into the same records, and a requeued service comes
back on another node after the driver has read its address. (submitit also requeues a job
itself when it gets its preemption signal, by `scontrol requeue`, which Slurm then refuses.)"""


def _requeue_left_to_us(additional: Mapping[str, Any]) -> bool:
    """`requeue: true` asks for requeueing, any `no-requeue` decides for itself; `requeue:
    false` (leave the option out) still gets `--no-requeue`."""
    if additional.get("requeue", False) is not False:
        return False
    return not {"no_requeue", "no-requeue"} & set(additional)


def sbatch_parameters(
    settings: SlurmSettings, resources: JobResources, job_name: str
) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for one job. Its time limit is the job's own when it
    has one (`job_time`), never above `platform.slurm.time_limit`; GPUs are asked for as
    `--gpus-per-node` (or the recipe's free-form `--gres`)."""
    ceiling = time_limit_minutes(settings.time_limit)
    own = resources.time_limit_min
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": min(own, ceiling) if own else ceiling,
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
    if resources.gres:
        params["gres"] = resources.gres
    if resources.cpus_per_task:
        params["cpus_per_task"] = resources.cpus_per_task
    if resources.memory:
        params["mem"] = resources.memory
    if resources.constraint:
        params["constraint"] = resources.constraint
    if resources.exclusive:
        params["exclusive"] = True
    if settings.setup:
        params["setup"] = list(settings.setup)
    additional: dict[str, Any] = {}
    if _requeue_left_to_us(settings.additional):
        additional[NO_REQUEUE] = True
    additional.update(
        (key, value if value is True else str(value))
        for key, value in settings.additional.items()
        if value is not False
    )
    if additional:
        params["additional_parameters"] = additional
    return params


def for_cluster(
    recipe: Recipe | None,
    args: tuple[Any, ...],
    resources: JobResources,
    pending_timeout_s: float = SlurmSettings().pending_timeout_s,
) -> tuple[tuple[Any, ...], JobResources]:
    """A service job's orders for a cluster node: bind to the node's own address unless the
    recipe names a host, run in the recipe's container if it has one, and last no longer than
    the session may (`job_time.session_seconds`, with jobs waiting up to `pending_timeout_s`
    in the queue); a service kept for later sessions (no driver heartbeat to follow) keeps the
    recipe's whole time limit. Other jobs' arguments pass unchanged."""
    if recipe is None:
        return args, resources
    prepared: list[Any] = []
    for arg in args:
        service = (
            recipe.services.get(arg.service or arg.name) if isinstance(arg, ServiceLaunch) else None
        )
        if service is None:
            prepared.append(arg)
            continue
        changes: dict[str, Any] = {}
        if service.host is None and arg.host == LOOPBACK:
            changes["host"] = AUTO_HOST
        if service.container is not None and arg.container is None:
            changes["container"] = service.container
            changes["gpus"] = service.gpu_count > 0
        prepared.append(replace(arg, **changes))
        if arg.heartbeat_path is not None and resources.time_limit_min is None:
            session = minutes(session_seconds(recipe, pending_timeout_s))
            resources = replace(resources, time_limit_min=session)
    return tuple(prepared), resources


def check_partitions(named: Mapping[str, str]) -> None:
    """A misspelt partition fails before any job is submitted, naming its recipe key and
    listing the real ones (when sinfo cannot say, sbatch will). `named`: recipe key ->
    partition, or a comma-separated list of them."""
    if not named:
        return
    known = partitions()
    if not known:
        return
    problems = [
        f"{key}: Slurm has no partition '{name}'"
        for key, value in named.items()
        for name in value.split(",")
        if name not in known
    ]
    if problems:
        raise SlurmError(f"{'; '.join(problems)} (partitions: {', '.join(known)})")


def run_partitions(recipe: Recipe | None, settings: SlurmSettings) -> dict[str, str]:
    """The partitions a run's jobs may go to, by the recipe key that names each."""
    named: dict[str, str] = {}
    if settings.partition:
        named["platform.slurm.partition"] = settings.partition
    if recipe is None:
        return named
    for section, entries in (("services", recipe.services), ("clients", recipe.clients)):
        for name, entry in entries.items():
            if entry.partition:
                named[f"{section}.{name}.partition"] = entry.partition
    if recipe.monitor.partition:
        named["monitor.partition"] = recipe.monitor.partition
    return named


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


WAIT_REASONS: dict[str, str] = {
    "Resources": "the nodes, CPUs, memory or GPUs it asks for are in use",
    "Priority": "jobs of higher priority go first",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved",
    "BeginTime": "its start time has not come",
    "Dependency": "it waits for another job",
    "Reservation": "it waits for its reservation",
    "PartitionTimeLimit": "its time limit is above the partition's",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "BadConstraints": "no node has the features it asks for (constraint)",
    "JobHeldUser": "it is held (scontrol release)",
    "JobHeldAdmin": "an administrator holds it",
}
"""What Slurm's commonest reasons for waiting mean."""
WAIT_REASON_FAMILIES: dict[str, str] = {
    "QOS": "a limit of its quality of service is reached",
    "Assoc": "a limit of its account is reached",
}
"""Reasons by their first word: `QOSMaxJobsPerUserLimit`, `AssocGrpGRES`..."""


def explain_reason(reason: str) -> str:
    """`Resources` -> `Resources (the nodes, ... are in use)`; an unknown reason as it is."""
    meaning = WAIT_REASONS.get(reason)
    for prefix, family in WAIT_REASON_FAMILIES.items():
        if meaning is None and reason.startswith(prefix):
            meaning = family
    return f"{reason} ({meaning})" if meaning else reason or "none given"


def describe_start(start: str | None, now: datetime.datetime) -> str:
    """squeue's `%S` for a waiting job as `2026-12-02T15:00:00 (in 42 min)`; `now` in the
    cluster's local time, as `%S` is."""
    try:
        when = datetime.datetime.fromisoformat(start or "")
    except ValueError:
        return "unknown (Slurm has not planned it)"
    seconds = (when - now).total_seconds()
    if seconds < 60:
        return f"{start} (any moment now)"
    whole = math.ceil(seconds / 60)
    days, rest = divmod(whole, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [
        f"{days} d" if days else "",
        f"{hours} h" if hours else "",
        f"{mins} min" if mins else "",
    ]
    return f"{start} (in {' '.join(p for p in parts if p)})"


def pending_message(
    job_id: str, waited_s: float, reason: str, start: str | None, now: datetime.datetime
) -> str:
    """Why a job that did not start in time was cancelled, and what the user can do."""
    return (
        f"job {job_id} never started: still queued after {waited_s:.0f} s "
        f"(platform.slurm.pending_timeout_s), Slurm's reason: {explain_reason(reason)}, "
        f"estimated start: {describe_start(start, now)}; cancelled. Raise pending_timeout_s "
        "(or --slurm-pending-timeout) to wait longer, or ask for less (nodes, GPUs, memory, "
        "time) or another partition"
    )


def requeued_message(job_id: str, reason: str) -> str:
    return (
        f"job {job_id} was requeued by Slurm after it had started (Slurm's reason: "
        f"{explain_reason(reason)}); cancelled: run again, it would repeat its work into the "
        "same records. Jobs are submitted with --no-requeue unless platform.slurm.additional "
        "sets requeue: true"
    )


@dataclass
class SlurmJobHandle(JobHandle):
    """A Slurm job: its state from squeue, and given up when it stays pending too long."""

    queue: SlurmQueue | None = None
    pending_timeout_s: float = math.inf
    gave_up: str | None = None
    """Why the job was cancelled before it ran (or ran again)."""
    ran: bool = False
    """squeue once listed it as started: pending again means Slurm requeued it."""
    _cancel: Callable[[SlurmJobHandle], None] | None = field(default=None, repr=False)

    @property
    def stdout_path(self) -> Path:
        return Path(self._first_task().paths.stdout)

    @property
    def stderr_path(self) -> Path:
        return Path(self._first_task().paths.stderr)

    def _first_task(self) -> Job:
        """A job over several nodes logs per task: rank 0's log is the one to show."""
        return self.job.task(0) if self.job.num_tasks > 1 else self.job

    def finished(self) -> bool:
        """Done once squeue no longer lists the job. A job still pending after
        `pending_timeout_s`, or requeued after it started, is cancelled here and counts as
        done, `gave_up` saying why."""
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
        requeued = entry.state.startswith("REQUEUE") or (self.ran and entry.state == "PENDING")
        if requeued:  # its restart would refuse to run (`cluster.restart`): not waited for
            self.ran = True
            return self._give_up(requeued_message(self.job_id, entry.reason))
        if entry.state != "PENDING":
            self.ran = True
            return False
        waited = time.time() - self.submitted_at
        if waited > self.pending_timeout_s:
            start = expected_start(self.job_id)
            now = datetime.datetime.now()
            return self._give_up(pending_message(self.job_id, waited, entry.reason, start, now))
        return False

    def _give_up(self, why: str) -> bool:
        self.gave_up = why
        if self._cancel is not None:
            self._cancel(self)
        return True

    def state(self) -> str:
        if self.gave_up is not None:
            return "CANCELLED (requeued)" if self.ran else "CANCELLED (never started)"
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
        check_partitions(run_partitions(recipe, self.settings))
        self.queue = SlurmQueue()
        self.job_ids: list[str] = []
        """Every job this run submitted, in order: nothing of it may be left at the end."""

    def job_name(self, name: str) -> str:
        return f"aif-{self.run.run_id}-{name}"

    def _executor(self, job_name: str, resources: JobResources) -> submitit.Executor:
        executor = submitit.SlurmExecutor(folder=self.run.job_folder(job_name))
        executor.update_parameters(
            **sbatch_parameters(self.settings, resources, self.job_name(job_name))
        )
        return executor

    def _handle(self, name: str, role: str, job: Job) -> SlurmJobHandle:
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
    ) -> Job:
        """The job in a cluster node's terms (`for_cluster`); sbatch's refusal in a sentence."""
        args, resources = for_cluster(self.recipe, args, resources, self.settings.pending_timeout_s)
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
