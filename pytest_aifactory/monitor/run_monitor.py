"""The run's monitoring, from start to the last test window.

Monitoring never fails a benchmark: when Prometheus cannot start or dies mid-run, the tests go
on and the summary carries a warning; what the clients measured is never touched.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from pytest_aifactory.atomic import replacing
from pytest_aifactory.cluster.base import JobResources
from pytest_aifactory.cluster.rundir import secrets_dir_of
from pytest_aifactory.monitor import components as programs
from pytest_aifactory.monitor.components import (
    COMPONENTS,
    DCGM_EXPORTER,
    NODE_EXPORTER,
    ComponentReport,
    ComponentSource,
    ComponentStatus,
    Missing,
    Program,
    choose_source,
    describe,
    locate,
    read_node_statuses,
    report,
)
from pytest_aifactory.monitor.credentials import (
    MonitorCredentials,
    credentials_dir,
    ensure_credentials,
    read_credentials,
    write_token,
)
from pytest_aifactory.monitor.layout import (
    MonitorEndpoints,
    MonitorMode,
    metrics_parts_dir,
    metrics_path,
    read_endpoints,
    tsdb_dir,
    write_endpoints,
)
from pytest_aifactory.monitor.node_exporter import NodeExporterOrder
from pytest_aifactory.monitor.prometheus_config import write_config
from pytest_aifactory.monitor.prometheus_job import TSDB, quit_marker, run_prometheus
from pytest_aifactory.monitor.query import PrometheusClient, PrometheusUnavailable
from pytest_aifactory.monitor.samples import empty_samples, normalize
from pytest_aifactory.monitor.scraper import DirectScraper
from pytest_aifactory.monitor.series import (
    AUTH_LABEL,
    BASIC_AUTH,
    CLIENT_SERIES,
    GPU_SERIES,
    KIND_LABEL,
    NODE_SERIES,
    REPLICA_LABEL,
    ROLE_LABEL,
    RUN_LABEL,
    SERVICE_LABEL,
    Series,
    service_series,
)
from pytest_aifactory.monitor.targets import BEARER_AUTH, Target, base_labels, write_target
from pytest_aifactory.monitor.window import (
    counter_increase,
    cross_check,
    cross_check_warning,
    sample_rows,
    to_frame,
)
from pytest_aifactory.services.base import HealthCheck, ServicePlan, get_kind
from pytest_aifactory.services.launch import AUTO_HOST, ServiceLaunch, run_service
from pytest_aifactory.services.manager import ServiceStartError
from pytest_aifactory.services.replicas import replica_instance

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_aifactory.cluster.rundir import RunDir
    from pytest_aifactory.endpoints import Endpoint
    from pytest_aifactory.recipe import Monitor
    from pytest_aifactory.services.manager import ServiceManager

PROMETHEUS = "aifactory-prometheus"
PUSHGATEWAY = "aifactory-pushgateway"
TARGET_UP_TIMEOUT_S = 15.0
"""How long a new target may take to be scraped for the first time (discovery + one scrape)."""
DATABASE_COPY_TIMEOUT_S = 300.0
"""How long Prometheus's job may take, once asked to quit, to copy its database into the run."""


@dataclass
class WindowResult:
    """What monitoring saw during one test."""

    samples: pd.DataFrame
    server: dict[str, dict[str, Any]] = field(default_factory=dict)
    cross_checks: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def find_prometheus() -> str | None:
    """AIFACTORY_PROMETHEUS (a path; empty: none) before PATH's `prometheus` (a binary only:
    for `aifactory grafana`'s replay, which runs where the user is)."""
    found = locate(choose_source(programs.PROMETHEUS, None, os.environ))
    return found.prefix[0] if isinstance(found, Program) and not found.image else None


