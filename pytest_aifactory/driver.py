"""The driver: what runs one pytest session's benchmarks, in the pytest process. It owns the
run directory, submits the service and client jobs, and keeps each test's result.

Created when pytest is configured with a recipe; the run directory and jobs only come into
being when the first benchmark test runs, so `--collect-only` starts nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import pytest

from pytest_aifactory.cases import LoadCase, cases_for, place, process_specs, slug, sweep_step
from pytest_aifactory.client_jobs import ClientJobs, LevelOrder
from pytest_aifactory.cluster.base import JobExecutor, SubmitError
from pytest_aifactory.cluster.job_registry import JobRegistry
from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.private_prune import prune_ended_quietly, retire, run_ended
from pytest_aifactory.cluster.run_control import KeptService, find_kept_services
from pytest_aifactory.cluster.run_records import read_run
from pytest_aifactory.cluster.rundir import PRIVATE_UMASK, RunDir, make_run_id
from pytest_aifactory.cluster.slurm import SlurmError
from pytest_aifactory.cluster.slurm_steps import SlurmStepExecutor, slurm_executor
from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.loadgen.progress import read_progress
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.selfcheck import client_stats_path, read_client_stats
from pytest_aifactory.metrics import slo as slo_eval
from pytest_aifactory.metrics.stats import client_health, saturation_note, succeeded
from pytest_aifactory.metrics.summaries import summarize
from pytest_aifactory.monitor.efficiency import efficiency_figures
from pytest_aifactory.monitor.grafana import export_grafana
from pytest_aifactory.monitor.run_monitor import RunMonitor, merge_metrics
from pytest_aifactory.redact import run_redactor
from pytest_aifactory.report import run_store
from pytest_aifactory.report.manifest import remove_manifest
from pytest_aifactory.report.recover import save_recipe
from pytest_aifactory.results import CaseResult
from pytest_aifactory.service_lock import ServiceLockError, ServiceLocks
from pytest_aifactory.services.base import API_KEY_SETTING
from pytest_aifactory.services.manager import LOG_TAIL_LINES, ServiceManager, ServiceStartError
from pytest_aifactory.sweep import CapacitySearch, SweepStep, describe_outcome

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from pytest_aifactory.loadgen.spec import LoadSpec
    from pytest_aifactory.recipe import Recipe
    from pytest_aifactory.summary_shapes import RunTestEntry
    from pytest_aifactory.terminal import Terminal

PROGRESS_EVERY_S = 0.5
SHARED_ENDPOINT_FIELDS = (
    "name",
    "kind",
    "host",
    "port",
    "url",
    "served_model",
    "metrics_url",
    "node",
    "nodes",
    "client_env",
    "replica_urls",
)
"""What a worker needs of a service the controller started (plain values: sent over execnet)."""
SERVICE_DEATH_GRACE_S = 3.0
"""How long a service job that may have died as the load ended gets to say so."""
RETIRE_WAIT_S = 10.0
"""How long the end of a session waits for a cancelled job's last process to go before it
removes the run's secrets and job folders (which the job may still write to)."""


@dataclasses.dataclass(frozen=True)
class Measurement:
    """How a level is measured: how many loads, and what its objectives are judged on."""

    repeats: int
    slo_rule: Literal["estimate", "interval"]


class CaseError(Exception):
    """A case could not be run at all (service failed to start); message is user-facing."""


def shortfall(error: str, spec: LoadSpec, measured: pd.DataFrame) -> dict[str, Any]:
    """What a client process that ended early left undone: its requests sent against its
    share, or its time run against the level's duration; what it did send is kept."""
    index = spec.process
    mine = measured
    if "process" in measured:
        mine = measured[measured["process"] == index]
    if "repeat" in mine:
        mine = mine[mine["repeat"] == spec.repeat]
    sent = len(mine)
    entry: dict[str, Any] = {
        "process": index,
        "repeat": spec.repeat,
        "node": spec.node,
        "error": error,
        "sent": sent,
    }
    if spec.requests:
        missing = max(spec.requests - sent, 0)
        entry.update(expected=spec.requests, missing=missing)
        done = f"it sent {sent} of its {spec.requests} requests ({missing} missing)"
    else:
        span = 0.0
        if sent:
            span = float(mine["end_ts"].max() - mine["send_ts"].min())
        entry.update(ran_s=span, expected_s=spec.duration_s)
        done = f"it ran {span:.1f} s of {spec.duration_s:g} s ({sent} requests sent)"
    which = f"client process {index}" + (f" (repeat {spec.repeat + 1})" if spec.repeat else "")
    entry["note"] = f"{which} ended early: {error}; {done}"
    return entry


