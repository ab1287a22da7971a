"""`kind: postgres`: a PostgreSQL server made fresh for the run, its data on the node's disk.

The job runs `postgres_entry`, which creates the cluster in the job's `{scratch}` folder and
then becomes the server. Each run gets its own password (generated here, never written in a
recipe); the server gets it through the job's environment, the clients through
`ServicePlan.client_env` as user, password and database name.

Where the binaries are: `model` (a PostgreSQL bin folder), else `AIFACTORY_POSTGRES_BIN` (in the
service's env or the driver's), else the newest /usr/lib/postgresql/*/bin, else PATH. In a
container the image's own PostgreSQL is found at run time unless one of those names it.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.services import postgres_entry
from pytest_aifactory.services.base import (
    HealthCheck,
    ServiceConfigError,
    ServiceKind,
    ServicePlan,
    service_kind,
)

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service

BIN_ENV = "AIFACTORY_POSTGRES_BIN"
USER_ENV = "AIFACTORY_PG_USER"
PASSWORD_ENV = postgres_entry.PASSWORD_ENV
DATABASE_ENV = "AIFACTORY_PG_DATABASE"
DEFAULT_USER = "aifactory"
DEFAULT_DATABASE = "aifactory"


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
        return self.plan_for(
            name,
            service,
            argv,
            env=env,
            client_env={USER_ENV: user, PASSWORD_ENV: password, DATABASE_ENV: database},
        )
