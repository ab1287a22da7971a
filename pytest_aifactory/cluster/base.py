"""The small interface every place that runs jobs offers (local processes, Slurm).

Fixtures only talk to `JobExecutor` and `JobHandle`, so a service or a load generator runs the
same way on a laptop and on a cluster; backends differ only in how they submit and cancel.
"""

from __future__ import annotations

import abc
import contextlib
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pytest_aifactory.cluster.rundir import RunDir
from pytest_aifactory.redact import Redactor

if TYPE_CHECKING:
    import submitit


def gres_gpus(gres: str) -> int:
    """GPUs per node a Slurm `--gres` request asks for: `gpu:4` and `gpu:a100:4` ask for 4, a
    bare `gpu` or `gpu:a100` for one (Slurm's default count); other resources for none."""
    total = 0
    for item in gres.split(","):
        name, *rest = item.strip().split(":")
        if name.removeprefix("gres/") != "gpu":
            continue
        total += int(rest[-1]) if rest and rest[-1].isdigit() else 1
    return total


@dataclass(frozen=True)
class JobResources:
    """What one job asks for; backends ignore what they cannot honour (local: all but time)."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    gres: str | None = None
    """Free-form generic resources (`gpu:a100:4`), instead of `gpus_per_node`."""
    cpus_per_task: int | None = None
    memory: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    time_limit_min: int | None = None
    """How long the job may run; None: the executor's default. Slurm never asks for more than
    `platform.slurm.time_limit`."""
    partition: str | None = None
    """Overrides the run's partition (monitoring servers go to the recipe's monitor one)."""

    @property
    def gpus(self) -> int:
        """GPUs asked for on each node, by `gpus_per_node` or by `gres`."""
        return self.gpus_per_node or (gres_gpus(self.gres) if self.gres else 0)


class JobLogs(Protocol):
    """Where a job (or one task of it) writes its output."""

    @property
    def stdout(self) -> Path: ...

    @property
    def stderr(self) -> Path: ...


class Job(Protocol):
    """What the run needs of one submitted job: a submitit job (a local process tree or a
    Slurm batch job) or a step inside an allocation (`slurm_steps.StepJob`) alike."""

    @property
    def job_id(self) -> str: ...

    @property
    def paths(self) -> JobLogs: ...

    @property
    def num_tasks(self) -> int: ...

    @property
    def state(self) -> str: ...

    def done(self, force_check: bool = False) -> bool: ...

    def task(self, task_id: int, /) -> Job:
        """One task's view: its logs and how it ended."""
        ...

    def exception(self) -> BaseException | None:
        """The job's error once it ended by raising; raises when it left no result (killed)."""
        ...

    def cancel(self, check: bool = True) -> None: ...


class SubmitError(Exception):
    """The scheduler refused a job (bad partition, impossible resources); user-facing."""


def tail_lines(path: Path, lines: int) -> list[str]:
    """Last lines of a log that may be large or still being written."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]


def job_output(lines: list[str]) -> list[str]:
    """The program's own lines: submitit's log lines and its report of the job's exception
    (a traceback the driver already summarises in one line) are dropped."""
    kept: list[str] = []
    in_report = False
    for line in lines:
        if line.startswith("submitit "):
            in_report = "triggered an exception" in line
            continue
        if in_report:
            continue
        kept.append(line)
    return kept


_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(\w+(?:Error|Exception|Exited|Interrupt)): (.*)$")


def final_error_line(text: str) -> str:
    """`ServiceExited: svc exited with code 3` out of submitit's wrapped traceback."""
    for line in reversed(text.splitlines()):
        match = _ERROR_LINE.match(line)
        if match:
            return f"{match.group(1)}: {match.group(2)}"
    return text.strip().splitlines()[0] if text.strip() else text