def error_example(records: pd.DataFrame) -> str:
    """The commonest error text of a level's failed requests, so a failing test says why they
    failed without opening the records."""
    if not len(records) or "error" not in records:
        return ""
    rows = records[records["phase"] == "measure"] if "phase" in records else records
    errors = rows["error"].fillna("").astype(str)
    errors = errors[errors != ""]
    if not len(errors):
        return ""
    counts = errors.value_counts()
    text, count = str(counts.index[0]), int(counts.iloc[0])
    return f"{count} of {len(rows)} requests failed with: {text[:300]}"


def make_executor(
    name: str,
    run: RunDir,
    recipe: Recipe | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> JobExecutor:
    """The run's executor; `overrides` are the command line's Slurm settings (`partition`,
    `account`, `qos`, `time_limit`, `setup`, `pending_timeout_s`, `mode`) over the recipe's.
    On Slurm, jobs are steps of the allocation the session runs in, or sbatch jobs
    (`platform.slurm.mode`)."""
    if name == "local":
        return LocalJobExecutor(run)
    if name == "slurm":
        try:
            return slurm_executor(run, recipe, overrides)
        except SlurmError as err:
            raise CaseError(str(err)) from None
    raise CaseError(f"unknown executor '{name}' (expected local or slurm)")


class Driver:
    """One pytest session's run: its directory, executor, services, monitoring and results;
    the `aifactory` fixture hands it to benchmark tests."""

    def __init__(
        self,
        recipe: Recipe,
        executor_name: str,
        report_dir: Path,
        terminal: Terminal,
        keep_services: bool = False,
        reuse_services: str | None = None,
        slurm_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.recipe = recipe
        self.executor_name = executor_name
        self.report_dir = report_dir
        self.terminal = terminal
        self.keep_services = keep_services
        self.reuse_services = reuse_services
        """A run whose kept services to use, `latest` for this recipe's latest; None: start."""
        self.slurm_overrides = dict(slurm_overrides or {})
        self.registry: JobRegistry | None = None
        self.run: RunDir | None = None
        self._umask: int | None = None
        self.executor: JobExecutor | None = None
        self.services: ServiceManager | None = None
        self.monitor: RunMonitor | None = None
        self.results: list[CaseResult] = []
        self.started_at = time.time()
        self.status = "running"
        self.role = "single"
        """`single`; under pytest-xdist `controller` (owns the run and its services) or
        `worker` (runs tests against the controller's services, in the same run directory)."""
        self.worker_id = ""
        self._handoff: dict[str, Any] | None = None
        self._start_error: str | None = None
        """Why the run could not start (no executor); later tests fail with it at once."""
        self.locks: ServiceLocks | None = None
        """Under pytest-xdist: one load at a time per service, whichever worker runs it."""
        self.client_jobs: ClientJobs | None = None
        self.planned: list[LoadCase] = []
        """The session's selected cases (set once collected): what a client's job may run."""

    # -- pytest-xdist: one run, one set of services, several workers ----------------------------

    def handoff(self) -> dict[str, Any]:
        """What workers need (run directory, service endpoints); starts every service the
        recipe's clients use, once, before any worker runs a test."""
        self.role = "controller"
        if self._handoff is None:
            run, _, services = self._ensure_started()
            endpoints: dict[str, dict[str, Any]] = {}
            failures: dict[str, str] = {}
            used = (c.service for c in self.recipe.clients.values() if c.service is not None)
            for name in dict.fromkeys(used):
                try:
                    endpoint = services.endpoint(name)
                except ServiceStartError as err:
                    failures[name] = str(err)
                    continue
                endpoints[name] = {key: getattr(endpoint, key) for key in SHARED_ENDPOINT_FIELDS}
            self.locks = ServiceLocks.create()
            self._handoff = {
                "run_dir": str(run.root),
                "endpoints": endpoints,
                "failures": failures,
                "locks": self.locks.handoff(),
            }
        return self._handoff

    def attach(self, handoff: dict[str, Any], worker_id: str) -> None:
        """Make this (worker) driver use the controller's run and services."""
        self.role = "worker"
        self.worker_id = worker_id
        self._handoff = handoff

    def _attach_worker(self) -> None:
        assert self._handoff is not None
        try:
            self.locks = ServiceLocks.attach(self._handoff["locks"])
        except ServiceLockError as err:
            raise CaseError(str(err)) from None
        self.run = RunDir.open(Path(self._handoff["run_dir"]))
        self.run.redactor = run_redactor(self.recipe)
        self.executor = make_executor(
            self.executor_name, self.run, self.recipe, self.slurm_overrides
        )
        self.registry = JobRegistry.attach(self.run, self.executor, self.worker_id)
        self.services = ServiceManager(self.recipe, self.run, self.executor)
        self.monitor = self._make_monitor(self.run, self.services)
        self.monitor.attach()
        for name, fields in self._handoff["endpoints"].items():
            endpoint = Endpoint(**fields)
            self.services.endpoints[name] = endpoint
            self.services.learn_secrets({}, endpoint.client_env)
        for name, message in self._handoff["failures"].items():
            self.services.failures[name] = ServiceStartError(message)

    # -- life cycle ---------------------------------------------------------------------------

    def _ensure_started(self) -> tuple[RunDir, JobExecutor, ServiceManager]:
        if self._umask is None:  # what the run writes is the user's alone; `finish` restores
            self._umask = os.umask(PRIVATE_UMASK)
        if self.run is None and self.role == "worker":
            self._attach_worker()
        if self._start_error is not None:
            raise CaseError(self._start_error)
        if self.run is None:
            prune_ended_quietly()  # secrets of sessions that never reached their own end
            run = RunDir.submitted() or RunDir.create(
                self.report_dir, make_run_id(self.recipe.name)
            )
            try:
                executor = make_executor(self.executor_name, run, self.recipe, self.slurm_overrides)
            except CaseError as err:  # Slurm refused the settings: every test fails alike
                self._start_error = str(err)
                raise
            self.run, self.executor = run, executor
            self.run.redactor = run_redactor(self.recipe)
            save_recipe(
                self.run.root,
                self.recipe,
                self.run.redactor.data(self.recipe.model_dump(mode="json")),
            )
            self.run.start_heartbeat()
            if self.keep_services and not executor.jobs_outlive_session:
                self.terminal.line(
                    "warning: --keep-services keeps nothing here: services run as steps of this "
                    "session's allocation and end with it"
                )
                self.keep_services = False
            self.registry = JobRegistry.start(
                self.run,
                self.recipe.name,
                str(self.recipe.path),
                self.executor,
                self.started_at,
                keep_services=self.keep_services,
            )
            self.terminal.line(f"run {self.run.run_id}: {self.run.root}")
            if isinstance(self.executor, SlurmStepExecutor):
                self.terminal.line(self.executor.describe())
            reuse: dict[str, list[KeptService]] = {}
            if self.reuse_services is not None:
                reuse, message = find_kept_services(
                    self.recipe.name, self.reuse_services, exclude=self.run.root.resolve()
                )
                self.terminal.line(message if reuse else f"{message}: starting new ones")
            self.services = ServiceManager(
                self.recipe,
                self.run,
                self.executor,
                on_phase=self._phase,
                keep=self.keep_services,
                reuse=reuse,
                on_ready=self._service_ready,
            )
            self.monitor = self._make_monitor(self.run, self.services)
            self.monitor.start()
            self._save()
        assert self.executor is not None
        assert self.services is not None
        if self.client_jobs is None:
            self.client_jobs = ClientJobs(
                self.run, self.executor, self.recipe.platform.silent_task_s, self.worker_id
            )
        return self.run, self.executor, self.services

    def start_monitoring(self) -> RunMonitor | None:
        """The run (and with it its monitoring) started; None when monitoring is off."""
        try:
            self._ensure_started()
        except SubmitError as err:
            raise CaseError(str(err)) from None
        if self.monitor is None or self.monitor.mode == "off":
            return None
        return self.monitor

    def _make_monitor(self, run: RunDir, services: ServiceManager) -> RunMonitor:
        return RunMonitor(
            self.recipe.monitor, run, services, self.executor_name, say=self.terminal.line
        )

    def _service_ready(self, endpoint: Endpoint) -> None:
        if self.registry is not None:
            self.registry.service_ready(endpoint)
        if self.monitor is not None:
            self.monitor.service_ready(endpoint)

    def _phase(self, service: str, phase: str, elapsed: float, detail: str) -> None:
        self.terminal.line(f"{service}: {phase} ({elapsed:.1f} s) {detail}".rstrip())

    def finish(self, status: str) -> bool:
        """Cancel every job and write the final summary; safe to call more than once.

        Returns False when a signal interrupted the last step, writing the report: the run is
        then saved as interrupted and `aifactory report RUN` writes the report later."""
        try:
            return self._finish(status)
        finally:
            if self._umask is not None:
                os.umask(self._umask)
                self._umask = None

    def _finish(self, status: str) -> bool:
        if self.run is None:
            return True
        if self.status == "running":
            self.status = status
        assert self.executor is not None
        if self.client_jobs is not None:  # idle client jobs end by themselves
            self.client_jobs.stop_all()
        if self.role == "worker":  # the controller stops the services and merges the run
            if self.monitor is not None:
                self.monitor.stop()
            cancelled = self.executor.cancel_all()
            self.run.collect_logs()
            if self.registry is not None:
                self.registry.finish(self.status, self.executor.handles, cancelled=cancelled)
            self._save()
            return True
        if self.monitor is not None:
            self.monitor.stop()
        if self.locks is not None:  # the workers are done
            self.locks.remove()
        kept = [r for e in self._kept_services() for r in e.all_replicas()]
        cancelled = self.executor.cancel_all(keep=[e.job for e in kept if e.job is not None])
        if cancelled:
            names = ", ".join(h.name for h in cancelled)
            self.terminal.line(f"stopped {len(cancelled)} job(s): {names}")
        if kept:
            where = ", ".join(f"service-{e.name} at {e.host}:{e.port}" for e in kept)
            self.terminal.line(
                f"kept {len(kept)} service(s) running: {where}; "
                f"stop with `aifactory stop {self.run.run_id}`"
            )
        self.run.stop_heartbeat()
        self.run.collect_logs()
        if self.registry is not None:
            self.registry.finish(
                self.status,
                self.executor.handles,
                cancelled=cancelled,
                kept=[e.job for e in kept if e.job is not None],
            )
        self._save()
        try:
            self._export_dashboard()
            self._build_report()
            self._build_index()
        except KeyboardInterrupt:
            # every job is stopped and every record saved already: only the page is missing
            self.status = "interrupted"
            self._save()
            self.terminal.line(
                f"interrupted while writing the report; the run is saved: "
                f"`aifactory report {self.run.run_id}` writes it"
            )
            self._retire_private(kept)
            return False
        self._retire_private(kept)
        return True

    def _retire_private(self, kept: list[Endpoint]) -> None:
        """The run's secrets and job folders removed, its logs copied and the run saved, when
        nothing of it runs on: kept services go on using their keys and job folders until
        `aifactory stop` ends them (and removes these then). Best effort: what is left, a
        later `aifactory prune` or session removes."""
        assert self.run is not None
        if kept:
            return
        try:
            deadline = time.monotonic() + RETIRE_WAIT_S
            while (record := read_run(self.run.root)) is not None:
                if run_ended(record, own_session=True)[0]:
                    retire(self.run.root, self.run.redactor)
                    return
                if time.monotonic() > deadline:  # left to `aifactory prune`
                    return
                time.sleep(0.5)
        except (Exception, KeyboardInterrupt):  # the run is saved; a later prune goes on
            return

    def _build_report(self) -> None:
        """`report.html` from what the run saved (`aifactory report RUN` rebuilds it later)."""
        assert self.run is not None
        # deferred: the report draws its charts with altair, slow to import at pytest's start
        from pytest_aifactory.report.build import ReportError, build_report

        try:
            path = build_report(self.run.root)
        except (ReportError, OSError, ValueError) as err:
            self.terminal.line(f"report not written: {err}")
            return
        self.terminal.line(f"report: {path}")

    def _build_index(self) -> None:
        """The reports folder's experiments dashboard, with this run in it (`aifactory index`
        rebuilds it later)."""
        assert self.run is not None
        # deferred: only a session's end needs the page (and its Vega bundle)
        from pytest_aifactory.report.index import IndexBuildError
        from pytest_aifactory.report.index_html import build_index

        try:
            path = build_index(self.run.root.parent)
        except (IndexBuildError, OSError, ValueError) as err:
            self.terminal.line(f"experiments dashboard not written: {err}")
            return
        self.terminal.line(f"experiments dashboard: {path}")

    def _export_dashboard(self) -> None:
        """A Grafana dashboard over the run's kept Prometheus data (`aifactory grafana RUN`
        says how to serve and open it)."""
        assert self.run is not None
        if self.monitor is None or self.monitor.mode != "prometheus":
            return
        try:
            path = export_grafana(self.run.root)
        except (OSError, ValueError) as err:
            self.terminal.line(f"monitoring: no Grafana dashboard written: {err}")
            return
        self.terminal.line(
            f"Grafana dashboard: {path} (`aifactory grafana {self.run.run_id}` to open it)"
        )

    def _kept_services(self) -> list[Endpoint]:
        """With --keep-services: the services this run started that still run."""
        if not self.keep_services or self.services is None:
            return []
        return [
            e
            for e in self.services.endpoints.values()
            if e.job is not None and not e.job.finished()
        ]

    def test_entries(self) -> list[RunTestEntry]:
        """Every test of the run as in summary.json (under xdist: all workers' tests)."""
        if self.role == "controller" and self.run is not None:
            return run_store.load_parts(self.run)[0]
        return [run_store.test_entry(r) for r in self.results]

    def _save(self) -> None:
        """While the session runs, after each test: the summary (every statistic so far). Once
        it ends, however it ends: the merged metrics, the records, the summary and the signed
        manifest too, in that order (`run_store.save_run`). Writing those after each test would
        cost time growing with the square of the run's size; a driver killed outright still
        leaves its clients' raw records for `aifactory report`."""
        assert self.run is not None
        final = self.status != "running"
        records: pd.DataFrame | None = None
        if self.role == "controller":
            tests, records = run_store.load_parts(self.run, with_records=final)
        else:
            tests = [run_store.test_entry(r) for r in self.results]
            records = run_store.results_records(self.results) if final else None
        if self.role == "worker":
            run_store.save_part(self.run, self.worker_id, tests, records)
            return
        if final:
            remove_manifest(self.run.root)  # unsigned, not signed-but-changed, until re-signed
            merge_metrics(self.run.root)
        unsigned = run_store.save_run(
            self.run,
            self.recipe,
            tests,
            records if final else None,
            self.status,
            self.started_at,
            services=self._service_summary(),
            monitoring=self.monitor.summary() if self.monitor is not None else None,
        )
        if unsigned:
            self.terminal.line(unsigned)

    def _service_summary(self) -> dict[str, dict[str, Any]]:
        if self.services is None:
            return {}
        reuse = self.services.not_reused
        return {
            name: {
                "kind": e.kind,
                "url": e.url,
                **(
                    {"urls": e.urls, "replica_nodes": [r.node for r in e.all_replicas()]}
                    if e.replicated
                    else {}
                ),
                "node": e.node,
                "nodes": e.nodes,
                **e.timings(),
                **({"reused_from": e.reused_from.run_id} if e.reused_from else {}),
                **({"not_reused": reuse[name]} if name in reuse else {}),
            }
            for name, e in self.services.endpoints.items()
        }

    # -- running a case -----------------------------------------------------------------------

    def run_sweep(self, case: LoadCase, test_id: str, name: str) -> CaseResult:
        """Measure the levels a capacity search picks, each saved like any test; the result
        is the capacity level's (failing: the lowest level's, or below `min_capacity`). The
        level the search ends on is measured again until it rests on `boundary_repeats` loads
        judged on their intervals (`sweep.py`); from the first such measurement on, every new
        level is measured that way at once."""
        client = self.recipe.clients[case.client]
        settings = client.load.sweep
        assert settings is not None
        search = CapacitySearch(settings)
        boundary = Measurement(max(settings.boundary_repeats, client.load.repeats), "interval")
        steps: dict[float, CaseResult] = {}
        confirming = False
        while True:
            level = search.next_level()
            earlier: CaseResult | None = None
            if level is None:
                level = search.unconfirmed_capacity()
                if level is None:
                    break
                confirming = True
                earlier = steps[level]
                self.terminal.line(
                    f"{case.client} sweep: {earlier.case.label} held once; measuring it "
                    f"{boundary.repeats} times in all"
                )
            step = sweep_step(case, client, level)
            step_id = test_id.replace(f"[{case.id}]", f"[{step.id}]")
            step_name = name.replace(f"[{case.id}]", f"[{step.id}]")
            measurement = boundary if confirming else None
            result = self.run_case(step, step_id, step_name, measurement, earlier)
            index = list(steps).index(level) if level in steps else len(steps)
            result.sweep = {"test_id": test_id, "step": index}
            steps[level] = result
            breaches = "; ".join(
                slo_eval.breach_line(case.client, step.label, o)
                for o in result.outcomes
                if not o.passed
            )
            breaches = breaches or "; ".join(result.notes)
            repeats = int((result.summary.get("repeats") or {}).get("count") or 1)
            search.record(
                SweepStep(
                    level,
                    result.passed,
                    step_id,
                    breaches,
                    repeats=repeats,
                    confirmed=repeats >= boundary.repeats
                    and result.summary.get("slo_judged_on") == "interval",
                )
            )
            verdict = "met every SLO" if result.passed else "broke an SLO"
            self.terminal.line(f"{case.client} sweep: {step.label} {verdict}")
        outcome = search.outcome()
        for result in steps.values():
            assert result.sweep is not None
            result.sweep["outcome"] = outcome
        self._save()
        line = describe_outcome(case.client, outcome)
        self.terminal.line(line)
        ordered = list(steps.values())
        at_capacity = [r for r in ordered if r.passed and r.case.level == outcome["capacity"]]
        chosen = at_capacity[0] if at_capacity else ordered[0]
        notes = list(chosen.notes)
        if outcome["capacity"] is None or outcome["below_min_capacity"]:
            notes.insert(0, line)
        return dataclasses.replace(chosen, test_id=test_id, name=name, notes=notes)

    def run_case(
        self,
        case: LoadCase,
        test_id: str,
        name: str,
        measurement: Measurement | None = None,
        earlier: CaseResult | None = None,
    ) -> CaseResult:
        """Measure a level as the client's load says, or as `measurement` says (repeats and
        how objectives are judged). `earlier`: this level's result so far, whose repeats are
        kept and added to (it is replaced in the run by the new result)."""
        try:
            _, _, services = self._ensure_started()
        except SubmitError as err:
            raise CaseError(str(err)) from None

        client = self.recipe.clients[case.client]
        endpoint: Endpoint | None = None
        if client.service is not None:
            try:
                endpoint = services.endpoint(client.service)
            except ServiceStartError as err:
                raise CaseError(str(err)) from None
        if measurement is None:
            measurement = Measurement(client.load.repeats, client.load.slo_rule)
        with self._service_held(client.service, case):
            return self._run_load(case, test_id, name, endpoint, measurement, earlier)

    @contextlib.contextmanager
    def _service_held(self, service: str | None, case: LoadCase) -> Iterator[None]:
        """Under pytest-xdist, the case's service to itself (`service_lock`)."""
        if self.locks is None or service is None:
            yield
            return

        def waiting() -> None:
            self.terminal.line(
                f"{case.client}[{case.label}]: waiting for service '{service}', "
                "which another worker is loading"
            )
            if self.client_jobs is not None:  # no idle job holds nodes (and time) meanwhile
                self.client_jobs.retire()

        with self.locks.held(service, waiting):
            yield

    def _run_load(
        self,
        case: LoadCase,
        test_id: str,
        name: str,
        endpoint: Endpoint | None,
        measurement: Measurement,
        earlier: CaseResult | None = None,
    ) -> CaseResult:
        """Give the level to the client's job once per repeat, follow each and judge what
        they measured together. A repeat that went wrong (the service died, a process ended
        early) is the last: the ones after it would measure the same fault."""
        repeats = measurement.repeats
        started_at = time.time()
        specs: list[LoadSpec] = []
        notes: list[str] = []
        ended_early: dict[int, str] = {}
        first = 0
        if earlier is not None:
            first = int((earlier.summary.get("repeats") or {}).get("count") or 1)
            # the earlier repeats' files, read again with the new ones
            for repeat in range(first):
                specs.extend(self._process_specs(case, name, endpoint, repeat))
            notes.extend(earlier.notes)
        for repeat in range(first, repeats):
            if repeats > 1:
                self.terminal.line(f"{case.client}[{case.label}]: repeat {repeat + 1} of {repeats}")
            these = self._process_specs(case, name, endpoint, repeat)
            try:
                more_notes, errors = self._run_repeat(case, these, endpoint)
            except KeyboardInterrupt:
                # keep what this case measured before the interruption in the saved run
                self.status = "interrupted"
                self._collect(
                    case,
                    test_id,
                    name,
                    [*specs, *these],
                    started_at,
                    [*notes, "interrupted during the load"],
                    measurement=measurement,
                    earlier=earlier,
                    first_repeat=first,
                )
                raise
            ended_early.update({len(specs) + index: error for index, error in errors.items()})
            specs.extend(these)
            notes.extend(more_notes)
            if (more_notes or errors) and repeat + 1 < repeats:
                notes.append(
                    f"repeats {repeat + 2} to {repeats} were not run: repeat {repeat + 1} "
                    "went wrong"
                )
                break
        return self._collect(
            case,
            test_id,
            name,
            specs,
            started_at,
            notes,
            ended_early,
            measurement=measurement,
            earlier=earlier,
            first_repeat=first,
        )

    def _process_specs(
        self, case: LoadCase, name: str, endpoint: Endpoint | None, repeat: int
    ) -> list[LoadSpec]:
        """The load processes of one repeat of a level, with their files ready."""
        run = self.run
        assert run is not None
        client = self.recipe.clients[case.client]
        case_slug = slug(name)
        barrier = run.root / "barrier" / (case_slug if not repeat else f"{case_slug}-r{repeat}")
        specs = process_specs(
            case,
            client,
            base_url=endpoint.url if endpoint else "",
            replica_urls=endpoint.replica_urls if endpoint else (),
            model=client.model_name
            or (endpoint.served_model if endpoint else None)
            or client.service
            or "",
            records_path=lambda i: run.records_path(case_slug, i, repeat),
            progress_path=lambda i: run.progress_path(case_slug, i, repeat),
            heartbeat_path=str(run.heartbeat_path),
            barrier_dir=barrier,
            service_env=endpoint.client_env if endpoint else None,
            service_kind=endpoint.kind if endpoint else "",
            api_key=endpoint.client_env.get(API_KEY_SETTING) if endpoint else None,
            repeat=repeat,
        )
        monitor = self.monitor
        if monitor is not None and monitor.mode != "off":
            specs = [
                dataclasses.replace(
                    spec,
                    push_url=monitor.push_url,
                    push_password_file=monitor.push_password_file,
                    run_id=run.run_id,
                    node_exporter=monitor.node_exporter,
                )
                for spec in specs
            ]
        for spec in specs:
            Path(spec.records_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            Path(spec.progress_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return specs

    def _run_repeat(
        self, case: LoadCase, specs: list[LoadSpec], endpoint: Endpoint | None
    ) -> tuple[list[str], dict[int, str]]:
        """One load of the level: its notes and, by index into `specs`, the processes that
        ended early."""
        client = self.recipe.clients[case.client]
        # one job for all nodes x processes and every level of the client: one submission
        # however wide the fan-out and however many levels (`client_jobs.py`)
        tasks = place(specs, client.nodes, client.processes_per_node)
        assert self.client_jobs is not None
        try:
            order = self.client_jobs.order(case.client, client, tasks, self._planned(case))
        except SubmitError as err:
            raise CaseError(f"client '{case.client}' could not be submitted: {err}") from None
        try:
            notes, task_errors = self._watch(
                case, order, [Path(s.progress_path) for s in specs], endpoint
            )
        finally:
            self.client_jobs.done(order)
        ended_early = {
            task.process: error
            for rank, error in task_errors.items()
            if rank < len(tasks) and (task := tasks[rank]) is not None
        }
        return notes, ended_early

    def _collect(
        self,
        case: LoadCase,
        test_id: str,
        name: str,
        specs: list[LoadSpec],
        started_at: float,
        notes: list[str],
        ended_early: dict[int, str] | None = None,
        *,
        measurement: Measurement,
        earlier: CaseResult | None = None,
        first_repeat: int = 0,
    ) -> CaseResult:
        """Merge the processes' records, compute the statistics, judge the SLOs, save.
        `earlier`: the level's result before the repeats from `first_repeat` on, which this
        one replaces; the server's view covers only those new repeats."""
        client = self.recipe.clients[case.client]
        records = read_records(Path(s.records_path) for s in specs)
        measured = records[records["phase"] == "measure"] if "phase" in records else records
        requested_rate = case.level if case.mode == "rate" else None
        objectives = self.recipe.objectives(case.client)
        summary = summarize(
            client.kind,
            records,
            requested_rate=requested_rate,
            objectives=objectives,
            confidence=client.load.confidence,
        )
        if ended_early:
            shortfalls = [
                shortfall(error, specs[index], measured)
                for index, error in sorted(ended_early.items())
                if index < len(specs)
            ]
            summary["ended_early"] = shortfalls
            notes = [*(s["note"] for s in shortfalls), *notes]
        summary["slo_judged_on"] = measurement.slo_rule
        outcomes = slo_eval.evaluate(summary, objectives, measurement.slo_rule)
        ended_at = time.time()
        new_records = records
        if first_repeat and len(records):
            new_records = records[records["repeat"] >= first_repeat]
        if earlier is not None and not len(new_records):  # judged anew, nothing measured
            warnings = list(earlier.warnings)
            for key in ("server", "cross_checks", "monitoring_samples"):
                if key in earlier.summary:
                    summary[key] = earlier.summary[key]
        else:
            warnings = self._server_view(
                test_id, name, started_at, ended_at, new_records, summary, client.service
            )
        client_stats = read_client_stats([client_stats_path(s.records_path) for s in specs])
        summary["load_generator"] = client_health(
            measured, client_stats, cpu_is_workload=client.service is None
        )
        saturated = saturation_note(summary["load_generator"])
        if saturated:
            warnings = [*warnings, saturated]
        hint = error_example(measured)
        redactor = self.run.redactor if self.run is not None else None
        result = CaseResult(
            test_id=test_id,
            name=name,
            case=case,
            records=records,
            summary=summary,
            outcomes=outcomes,
            notes=notes,
            warnings=warnings,
            started_at=earlier.started_at if earlier is not None else started_at,
            ended_at=ended_at,
            error_hint=redactor.text(hint) if redactor is not None else hint,
        )
        if earlier is not None:
            self.results = [r for r in self.results if r is not earlier]
        self.results.append(result)
        self._save()
        return result

    def _server_view(
        self,
        test_id: str,
        name: str,
        started_at: float,
        ended_at: float,
        records: pd.DataFrame,
        summary: dict[str, Any],
        service: str | None = None,
    ) -> list[str]:
        """The window's server and node series from monitoring, the server's figures and their
        cross-check against the clients' (added to `summary`); returns warnings. Never fails:
        the clients' results stand whatever happened to monitoring. `service`: the one the
        clients loaded, whose request count must match theirs."""
        if self.monitor is None or self.monitor.mode == "off" or self.services is None:
            return []
        kinds = {n: e.kind for n, e in self.services.endpoints.items()}
        tokens = float(records["output_tokens"].fillna(0).sum()) if len(records) else 0.0
        span = 0.0
        if len(records):
            span = float(records["end_ts"].max() - records["send_ts"].min())
        # every request the server saw, warmup included (setup work is not a request)
        sent = records[records["phase"] != "setup"] if len(records) else records
        requests = float(succeeded(sent).sum()) if len(sent) else 0.0
        try:
            window = self.monitor.collect(
                test_id,
                slug(name),
                started_at,
                ended_at,
                kinds,
                tokens,
                span,
                client_requests=requests,
                client_service=service,
            )
        except Exception as err:  # monitoring must never cost the measured data
            return [f"monitoring: collecting server metrics failed: {err}"]
        if window.server:
            summary["server"] = window.server
        if window.cross_checks:
            summary["cross_checks"] = window.cross_checks
        endpoint = self.services.endpoints.get(service) if service else None
        declared = self.recipe.services.get(service) if service else None
        if endpoint is not None and declared is not None:
            gpus = declared.gpu_count
            figures = efficiency_figures(window.samples, records, summary, endpoint, gpus)
            if figures:
                summary["efficiency"] = figures
        summary["monitoring_samples"] = len(window.samples)
        return window.warnings

    def _planned(self, case: LoadCase) -> list[LoadCase]:
        """The levels the case's client job is to run (it lasts as long as they may take)."""
        same = [c for c in self.planned or cases_for(self.recipe) if c.client == case.client]
        return same or [case]

    def _watch(
        self,
        case: LoadCase,
        order: LevelOrder,
        progress_paths: list[Path],
        endpoint: Endpoint | None,
    ) -> tuple[list[str], dict[int, str]]:
        """Wait for the client job to run the level, showing progress; say what went wrong,
        lose nothing. Returns the notes and, per task of the job that ended early, its error."""
        assert self.executor is not None
        notes: list[str] = []
        service_died = False

        def died() -> bool:
            return endpoint is not None and not endpoint.alive()

        def death_note() -> str:
            assert endpoint is not None
            # of a service of several servers, the one that died
            dead = next((e for e in endpoint.all_replicas() if not e.server_alive()), endpoint)
            which = f"replica {dead.replica} at {dead.url}: " if dead.replicated else ""
            # first line as before (reports match on it), then why: the service's last words
            note = (
                f"service '{endpoint.name}' died during the load "
                f"({which}{dead.job.state() if dead.job else 'gone'})"
            )
            if dead.job is None:
                return note
            redactor = self.run.redactor if self.run is not None else None
            return f"{note}\n{dead.job.log_tail(LOG_TAIL_LINES, redactor=redactor)}"

        try:
            while not order.finished():
                self._show_progress(case, progress_paths, final=False)
                if not service_died and died():
                    service_died = True
                    notes.append(death_note())
                time.sleep(PROGRESS_EVERY_S)
        finally:
            if not order.finished():
                self.executor.cancel(order.handle)
        self._show_progress(case, progress_paths, final=True)
        if not service_died and self._died_at_the_end(endpoint, progress_paths):
            notes.append(death_note())
        errors = order.task_errors()
        if errors:
            redactor = self.run.redactor if self.run is not None else None
            notes.append(order.handle.log_tail(LOG_TAIL_LINES, redactor=redactor))
        return notes, errors

    def _died_at_the_end(self, endpoint: Endpoint | None, progress_paths: list[Path]) -> bool:
        """Whether the service died as the load ended, between two polls. A server killed
        outright fails every later request at once, so the load can end before its job has
        noticed the death: when requests failed, give the job a moment to say so."""
        if endpoint is None:
            return False
        if not endpoint.alive():
            return True
        if not int((read_progress(progress_paths) or {}).get("failed") or 0):
            return False
        deadline = time.monotonic() + SERVICE_DEATH_GRACE_S
        while time.monotonic() < deadline:
            if not endpoint.alive():
                return True
            time.sleep(0.1)
        return False

    def _show_progress(self, case: LoadCase, paths: list[Path], final: bool) -> None:
        progress = read_progress(paths)
        if not progress:
            return
        done = int(progress.get("completed") or 0)
        failed = int(progress.get("failed") or 0)
        total = progress.get("total")
        elapsed = float(progress.get("elapsed_s") or 0.0)
        rate = (done + failed) / elapsed if elapsed > 0 else 0.0
        ttft = progress.get("ttft_p50_ms")
        text = f"{case.client}[{case.label}] {done + failed}"
        text += f"/{total}" if total else ""
        text += f" done, {failed} failed, {rate:.1f} req/s"
        if ttft is not None:
            text += f", TTFT p50 {ttft:.0f} ms"
        text += f", {elapsed:.1f} s"
        self.terminal.live(text, final=final)

    def close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.finish("interrupted")


def assert_slos(result: CaseResult) -> None:
    """Fail the current test with one line per broken objective (and why the run was short)."""
    if not result.passed:
        pytest.fail(result.failure_message(), pytrace=False)
