"""The read-only half of the API: recorded runs, what their jobs do now, their counters and logs.

Runs are found through the per-user index (`cluster/run_records.py`) and looked at through
`cluster/run_control.py`, from any folder and after the driver is gone. What leaves here is
redacted with the run's own secrets, because it ends up pasted into tickets or shown in a
browser.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import re
import time
from pathlib import Path

from pytest_aifactory.api_shapes import (
    ApiError,
    JobStatus,
    LiveCounters,
    LogChunk,
    LogFile,
    NotOwnedError,
    RunNotFoundError,
    RunStatus,
    RunSummary,
)
from pytest_aifactory.cluster.run_control import LiveJob, driver_alive, observe, service_healthy
from pytest_aifactory.cluster.run_records import (
    TERMINAL_STATES,
    JobRecord,
    RunNotFound,
    RunRecord,
    iter_records,
    list_runs,
    read_run,
    resolve_run,
)
from pytest_aifactory.cluster.rundir import not_owned, read_client_settings, secrets_dir_of
from pytest_aifactory.loadgen.live import fetch_client_counters, progress_counters
from pytest_aifactory.monitor.credentials import read_credentials
from pytest_aifactory.monitor.layout import read_endpoints
from pytest_aifactory.redact import Redactor, secrets_from_env

DEFAULT_READ_BYTES = 1 << 16
MAX_LINE_BYTES = 1 << 20


# -- finding a run ------------------------------------------------------------------------------


def find_run(ref: str) -> RunRecord:
    """The run named by id, unique prefix, folder or `latest`."""
    try:
        return resolve_run(ref)
    except RunNotFound as err:
        raise RunNotFoundError(str(err)) from None


def find_own_run(ref: str, action: str) -> RunRecord:
    """A run this account owns: another account's folder names job ids to signal and log paths
    to print as that account chose them, planted or not."""
    record = find_run(ref)
    problem = not_owned(Path(record.run_dir))
    if problem:
        raise NotOwnedError(f"{action}: {problem}")
    return record


def status_redactor(record: RunRecord | None) -> Redactor:
    """Every secret the run keeps (its API key, its services' credentials), and whatever looks
    like one (`user:pass@`, `Bearer ...`, `--api-key X`)."""
    redactor = Redactor()
    if record is None:
        return redactor
    secrets = secrets_dir_of(Path(record.run_dir))
    with contextlib.suppress(OSError):
        redactor.add((secrets / "api_key").read_text().strip())
    for settings in secrets.glob("*.client.json"):
        service = settings.name.removesuffix(".client.json")
        for value in secrets_from_env(read_client_settings(Path(record.run_dir), service)):
            redactor.add(value)
    return redactor


# -- status -------------------------------------------------------------------------------------


def might_live(record: RunRecord) -> bool:
    """Only runs with a job not known to have ended need a look at processes or Slurm."""
    return any(job.state not in TERMINAL_STATES for job in record.jobs)


def status_now(record: RunRecord, live: list[LiveJob]) -> str:
    """The recorded status, corrected by what can be seen now."""
    status = record.status
    if status == "running" and driver_alive(record) is False:
        status = "running (driver gone)"
    if status == "submitted" and not any(j.active for j in live):
        status = "submitted, ended before the session started (see its session log)"
    if any(j.record.kept and j.active for j in live):
        status += ", services kept"
    return status


def _since(when: dt.datetime) -> float:
    return (dt.datetime.now(dt.UTC) - when).total_seconds()


def job_status(live: LiveJob, redactor: Redactor, *, check_health: bool = True) -> JobStatus:
    """`check_health`: ask a live service's health endpoint (a request each: left out when
    every run is listed)."""
    job = live.record
    health = None
    if check_health and job.service is not None and live.active and live.checked and job.endpoint:
        health = "healthy" if service_healthy(job.service) else "unhealthy"
    return JobStatus(
        name=job.name,
        role=job.role,
        job_id=job.job_id,
        executor=job.executor,
        state=live.state,
        checked=live.checked,
        kept=job.kept,
        nodes=list(live.nodes),
        endpoint=redactor.text(job.endpoint) if job.endpoint else job.endpoint,
        health=health,
        submitted_at=job.submitted_at,
        age_s=round(_since(job.submitted_at), 1),
        stdout=job.stdout,
        stderr=job.stderr,
    )


def summary_of(record: RunRecord, live: list[LiveJob], jobs: list[JobStatus]) -> RunSummary:
    """The run as listed; `live`: what `observe` found (empty for a run that cannot live),
    `jobs` the same jobs as shown."""
    active = [shown for job, shown in zip(live, jobs, strict=True) if job.active]
    return RunSummary(
        run_id=record.run_id,
        run_dir=record.run_dir,
        recipe=record.recipe,
        status=status_now(record, live),
        recorded_status=record.status,
        started_at=record.started_at,
        ended_at=record.ended_at,
        executor=record.executor,
        driver_alive=driver_alive(record),
        kept_services=any(job.kept for job in active),
        live_jobs=active,
    )


def runs(*, live_only: bool = False) -> list[RunSummary]:
    """Every recorded run of this account, oldest first; `live_only`: those with a live job.
    The health of services is not asked here (a request each): `run_status` does."""
    found = []
    for _, record in iter_records(list_runs()):
        live = observe(record) if might_live(record) else []
        redactor = status_redactor(record)
        jobs = [job_status(j, redactor, check_health=False) for j in live]
        summary = summary_of(record, live, jobs)
        if summary.live_jobs or not live_only:
            found.append(summary)
    return found


def status_of(record: RunRecord) -> RunStatus:
    live = observe(record)
    redactor = status_redactor(record)
    jobs = [job_status(j, redactor) for j in live]
    return RunStatus(
        summary=summary_of(record, live, jobs), recipe_path=record.recipe_path, jobs=jobs
    )


def run_status(ref: str) -> RunStatus:
    """A run and every job of it, as they are now."""
    return status_of(find_run(ref))


# -- live counters ------------------------------------------------------------------------------


def counters_of(record: RunRecord) -> LiveCounters:
    """From the run's pushgateway while it answers, else from the progress files the load
    processes write (no node known there)."""
    at = time.time()
    endpoints = read_endpoints(record.root)
    url = endpoints.pushgateway_url if endpoints is not None else None
    if url is None:
        note = "the run has no pushgateway"
    else:
        try:
            credentials = read_credentials(record.root)
            headers = credentials.header if credentials else None
            rows = fetch_client_counters(url, record.run_id, headers=headers)
            return LiveCounters(at=at, source=f"pushgateway {url}", note=None, rows=rows)
        except (OSError, ValueError) as err:  # requests' errors are OSErrors
            note = f"its pushgateway at {url} does not answer ({type(err).__name__})"
    return LiveCounters(
        at=at, source="progress files", note=note, rows=progress_counters(record.root)
    )


def live_counters(ref: str) -> LiveCounters:
    """Each load process's counters now: done, failed, tokens, in flight."""
    return counters_of(find_run(ref))