class RunMonitor:
    def __init__(
        self,
        settings: Monitor,
        run: RunDir,
        services: ServiceManager,
        executor_name: str,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.settings = settings
        self.run = run
        self.services = services
        self.executor_name = executor_name
        self.say = say
        self.interval_s = float(settings.scrape_interval_s)
        self.mode: MonitorMode = "off"
        self.prometheus: Endpoint | None = None
        self.pushgateway: Endpoint | None = None
        self.client: PrometheusClient | None = None
        self.scraper: DirectScraper | None = None
        self._push_url: str | None = None
        """A worker's: the controller's pushgateway (the controller has `pushgateway`)."""
        self.warnings: list[str] = []
        """Run-level warnings (each said once), also written to the summary."""
        self._lost_reported = False
        self.sources: dict[str, ComponentSource] = {}
        """Where each monitoring program comes from (recipe, environment or PATH)."""
        self.ran: dict[str, ComponentStatus] = {}
        """What became of the programs the driver starts (Prometheus, pushgateway)."""
        self._stopped = False
        self.credentials: MonitorCredentials | None = None
        """Who may talk to the run's Prometheus, pushgateway and node exporters."""

    # -- start --------------------------------------------------------------------------------

    def start(self) -> None:
        """Bring up Prometheus and the pushgateway (or the direct scraper), before any service,
        so every service is scraped from its first second."""
        if not self.settings.prometheus:
            self._publish("off")
            return
        self.sources = self._choose_sources(COMPONENTS)
        self.run.api_key()  # made now: Prometheus reads it for its first scrape
        credentials = self.credentials = ensure_credentials(self.run.root)
        web_config = f"--web.config.file={credentials.web_config}"
        config = write_config(
            self.run.root,
            self.interval_s,
            self.run.api_key_path,
            credentials.password_file,
            token_services=[
                name
                for name, service in self.services.recipe.services.items()
                if get_kind(service.kind).metrics_token_of_its_own
            ],
        )
        program = locate(self.sources[programs.PROMETHEUS])
        if isinstance(program, Missing):
            self._record(programs.PROMETHEUS, None, program.why)
            self._start_scraper(f"no Prometheus binary found ({program.why})")
        else:
            # no `--web.enable-lifecycle`: its job stops it by PID (prometheus_job.py)
            args = [
                f"--config.file={config}",
                f"--storage.tsdb.path={TSDB}",
                "--storage.tsdb.retention.time=3650d",
                "--web.listen-address={host}:{port}",
                web_config,
            ]
            # an image sees the run's folder (configuration, targets), its private one (key,
            # credentials) and the database
            binds = [str(self.run.root), str(secrets_dir_of(self.run.root)), TSDB]
            argv = program.argv(args, binds=binds)
            job = functools.partial(run_prometheus, tsdb_copy=str(tsdb_dir(self.run.root)))
            self.prometheus = self._launch(PROMETHEUS, programs.PROMETHEUS, program, argv, job)
            if self.prometheus is not None:
                self.client = PrometheusClient(self.prometheus.url, headers=credentials.header)
                if not self._await_ready(self.client):
                    self.client = None
            if self.prometheus is None or self.client is None:
                self._start_scraper("Prometheus did not start")
            else:
                self.mode = "prometheus"
                self._announce(PROMETHEUS, "prometheus", self.prometheus, "/metrics")
        gateway = locate(self.sources[programs.PUSHGATEWAY])
        if isinstance(gateway, Missing):
            self._record(programs.PUSHGATEWAY, None, gateway.why)
        else:
            # its state is the run's alone: nothing kept on disk after it (a distribution's
            # default file would carry every earlier run's series into this one)
            args = ["--web.listen-address={host}:{port}", web_config, "--persistence.file="]
            binds = [str(credentials_dir(self.run.root))]
            argv = gateway.argv(args, binds=binds)
            self.pushgateway = self._launch(PUSHGATEWAY, programs.PUSHGATEWAY, gateway, argv)
            if self.pushgateway is not None:
                self._announce(PUSHGATEWAY, "pushgateway", self.pushgateway, "/metrics")
        # services and clients run their node's exporter; the monitoring jobs do not (on a
        # cluster they sit on a separate partition, and they may die without the node going)
        self.services.node_exporter = self._exporter_order()
        self._publish(self.mode)
        self.say(
            f"monitoring: {self.mode} every {self.interval_s:g} s"
            + (f", Prometheus {self.prometheus.url}" if self.prometheus else "")
            + (f", pushgateway {self.pushgateway.url}" if self.pushgateway else "")
        )
        for line in self._component_lines():
            self.say(f"monitoring: {line}")

    def _launch(
        self,
        name: str,
        component: str,
        program: Program,
        argv: list[str],
        job: Callable[[ServiceLaunch], int] = run_service,
    ) -> Endpoint | None:
        host = AUTO_HOST if self.executor_name == "slurm" else "127.0.0.1"
        # every path asks for the run's credentials: up is a port that takes connections
        plan = ServicePlan(name=name, argv=argv, host=host, health=HealthCheck(None))
        resources = JobResources(partition=self.settings.partition)
        try:
            endpoint = self.services.launch(
                name,
                name,
                plan,
                resources,
                self.settings.start_timeout_s,
                job_name=f"monitor-{name.removeprefix('aifactory-')}",
                role="monitor",
                job_function=job,
            )
        except ServiceStartError as err:
            first_line = str(err).splitlines()[0] if str(err) else "no reason given"
            self._record(component, None, f"{program.source} did not start: {first_line}")
            self._warn(f"monitoring: {name} did not start, going on without it: {err}")
            return None
        self._record(component, program.source, node=endpoint.node)
        return endpoint

    def _await_ready(self, client: PrometheusClient) -> bool:
        """Prometheus answers its readiness check (with the run's credentials) in time."""
        deadline = time.monotonic() + self.settings.start_timeout_s
        while not client.ready():
            if time.monotonic() > deadline:
                self._warn(
                    "monitoring: Prometheus did not get ready within "
                    f"{self.settings.start_timeout_s:g} s, going on without it"
                )
                return False
            time.sleep(0.1)
        return True

    def _record(self, component: str, source: str | None, why: str = "", node: str = "") -> None:
        ran = source is not None
        self.ran[component] = ComponentStatus(component, ran, source, why, node or None)

    def _component_lines(self) -> list[str]:
        """What runs where, said at the start: the driver's programs as they started, the
        node exporters as each job will look for them."""
        lines = [describe(name, report([self.ran[name]], "")) for name in self.ran]
        for name in (NODE_EXPORTER, DCGM_EXPORTER):
            title = COMPONENTS[name].title
            if name == DCGM_EXPORTER and self.settings.gpu_exporter_port is None:
                lines.append(f"{title}: turned off (monitor.gpu_exporter_port is null)")
                continue
            source = self.sources[name]
            found = locate(source)
            if source.off:
                where = f"turned off: {COMPONENTS[name].env} is empty"
            elif isinstance(found, Program):
                where = f"{found.source}, started by each service and client job on its node"
            elif source.origin == "PATH":
                where = "not on this host's PATH; each service and client job looks on its node"
            else:
                where = f"{found.why}; each service and client job looks again on its node"
            if name == DCGM_EXPORTER:
                port = self.settings.gpu_exporter_port
                where = f"the node's own on port {port}, else on nodes with a GPU: {where}"
            lines.append(f"{title}: {where}")
        return lines

    def _start_scraper(self, why: str) -> None:
        self.mode = "scrape"
        by_role = {
            "service": [s for kind in self._recipe_kinds() for s in service_series(kind)],
            "node": [*NODE_SERIES, *GPU_SERIES],
            "pushgateway": list(CLIENT_SERIES),
            "prometheus": [],
        }
        self.scraper = DirectScraper(self.run.root, by_role, self.interval_s)
        self.scraper.start()
        self._warn(
            f"monitoring: {why}: scraping the metrics endpoints directly every "
            f"{self.interval_s:g} s (no PromQL, no Grafana replay)"
        )

    def _announce(self, name: str, group: str, endpoint: Endpoint, path: str) -> None:
        labels = base_labels(self.run.run_id, group, endpoint.node)
        write_target(
            self.run.root, Target(group, name, f"{endpoint.host}:{endpoint.port}", path, labels)
        )

    def _publish(self, mode: MonitorMode) -> None:
        self.mode = mode
        write_endpoints(
            self.run.root,
            MonitorEndpoints(
                mode=mode,
                scrape_interval_s=self.interval_s,
                prometheus_url=self.prometheus.url if self.prometheus else None,
                pushgateway_url=self.pushgateway.url if self.pushgateway else None,
                note="; ".join(self.warnings),
            ),
        )

    def attach(self) -> None:
        """A pytest-xdist worker uses the controller's monitoring (read from the run folder)."""
        endpoints = read_endpoints(self.run.root)
        if endpoints is None:
            return
        self.mode = endpoints.mode
        self.interval_s = endpoints.scrape_interval_s
        self.credentials = read_credentials(self.run.root)
        headers = self.credentials.header if self.credentials else None
        if endpoints.prometheus_url:
            self.client = PrometheusClient(endpoints.prometheus_url, headers=headers)
        self._push_url = endpoints.pushgateway_url
        if self.mode != "off":
            self.services.node_exporter = self._exporter_order()

    def _choose_sources(self, names: Iterable[str]) -> dict[str, ComponentSource]:
        given = {str(name): value for name, value in self.settings.components.items()}
        return {name: choose_source(name, given.get(name), os.environ) for name in names}

    def _exporter_order(self) -> NodeExporterOrder:
        sources = self.sources or self._choose_sources((NODE_EXPORTER, DCGM_EXPORTER))
        return NodeExporterOrder(
            str(self.run.root),
            self.run.run_id,
            self.settings.gpu_exporter_port,
            sources[NODE_EXPORTER],
            sources[DCGM_EXPORTER],
        )

    @property
    def push_url(self) -> str | None:
        if self.pushgateway is not None:
            return self.pushgateway.url
        return self._push_url

    @property
    def push_password_file(self) -> str | None:
        """What a client sends its live counters with (the gateway lets in no one else)."""
        return str(self.credentials.password_file) if self.credentials else None

    @property
    def node_exporter(self) -> NodeExporterOrder | None:
        return self.services.node_exporter

    # -- targets ------------------------------------------------------------------------------

    def service_ready(self, endpoint: Endpoint) -> None:
        """Announce a healthy service's metrics endpoint and wait for its first scrape, so the
        first test window has a sample from before its start."""
        if self.mode == "off" or not endpoint.metrics_url:
            return
        parsed = urllib.parse.urlsplit(endpoint.metrics_url)
        labels = base_labels(self.run.run_id, "service", endpoint.node)
        labels[SERVICE_LABEL] = endpoint.name
        labels[KIND_LABEL] = endpoint.kind
        if endpoint.metrics_basic_auth:
            labels[AUTH_LABEL] = BASIC_AUTH
        kind = get_kind(endpoint.kind)
        if kind.metrics_token_of_its_own:  # a MinIO serves its metrics only to a JWT of its own
            token = kind.metrics_token(endpoint.served_model, endpoint.client_env)
            if token is not None:
                write_token(self.run.root, endpoint.name, token)
                labels[AUTH_LABEL] = BEARER_AUTH
        target = endpoint.name
        matcher = f'{SERVICE_LABEL}="{endpoint.name}"'
        if endpoint.replicated:  # one target per server; the service's figures add them up
            labels[REPLICA_LABEL] = str(endpoint.replica)
            target = replica_instance(endpoint.name, endpoint.replica)
            # this server's own target: the others' scrapes say nothing of whether it is seen
            matcher += f',{REPLICA_LABEL}="{endpoint.replica}"'
        write_target(
            self.run.root,
            Target("services", target, parsed.netloc, parsed.path or "/metrics", labels),
        )
        announced = time.time()
        if not self._await_scrape(matcher, announced, first=True):
            self._warn(
                f"monitoring: {endpoint.metrics_url} of service '{endpoint.name}' was not "
                f"scraped within {TARGET_UP_TIMEOUT_S:g} s"
            )
        # and the nodes' exporters, which the jobs announced as they started: the first test's
        # efficiency figures need a sample of theirs from before it too
        self._await_scrape(f'{ROLE_LABEL}="node"', announced)

    def _await_scrape(
        self, matcher: str, after: float, *, first: bool = False, timeout_s: float | None = None
    ) -> bool:
        """Wait until every target matching `matcher` was scraped after `after`. `first`: a
        target just announced, which must also have answered; otherwise targets that are gone
        or down do not hold the wait up. False on timeout or when Prometheus is gone."""
        deadline = time.monotonic() + (timeout_s or TARGET_UP_TIMEOUT_S + 2 * self.interval_s)
        if self.scraper is not None:
            # every target is scraped once per interval: one full interval (and a slow
            # target's timeout) after `after`, each has been scraped since
            time.sleep(max(0.0, after + self.interval_s + self.scraper.timeout_s - time.time()))
            return True
        if self.client is None:
            return False
        # timestamp() of a bare selector is the scrape's time (of an expression, the query's)
        selector = f'up{{{RUN_LABEL}="{self.run.run_id}",{matcher}}}'
        expr = f"min(timestamp({selector}))"
        if first:
            expr += f" and min({selector}) == 1"
        while time.monotonic() < deadline:
            try:
                result = self.client.query(expr)
            except PrometheusUnavailable:
                return False
            if result and float(result[0]["value"][1]) > after:
                return True
            if not result and not first:
                return True  # no such target (a service without metrics)
            time.sleep(min(0.25, self.interval_s / 4))
        return False

    # -- test windows -------------------------------------------------------------------------

    def alive(self) -> bool:
        if self.mode == "scrape":
            return True
        return self.client is not None and self.client.ready()

    def collect(
        self,
        test_id: str,
        slug: str,
        started_at: float,
        ended_at: float,
        services: Mapping[str, str],
        client_output_tokens: float,
        client_span_s: float,
        client_requests: float | None = None,
        client_service: str | None = None,
    ) -> WindowResult:
        """Samples of every series over the test's window, the server's token count (after the
        final scrape) and its cross-check against the clients'. `services`: name -> kind.
        `client_requests`: the requests the clients completed (warmup included), checked
        against the request counter of `client_service`, the service they loaded."""
        result = WindowResult(samples=empty_samples())
        if self.mode == "off":
            return result
        margin = 3 * self.interval_s
        # the nodes' exporters too: a test's efficiency figures need their series past its end
        waited = self._await_scrape(f'{ROLE_LABEL}=~"service|pushgateway|node"', ended_at)
        if not waited and self.mode == "prometheus":
            if not self.alive():
                result.warnings.append(self._lost_warning())
                return result
            result.warnings.append(
                "monitoring: no scrape of the services after the test ended; server figures "
                "for this test may be short"
            )
        end = time.time()
        series = self._all_series(services.values())
        try:
            result.samples = self._samples(test_id, series, started_at - margin, end)
        except PrometheusUnavailable as err:
            result.warnings.append(self._lost_warning(str(err)))
            return result
        self._save_part(slug, result.samples)
        for name, kind in services.items():
            service_kind = get_kind(kind)
            mine = result.samples[result.samples["service"] == name]

            def increase(series: str, mine: pd.DataFrame = mine) -> float | None:
                return counter_increase(mine, series, started_at, ended_at)

            figures = service_kind.server_figures(increase)
            if figures:
                result.server.setdefault(name, {}).update(figures)
            count_series = service_kind.request_count_series
            if count_series and client_requests is not None and name == client_service:
                server_requests = increase(count_series)
                extra = service_kind.server_extra_requests
                _check_requests(result, name, client_requests, server_requests, extra)
            tokens_series = service_kind.generated_tokens_series
            if tokens_series is None:
                continue
            server_tokens = increase(tokens_series)
            result.server.setdefault(name, {}).update(
                {
                    "output_tokens": server_tokens,
                    "output_throughput": (
                        server_tokens / client_span_s
                        if server_tokens is not None and client_span_s > 0
                        else None
                    ),
                    "series": tokens_series,
                }
            )
            check = {
                **cross_check("output_tokens", client_output_tokens, server_tokens),
                "service": name,
            }
            result.cross_checks.append(check)
            warning = cross_check_warning(check, name)
            if warning:
                result.warnings.append(warning)
            if server_tokens is None:
                result.warnings.append(
                    f"monitoring: the server's token counter of '{name}' does not cover the "
                    "test window; no cross-check"
                )
        return result

    def _samples(
        self, test_id: str, series: list[Series], start: float, end: float
    ) -> pd.DataFrame:
        if self.scraper is not None:
            frame = self.scraper.samples(start, end)
            frame["test_id"] = test_id
            return frame
        assert self.client is not None
        rows: list[dict[str, Any]] = []
        for entry in series:
            found = self.client.raw_samples(
                entry.selector(entry.run_labels(self.run.run_id)), start, end
            )
            rows.extend(sample_rows(entry, found, "prometheus"))
        return to_frame(rows, test_id)

    def _save_part(self, slug: str, samples: pd.DataFrame) -> None:
        if samples.empty:
            return
        folder = metrics_parts_dir(self.run.root)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        samples.to_parquet(folder / f"{slug}.parquet", index=False)

    def _lost_warning(self, detail: str = "") -> str:
        text = "monitoring: Prometheus stopped answering"
        text += f" ({detail})" if detail else ""
        text += "; server metrics for this test are missing, client results are unaffected"
        if not self._lost_reported:
            self._lost_reported = True
            self._warn(text)
        return text

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            self.say(text)

    def _all_series(self, kinds: Any = ()) -> list[Series]:
        kinds = list(dict.fromkeys(kinds)) or self._recipe_kinds()
        found = [s for kind in kinds for s in service_series(kind)]
        return [*found, *NODE_SERIES, *GPU_SERIES, *CLIENT_SERIES]

    def _recipe_kinds(self) -> list[str]:
        return sorted({s.kind for s in self.services.recipe.services.values()})

    def components(self) -> dict[str, ComponentReport]:
        """Each program: whether it ran, from where, on which nodes, and why not elsewhere."""
        if not self.sources:  # monitoring off, or a pytest-xdist worker's view
            return {}
        found = {name: report([status], "") for name, status in self.ran.items()}
        for name in (NODE_EXPORTER, DCGM_EXPORTER):
            statuses = read_node_statuses(self.run.root, name)
            found[name] = report(statuses, "no service or client job ran")
        return {name: found[name] for name in COMPONENTS if name in found}

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "scrape_interval_s": self.interval_s,
            "prometheus_url": self.prometheus.url if self.prometheus else None,
            "pushgateway_url": self.push_url,
            "warnings": list(self.warnings),
            "components": {name: r.as_dict() for name, r in self.components().items()},
        }

    def stop(self) -> None:
        """After the last test: stop the scraper, or ask Prometheus to quit and wait for its
        job to copy the database into the run; say what ran on the nodes. Safe to repeat."""
        if self._stopped:
            return
        self._stopped = True
        if self.scraper is not None:
            self.scraper.stop()
        self._stop_prometheus()
        for name, entry in self.components().items():
            if name in (NODE_EXPORTER, DCGM_EXPORTER):
                self.say(f"monitoring: {describe(name, entry)}")

    def _stop_prometheus(self) -> None:
        endpoint = self.prometheus
        if endpoint is None or endpoint.job is None or endpoint.job.finished():
            return
        copy = tsdb_dir(self.run.root)
        marker = quit_marker(copy)
        marker.touch()  # the job watches for it and stops Prometheus by PID
        deadline = time.monotonic() + DATABASE_COPY_TIMEOUT_S
        try:
            while not endpoint.job.finished() and time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:  # a second Ctrl-C: the jobs must still be cancelled
            self._warn(f"monitoring: interrupted while Prometheus's database was copied to {copy}")
            return
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()
        if not endpoint.job.finished():
            self._warn(
                f"monitoring: Prometheus's job did not end within {DATABASE_COPY_TIMEOUT_S:g} s "
                f"of quitting; its database may be missing from {copy}"
            )
        elif not copy.is_dir():
            self._warn(
                f"monitoring: Prometheus's database was not copied to {copy} (see "
                "logs/monitor-prometheus)"
            )


