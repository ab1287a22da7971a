"""Which jobs a run started and where: `reports/<run>/jobs.json` and the per-user index of runs.

Every run keeps `jobs.json`: its jobs (name, role, job id, log files, the endpoint of each
service, and for local jobs the processes to stop). A per-user index lists the runs, so
`aifactory status/stop/logs` find a run from any folder, after the driver is gone, and a later
session can reuse the services a run kept. The driver writes them through `job_registry.py`;
what the jobs are doing now is `run_control.py`'s business.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
from filelock import SoftFileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field

from pytest_aifactory.atomic import write_text_atomic

STATE_DIR_ENV = "AIFACTORY_STATE_DIR"
JOBS_FILE = "jobs.json"
INDEX_FILE = "runs.json"
RECORD_FORMAT = 1
MAX_INDEX_RUNS = 1000
LOCK_TIMEOUT_S = 30.0
ABANDONED_LOCK_S = 5.0
"""A writer names itself in its lock file at once: an empty one this old was abandoned."""

TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "ENDED",
        "FAILED",
        "FINISHED",
        "INTERRUPTED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "STOPPED",
        "TIMEOUT",
    }
)
"""States a job does not leave: no need to ask the cluster again. Slurm's names, which submitit
gives local jobs too, and ENDED (gone, with no more said) and STOPPED (by `aifactory stop`)."""

ACTIVE_STATES = frozenset(
    {
        "CONFIGURING",
        "COMPLETING",
        "PENDING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "RUNNING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPING",
        "SUSPENDED",
    }
)
"""States of a job that still holds (or waits for) resources: one `aifactory stop` ends."""


# -- what is recorded ---------------------------------------------------------------------------


class _Record(BaseModel):
    """Files written by other versions may carry more keys: read what is known, keep going."""

    model_config = ConfigDict(extra="ignore")


class ProcessRef(_Record):
    """A process of a local job, with what proves a PID still means the same process."""

    pid: int
    role: str
    """controller (submitit's job process), server (from the rendezvous) or driver"""
    create_time: float | None = None
    cmdline: list[str] = Field(default_factory=list)


class PlanFingerprint(_Record):
    """A service's plan as a later session compares it before reusing the service: one salted
    hash per field, never the values (`services/fingerprint.py`)."""

    salt: str
    fields: dict[str, str] = Field(default_factory=dict)


class ServiceRecord(_Record):
    """Enough of a healthy service to check it again and to hand it to a later session."""

    name: str
    kind: str
    host: str
    port: int
    url: str
    health_path: str | None = None
    """None: a TCP connect is the health check."""
    served_model: str | None = None
    metrics_url: str | None = None
    plan: PlanFingerprint | None = None
    """None: a service started by a version that did not record it (never reused)."""


SESSION_ROLE = "session"
"""The role of the batch job `aifactory submit` runs the whole session in: recorded before the
session starts, kept when the session records its own jobs."""


class JobRecord(_Record):
    name: str
    role: str
    job_id: str
    executor: str
    state: str = "SUBMITTED"
    """As last known by the writer; `run_control.observe` asks the process table or Slurm."""
    host: str = ""
    """Where the driver ran (local jobs run there too)."""
    nodes: list[str] = Field(default_factory=list)
    endpoint: str | None = None
    stdout: str = ""
    stderr: str = ""
    submitted_at: dt.datetime
    pids: list[ProcessRef] = Field(default_factory=list)
    kept: bool = False
    service: ServiceRecord | None = None
    worker: str | None = None
    """The pytest-xdist worker that submitted it (None: the driver itself)."""

    def same_job(self, other: JobRecord) -> bool:
        return self.name == other.name and self.job_id == other.job_id


class ReusedService(_Record):
    """A service this run used but did not start: another run kept it."""

    name: str
    run_id: str
    run_dir: str
    job: str
    endpoint: str


class RunRecord(_Record):
    format: int = RECORD_FORMAT
    run_id: str
    run_dir: str
    recipe: str
    recipe_path: str | None = None
    executor: str
    driver_host: str
    driver: ProcessRef | None = None
    started_at: dt.datetime
    ended_at: dt.datetime | None = None
    status: str = "running"
    keep_services: bool = False
    """The session was asked to keep its services (`--keep-services`)."""
    jobs: list[JobRecord] = Field(default_factory=list)
    reused_services: list[ReusedService] = Field(default_factory=list)

    @property
    def root(self) -> Path:
        return Path(self.run_dir)

    def kept_jobs(self) -> list[JobRecord]:
        return [job for job in self.jobs if job.kept]


class IndexEntry(_Record):
    run_id: str
    run_dir: str
    recipe: str
    started_at: dt.datetime
    status: str
    kept_services: bool = False
    """Services were left running at the end of the session and not stopped since."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def from_timestamp(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def process_ref(pid: int, role: str) -> ProcessRef:
    """The process as it runs now; only the PID when it cannot be read (gone, not ours)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return ProcessRef(
                pid=pid, role=role, create_time=proc.create_time(), cmdline=proc.cmdline()
            )
    except psutil.Error:
        return ProcessRef(pid=pid, role=role)


# -- files --------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    """Whole file or nothing, readable by the owner only (the atomic writer's files are)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def jobs_path(run_dir: Path) -> Path:
    return run_dir / JOBS_FILE


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """A lock file made with O_EXCL, not `flock`: run folders live on Lustre or NFS, where
    `flock` may be off or only node-local, while an exclusive create is atomic for every
    client. The file names its holder (PID, host): a holder that died on this host is replaced
    at once; one that died on another host holds it until LOCK_TIMEOUT_S, then the error names
    the file to remove. A holder killed between creating the file and naming itself leaves it
    empty, naming nobody: such a file older than ABANDONED_LOCK_S is removed."""
    lock_path = path.parent / f".{path.name}.lock"
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        _remove_abandoned(lock_path)
        wait_s = min(1.0, max(0.0, deadline - time.monotonic()))
        lock = SoftFileLock(lock_path, timeout=wait_s, mode=0o600)
        try:
            lock.acquire()
        except Timeout:
            if time.monotonic() >= deadline:
                raise
            continue
        try:
            yield
        finally:
            lock.release()
        return


def _remove_abandoned(lock_path: Path) -> None:
    with contextlib.suppress(OSError):
        info = lock_path.stat()
        if info.st_size == 0 and time.time() - info.st_mtime > ABANDONED_LOCK_S:
            lock_path.unlink()


def read_run(run_dir: Path) -> RunRecord | None:
    """None when the folder holds no readable jobs.json (not a run, or a run of an old version)."""
    try:
        data = json.loads(jobs_path(run_dir).read_text())
        return RunRecord.model_validate(data)
    except (OSError, ValueError):
        return None


def rewrite_run(
    run_dir: Path, rewrite: Callable[[RunRecord | None], RunRecord | None]
) -> RunRecord | None:
    """Replace the run's jobs.json by `rewrite(the record there now)`, or leave it when that is
    None. The driver, its pytest-xdist workers and `aifactory stop` write one file at once: a
    file lock makes each read-modify-write whole."""
    path = jobs_path(run_dir)
    with _lock(path):
        record = rewrite(read_run(run_dir))
        if record is not None:
            _write_json(path, record.model_dump(mode="json"))
    return record


def write_run(record: RunRecord) -> None:
    rewrite_run(record.root, lambda _: record)


def state_dir() -> Path:
    """`$AIFACTORY_STATE_DIR`, else `${XDG_STATE_HOME:-~/.local/state}/pytest-aifactory`."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pytest-aifactory"


def index_path() -> Path:
    return state_dir() / INDEX_FILE


def _read_index(path: Path) -> list[IndexEntry]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    entries = []
    for item in data.get("runs", []) if isinstance(data, dict) else []:
        with contextlib.suppress(ValueError):
            entries.append(IndexEntry.model_validate(item))
    return entries


def list_runs() -> list[IndexEntry]:
    """Every indexed run, oldest first."""
    return sorted(_read_index(index_path()), key=lambda e: e.started_at)


def iter_records(entries: Iterable[IndexEntry]) -> Iterator[tuple[IndexEntry, RunRecord]]:
    """The runs of `entries` whose jobs.json can still be read."""
    for entry in entries:
        record = read_run(Path(entry.run_dir))
        if record is not None:
            yield entry, record


def update_index(run_dir: Path | str, entry: IndexEntry | None = None, **changes: Any) -> None:
    """Add or replace a run's entry (`entry`), or change fields of the one there (`changes`).

    Runs from many sessions and `aifactory stop` write the index at once: a file lock makes each
    read-modify-write whole. Runs whose folder was deleted drop out, as do the oldest beyond
    `MAX_INDEX_RUNS`.
    """
    path = index_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = str(run_dir)
    with _lock(path):
        entries = {e.run_dir: e for e in _read_index(path)}
        if entry is not None:
            entries[key] = entry
        elif key in entries:
            entries[key] = entries[key].model_copy(update=changes)
        kept = [e for e in entries.values() if e.run_dir == key or Path(e.run_dir).is_dir()]
        kept.sort(key=lambda e: e.started_at)
        kept = kept[-MAX_INDEX_RUNS:]
        _write_json(
            path, {"format": RECORD_FORMAT, "runs": [e.model_dump(mode="json") for e in kept]}
        )


def index_entry(record: RunRecord) -> IndexEntry:
    """The run as the index lists it: the fields the two share, and whether services it kept
    may still run."""
    shared = record.model_dump(include=IndexEntry.model_fields.keys() & RunRecord.model_fields)
    kept = any(job.kept and job.state not in TERMINAL_STATES for job in record.jobs)
    return IndexEntry.model_validate({**shared, "kept_services": kept})


def index_run(record: RunRecord) -> None:
    """The run's index entry as the record now says."""
    update_index(record.run_dir, index_entry(record))


class RunNotFound(Exception):
    """The message says which runs exist or which ones an ambiguous prefix matched."""


def resolve_run(ref: str) -> RunRecord:
    """A run by folder path, run id, unique run-id prefix (or, failing that, a unique part of
    it such as the recipe name), or `latest`."""
    path = Path(ref).expanduser()
    if path.is_dir():
        record = read_run(path.resolve())
        if record is None:
            raise RunNotFound(f"{ref}: no {JOBS_FILE} there (not a run folder)")
        return record
    runs = list_runs()
    if ref == "latest":
        matches = runs[-1:]
    else:
        matches = (
            [e for e in runs if e.run_id == ref]
            or [e for e in runs if e.run_id.startswith(ref)]
            or [e for e in runs if ref in e.run_id]
        )
    if not matches:
        known = f" (latest: {runs[-1].run_id})" if runs else " (no runs recorded yet)"
        raise RunNotFound(f"no run '{ref}'{known}")
    if len({e.run_id for e in matches}) > 1:
        names = ", ".join(e.run_id for e in matches[-5:])
        raise RunNotFound(f"'{ref}' matches {len(matches)} runs: {names}")
    record = read_run(Path(matches[-1].run_dir))
    if record is None:
        raise RunNotFound(f"run '{matches[-1].run_id}': {matches[-1].run_dir} is gone")
    return record
