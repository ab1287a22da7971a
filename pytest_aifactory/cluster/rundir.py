"""The run directory: everything one benchmark session writes lives under it.

Jobs (local processes or Slurm jobs on other nodes) only share this folder with the driver, so
rendezvous files, records, progress and the driver's heartbeat are all paths below it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pwd
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pytest_aifactory.cluster.run_records import state_dir
from pytest_aifactory.redact import Redactor

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_STALE_S = 60.0
"""A job whose driver has not touched the heartbeat for this long considers the driver gone."""
SUBMITTED_RUN_ENV = "AIFACTORY_RUN_DIR"
"""Set by `aifactory submit` for the session it submits: the run folder it made and recorded
before the job started, so that the run is visible while it waits in the queue."""
RUN_SUBFOLDERS = ("jobs", "rendezvous", "records", "progress", "logs")
PRIVATE_RUNS = "runs"
"""Under the per-user state folder: each run's secrets and job folders (submitit's pickles carry
services' environments, keys included), away from the run folder people copy and upload."""
PRIVATE_UMASK = 0o077
PRIVATE_TREE_ATTEMPTS = 3
MIN_API_KEY_LENGTH = 16
"""A shorter key is guessed; an empty one turns a server's authentication off."""


def not_owned(run_root: Path) -> str:
    """Why a run folder is not this account's to act on ('' when it is): another account's
    folder may name job ids, processes and logs it wants us to stop or print."""
    try:
        owner = run_root.stat().st_uid
    except OSError as err:
        return f"run folder {run_root} cannot be read ({err.strerror})"
    if owner != os.geteuid():
        return f"run folder {run_root} belongs to {_user_name(owner)}, not to you: refused"
    return ""


