"""What a recorded run's jobs are doing now, stopping them, and the services a run kept.

Each job is asked about through the backend it ran on: a local job by its recorded processes
(`local.py`: still the same process? stop its tree), a Slurm job by `squeue`/`sacct` and
`scancel` (`slurm_commands.py`). This works after the driver is gone, from any folder, and is
what `aifactory status` and `stop` show and do; a later session reuses kept services found here.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from pytest_aifactory.cluster.local import JOB_STOP_GRACE_S, same_process, stop_process_tree
from pytest_aifactory.cluster.run_records import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    JobRecord,
    ProcessRef,
    RunNotFound,
    RunRecord,
    ServiceRecord,
    index_run,
    list_runs,
    read_run,
    resolve_run,
    rewrite_run,
)
from pytest_aifactory.cluster.rundir import not_owned
from pytest_aifactory.cluster.slurm_commands import ENDED, SlurmState, job_states, scancel
from pytest_aifactory.services.base import HealthCheck
from pytest_aifactory.services.health import is_healthy


def _is_local(job: JobRecord) -> bool:
    return job.executor == "local"


def _live(ref: ProcessRef) -> psutil.Process | None:
    return same_process(ref.pid, ref.create_time, ref.cmdline)


def live_processes(job: JobRecord) -> list[psutil.Process]:
    """The job's recorded processes that still run, controller first."""
    refs = sorted(job.pids, key=lambda r: r.role != "controller")
    return [proc for ref in refs if (proc := _live(ref)) is not None]


def driver_alive(record: RunRecord) -> bool | None:
    """None when it cannot be told from here (another host, nothing recorded)."""
    if record.driver is None or record.driver_host != socket.gethostname():
        return None
    return _live(record.driver) is not None


@dataclass
class LiveJob:
    """A recorded job and what is known of it now."""

    record: JobRecord
    state: str
    nodes: list[str]
    checked: bool
    """False: the state is the recorded one (another host, no Slurm commands here)."""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES or (not self.checked and self.state == "UNKNOWN")


def observe(record: RunRecord) -> list[LiveJob]:
    """Each job's state now: local ones by their processes, Slurm ones by squeue/sacct."""
    here = socket.gethostname()
    slurm_ids = [
        job.job_id for job in record.jobs if not _is_local(job) and job.state not in TERMINAL_STATES
    ]
    slurm = job_states(slurm_ids)
    live = []
    for job in record.jobs:
        if _is_local(job):
            if job.host and job.host != here:
                live.append(LiveJob(job, job.state, job.nodes, checked=False))
            elif live_processes(job):
                live.append(LiveJob(job, "RUNNING", job.nodes, checked=True))
            else:
                ended = job.state if job.state in TERMINAL_STATES else ENDED
                live.append(LiveJob(job, ended, job.nodes, checked=True))
        elif job.state in TERMINAL_STATES:
            live.append(LiveJob(job, job.state, job.nodes, checked=True))
        elif slurm is None:
            live.append(LiveJob(job, job.state, job.nodes, checked=False))
        else:
            now = slurm.get(job.job_id, SlurmState(ENDED, []))
            live.append(LiveJob(job, now.state, now.nodes or job.nodes, checked=True))
    return live


def service_healthy(service: ServiceRecord) -> bool:
    return is_healthy(service.host, service.port, HealthCheck(http_path=service.health_path))


# -- stopping -----------------------------------------------------------------------------------


def stop_local(job: JobRecord, grace_s: float = JOB_STOP_GRACE_S) -> list[int]:
    """SIGTERM to the job's controller (the job then stops its server cleanly), then SIGTERM and
    SIGKILL to whatever of its process tree is left. Only processes proven to be the recorded
    ones (and their children) are signalled. Returns the PIDs it ended."""
    roots = live_processes(job)
    controllers = {ref.pid for ref in job.pids if ref.role == "controller"}
    first = [proc for proc in roots if proc.pid in controllers]
    return stop_process_tree(roots, first=first, grace_s=grace_s)