def _check_requests(
    result: WindowResult, service: str, client: float, server: float | None, extra: float = 0.0
) -> None:
    """The server's count of successful requests against the clients' own."""
    check = {**cross_check("requests", client, server, extra), "service": service}
    result.cross_checks.append(check)
    warning = cross_check_warning(check, service)
    if warning:
        result.warnings.append(warning)
    if server is None:
        result.warnings.append(
            f"monitoring: the server's request counter of '{service}' does not cover the "
            "test window; no cross-check"
        )


def _window_parts(run_root: Path) -> pd.DataFrame | None:
    parts = sorted(metrics_parts_dir(run_root).glob("*.parquet"))
    if not parts:
        return None
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def merge_metrics(run_root: Path) -> None:
    """Every test window's samples in one `metrics.parquet` at the run's root (once the
    session ends)."""
    frame = _window_parts(run_root)
    if frame is None:
        return
    with replacing(metrics_path(run_root), durable=True) as tmp:
        frame.to_parquet(tmp, index=False)


def read_metrics(run_root: Path) -> pd.DataFrame | None:
    """The run's samples: `metrics.parquet`, or while the session runs (or after its driver
    was killed) the test windows' samples so far. None when it kept none."""
    path = metrics_path(run_root)
    frame = pd.read_parquet(path) if path.is_file() else _window_parts(run_root)
    return None if frame is None else normalize(frame)