def _user_name(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def private_root_of(run_root: Path) -> Path:
    """The run's private folder, found again from its run folder alone (by `aifactory status`
    and `stop`, by a later run reusing its services): the run folder's own path under the
    state folder's `runs/`, so a job's command line still names its run. The state folder
    sits in the home folder on a cluster, seen by every node as the run folder is."""
    absolute = Path(run_root).resolve()
    return state_dir() / PRIVATE_RUNS / absolute.relative_to(absolute.anchor)


def secrets_dir_of(run_root: Path) -> Path:
    return private_root_of(run_root) / "secrets"


def private_tree(path: Path) -> Path:
    """`path` and every folder above it up to the state folder made 0700, so no other account
    can list or enter the way to a secret. Made again when a folder of the way went meanwhile:
    pruning another run removes the folders it leaves empty."""
    top = state_dir()
    for attempt in range(PRIVATE_TREE_ATTEMPTS):
        try:
            private_mkdir(top)
            for parent in reversed(path.relative_to(top).parents):
                private_mkdir(top / parent)
            return private_mkdir(path)
        except FileNotFoundError:
            if attempt == PRIVATE_TREE_ATTEMPTS - 1:
                raise
    return path


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Everything written inside (run files, reports, Prometheus' and Grafana's files, job
    folders, and what jobs started inside write: they inherit it, Slurm's too) is the owner's
    alone."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def make_run_id(recipe_name: str, now: dt.datetime | None = None) -> str:
    """UTC time first so run ids sort chronologically, then the recipe name."""
    now = now or dt.datetime.now(dt.UTC)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", recipe_name).strip("-") or "run"
    return f"{now.strftime('%Y%m%d-%H%M%S')}-{slug}"


def private_mkdir(path: Path) -> Path:
    """Run data may hold prompts, endpoints and keys: only the owner may read it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _process_stem(process: int, repeat: int) -> str:
    """`p0003` for a level's first measurement, `p0003-r1` for its second: every file of a
    level's processes and repeats matches `p*`."""
    return f"p{process:04d}" if not repeat else f"p{process:04d}-r{repeat}"


@dataclass
class RunDir:
    """Paths of one run and the driver's heartbeat."""

    root: Path
    run_id: str
    redactor: Redactor | None = field(default=None, repr=False)
    """The run's known secrets, hidden in the logs it collects; None: only secret patterns."""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def create(cls, report_dir: Path, run_id: str) -> RunDir:
        """A new folder no other session has: `mkdir` fails when the name exists (two
        sessions of a recipe started in the same second, on any node of a shared file
        system), and the next suffix is tried; the folder that `mkdir` made is this run's
        alone."""
        report_dir.mkdir(parents=True, exist_ok=True)
        root = report_dir / run_id
        suffix = 1
        while True:
            try:
                root.mkdir(mode=0o700)
                break
            except FileExistsError:
                suffix += 1
                root = report_dir / f"{run_id}-{suffix}"
        os.chmod(root, 0o700)
        run = cls(root=root, run_id=root.name)
        for sub in RUN_SUBFOLDERS:
            private_mkdir(root / sub)
        return run

    @classmethod
    def submitted(cls) -> RunDir | None:
        """The folder `aifactory submit` made for this session, if it made one; taken out of
        the environment, so that nothing the session starts inherits it."""
        given = os.environ.pop(SUBMITTED_RUN_ENV, "")
        if not given:
            return None
        root = Path(given)
        for sub in RUN_SUBFOLDERS:
            private_mkdir(root / sub)
        return cls(root=root, run_id=root.name)

    @classmethod
    def open(cls, root: Path) -> RunDir:
        """An existing run (a pytest-xdist worker joins its controller's run)."""
        return cls(root=root, run_id=root.name)

    @property
    def jobs_dir(self) -> Path:
        """Job folders that hold no secret (the batch script of `aifactory submit`)."""
        return self.root / "jobs"

    @property
    def private_root(self) -> Path:
        return private_root_of(self.root)

    def job_folder(self, job_name: str) -> Path:
        """A job's submitit folder: its pickles carry the job's environment and orders (keys
        included), so it lives in the private folder; `collect_logs` copies its logs,
        redacted, into the run folder."""
        return private_tree(self.private_root / "jobs") / job_name

    @property
    def api_key_path(self) -> Path:
        """The run's API key (0600): services that take one require it, its clients and its
        Prometheus send it, so nobody else on a shared node can use or load them."""
        return secrets_dir_of(self.root) / "api_key"

    def api_key(self) -> str:
        """The run's API key, made on first use (a worker reads its controller's)."""
        path = self.api_key_path
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        private_tree(path.parent)
        key = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of the run made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key

    def client_settings_path(self, service: str) -> Path:
        return secrets_dir_of(self.root) / f"{service}.client.json"

    def save_client_settings(self, service: str, settings: dict[str, str]) -> None:
        """What clients of a service must be told (credentials), kept 0600 with the run, so
        a later run reusing a kept service can still talk to it."""
        path = self.client_settings_path(service)
        private_tree(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(settings, fh)

    @property
    def heartbeat_path(self) -> Path:
        return self.root / "heartbeat"

    def rendezvous_path(self, service: str) -> Path:
        return self.root / "rendezvous" / f"{service}.json"

    def records_path(self, test_slug: str, process: int, repeat: int = 0) -> Path:
        return self.root / "records" / test_slug / f"{_process_stem(process, repeat)}.jsonl"

    def progress_path(self, test_slug: str, process: int, repeat: int = 0) -> Path:
        return self.root / "progress" / test_slug / f"{_process_stem(process, repeat)}.json"

    def job_logs(self) -> list[Path]:
        """Every job's stdout/stderr files (all tasks), where the jobs write them."""
        folders = [self.jobs_dir, self.private_root / "jobs"]
        return sorted(log for folder in folders for log in folder.glob("*/*_log.*"))

    def stale_logs(self) -> list[Path]:
        """The jobs' logs written to since they were last copied (or never copied): what a
        kept service logged after its session ended, what a killed session never copied."""
        stale = []
        for log in self.job_logs():
            try:
                if log_copy_path(self.root, log).stat().st_mtime >= log.stat().st_mtime:
                    continue
            except OSError:
                pass
            stale.append(log)
        return stale

    def collect_logs(self, *, only_stale: bool = False) -> list[Path]:
        """Copy every job's stdout/stderr (all tasks) to `logs/<job>/`, the one place to look
        after a run; taken after the jobs were stopped, so cancelled jobs' last words are in.
        `only_stale`: only those written to since their last copy.

        The copies are redacted, since they are what gets shared: servers echo their command
        lines and settings, keys included. Line by line, as logs can be large; bytes that are
        not UTF-8 become U+FFFD rather than stopping the copy."""
        redactor = self.redactor or Redactor()
        copied = []
        for log in self.stale_logs() if only_stale else self.job_logs():
            target = log_copy_path(self.root, log)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with (
                log.open(encoding="utf-8", errors="replace", newline="") as source,
                open(fd, "w", encoding="utf-8", newline="") as copy,
            ):
                for line in source:
                    copy.write(redactor.text(line))
            copied.append(target)
        return copied

    def start_heartbeat(self) -> None:
        """Jobs watch this file's age and exit when the driver is gone (killed, node lost)."""
        self.heartbeat_path.touch()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="aifactory-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _beat(self) -> None:
        """A failed touch (a shared file system's hiccup, a full quota) is tried again at the
        next beat: jobs give up only after `HEARTBEAT_STALE_S` without one, so a lasting
        failure still ends them, a passing one ends nothing."""
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                self.beat()
            except OSError:
                continue

    def beat(self) -> None:
        """Made again if it went missing: jobs read a missing heartbeat as a gone driver."""
        self.heartbeat_path.touch()


def driver_gone(
    heartbeat_path: str | os.PathLike[str] | None, started_at: float | None = None
) -> bool:
    """True when the driver's heartbeat file is stale, or was removed after the start.

    A client job may start before the file is visible on its node (a shared file system's
    attribute cache): given `started_at` (its own start, wall clock), a missing file ages from
    then instead of meaning the driver is gone."""
    if not heartbeat_path:
        return False
    try:
        beat = os.stat(heartbeat_path).st_mtime
    except FileNotFoundError:
        if started_at is None:
            return True
        beat = started_at
    return dt.datetime.now().timestamp() - beat > HEARTBEAT_STALE_S


def log_copy_path(run_root: Path, log: Path) -> Path:
    """Where `collect_logs` copies a job's log, redacted: `logs/<job folder>/<file>`, the
    file the run's record names once the raw log is gone with the private folder."""
    return run_root / "logs" / log.parent.name / log.name


def read_client_settings(run_root: Path, service: str) -> dict[str, str]:
    """A service's client settings as its run saved them ({} when none or unreadable)."""
    try:
        data = json.loads((secrets_dir_of(run_root) / f"{service}.client.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
