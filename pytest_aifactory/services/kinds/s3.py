"""`kind: s3`: an S3-API object store made fresh for the run, its data on the node's disk.

Which server: MinIO (`minio server`) where a `minio` binary is found, else nanio (a small S3
server from PyPI that checks SigV4 signatures as S3 does). The recipe's `model` forces one:
`minio`, `nanio`, or the path of a `minio` binary; `AIFACTORY_MINIO` (the service's `env`, then
the driver's environment) also names the binary. In a container the image's own `minio` is run
unless one of those names another.

Each run gets its own access and secret key (generated here, never written in a recipe); the
server gets them through the job's environment, the clients through `ServicePlan.client_env`
(`AIFACTORY_S3_ACCESS_KEY`, `AIFACTORY_S3_SECRET_KEY`, `AIFACTORY_S3_REGION`). Every variable
that holds a key is named so that the log redactor hides its value.

Health: MinIO's `/minio/health/live`; nanio has no health path, so a TCP connect (its server
listens only once it can answer). Metrics: MinIO's cluster endpoint, which MinIO serves only to
a bearer JWT signed with the server's secret key (`MINIO_PROMETHEUS_AUTH_TYPE=jwt`, MinIO's
default; a recipe's `env` may still say `public`). The run makes that token the way
`mc admin prometheus generate` does (services/minio_token.py: issuer `prometheus`, subject the
access key, HS512) once the service is up, keeps it 0600 in the run's private folder, and its
Prometheus scrapes the service with it by a job of the service's own. The scheme was checked
against MinIO's and mc's sources, not against a running MinIO: none runs where this package is
tested. nanio has no metrics.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pytest_aifactory.monitor.series import Series
from pytest_aifactory.services import minio_token
from pytest_aifactory.services.base import (
    HealthCheck,
    ServiceConfigError,
    ServiceKind,
    ServicePlan,
    has_flag,
    service_kind,
)

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service

MINIO_ENV = "AIFACTORY_MINIO"
"""Path of the `minio` binary, when it is not on PATH."""
ACCESS_KEY_ENV = "AIFACTORY_S3_ACCESS_KEY"
SECRET_KEY_ENV = "AIFACTORY_S3_SECRET_KEY"
REGION_ENV = "AIFACTORY_S3_REGION"
REGION = "us-east-1"
"""Both servers' default region; SigV4 signatures include it."""
METRICS_AUTH_ENV = "MINIO_PROMETHEUS_AUTH_TYPE"
METRICS_AUTH = "jwt"
"""MinIO's own default, said outright: its metrics only to the holder of a token (see
`metrics_token`), never to anyone who reaches the port."""

SERVERS = ("minio", "nanio")
MINIO_HEALTH = HealthCheck(http_path="/minio/health/live")
MINIO_METRICS = "/minio/v2/metrics/cluster"
NANIO_DEFAULT_ARGS = (("--log-level", "warning"),)
NANIO_QUIET_FLAG = "--no-access-log"
"""A line per request in the service log would cost the server time under load."""

METRIC_SERIES = (
    Series(
        "minio_requests",
        "minio_s3_requests_total",
        "counter",
        "service",
        "requests",
        "S3 requests served",
    ),
    Series(
        "minio_request_errors",
        "minio_s3_requests_errors_total",
        "counter",
        "service",
        "requests",
        "S3 requests that failed",
    ),
    Series(
        "minio_received_bytes",
        "minio_s3_traffic_received_bytes",
        "counter",
        "service",
        "bytes",
        "bytes received by S3 requests",
    ),
    Series(
        "minio_sent_bytes",
        "minio_s3_traffic_sent_bytes",
        "counter",
        "service",
        "bytes",
        "bytes sent by S3 requests",
    ),
    Series(
        "minio_requests_inflight",
        "minio_s3_requests_inflight_total",
        "gauge",
        "service",
        "requests",
        "S3 requests being served",
    ),
)


def find_minio(name: str, service: Service) -> str | None:
    """The `minio` binary the recipe or the environment names, else the one on PATH; in a
    container the image's `minio`; None when there is none (nanio is used then)."""
    named = service.env.get(MINIO_ENV) or os.environ.get(MINIO_ENV)
    model = service.model
    if model and model not in SERVERS:
        named = model
    if named:
        if service.container is None and not os.access(named, os.X_OK):
            where = "model" if named == model else MINIO_ENV
            raise ServiceConfigError(
                f"service '{name}': {where} {named!r} is not an executable minio binary "
                f"(model takes {' or '.join(SERVERS)}, or the path of a minio binary)"
            )
        return named
    if service.container is not None:
        return "minio"
    return shutil.which("minio")


