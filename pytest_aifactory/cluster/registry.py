"""Which jobs a run started, where they are, and whether they still live.

Every run keeps `reports/<run>/jobs.json`: its jobs (name, role, job id, log files, the
endpoint of each service, and for local jobs the processes to stop). A per-user index lists the
runs, so `aifactory status/stop/logs` find a run from any folder, after the driver is gone, and a
later session can reuse the services a run kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

from pytest_aifactory.cluster.jobids import parse_job_id

if TYPE_CHECKING:
    from pytest_aifactory.cluster.base import JobExecutor, JobHandle
    from pytest_aifactory.cluster.rundir import RunDir
    from pytest_aifactory.services.manager import Endpoint

STATE_DIR_ENV = "AIFACTORY_STATE_DIR"
JOBS_FILE = "jobs.json"
INDEX_FILE = "runs.json"
RECORD_FORMAT = 1
MAX_INDEX_RUNS = 1000
LOCK_TIMEOUT_S = 30.0
SLURM_TIMEOUT_S = 15.0
STOP_GRACE_S = 15.0
"""A stopped service job stops its server gracefully (up to 10 s) before it exits itself."""
CREATE_TIME_TOLERANCE_S = 0.05

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
"""States a job does not leave: no need to ask the cluster again."""

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


class JobRecord(_Record):
    name: str
    role: str
    job_id: str
    executor: str
    state: str = "SUBMITTED"
    """As last known by the writer; `observe` asks the process table or Slurm."""
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


# -- files --------------------------------------------------------------------------------------


def write_private_json(path: Path, data: Any) -> None:
    """Whole file or nothing (a reader never sees half of it), readable by the owner only."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def jobs_path(run_dir: Path) -> Path:
    return run_dir / JOBS_FILE


def _lock(path: Path) -> FileLock:
    return FileLock(path.parent / f".{path.name}.lock", timeout=LOCK_TIMEOUT_S, mode=0o600)


def read_run(run_dir: Path) -> RunRecord | None:
    """None when the folder holds no readable jobs.json (not a run, or a run of an old version)."""
    try:
        data = json.loads(jobs_path(run_dir).read_text())
        return RunRecord.model_validate(data)
    except (OSError, ValueError):
        return None


def write_run(record: RunRecord) -> None:
    path = jobs_path(record.root)
    with _lock(path):
        write_private_json(path, record.model_dump(mode="json"))


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
        write_private_json(
            path, {"format": RECORD_FORMAT, "runs": [e.model_dump(mode="json") for e in kept]}
        )


def index_entry(record: RunRecord) -> IndexEntry:
    return IndexEntry(
        run_id=record.run_id,
        run_dir=record.run_dir,
        recipe=record.recipe,
        started_at=record.started_at,
        status=record.status,
        kept_services=any(job.kept and job.state not in TERMINAL_STATES for job in record.jobs),
    )


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


# -- the driver's side --------------------------------------------------------------------------


def process_ref(pid: int, role: str) -> ProcessRef:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return ProcessRef(
                pid=pid, role=role, create_time=proc.create_time(), cmdline=proc.cmdline()
            )
    except psutil.Error:
        return ProcessRef(pid=pid, role=role)


