"""The driver's side of client jobs: one job per client for all its levels (`loadgen/orders.py`).

A client's job is submitted at its first level and given each later level as an order, so a
six-level benchmark waits in a busy queue once, not six times. A new job is submitted only when
there is none that can take the order: the first level, a job that ended (its time limit, a
node lost) or one a task of which died. A job is told to stop when the session moves on to
another client (on Slurm it would otherwise hold its nodes idle) and at the end of the session.

Each level is followed as a job of its own used to be: done when every task reported; a task
that is killed outright never reports, so one whose sign of life stops changing for
`platform.silent_task_s` counts as ended early, and the job, one load process short, takes no more
orders.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_aifactory.cases import LoadCase, slug, sweep_step
from pytest_aifactory.cluster.rundir import private_mkdir
from pytest_aifactory.job_resources import client_resources
from pytest_aifactory.job_time import planned_levels
from pytest_aifactory.loadgen.orders import OrderBox, serve_orders

if TYPE_CHECKING:
    from pytest_aifactory.cluster.base import JobExecutor, JobHandle
    from pytest_aifactory.cluster.rundir import RunDir
    from pytest_aifactory.loadgen.spec import LoadSpec
    from pytest_aifactory.recipe import Client

ALIVE_CHECK_S = 5.0
"""How often the driver reads the signs of life while a level runs."""
STOP_WAIT_S = 10.0
"""At the end of the session: how long stopped jobs get to end by themselves before they are
cancelled."""


@dataclass
class ClientJob:
    """One client's job and the orders it was given."""

    client: str
    handle: JobHandle
    box: OrderBox
    tasks: int
    silent_s: float
    """A task whose sign of life has not changed for this long is gone (it changes every 2 s)."""
    posted: int = 0
    broken: str | None = None
    """Why it takes no more orders (a task of it is gone)."""
    signs: dict[int, tuple[str, float]] = field(default_factory=dict)
    """Per task, its last sign of life and when it changed (the driver's monotonic clock)."""
    first_sign: float | None = None

    def usable(self) -> bool:
        return self.broken is None and not self.handle.finished()

    def silent(self, ranks: Iterable[int]) -> dict[int, str]:
        """Of `ranks`, the tasks that show no sign of life, and why they count as gone."""
        now = time.monotonic()
        for rank, sign in self.box.alive().items():
            if self.signs.get(rank, ("", 0.0))[0] != sign:
                self.signs[rank] = (sign, now)
        if self.signs and self.first_sign is None:
            self.first_sign = now
        if self.first_sign is None:  # not running yet (queued, starting)
            return {}
        gone = {}
        for rank in ranks:
            changed = self.signs.get(rank, ("", self.first_sign))[1]
            if now - changed > self.silent_s:
                gone[rank] = (
                    f"task {rank} of job {self.handle.job_id} stopped answering: no sign of "
                    f"life for {self.silent_s:g} s (killed?)"
                )
        return gone


class LevelOrder:
    """One level given to a client job, followed until every task has reported on it."""

    def __init__(self, job: ClientJob, n: int, tasks: list[LoadSpec | None]) -> None:
        self.job = job
        self.n = n
        self.tasks = tasks
        self.gone: dict[int, str] = {}
        self._checked = time.monotonic()

    @property
    def handle(self) -> JobHandle:
        return self.job.handle

    def finished(self) -> bool:
        """Every task reported or is gone (the others still finish their share), or the job
        ended."""
        reported = self.job.box.reports(self.n)
        missing = [r for r in range(self.job.tasks) if r not in reported and r not in self.gone]
        if not missing or self.handle.finished():
            return True
        if time.monotonic() - self._checked < ALIVE_CHECK_S:
            return False
        self._checked = time.monotonic()
        gone = self.job.silent(missing)
        if gone:
            self.gone.update(gone)
            self.job.broken = "; ".join(self.gone.values())
        return len(gone) == len(missing)

    def task_errors(self) -> dict[int, str]:
        """Per task that did not finish the level well, its error (by task rank)."""
        reports = self.job.box.reports(self.n)
        errors = {rank: error for rank, error in reports.items() if error}
        missing = [rank for rank in range(self.job.tasks) if rank not in reports]
        if not missing:
            return errors
        ended: dict[int, str] = {}
        if self.handle.finished():
            ended = self.handle.task_errors()
            reason = self.handle.exception_text() or (
                f"client job {self.handle.job_id} ended ({self.handle.state()})"
            )
        else:
            reason = f"client job {self.handle.job_id} did not finish the level"
        for rank in missing:
            errors[rank] = self.gone.get(rank) or ended.get(rank) or reason
        return errors