@dataclass
class Stopped:
    job: JobRecord
    detail: str
    ok: bool


def stop_run(record: RunRecord) -> list[Stopped]:
    """Cancel every live job of a run and record it; kept services included."""
    here = socket.gethostname()
    results: list[Stopped] = []
    slurm_jobs: list[JobRecord] = []
    for live in observe(record):
        if not live.active:
            continue
        job = live.record
        if not _is_local(job):
            slurm_jobs.append(job)
        elif job.host and job.host != here:
            results.append(Stopped(job, f"runs on {job.host}: stop it there", ok=False))
        else:
            pids = stop_local(job)
            shown = ", ".join(str(p) for p in pids)
            results.append(Stopped(job, f"pids {shown}" if pids else "already gone", ok=True))
    error = scancel([job.job_id for job in slurm_jobs])
    results.extend(
        Stopped(job, error or f"scancel {job.job_id}", ok=error is None) for job in slurm_jobs
    )

    def mark_stopped(on_disk: RunRecord | None) -> RunRecord:
        current = on_disk or record
        for job in current.jobs:
            if any(s.ok and s.job.same_job(job) for s in results):
                job.state = "STOPPED"
        if current.status == "running" and driver_alive(current) is not True:
            current.status = "stopped"
        return current

    with contextlib.suppress(OSError, TimeoutError):
        stopped = rewrite_run(record.root, mark_stopped)
        if stopped is not None:
            index_run(stopped)
    return results


# -- reuse --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeptService:
    """A service another run left running, as a later session may use it."""

    run_id: str
    run_dir: str
    job: str
    service: ServiceRecord
    nodes: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.service.host}:{self.service.port}"

    def healthy(self) -> bool:
        return service_healthy(self.service)


def kept_services(record: RunRecord) -> dict[str, KeptService]:
    """The run's kept services that still run, by recipe service name."""
    found = {}
    for live in observe(record):
        job = live.record
        if job.kept and job.service is not None and live.active:
            found[job.service.name] = KeptService(
                record.run_id, record.run_dir, job.name, job.service, tuple(live.nodes)
            )
    return found


def find_kept_services(
    recipe_name: str, ref: str | None, exclude: Path | None = None
) -> tuple[dict[str, list[KeptService]], str]:
    """Services a session may reuse, by recipe service name, newest first, and a line saying
    where they come from (or why there are none). Which one is used, if any, is the service
    manager's choice: the first whose plan matches the recipe's and that answers its health
    check.

    With a run reference, that run's kept services; without one, those of every run of the
    same recipe that kept services still running.
    """
    if ref and ref != "latest":
        try:
            record = resolve_run(ref)
        except RunNotFound as err:
            return {}, f"cannot reuse services: {err}"
        problem = not_owned(Path(record.run_dir))
        if problem:  # its services' addresses and credentials would be another's choice
            return {}, f"cannot reuse services: {problem}"
        found = kept_services(record)
        if not found:
            return {}, f"run {record.run_id} has no kept services running"
        return {name: [kept] for name, kept in found.items()}, (
            f"reusing services kept by run {record.run_id} where they match this recipe"
        )
    candidates: dict[str, list[KeptService]] = {}
    runs: list[str] = []
    for entry in reversed(list_runs()):
        if entry.recipe != recipe_name or not entry.kept_services:
            continue
        if exclude is not None and Path(entry.run_dir) == exclude:
            continue
        if not_owned(Path(entry.run_dir)):
            continue
        candidate = read_run(Path(entry.run_dir))
        found = kept_services(candidate) if candidate is not None else {}
        for name, kept in found.items():
            candidates.setdefault(name, []).append(kept)
        if found:
            runs.append(entry.run_id)
    if not candidates:
        return {}, f"no run of recipe '{recipe_name}' has kept services running"
    by = f"run {runs[0]}" if len(runs) == 1 else f"runs {', '.join(runs)}"
    return candidates, f"reusing services kept by {by} where they match this recipe"