def nanio_available() -> bool:
    return importlib.util.find_spec("nanio") is not None


def choose_server(name: str, service: Service) -> tuple[str, str | None]:
    """("minio", binary) or ("nanio", None), as the recipe forces or as this machine allows."""
    if service.model == "nanio":
        if not nanio_available():
            raise ServiceConfigError(
                f"service '{name}': model 'nanio' but nanio is not installed (pip install nanio)"
            )
        return "nanio", None
    binary = find_minio(name, service)
    if binary is not None:
        return "minio", binary
    if service.model == "minio":
        raise ServiceConfigError(
            f"service '{name}': model 'minio' but no minio binary found: put it on PATH or set "
            f"{MINIO_ENV} (or the service's model) to its path"
        )
    if not nanio_available():
        raise ServiceConfigError(
            f"service '{name}': no S3 server found: install nanio (pip install nanio) or put a "
            f"minio binary on PATH (or set {MINIO_ENV} to its path)"
        )
    return "nanio", None


def minio_command(binary: str, args: list[str]) -> list[str]:
    # --anonymous keeps credentials out of MinIO's own log lines
    return [binary, "server", "{scratch}", "--address", "{host}:{port}", "--anonymous", *args]


def nanio_command(args: list[str]) -> list[str]:
    defaults: list[str] = []
    for flag, value in NANIO_DEFAULT_ARGS:
        if not has_flag(args, (flag,)):
            defaults += [flag, value]
    if NANIO_QUIET_FLAG not in args:
        defaults.append(NANIO_QUIET_FLAG)
    return [
        sys.executable,
        "-m",
        "nanio",
        "serve",
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--data-dir",
        "{scratch}",
        *defaults,
        *args,
    ]


def minio_metrics_token(served_model: str | None, client_env: Mapping[str, str]) -> str | None:
    """The bearer token the run's Prometheus scrapes an `s3` service's metrics with: a MinIO's,
    made from the keys its clients were given (a kept MinIO's are its own run's); None for
    nanio, which has no metrics, or where the keys are unknown."""
    access_key, secret_key = client_env.get(ACCESS_KEY_ENV), client_env.get(SECRET_KEY_ENV)
    if served_model != "minio" or not access_key or not secret_key:
        return None
    return minio_token.prometheus_token(access_key, secret_key)


def new_credentials() -> tuple[str, str]:
    """A fresh access key and secret key: letters and digits only, lengths MinIO accepts."""
    return "aif" + secrets.token_hex(8), secrets.token_hex(20)


@service_kind("s3")
class S3Service(ServiceKind):
    default_health = HealthCheck(http_path=None)
    metric_series = METRIC_SERIES
    metrics_token_of_its_own = True

    def metrics_token(self, served_model: str | None, client_env: Mapping[str, str]) -> str | None:
        return minio_metrics_token(served_model, client_env)

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        if service.nodes > 1:
            raise ServiceConfigError(
                f"service '{name}': kind s3 runs on one node (nodes: {service.nodes})"
            )
        server, binary = choose_server(name, service)
        access_key, secret_key = new_credentials()
        env = {k: v for k, v in service.env.items() if k != MINIO_ENV}
        args = list(service.args)
        if server == "minio":
            assert binary is not None
            argv = minio_command(binary, args)
            env.update(MINIO_ROOT_USER=access_key, MINIO_ROOT_PASSWORD=secret_key)
            env.setdefault(METRICS_AUTH_ENV, METRICS_AUTH)
            health = self.health(service) if service.health is not None else MINIO_HEALTH
            metrics: str | None = service.metrics or MINIO_METRICS
        else:
            argv = nanio_command(args)
            env.update(NANIO_ACCESS_KEY=access_key, NANIO_SECRET_KEY=secret_key)
            env.setdefault("NANIO_REGION", REGION)
            health = self.health(service)
            metrics = service.metrics
        region = (
            env.get("NANIO_REGION") or env.get("MINIO_SITE_REGION") or env.get("MINIO_REGION")
        ) or REGION
        return self.plan_for(
            name,
            service,
            argv,
            env=env,
            health=health,
            metrics_path=metrics,
            served_model=server,
            client_env={
                ACCESS_KEY_ENV: access_key,
                SECRET_KEY_ENV: secret_key,
                REGION_ENV: region,
            },
        )
