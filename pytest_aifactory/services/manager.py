"""Starts the recipe's services on first use and keeps them for the session.

A service is started when the first test that needs it runs, so `-k` on one client starts only
its service. A failed start is remembered: later tests fail at once with the same message
instead of trying (and waiting) again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.cluster.base import JobExecutor, JobHandle, JobResources, SubmitError
from pytest_aifactory.cluster.rendezvous import Rendezvous, port_is_free, read_rendezvous
from pytest_aifactory.cluster.run_control import KeptService
from pytest_aifactory.cluster.rundir import MIN_API_KEY_LENGTH, RunDir, read_client_settings
from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.job_resources import service_resources
from pytest_aifactory.monitor.credentials import read_credentials
from pytest_aifactory.redact import api_key_flags, secrets_from_args, secrets_from_env
from pytest_aifactory.services.base import (
    API_KEY_SETTING,
    HealthCheck,
    ServiceConfigError,
    ServiceKind,
    ServicePlan,
    get_kind,
)
from pytest_aifactory.services.exposure import check_exposure
from pytest_aifactory.services.fingerprint import differences, fingerprint, service_plan
from pytest_aifactory.services.health import base_url, is_healthy
from pytest_aifactory.services.launch import ServiceLaunch, run_service
from pytest_aifactory.services.replicas import join_replicas, replica_instance, replica_services

if TYPE_CHECKING:
    from pytest_aifactory.monitor.node_exporter import NodeExporterOrder
    from pytest_aifactory.recipe import Recipe, Service

PhaseCallback = Callable[[str, str, float, str], None]
"""(service, phase, seconds since submit, detail)"""

POLL_S = 0.1
HEALTH_POLL_S = 0.2
"""Between health checks: also how late `healthy_at` may be."""
LOG_TAIL_LINES = 50
KEPT_LOCAL_TIME_LIMIT_MIN = 7 * 24 * 60
"""A kept local service runs until `aifactory stop` (or a week); on Slurm the recipe's limit."""


class ServiceStartError(Exception):
    """A service could not be brought up; the message names it, the cause and its log tail."""


@dataclass(frozen=True)
class _Submitted:
    """A server's job, submitted and not yet known to be up."""

    instance: str
    replica: int
    job: JobHandle
    start: float
    """`time.monotonic()` at submission: the start-up timeout counts from here."""
    submitted_at: float


