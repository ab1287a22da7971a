"""`kind: postgres`: a PostgreSQL server made fresh for the run, its data on the node's disk.

The job runs `postgres_entry`, which creates the cluster in the job's `{scratch}` folder and
then becomes the server. Each run gets its own password (generated here, never written in a
recipe); the server gets it through the job's environment, the clients through
`ServicePlan.client_env` as user, password and database name.

PostgreSQL serves no metrics itself: where the Prometheus PostgreSQL exporter is installed and
the run is monitored, the job runs it beside the server (on the next port), reading the
benchmark database's statistics (transactions, rollbacks, buffer hits, rows, sessions); its
committed transactions are cross-checked against the clients'.

Where the binaries are: `model` (a PostgreSQL bin folder), else `AIFACTORY_POSTGRES_BIN` (in the
service's env or the driver's), else the newest /usr/lib/postgresql/*/bin, else PATH. In a
container the image's own PostgreSQL is found at run time unless one of those names it.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.cluster.child import first_on_path
from pytest_aifactory.monitor.series import Series, SeriesType
from pytest_aifactory.services.base import (
    HealthCheck,
    MetricsExporter,
    ServiceConfigError,
    ServiceKind,
    ServicePlan,
    service_kind,
)
from pytest_aifactory.services.kinds import postgres_entry

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service

BIN_ENV = "AIFACTORY_POSTGRES_BIN"
USER_ENV = "AIFACTORY_PG_USER"
PASSWORD_ENV = postgres_entry.PASSWORD_ENV
DATABASE_ENV = "AIFACTORY_PG_DATABASE"
DEFAULT_USER = "aifactory"
DEFAULT_DATABASE = "aifactory"
EXPORTERS = ("prometheus-postgres-exporter", "postgres_exporter")
EXPORTER_QUERIES = Path(__file__).with_name("postgres_exporter.yaml")


def _series(name: str, column: str, kind: SeriesType, unit: str, help_text: str) -> Series:
    return Series(f"postgres_{name}", f"aifactory_pg_{column}", kind, "service", unit, help_text)


METRIC_SERIES = (
    _series("transactions", "xact_commit", "counter", "transactions", "transactions committed"),
    _series("rollbacks", "xact_rollback", "counter", "transactions", "transactions rolled back"),
    _series("blocks_hit", "blks_hit", "counter", "blocks", "blocks found in shared buffers"),
    _series("blocks_read", "blks_read", "counter", "blocks", "blocks read from disk"),
    _series("rows_fetched", "tup_fetched", "counter", "rows", "rows fetched by index scans"),
    _series("rows_inserted", "tup_inserted", "counter", "rows", "rows inserted"),
    _series("rows_updated", "tup_updated", "counter", "rows", "rows updated"),
    _series("deadlocks", "deadlocks", "counter", "deadlocks", "deadlocks detected"),
    _series("sessions", "numbackends", "gauge", "sessions", "sessions connected"),
)
"""From the exporter's query of the benchmark database's row of pg_stat_database."""


def find_exporter() -> str | None:
    return first_on_path(*EXPORTERS)


def exporter_for(user: str, password: str) -> MetricsExporter | None:
    """The exporter the job runs beside the server, or None where none is installed. It signs
    in to the `postgres` database, so that its own queries are not among the benchmark
    database's transactions; the password reaches it through the environment only."""
    binary = find_exporter()
    if binary is None:
        return None
    return MetricsExporter(
        argv=[
            binary,
            "--web.listen-address={host}:{metrics_port}",
            "--disable-default-metrics",
            "--disable-settings-metrics",
            "--no-collector.database",
            "--no-collector.bgwriter",
            f"--extend.query-path={EXPORTER_QUERIES}",
            "--log.level=warn",
        ],
        env={
            # a DSN or credential files set for a site's own exporter would win over these
            "DATA_SOURCE_NAME": "",
            "DATA_SOURCE_USER_FILE": "",
            "DATA_SOURCE_PASS_FILE": "",
            "DATA_SOURCE_URI": "{host}:{port}/postgres?sslmode=disable",
            "DATA_SOURCE_USER": user,
            "DATA_SOURCE_PASS": password,
        },
        web_config_flag="--web.config.file",
    )


def bin_dir(name: str, service: Service) -> Path | None:
    """The PostgreSQL bin folder the recipe or the environment names, else the one found on
    this machine; None in a container where none is named (the image's is found at run time)."""
    named = service.model or service.env.get(BIN_ENV) or os.environ.get(BIN_ENV)
    where = "model" if service.model else BIN_ENV
    if named:
        path = Path(named)
        if not (path / "postgres").is_file() or not (path / "initdb").is_file():
            raise ServiceConfigError(
                f"service '{name}': {where} {named!r} is not a PostgreSQL bin folder "
                "(expected 'postgres' and 'initdb' in it)"
            )
        return path
    if service.container is not None:
        return None
    try:
        return postgres_entry.find_bin_dir()
    except postgres_entry.EntryError:
        raise ServiceConfigError(
            f"service '{name}': PostgreSQL not found: run scripts/install-postgres.sh, or set "
            f"{BIN_ENV} (or the service's model) to a folder holding 'postgres' and 'initdb'"
        ) from None


def entry_command(in_container: bool) -> list[str]:
    """How the job starts `postgres_entry`. In a container the package is not installed, so
    the module (standard library only) is handed to the image's Python as source text."""
    if in_container:
        return ["python3", "-c", Path(postgres_entry.__file__).read_text(encoding="utf-8")]
    return [sys.executable, "-m", postgres_entry.__name__]


@service_kind("postgres")
class PostgresService(ServiceKind):
    default_health = HealthCheck(http_path=None)
    metric_series = METRIC_SERIES
    request_count_series = "postgres_transactions"
    server_extra_requests = 100.0
    """Each client process's setup (the advisory lock, the look for loaded tables, the load
    itself) and autovacuum's work count as transactions too: a few dozen per test here."""

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        found = bin_dir(name, service)
        user = service.env.get(USER_ENV) or DEFAULT_USER
        database = service.env.get(DATABASE_ENV) or DEFAULT_DATABASE
        password = secrets.token_urlsafe(24)
        argv = [
            *entry_command(service.container is not None),
            "--data",
            "{scratch}",
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--user",
            user,
            "--dbname",
            database,
        ]
        if found is not None:
            argv += ["--bin-dir", str(found)]
        if service.args:
            argv += ["--", *service.args]
        env = {k: v for k, v in service.env.items() if k != BIN_ENV}
        env[PASSWORD_ENV] = password
        exporter = exporter_for(user, password) if recipe.monitor.prometheus else None
        metrics = {"metrics_path": "/metrics", "metrics_port_offset": 1, "ports": 2}
        return self.plan_for(
            name,
            service,
            argv,
            env=env,
            client_env={USER_ENV: user, PASSWORD_ENV: password, DATABASE_ENV: database},
            exporter=exporter,
            **(metrics if exporter is not None else {}),
        )

    def server_figures(self, increase: Callable[[str], float | None]) -> dict[str, float | None]:
        """Transactions and rollbacks the server counted over the test, and the share of
        block reads served from shared buffers (a falling share: the data outgrew memory)."""
        hit, read = increase("postgres_blocks_hit"), increase("postgres_blocks_read")
        looked_up = (hit or 0.0) + (read or 0.0)
        return {
            "transactions": increase("postgres_transactions"),
            "rollbacks": increase("postgres_rollbacks"),
            "buffer_hit_ratio": (hit or 0.0) / looked_up if looked_up else None,
        }