# -- logs ---------------------------------------------------------------------------------------


def select_jobs(record: RunRecord, name: str | None) -> list[JobRecord] | None:
    """All jobs, the job `name` (a job array's `name.0`, `name.1`... too), `service-<name>`,
    or the job of another run that kept a service this run reused; None: no such job."""
    if name is None:
        return list(record.jobs)
    for wanted in (name, f"service-{name}"):
        found = [j for j in record.jobs if j.name == wanted or j.name.startswith(wanted + ".")]
        if found:
            return found
    for reused in record.reused_services:
        if name in (reused.name, f"service-{reused.name}", reused.job):
            other = read_run(Path(reused.run_dir))
            if other is not None and not not_owned(Path(reused.run_dir)):
                return [j for j in other.jobs if j.name == reused.job]
    return None


_FIRST_TASK_LOG = re.compile(r"^(?P<job>.+)_0_log\.(?P<ext>out|err)$")


def _task_logs(path: Path) -> list[tuple[int, Path]]:
    """The logs of every task of a job (one per client process, say), from the first one's
    name: `55_0_log.out` -> `55_0_log.out`, `55_1_log.out`, ..."""
    match = _FIRST_TASK_LOG.match(path.name)
    if match is None:
        return [(0, path)]
    tasks = {0: path}
    for other in path.parent.glob(f"{glob.escape(match['job'])}_*_log.{match['ext']}"):
        task = other.name[len(match["job"]) + 1 : -len(f"_log.{match['ext']}")]
        if task.isdigit():
            tasks[int(task)] = other
    return sorted(tasks.items())


