"""The run's monitoring credentials: one user name and a random password per run.

Prometheus, the pushgateway and the node exporter listen on the node's address, which every
other account on a shared node (and often beyond it) can reach. Each of them is started with
`--web.config.file` naming this run's file, which lets in only holders of the run's password
(HTTP basic authentication, the only scheme the Prometheus programs take). The password and
that file are 0600 in the run's private folder, outside the run folder people copy and upload;
Prometheus reads the password from its file to scrape, and the run's own readers (its queries,
its pushes, `aifactory status --watch`) send it.

The password is 256 random bits, so the bcrypt cost adds nothing against guessing it: a low
cost keeps each program's check of a request cheap.

A server that takes a token of its own for its metrics (MinIO: a JWT signed with its secret key)
has it in a token file beside the password, one per service, 0600 too, which Prometheus reads
at each scrape (`authorization.credentials_file`).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import yaml

from pytest_aifactory.cluster.rundir import private_tree, secrets_dir_of

USER = "aifactory"
BCRYPT_ROUNDS = 6
PASSWORD_FILE = "password"
WEB_CONFIG_FILE = "web-config.yml"
TOKENS_DIR = "tokens"


@dataclass(frozen=True)
class MonitorCredentials:
    """Who may talk to the run's monitoring programs, and the files that say so."""

    user: str
    password: str
    password_file: Path
    """The password alone (Prometheus's `basic_auth.password_file`)."""
    web_config: Path
    """The programs' `--web.config.file`: the user and the password's bcrypt hash."""

    @property
    def header(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    @property
    def pair(self) -> tuple[str, str]:
        return self.user, self.password


def credentials_dir(run_root: Path) -> Path:
    return secrets_dir_of(run_root) / "monitor"


def ensure_credentials(run_root: Path) -> MonitorCredentials:
    """The run's credentials, made on first use (by the driver, before it starts anything
    that listens); later calls, and other processes of the run, read the same."""
    folder = private_tree(credentials_dir(run_root))
    password_file = folder / PASSWORD_FILE
    web_config = folder / WEB_CONFIG_FILE
    password = secrets.token_urlsafe(32)
    try:
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        found = read_credentials(run_root)
        if found is not None:
            return found
        password = password_file.read_text().strip()
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(password)
    _write_private(web_config, render_web_config(USER, password))
    return MonitorCredentials(USER, password, password_file, web_config)


def read_credentials(run_root: Path) -> MonitorCredentials | None:
    """The run's credentials as its driver made them; None where it made none (an unmonitored
    run) or they cannot be read (another account's run)."""
    folder = credentials_dir(run_root)
    password_file = folder / PASSWORD_FILE
    web_config = folder / WEB_CONFIG_FILE
    try:
        password = password_file.read_text().strip()
    except OSError:
        return None
    if not password or not web_config.is_file():
        return None
    return MonitorCredentials(USER, password, password_file, web_config)


def token_path(run_root: Path, service: str) -> Path:
    """Where the metrics token of `service` is kept (whether or not it has one yet)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", service).strip("-.") or "service"
    return credentials_dir(run_root) / TOKENS_DIR / name


def reserve_token(run_root: Path, service: str) -> Path:
    """An empty token file for `service` until it has a token: a configuration that names the
    file is then valid from the start (promtool, and a Prometheus that checks, want it to
    exist); an empty token opens nothing."""
    path = token_path(run_root, service)
    private_tree(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def write_token(run_root: Path, service: str, token: str) -> Path:
    """Keep `service`'s metrics token for the run's Prometheus and direct scraper."""
    path = token_path(run_root, service)
    private_tree(path.parent)
    _write_private(path, token)
    return path


def read_token(run_root: Path, service: str) -> str | None:
    """`service`'s metrics token; None where it has none (or it cannot be read)."""
    try:
        return token_path(run_root, service).read_text().strip() or None
    except OSError:
        return None


def render_web_config(user: str, password: str) -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    return yaml.safe_dump({"basic_auth_users": {user: hashed}})


def _write_private(path: Path, text: str) -> None:
    """0600 from the first byte, and whole or not at all for a reader."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        partial.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