class ServiceManager:
    def __init__(
        self,
        recipe: Recipe,
        run: RunDir,
        executor: JobExecutor,
        on_phase: PhaseCallback | None = None,
        *,
        keep: bool = False,
        reuse: Mapping[str, list[KeptService]] | None = None,
        on_ready: Callable[[Endpoint], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.run = run
        self.executor = executor
        self.on_phase = on_phase or (lambda *_: None)
        self.keep = keep
        """Services outlive the session: they do not watch the driver's heartbeat."""
        self.reuse = dict(reuse or {})
        """Kept services of other runs by recipe service name, newest first."""
        self.not_reused: dict[str, str] = {}
        """Why no kept service was reused, by recipe service name (for the run's summary)."""
        self.on_ready = on_ready or (lambda _: None)
        self.endpoints: dict[str, Endpoint] = {}
        self.failures: dict[str, ServiceStartError] = {}
        self.node_exporter: NodeExporterOrder | None = None
        """Set when the run is monitored: each service job runs its node's exporter."""

    def endpoint(self, name: str) -> Endpoint:
        if name in self.failures:
            raise self.failures[name]
        if name not in self.endpoints:
            try:
                self.endpoints[name] = self._reused(name) or self._start(name)
            except ServiceStartError as err:
                self.failures[name] = err
                raise
            for replica in self.endpoints[name].all_replicas():
                self.on_ready(replica)
        return self.endpoints[name]

    def _reused(self, name: str) -> Endpoint | None:
        """The newest kept service of another run whose whole plan is this recipe's and that
        answers its health check; otherwise None, having said why not (the fields that
        differ), and the service is started as usual."""
        candidates = self.reuse.get(name)
        if not candidates:
            return None
        if self.recipe.services[name].replica_count > 1:
            note = "a service of several replicas is not reused: starting new ones"
            self.not_reused[name] = note
            self.on_phase(name, "not reused", 0.0, note)
            return None
        wanted = service_plan(self.recipe, name, self.executor)
        kind = self.recipe.services[name].kind
        reasons: list[str] = []
        chosen: KeptService | None = None
        for kept in candidates:
            if kept.service.plan is None:
                reasons.append(f"run {kept.run_id} did not record its plan")
                continue
            changed = differences(kept.service.plan, wanted)
            if changed:
                fields = ", ".join(changed)
                reasons.append(f"run {kept.run_id} kept one whose plan differs in {fields}")
                continue
            if not kept.healthy():
                reasons.append(f"{kept.address} (kept by run {kept.run_id}) is not healthy")
                continue
            chosen = kept
            break
        if chosen is None:
            note = f"{'; '.join(reasons)}: starting a new one"
            self.not_reused[name] = note
            self.on_phase(name, "not reused", 0.0, note)
            return None
        kept = chosen
        healthy_at = time.time()
        self.on_phase(name, "reused", 0.0, f"{kept.address} kept by run {kept.run_id}")
        service = kept.service
        # its credentials are the run's that started it
        client_env = read_client_settings(Path(kept.run_dir), name)
        self.learn_secrets({}, client_env)
        return Endpoint(
            name=name,
            kind=kind,
            host=service.host,
            port=service.port,
            url=service.url,
            served_model=service.served_model,
            metrics_url=service.metrics_url,
            node=kept.nodes[0] if kept.nodes else "",
            health=HealthCheck(http_path=service.health_path),
            reused_from=kept,
            healthy_at=healthy_at,
            client_env=client_env,
            plan=service.plan,
        )

    def _exporter_web_config(self, plan: ServicePlan) -> str | None:
        """The run's monitoring web config for a plan whose metrics exporter takes one; None
        where the run is unmonitored (no credentials: no exporter either)."""
        if plan.exporter is None or plan.exporter.web_config_flag is None:
            return None
        credentials = read_credentials(self.run.root)
        return str(credentials.web_config) if credentials is not None else None

    def _start(self, name: str) -> Endpoint:
        service = self.recipe.services[name]
        kind = get_kind(service.kind)
        try:
            check_exposure(name, service, kind, self.executor.name)
            plans = [kind.plan(name, copy, self.recipe) for copy in replica_services(service)]
        except ServiceConfigError as err:
            raise ServiceStartError(str(err)) from None
        if plans[0].external_url is not None:
            timeout_s = service.health_timeout_s
            return join_replicas(
                [
                    self._check_external(name, service.kind, plan, timeout_s, replica=index)
                    for index, plan in enumerate(plans)
                ]
            )
        plan = self._with_api_key(name, kind, plans[0])
        if plan.client_env:
            self.run.save_client_settings(name, plan.client_env)
        resources = service_resources(service)
        if service.replicas > 1:
            endpoint = self._launch_replicas(name, service.kind, plan, resources, service)
        else:
            endpoint = self.launch(name, service.kind, plan, resources, service.health_timeout_s)
        planned = fingerprint(service_plan(self.recipe, name, self.executor))
        for replica in endpoint.all_replicas():
            replica.plan = planned
        return endpoint

    def _launch_replicas(
        self,
        name: str,
        kind: str,
        plan: ServicePlan,
        resources: JobResources,
        service: Service,
    ) -> Endpoint:
        """Submit every replica's job first, then wait for each: they start side by side, so
        N replicas take about as long as one. If any fails, the others are stopped too."""
        if plan.port is not None and self.executor.name == "local":
            raise ServiceStartError(
                f"service '{name}': {service.replicas} replicas on this machine cannot all "
                f"listen on port {plan.port}: leave `port` at auto"
            )
        pending: list[_Submitted] = []
        try:
            for index in range(service.replicas):
                pending.append(self._submit(name, plan, resources, replica=index))
            ready = [
                self._await_ready(name, kind, plan, submitted, service.health_timeout_s)
                for submitted in pending
            ]
        except ServiceStartError:
            for submitted in pending:
                self.executor.cancel(submitted.job)
            raise
        return join_replicas(ready)

    def _with_api_key(self, name: str, kind: ServiceKind, plan: ServicePlan) -> ServicePlan:
        """Lock a server that takes an API key with the run's (unless the recipe gave its own
        in the service's env), and tell its clients the key to send. A key the recipe gives
        must be long enough to guess at no better than the run's: an empty one would turn
        the server's authentication off."""
        variable = kind.api_key_env
        if variable is None:
            return plan
        given = [
            (where, value)
            for where, value in [
                (f"env {variable}", plan.env.get(variable)),
                *((f"args {flag}", value) for flag, value in api_key_flags(plan.argv)),
            ]
            if value is not None
        ]
        for where, value in given:
            if len(value.strip()) < MIN_API_KEY_LENGTH:
                raise ServiceStartError(
                    f"service '{name}': the API key in {where} is "
                    f"{'empty' if not value.strip() else f'{len(value.strip())} characters'}: "
                    f"give one of at least {MIN_API_KEY_LENGTH} characters, or none for the "
                    "run's own"
                )
        key = given[0][1].strip() if given else self.run.api_key()
        return replace(
            plan,
            env={**plan.env, variable: key},
            client_env={**plan.client_env, API_KEY_SETTING: key},
        )

    def learn_secrets(
        self, env: Mapping[str, str], client_env: Mapping[str, str], argv: Iterable[str] = ()
    ) -> None:
        """A kind's per-run credentials are made when it is planned, after the run's redactor
        was built from the recipe: teach it them before anything can print them."""
        redactor = self.run.redactor
        if redactor is None:
            return
        for value in [
            *secrets_from_env(env),
            *secrets_from_env(client_env),
            *secrets_from_args(argv),
        ]:
            redactor.add(value)

    def launch(
        self,
        name: str,
        kind: str,
        plan: ServicePlan,
        resources: JobResources,
        timeout_s: float,
        *,
        job_name: str | None = None,
        role: str = "service",
        job_function: Callable[[ServiceLaunch], int] = run_service,
    ) -> Endpoint:
        """Submit `plan` as a job and wait until it is healthy (also used for the run's own
        monitoring servers, which are not recipe services). `job_function`: what the job runs
        with the launch orders, `run_service` or a function around it (Prometheus's)."""
        submitted = self._submit(
            name, plan, resources, job_name=job_name, role=role, job_function=job_function
        )
        return self._await_ready(name, kind, plan, submitted, timeout_s)

    def _submit(
        self,
        name: str,
        plan: ServicePlan,
        resources: JobResources,
        *,
        replica: int = 0,
        job_name: str | None = None,
        role: str = "service",
        job_function: Callable[[ServiceLaunch], int] = run_service,
    ) -> _Submitted:
        """Submit one server's job. `replica` > 0: another copy of the service, with its own
        job, rendezvous and log (all named `<service>.replica<N>`)."""
        self.learn_secrets(plan.env, plan.client_env, plan.argv)
        instance = replica_instance(name, replica)
        if plan.port is not None and not port_is_free(plan.host, plan.port):
            raise ServiceStartError(
                f"service '{name}': port {plan.port} on {plan.host} is already taken"
            )
        launch = ServiceLaunch(
            name=instance,
            service=name if replica else None,
            argv=plan.argv,
            worker_argv=plan.worker_argv,
            rendezvous_path=str(self.run.rendezvous_path(instance)),
            env=plan.env,
            host=plan.host,
            port=plan.port,
            heartbeat_path=None if self.keep else str(self.run.heartbeat_path),
            own_session=self.keep and self.executor.name == "local",
            node_exporter=self.node_exporter,
            ports=plan.ports,
            exporter=plan.exporter,
            exporter_web_config=self._exporter_web_config(plan),
            metrics_port_offset=plan.metrics_port_offset,
            gpus_per_node=resources.gpus,
        )
        local_keep = self.keep and self.executor.name == "local"
        if local_keep:
            resources = replace(resources, time_limit_min=KEPT_LOCAL_TIME_LIMIT_MIN)
        start = time.monotonic()
        submitted_at = time.time()
        try:
            with _detached() if local_keep else contextlib.nullcontext():
                job = self.executor.submit(
                    job_function,
                    launch,
                    name=job_name or f"service-{instance}",
                    role=role,
                    resources=resources,
                )
        except SubmitError as err:
            raise ServiceStartError(f"service '{instance}' could not be submitted: {err}") from None
        self.on_phase(instance, "pending", 0.0, f"job {job.job_id}")
        return _Submitted(instance, replica, job, start, submitted_at)

    def _await_ready(
        self, name: str, kind: str, plan: ServicePlan, submitted: _Submitted, timeout_s: float
    ) -> Endpoint:
        """Wait until a submitted server is up and answers its health check; cancel its job
        when it does not."""
        instance, job, start = submitted.instance, submitted.job, submitted.start
        try:
            rendezvous = self._await_rendezvous(instance, job, start, timeout_s)
            job.pids.append(rendezvous.pid)
            self.on_phase(instance, "starting", time.monotonic() - start, rendezvous.address)
            healthy_at = self._await_health(instance, job, plan, rendezvous, start, timeout_s)
        except ServiceStartError:
            self.executor.cancel(job)
            raise
        elapsed = time.monotonic() - start
        self.on_phase(instance, "healthy", elapsed, rendezvous.address)
        return Endpoint(
            name=name,
            kind=kind,
            host=rendezvous.host,
            port=rendezvous.port,
            url=base_url(rendezvous.host, rendezvous.port),
            served_model=plan.served_model,
            metrics_url=(
                base_url(rendezvous.host, rendezvous.port + plan.metrics_port_offset)
                + plan.metrics_path
                if plan.metrics_path
                else None
            ),
            node=rendezvous.node,
            job=job,
            started_s=elapsed,
            nodes=rendezvous.nodes,
            health=plan.health,
            client_env=dict(plan.client_env),
            metrics_basic_auth=self._exporter_web_config(plan) is not None,
            submitted_at=submitted.submitted_at,
            job_started_at=rendezvous.job_started_at,
            launched_at=rendezvous.launched_at,
            healthy_at=healthy_at,
            replica=submitted.replica,
        )

    def _died(self, name: str, job: JobHandle, phase: str) -> ServiceStartError:
        # give the job a moment to flush its logs before reading them
        time.sleep(0.3)
        cause = job.exception_text() or f"job {job.job_id} ended ({job.state()})"
        cause = cause.split(": ", 1)[1] if cause.startswith("ServiceExited: ") else cause
        if self.run.redactor is not None:
            cause = self.run.redactor.text(cause)
        return ServiceStartError(f"service '{name}' died while {phase}: {cause}\n{self._tail(job)}")

    def _tail(self, job: JobHandle) -> str:
        """The job's last words, through the run's redactor: servers echo their settings, the
        run's key and the recipe's secrets among them, and start errors are shown and saved."""
        return job.log_tail(LOG_TAIL_LINES, redactor=self.run.redactor)

    def _await_rendezvous(
        self, name: str, job: JobHandle, start: float, timeout_s: float
    ) -> Rendezvous:
        path = self.run.rendezvous_path(name)
        while True:
            info = read_rendezvous(path)
            if info is not None:
                return info
            if job.finished():
                raise self._died(name, job, "starting")
            if time.monotonic() - start > timeout_s:
                raise ServiceStartError(
                    f"service '{name}' did not start within {timeout_s:g} s "
                    f"(job {job.job_id}, state {job.state()})\n{self._tail(job)}"
                )
            time.sleep(POLL_S)

    def _await_health(
        self,
        name: str,
        job: JobHandle,
        plan: ServicePlan,
        rendezvous: Rendezvous,
        start: float,
        timeout_s: float,
    ) -> float:
        """Wall-clock time the check first passed."""
        what = f"GET {plan.health.http_path}" if plan.health.http_path else "TCP connect"
        while not is_healthy(rendezvous.host, rendezvous.port, plan.health):
            if job.finished():
                raise self._died(name, job, "waiting to become healthy")
            if time.monotonic() - start > timeout_s:
                raise ServiceStartError(
                    f"service '{name}' never became healthy: {what} on {rendezvous.address} "
                    f"did not succeed within {timeout_s:g} s (health_timeout_s)\n"
                    f"{self._tail(job)}"
                )
            time.sleep(HEALTH_POLL_S)
        return time.time()

    def _check_external(
        self, name: str, kind: str, plan: ServicePlan, timeout_s: float, *, replica: int = 0
    ) -> Endpoint:
        start = time.monotonic()
        assert plan.external_url is not None
        assert plan.port is not None
        instance = replica_instance(name, replica)
        self.on_phase(instance, "checking", 0.0, plan.external_url)
        while not is_healthy(plan.host, plan.port, plan.health, url=plan.external_url):
            if time.monotonic() - start > timeout_s:
                raise ServiceStartError(
                    f"external service '{name}' at {plan.external_url} is not reachable "
                    f"(no answer within {timeout_s:g} s)"
                )
            time.sleep(HEALTH_POLL_S)
        healthy_at = time.time()
        elapsed = time.monotonic() - start
        self.on_phase(instance, "healthy", elapsed, plan.external_url)
        return Endpoint(
            name=name,
            kind=kind,
            host=plan.host,
            port=plan.port,
            url=plan.external_url,
            served_model=plan.served_model,
            metrics_url=plan.external_url + plan.metrics_path if plan.metrics_path else None,
            started_s=elapsed,
            health=plan.health,
            healthy_at=healthy_at,
            replica=replica,
        )

    def stop_all(self) -> None:
        for endpoint in self.endpoints.values():
            for replica in endpoint.all_replicas():
                if replica.job is not None:
                    self.executor.cancel(replica.job)


@contextlib.contextmanager
def _detached() -> Iterator[None]:
    """How a local job that outlives the driver is started: without the driver's terminal
    (its stdio), and deaf to the Ctrl-C typed there. The terminal sends SIGINT to the driver's
    whole process group; submitit's job controller, started meanwhile with SIGINT ignored,
    keeps ignoring it, and the job's task leaves the group (`ServiceLaunch.own_session`)."""
    with _detached_stdio(), _sigint_ignored():
        yield


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _detached_stdio() -> Iterator[None]:
    """A local job inherits the driver's stdin/stdout/stderr; one that outlives the driver must
    not hold them (a pipe such as `pytest ... | tee log` would never see its end)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: dict[int, int | None] = {}
    for fd in (0, 1, 2):
        try:
            saved[fd] = os.dup(fd)
        except OSError:  # not open in the driver: closed again afterwards
            saved[fd] = None
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in saved:
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in saved.items():
            if copy is None:
                os.close(fd)
            else:
                os.dup2(copy, fd)
                os.close(copy)
        os.close(devnull)