def job_log_files(jobs: list[JobRecord]) -> list[LogFile]:
    """Each job's stdout and stderr (every task's), whether written yet or not."""
    files: list[LogFile] = []
    seen: set[str] = set()
    for job in jobs:
        for stream, recorded in (("stdout", job.stdout), ("stderr", job.stderr)):
            if not recorded:
                continue
            tasks = _task_logs(Path(recorded))
            for task, path in tasks:
                if str(path) in seen:
                    continue
                seen.add(str(path))
                label = (
                    f"{job.name} {stream}" if len(tasks) == 1 else f"{job.name}[{task}] {stream}"
                )
                files.append(LogFile(label=label, path=str(path)))
    return files


def jobs_named(record: RunRecord, job: str | None) -> list[JobRecord]:
    jobs = select_jobs(record, job)
    if jobs is None:
        names = ", ".join(j.name for j in record.jobs) or "none"
        raise ApiError(f"run {record.run_id} has no job '{job}' (jobs: {names})")
    return jobs


def log_files(ref: str, job: str | None = None) -> list[LogFile]:
    """The log files of the run's jobs (of one job: its name, `service-<name>` or the service
    name a reused service had), in the order `aifactory logs` prints them."""
    record = find_own_run(ref, "logs")
    return job_log_files(jobs_named(record, job))


def _readable_logs(record: RunRecord) -> set[Path]:
    """Every file `read_log` may open for the run: its jobs' logs and those of services it
    reused from runs of this account."""
    jobs = list(record.jobs)
    for reused in record.reused_services:
        jobs += select_jobs(record, reused.name) or []
    return {Path(f.path).resolve() for f in job_log_files(jobs)}


def read_log(ref: str, path: str, offset: int = 0, max_bytes: int = DEFAULT_READ_BYTES) -> LogChunk:
    """Up to `max_bytes` of one of the run's logs from `offset`, whole lines only (a partial
    last line waits for the next read, so a secret is never cut in two and missed), redacted.
    A line longer than `max_bytes` comes whole all the same; only one beyond MAX_LINE_BYTES
    (no log line is that long) comes in pieces, so that a reader always moves on."""
    record = find_own_run(ref, "logs")
    wanted = Path(path).resolve()
    if wanted not in _readable_logs(record):
        raise ApiError(
            f"{path} is not a log of run {record.run_id} (see its log files: "
            f"aifactory logs {record.run_id})"
        )
    if offset < 0 or max_bytes < 1:
        raise ApiError(
            f"read_log: offset must be >= 0 and max_bytes >= 1 (got {offset}, {max_bytes})"
        )
    try:
        with wanted.open("rb") as fh:
            size = fh.seek(0, 2)
            if offset > size:  # truncated or replaced since: start again
                offset = 0
            fh.seek(offset)
            data = fh.read(max_bytes)
            while b"\n" not in data and len(data) < MAX_LINE_BYTES:
                more = fh.read(min(max_bytes, MAX_LINE_BYTES - len(data)))
                if not more:
                    break
                data += more
    except FileNotFoundError:
        return LogChunk(path=path, offset=offset, next_offset=offset, text="", size=0)
    except OSError as err:
        raise ApiError(f"cannot read {path}: {err.strerror or err}") from None
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) >= MAX_LINE_BYTES:
        end = len(data)
    text = data[:end].decode("utf-8", errors="replace")
    redactor = status_redactor(record)
    return LogChunk(
        path=path,
        offset=offset,
        next_offset=offset + end,
        text="".join(redactor.text(line) for line in text.splitlines(keepends=True)),
        size=size,
    )
