"""The driver's side of a run's records: each job written to `jobs.json` as it is submitted,
becomes a healthy service and ends, and the run's entry in the per-user index kept current.
A pytest-xdist worker adds the jobs it submits to the driver's file."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.cluster.run_records import (
    SESSION_ROLE,
    JobRecord,
    ReusedService,
    RunRecord,
    ServiceRecord,
    from_timestamp,
    index_run,
    process_ref,
    read_run,
    rewrite_run,
    utcnow,
)

if TYPE_CHECKING:
    from pytest_aifactory.cluster.base import JobExecutor, JobHandle
    from pytest_aifactory.cluster.rundir import RunDir
    from pytest_aifactory.endpoints import Endpoint


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
            plan=endpoint.plan,
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
        with contextlib.suppress(OSError, TimeoutError):
            rewrite_run(self.record.root, self._merged)
            if self.worker is None:
                index_run(self.record)

    def _merged(self, on_disk: RunRecord | None) -> RunRecord | None:
        """The driver writes the run with the workers' jobs it finds in the file (and the
        batch job of `aifactory submit` it runs in); a worker replaces only its own jobs in the
        driver's record (and writes nothing without it)."""
        if self.worker is None:
            kept = on_disk.jobs if on_disk else []
            theirs = [j for j in kept if j.worker or j.role == SESSION_ROLE]
            return self.record.model_copy(update={"jobs": [*self.record.jobs, *theirs]})
        if on_disk is None:
            return None
        others = [j for j in on_disk.jobs if j.worker != self.worker]
        return on_disk.model_copy(update={"jobs": [*others, *self.record.jobs]})