@dataclass
class JobHandle:
    """One submitted job, with the name and role the run knows it by."""

    name: str
    role: str
    job: Job
    submitted_at: float = field(default_factory=time.time)
    pids: list[int] = field(default_factory=list)
    """Processes the job said it started (from its rendezvous), stopped by PID on cancel."""

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    @property
    def stdout_path(self) -> Path:
        return Path(self.job.paths.stdout)

    @property
    def stderr_path(self) -> Path:
        return Path(self.job.paths.stderr)

    def finished(self) -> bool:
        try:
            return bool(self.job.done())
        except Exception:
            return False

    def state(self) -> str:
        try:
            return str(self.job.state)
        except Exception:
            return "UNKNOWN"

    def log_tail(self, lines: int = 50, redactor: Redactor | None = None) -> str:
        """stderr and stdout tails with submitit's own frames dropped: the server's words matter.
        Redacted (with `redactor`, else by secret patterns only): tails end up in test reports."""
        redact = redactor or Redactor()
        parts: list[str] = []
        for label, path in (("stderr", self.stderr_path), ("stdout", self.stdout_path)):
            kept = job_output(tail_lines(path, lines * 3))
            if kept:
                parts.append(f"--- {label} of {self.name} ({path}) ---")
                parts.extend(redact.lines(kept[-lines:]))
        return "\n".join(parts) if parts else f"(no log output from {self.name})"

    def task_errors(self) -> dict[int, str]:
        """Per task of a finished job, the error of those that raised or were killed."""
        if not self.finished():
            return {}
        errors: dict[int, str] = {}
        for index in range(self.job.num_tasks):
            try:
                exc = self.job.task(index).exception()
            except Exception as err:  # no result at all: the task was killed
                errors[index] = f"{type(err).__name__}: {err}"
                continue
            if exc is not None:
                errors[index] = final_error_line(str(exc))
        return errors

    def exception_text(self) -> str | None:
        """The job's own error when it ended by raising (submitit keeps the traceback)."""
        if not self.finished():
            return None
        try:
            exc = self.job.exception()
        except Exception as err:  # result pickle missing: the job was killed
            return f"{type(err).__name__}: {err}"
        return None if exc is None else final_error_line(str(exc))


class JobExecutor(abc.ABC):
    """Submits the run's jobs and cancels every one of them at the end, however it ends."""

    name: str = "abstract"
    jobs_outlive_session: bool = True
    """Whether a job may go on after the session (services kept with --keep-services)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.handles: list[JobHandle] = []
        self.listeners: list[Callable[[list[JobHandle]], None]] = []
        """Told of every new job at once (the run's job registry records it)."""

    @abc.abstractmethod
    def _executor(self, job_name: str, resources: JobResources) -> submitit.Executor: ...

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str,
        role: str,
        resources: JobResources | None = None,
    ) -> JobHandle:
        job = self._submit_job(fn, args, name, resources or JobResources())
        handle = self._handle(name, role, job)
        self._submitted([handle])
        return handle

    def _submit_job(
        self, fn: Callable[..., Any], args: tuple[Any, ...], name: str, resources: JobResources
    ) -> Job:
        return self._executor(name, resources).submit(fn, *args)

    def _handle(self, name: str, role: str, job: Job) -> JobHandle:
        return JobHandle(name=name, role=role, job=job)

    def _submitted(self, handles: list[JobHandle]) -> None:
        self.handles.extend(handles)
        for listener in self.listeners:
            listener(handles)

    def cancel(self, handle: JobHandle) -> None:
        with contextlib.suppress(Exception):
            if not handle.finished():
                handle.job.cancel(check=False)
        self._after_cancel(handle)

    def _after_cancel(self, handle: JobHandle) -> None:
        """Backends that can see the job's processes make sure they are gone."""
        return None

    def cancel_all(self, keep: Collection[JobHandle] = ()) -> list[JobHandle]:
        """Cancel every job of the run that is still running, but those in `keep` (services
        kept for later sessions); returns those it cancelled."""
        kept = {id(h) for h in keep}
        cancelled = [h for h in self.handles if not h.finished() and id(h) not in kept]
        for handle in reversed(self.handles):
            if id(handle) not in kept:
                self.cancel(handle)
        return cancelled