class JobRegistry:
    """Keeps the run's jobs.json and its index entry up to date as the session goes on.

    Writing is best effort: a full disk must not stop a benchmark, only its bookkeeping.
    """

    def __init__(self, record: RunRecord, worker: str | None = None) -> None:
        self.record = record
        self.executor_name = record.executor
        self.worker = worker
        """Set in a pytest-xdist worker: it adds its own jobs to the driver's jobs.json."""
        self._jobs: dict[tuple[str, str], JobRecord] = {}

    @classmethod
    def start(
        cls,
        run: RunDir,
        recipe_name: str,
        recipe_path: str | None,
        executor: JobExecutor,
        started_at: float,
        keep_services: bool = False,
    ) -> JobRegistry:
        registry = cls(
            RunRecord(
                run_id=run.run_id,
                run_dir=str(run.root.resolve()),
                recipe=recipe_name,
                recipe_path=str(Path(recipe_path).resolve()) if recipe_path else None,
                executor=executor.name,
                driver_host=socket.gethostname(),
                driver=process_ref(os.getpid(), "driver"),
                started_at=from_timestamp(started_at),
                keep_services=keep_services,
            )
        )
        executor.listeners.append(registry.submitted)
        registry.save()
        return registry

    @classmethod
    def attach(cls, run: RunDir, executor: JobExecutor, worker: str) -> JobRegistry | None:
        """A pytest-xdist worker's registry: the client jobs it submits are the run's jobs too,
        so `aifactory status` and `aifactory stop` see them. None without the driver's file."""
        record = read_run(run.root)
        if record is None:
            return None
        registry = cls(record.model_copy(update={"jobs": []}), worker=worker)
        executor.listeners.append(registry.submitted)
        return registry

    def _job(self, handle: JobHandle) -> JobRecord:
        key = (handle.name, handle.job_id)
        job = self._jobs.get(key)
        if job is None:
            job = JobRecord(
                name=handle.name,
                role=handle.role,
                job_id=handle.job_id,
                executor=self.executor_name,
                state=handle.state(),
                host=self.record.driver_host,
                nodes=[self.record.driver_host] if self.executor_name == "local" else [],
                stdout=str(handle.stdout_path),
                stderr=str(handle.stderr_path),
                submitted_at=from_timestamp(handle.submitted_at),
                worker=self.worker,
            )
            process = getattr(handle.job, "_process", None)
            if process is not None:
                job.pids.append(process_ref(process.pid, "controller"))
            self._jobs[key] = job
            self.record.jobs.append(job)
        if self.executor_name == "local":  # elsewhere the PIDs are another node's
            known = {ref.pid for ref in job.pids}
            job.pids.extend(process_ref(p, "server") for p in handle.pids if p not in known)
        return job

    def submitted(self, handles: list[JobHandle]) -> None:
        for handle in handles:
            self._job(handle)
        self.save()

    def service_ready(self, endpoint: Endpoint) -> None:
        """A service answered its health check: record where, for status, stop and reuse."""
        if endpoint.reused_from is not None:
            self.record.reused_services.append(
                ReusedService(
                    name=endpoint.name,
                    run_id=endpoint.reused_from.run_id,
                    run_dir=endpoint.reused_from.run_dir,
                    job=endpoint.reused_from.job,
                    endpoint=f"{endpoint.host}:{endpoint.port}",
                )
            )
            self.save()
            return
        if endpoint.job is None:  # external: nothing of ours runs
            return
        job = self._job(endpoint.job)
        job.state = endpoint.job.state()
        job.endpoint = f"{endpoint.host}:{endpoint.port}"
        job.nodes = [endpoint.node] if endpoint.node else job.nodes
        job.service = ServiceRecord(
            name=endpoint.name,
            kind=endpoint.kind,
            host=endpoint.host,
            port=endpoint.port,
            url=endpoint.url,
            health_path=endpoint.health.http_path if endpoint.health else None,
            served_model=endpoint.served_model,
            metrics_url=endpoint.metrics_url,
        )
        self.save()

    def finish(
        self,
        status: str,
        handles: Iterable[JobHandle],
        cancelled: Iterable[JobHandle] = (),
        kept: Iterable[JobHandle] = (),
    ) -> None:
        """Final states; kept services stay RUNNING and are marked so."""
        cancelled_ids = {id(h) for h in cancelled}
        kept_ids = {id(h) for h in kept}
        for handle in handles:
            job = self._job(handle)
            job.kept = id(handle) in kept_ids
            if id(handle) in cancelled_ids:
                job.state = "CANCELLED"
            elif job.state != "CANCELLED":  # an earlier call cancelled it
                job.state = handle.state()
        if self.worker is None:  # the run's status is the driver's to say
            self.record.status = status
            self.record.ended_at = utcnow()
        self.save()

    def save(self) -> None:
        """The driver writes the run with the workers' jobs it finds in the file; a worker
        replaces only its own jobs in the driver's record."""
        with contextlib.suppress(OSError, TimeoutError):
            path = jobs_path(self.record.root)
            with _lock(path):
                on_disk = read_run(self.record.root)
                if self.worker is None:
                    theirs = [j for j in on_disk.jobs if j.worker] if on_disk else []
                    record = self.record.model_copy(update={"jobs": [*self.record.jobs, *theirs]})
                elif on_disk is None:
                    return
                else:
                    others = [j for j in on_disk.jobs if j.worker != self.worker]
                    record = on_disk.model_copy(update={"jobs": [*others, *self.record.jobs]})
                write_private_json(path, record.model_dump(mode="json"))
            if self.worker is None:
                update_index(self.record.run_dir, index_entry(self.record))