def planned_cases(client: Client, cases: Iterable[LoadCase]) -> list[LoadCase]:
    """The levels a client's job may run: a sweep counts as the most levels it may measure."""
    planned: list[LoadCase] = []
    for case in cases:
        if case.mode == "sweep":
            planned += [sweep_step(case, client, level) for _, level in planned_levels(client)]
        else:
            planned.append(case)
    return planned


class ClientJobs:
    """The session's client jobs, one per client at a time."""

    def __init__(
        self, run: RunDir, executor: JobExecutor, silent_task_s: float, worker: str = ""
    ) -> None:
        self.run = run
        self.executor = executor
        self.silent_task_s = silent_task_s
        self.worker = worker
        """A pytest-xdist worker's id, in its jobs' names: workers share the run directory."""
        self.jobs: dict[str, ClientJob] = {}
        """The job each client's next level goes to."""
        self.submitted: list[ClientJob] = []
        self._count: Counter[str] = Counter()

    def order(
        self,
        name: str,
        client: Client,
        tasks: list[LoadSpec | None],
        planned: Iterable[LoadCase],
    ) -> LevelOrder:
        """Give `tasks` (one level, by task rank) to the client's job, submitted first when
        it has none that can take it (the executor's SubmitError passes through)."""
        self.retire(keep=name)
        job = self.jobs.get(name)
        if job is None or not job.usable():
            if job is not None and not job.handle.finished():
                self.executor.cancel(job.handle)
            job = self._submit(name, client, planned)
        n = job.posted
        job.box.post(n, tasks)
        job.posted += 1
        return LevelOrder(job, n, tasks)

    def _submit(self, name: str, client: Client, planned: Iterable[LoadCase]) -> ClientJob:
        self._count[name] += 1
        count = self._count[name]
        parts = ["client", slug(name)]
        if self.worker:
            parts.append(self.worker)
        if count > 1:
            parts.append(str(count))
        job_name = "-".join(parts)
        box = OrderBox(private_mkdir(self.run.root / "orders" / job_name))
        handle = self.executor.submit(
            serve_orders,
            str(box.folder),
            str(self.run.heartbeat_path),
            name=job_name,
            role="client",
            resources=client_resources(client, planned_cases(client, planned)),
        )
        job = ClientJob(
            name, handle, box, client.nodes * client.processes_per_node, self.silent_task_s
        )
        self.jobs[name] = job
        self.submitted.append(job)
        return job

    def done(self, order: LevelOrder) -> None:
        """After a level: a job that can take no more orders is ended at once."""
        job = order.job
        if job.broken is not None and not job.handle.finished():
            self.executor.cancel(job.handle)

    def retire(self, keep: str | None = None) -> None:
        """Tell every client's job but `keep`'s to end: the session has moved on."""
        for name in [n for n in self.jobs if n != keep]:
            self.jobs.pop(name).box.stop()

    def stop_all(self, wait_s: float = STOP_WAIT_S) -> None:
        """End every job: told to stop, each ends by itself when idle; the executor cancels
        what is left after `wait_s`."""
        self.retire()
        deadline = time.monotonic() + wait_s
        for job in self.submitted:
            while not job.handle.finished() and time.monotonic() < deadline:
                time.sleep(0.2)