# -- what lives now -----------------------------------------------------------------------------


def _same_process(ref: ProcessRef) -> psutil.Process | None:
    """The process, if the PID still names the one recorded (PIDs are reused).

    The start time decides (a server may rewrite its command line, as PostgreSQL does); the
    command line only when no start time was recorded.
    """
    try:
        proc = psutil.Process(ref.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if ref.create_time is not None:
            if abs(proc.create_time() - ref.create_time) > CREATE_TIME_TOLERANCE_S:
                return None
        elif not ref.cmdline or proc.cmdline() != ref.cmdline:
            return None
    except psutil.Error:
        return None
    return proc


def live_processes(job: JobRecord) -> list[psutil.Process]:
    """The job's recorded processes that still run, controller first."""
    refs = sorted(job.pids, key=lambda r: r.role != "controller")
    return [proc for ref in refs if (proc := _same_process(ref)) is not None]


def driver_alive(record: RunRecord) -> bool | None:
    """None when it cannot be told from here (another host, nothing recorded)."""
    if record.driver is None or record.driver_host != socket.gethostname():
        return None
    return _same_process(record.driver) is not None


@dataclass
class SlurmState:
    state: str
    nodes: list[str]


def _slurm(argv: list[str]) -> str | None:
    """A Slurm command's output: '' when Slurm only says it does not know the job (any more),
    None when it cannot answer (no such command here, controller down, hung)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode == 0:
        return done.stdout
    return "" if "Invalid job id" in done.stderr else None


def _expand_nodes(nodelist: str) -> list[str]:
    if not nodelist or nodelist in ("(null)", "None assigned"):
        return []
    if "[" not in nodelist:
        return nodelist.split(",")
    expanded = _slurm(["scontrol", "show", "hostnames", nodelist])
    return expanded.split() if expanded else [nodelist]


def _squeue(job_ids: list[str]) -> str | None:
    return _slurm(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%N"])


def slurm_states(job_ids: list[str]) -> dict[str, SlurmState] | None:
    """States of Slurm jobs: `squeue` for those waiting or running, `sacct` for those that
    ended, ENDED for those neither knows. None when Slurm cannot be asked from here."""
    if not job_ids:
        return {}
    queue = _squeue(job_ids)
    if queue == "" and len(job_ids) > 1:  # some versions refuse a list with one purged id
        parts = [_squeue([job_id]) for job_id in job_ids]
        queue = None if any(p is None for p in parts) else "".join(p or "" for p in parts)
    if queue is None:
        return None
    found: dict[str, SlurmState] = {}
    for line in queue.splitlines():
        shown, _, rest = line.strip().partition("|")
        state, _, nodes = rest.partition("|")
        for job_id in parse_job_id(shown).ids:
            if job_id in job_ids:
                found[job_id] = SlurmState(state.strip(), _expand_nodes(nodes.strip()))
    missing = [j for j in job_ids if j not in found]
    if missing:
        accounting = _slurm(
            ["sacct", "-n", "-X", "-P", "-j", ",".join(missing), "-o", "JobID,State"]
        )
        for line in (accounting or "").splitlines():
            shown, _, state = line.strip().partition("|")
            for job_id in parse_job_id(shown).ids:
                if job_id in missing and state.strip():
                    found[job_id] = SlurmState(state.split()[0], [])
    for job_id in missing:
        found.setdefault(job_id, SlurmState("ENDED", []))
    return found


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
        job.job_id
        for job in record.jobs
        if job.executor != "local" and job.state not in TERMINAL_STATES
    ]
    slurm = slurm_states(slurm_ids) if slurm_ids else {}
    live = []
    for job in record.jobs:
        if job.executor == "local":
            if job.host and job.host != here:
                live.append(LiveJob(job, job.state, job.nodes, checked=False))
            elif live_processes(job):
                live.append(LiveJob(job, "RUNNING", job.nodes, checked=True))
            else:
                ended = job.state if job.state in TERMINAL_STATES else "ENDED"
                live.append(LiveJob(job, ended, job.nodes, checked=True))
        elif job.state in TERMINAL_STATES:
            live.append(LiveJob(job, job.state, job.nodes, checked=True))
        elif slurm is None:
            live.append(LiveJob(job, job.state, job.nodes, checked=False))
        else:
            now = slurm.get(job.job_id, SlurmState("ENDED", []))
            live.append(LiveJob(job, now.state, now.nodes or job.nodes, checked=True))
    return live


def service_healthy(service: ServiceRecord) -> bool:
    from pytest_aifactory.services.base import HealthCheck
    from pytest_aifactory.services.health import is_healthy

    return is_healthy(service.host, service.port, HealthCheck(http_path=service.health_path))


# -- stopping -----------------------------------------------------------------------------------


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those still running after `timeout_s` (a zombie counts as gone: it runs nothing)."""
    deadline = time.monotonic() + timeout_s
    alive = procs
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


def stop_local(job: JobRecord, grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM to the job's controller (the job then stops its server cleanly), then SIGTERM and
    SIGKILL to whatever of its process tree is left. Only processes proven to be the recorded
    ones (and their children) are signalled. Returns the PIDs it ended."""
    roots = live_processes(job)
    tree: dict[int, psutil.Process] = {}
    for root in roots:
        tree[root.pid] = root
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                tree.setdefault(child.pid, child)
    if not tree:
        return []
    first = [p for p in roots if any(r.pid == p.pid and r.role == "controller" for r in job.pids)]
    for proc in first or roots:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    alive = _wait_gone(list(tree.values()), grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    alive = _wait_gone(alive, min(2.0, grace_s))
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_gone(alive, 2.0)
    return sorted(tree)


def scancel(job_ids: list[str]) -> str | None:
    """None when done; else why not."""
    if not job_ids:
        return None
    if shutil.which("scancel") is None:
        return "scancel is not available on this machine"
    try:
        done = subprocess.run(
            ["scancel", *job_ids],
            capture_output=True,
            text=True,
            timeout=SLURM_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"scancel failed: {err}"
    if done.returncode != 0:
        return f"scancel failed: {done.stderr.strip() or done.returncode}"
    return None


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
        if job.executor != "local":
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
    with contextlib.suppress(OSError, TimeoutError):
        with _lock(jobs_path(record.root)):
            current = read_run(record.root) or record
            for job in current.jobs:
                if any(s.ok and _same_job(s.job, job) for s in results):
                    job.state = "STOPPED"
            if current.status == "running" and driver_alive(current) is not True:
                current.status = "stopped"
            write_private_json(jobs_path(record.root), current.model_dump(mode="json"))
        update_index(current.run_dir, index_entry(current))
    return results


def _same_job(a: JobRecord, b: JobRecord) -> bool:
    return a.name == b.name and a.job_id == b.job_id


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
) -> tuple[dict[str, KeptService], str]:
    """Services to reuse, and a line saying where they come from (or why there are none).

    With a run reference, that run's kept services; without one, those of the latest run of the
    same recipe whose kept services answer their health check.
    """
    if ref and ref != "latest":
        try:
            record = resolve_run(ref)
        except RunNotFound as err:
            return {}, f"cannot reuse services: {err}"
        found = kept_services(record)
        if not found:
            return {}, f"run {record.run_id} has no kept services running"
        return found, f"reusing services kept by run {record.run_id}"
    for entry in reversed(list_runs()):
        if entry.recipe != recipe_name or not entry.kept_services:
            continue
        if exclude is not None and Path(entry.run_dir) == exclude:
            continue
        record = read_run(Path(entry.run_dir))
        if record is None:
            continue
        found = kept_services(record)
        if any(kept.healthy() for kept in found.values()):
            return found, f"reusing services kept by run {record.run_id}"
    return {}, f"no run of recipe '{recipe_name}' has kept services that are healthy"


def iter_records(entries: Iterable[IndexEntry]) -> Iterator[tuple[IndexEntry, RunRecord]]:
    for entry in entries:
        record = read_run(Path(entry.run_dir))
        if record is not None:
            yield entry, record
