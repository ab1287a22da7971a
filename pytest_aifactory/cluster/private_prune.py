"""Removing what runs' private folders hold once no run needs it.

A run's private folder (`rundir.private_root_of`) holds its API key, its services' client
credentials and its jobs' submitit folders, whose pickles carry service environments (keys
included) and whose logs are the raw, unredacted ones. Kept, they would pile up with every run
ever made. So they go once the run has ended: at the end of its session (unless it kept
services), at `aifactory stop` of its kept services, by `aifactory prune`, and at the start of
every later session for runs that ended more than a day ago (sessions that were killed never
reached their own end).

What a later command on the run still needs stays: the monitoring password, which is the
admin password of the run's own Grafana (`aifactory grafana RUN` hands it the file; without it
Grafana would take its well-known default), and that Grafana's state. Before the job folders
go, the jobs' logs not copied yet are copied, redacted, into the run folder (`collect_logs`),
and the run's record is pointed at the copies, so `aifactory logs` and the web interface show
them once the raw logs are gone.

Only folders under `<state folder>/runs/` are touched, never through a symbolic link: a link
found in the tree is removed as a link, and a folder reached through one is never entered.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pytest_aifactory.cluster.run_control import driver_alive, observe
from pytest_aifactory.cluster.run_records import (
    JOBS_FILE,
    SESSION_ROLE,
    TERMINAL_STATES,
    RunRecord,
    read_run,
    rewrite_run,
    state_dir,
)
from pytest_aifactory.cluster.rundir import (
    PRIVATE_RUNS,
    RunDir,
    log_copy_path,
    not_owned,
    private_root_of,
    read_client_settings,
    secrets_dir_of,
)
from pytest_aifactory.redact import Redactor, run_redactor, secrets_from_env

ENDED_AGO_S = 24 * 3600.0
"""A session's start removes the secrets of runs that ended at least this long ago: a run that
ended within the day may be one whose session is being looked into."""
PRIVATE_PARTS = frozenset({"secrets", "jobs", "grafana"})
"""What a run's private folder holds: a folder of only these is one (or the way to one)."""
KEPT_AFTER_RUN = (
    ("grafana",),
    ("secrets", "monitor", "password"),
    ("secrets", "monitor", "web-config.yml"),
)
"""What `aifactory grafana RUN` needs of an ended run: its Grafana's state and the password
that is its admin's (`monitor/credentials.py` reads it only beside its web config). The rest
of `secrets/monitor` (services' metrics tokens) goes with the services."""
LIVE_STATUSES = frozenset({"running", "submitted"})
MONITOR_SECRETS = ("monitor/password", "monitor/tokens/*")

Action = Literal["remove", "retire", "keep"]


@dataclass(frozen=True)
class Verdict:
    """What pruning does with one private folder, and why."""

    private: Path
    run_dir: Path
    action: Action
    """remove: all of it (its run folder is gone); retire: all but what later commands on
    the ended run need; keep: nothing (the run may still live, or that cannot be told)."""
    why: str


@dataclass(frozen=True)
class Pruned:
    """One folder pruned, or what stopped it (`error`, the folder is then left as it was
    or partly removed: a later prune goes on)."""

    verdict: Verdict
    removed: tuple[Path, ...] = ()
    error: str = ""


def runs_root() -> Path:
    return state_dir() / PRIVATE_RUNS


# -- is the run over? ---------------------------------------------------------------------------


def run_ended(record: RunRecord, *, own_session: bool = False) -> tuple[bool, str]:
    """(True, '') when nothing of the run can still run, else (False, why not, or why it
    cannot be told). `own_session`: asked by the run's own session at its end, whose process
    (and the batch job or background session it runs in) is not a sign of life."""
    if record.status in LIVE_STATUSES and not own_session:
        alive = driver_alive(record)
        if alive is True:
            return False, f"its session runs (pid {record.driver.pid if record.driver else '?'})"
        if alive is None and record.driver is not None and not _session_job_ended(record):
            return False, (
                f"its session ran on {record.driver_host}: whether it still runs cannot be told "
                "from here"
            )
    might_live = [job for job in record.jobs if job.state not in TERMINAL_STATES]
    if not might_live:
        return True, ""
    for live in observe(record):
        job = live.record
        if own_session and job.role == SESSION_ROLE:
            continue
        if live.active and live.checked:
            kept = " (a kept service: `aifactory stop` ends it)" if job.kept else ""
            return False, f"job {job.name} still runs{kept}"
        if live.active:
            return False, (
                f"job {job.name} was {live.state} and cannot be checked from here "
                f"({job.host or 'Slurm commands missing'})"
            )
    return True, ""


def _session_job_ended(record: RunRecord) -> bool:
    """A session started by `aifactory submit` or `start` is seen through its job: when that
    ended, so did the session, on whatever host it ran."""
    sessions = [job for job in record.jobs if job.role == SESSION_ROLE]
    if not sessions:
        return False
    if all(job.state in TERMINAL_STATES for job in sessions):
        return True
    looked = [live for live in observe(record) if live.record.role == SESSION_ROLE]
    return all(live.checked and not live.active for live in looked)


def last_sign_of_life(run_dir: Path, record: RunRecord) -> float:
    """When the run last did anything: its end, the driver's last heartbeat, the last change
    of its record (`aifactory stop` writes it)."""
    when = (record.ended_at or record.started_at).timestamp()
    for path in (run_dir / "heartbeat", run_dir / JOBS_FILE):
        with contextlib.suppress(OSError):
            when = max(when, path.stat().st_mtime)
    return when


# -- which folders ------------------------------------------------------------------------------


def survey(ended_ago_s: float = 0.0, now: float | None = None) -> list[Verdict]:
    """Every run's private folder with something to remove, and what to do with it; runs that
    ended less than `ended_ago_s` ago are left out, as are folders with nothing left to
    remove. Never enters a folder through a symbolic link."""
    top = runs_root()
    if not _real_folder(top):
        return []
    now = time.time() if now is None else now
    verdicts: list[Verdict] = []
    pending = [top]
    while pending:
        folder = pending.pop()
        names, folders = _listing(folder)
        if folder != top and names and names <= PRIVATE_PARTS:
            verdict = _judge(folder, top, ended_ago_s, now)
            if verdict is not None:
                verdicts.append(verdict)
            if verdict is None or verdict.why != NOT_A_RUN:
                continue
        pending.extend(sorted(folders, reverse=True))
    return sorted(
        (v for v in verdicts if v.why != NOT_A_RUN or not _above_another(v, verdicts)),
        key=lambda v: str(v.private),
    )


def _above_another(verdict: Verdict, verdicts: list[Verdict]) -> bool:
    """A folder of only `jobs` (say) that is no run but the way to the runs under it."""
    return any(verdict.private in other.private.parents for other in verdicts)


NOT_A_RUN = "a folder is there without a jobs.json: not a run whose state can be told"


def _judge(private: Path, top: Path, ended_ago_s: float, now: float) -> Verdict | None:
    run_dir = Path(private.anchor or "/") / private.relative_to(top)
    if not os.path.lexists(run_dir):
        if os.path.isdir(run_dir.parent):
            return Verdict(private, run_dir, "remove", "its run folder is gone")
        return Verdict(
            private,
            run_dir,
            "keep",
            f"neither its run folder nor {run_dir.parent} is there (a file system not "
            f"mounted here?); if they were deleted: rm -r {private}",
        )
    if not (run_dir / JOBS_FILE).is_file():
        return Verdict(private, run_dir, "keep", NOT_A_RUN)
    problem = not_owned(run_dir)
    if problem:
        return Verdict(private, run_dir, "keep", problem)
    if not removable(private):
        return None
    record = read_run(run_dir)
    if record is None:
        return Verdict(private, run_dir, "keep", f"its {JOBS_FILE} cannot be read")
    last = last_sign_of_life(run_dir, record)
    if now - last < ended_ago_s:  # first: a live run's heartbeat is fresh, and cheap to read
        return None
    ended, why = run_ended(record)
    if not ended:
        return Verdict(private, run_dir, "keep", why)
    when = dt.datetime.fromtimestamp(last, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Verdict(private, run_dir, "retire", f"run {record.run_id} ended (last active {when})")


def removable(private: Path) -> list[Path]:
    """What of a private folder goes once its run ended: all but `KEPT_AFTER_RUN`."""
    return sorted(_removable_below(private, ()))


def _removable_below(folder: Path, parts: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for name in _listing(folder)[0]:
        path, inner = folder / name, (*parts, name)
        if inner in KEPT_AFTER_RUN:
            continue
        if any(kept[: len(inner)] == inner for kept in KEPT_AFTER_RUN) and _real_folder(path):
            found += _removable_below(path, inner)
            continue
        found.append(path)
    return found


# -- removing -----------------------------------------------------------------------------------


def prune(verdicts: list[Verdict]) -> list[Pruned]:
    """Does what the verdicts say (kept ones are passed through untouched)."""
    done = []
    for verdict in verdicts:
        if verdict.action == "keep":
            done.append(Pruned(verdict))
        elif verdict.action == "remove":
            done.append(_attempt(verdict, lambda v: _remove([v.private])))
        else:
            done.append(_attempt(verdict, lambda v: retire_folder(v.run_dir, v.private)))
    return done


def _attempt(verdict: Verdict, act: Callable[[Verdict], list[Path]]) -> Pruned:
    try:
        return Pruned(verdict, tuple(act(verdict)))
    except (OSError, TimeoutError) as err:
        return Pruned(verdict, error=getattr(err, "strerror", None) or str(err))


def retire(run_root: Path, redactor: Redactor | None = None) -> list[Path]:
    """What the ended run's private folder holds that no later command needs, removed (the
    paths removed; none when there was nothing). The caller has made sure the run ended.
    `redactor`: the run's known secrets (the driver's); by default those the run's private
    folder and recipe tell."""
    return retire_folder(Path(run_root), private_root_of(run_root), redactor)


def retire_folder(run_root: Path, private: Path, redactor: Redactor | None = None) -> list[Path]:
    """`retire` of a private folder found by `survey`: the logs first (copied, and the record
    pointed at the copies), then the folders and files, so that a failure halfway leaves the
    logs readable."""
    present = _real_folder(private)
    if present:
        _check_inside(private, runs_root())
    if (run_root / JOBS_FILE).is_file():
        run = RunDir.open(run_root)
        if present and run.stale_logs():
            run.redactor = redactor or known_secrets(run_root)
            run.collect_logs(only_stale=True)
        # also when the folder went already: a session's record written again names the raw logs
        point_logs_at_copies(run_root, private)
    targets = removable(private) if present else []
    if not targets:
        return []
    removed = _remove(targets)
    for kept in KEPT_AFTER_RUN:  # a folder on the way to something kept, emptied
        _remove_empty(private.joinpath(*kept[:-1]))
    return removed


def point_logs_at_copies(run_root: Path, private: Path) -> None:
    """The run's record names its jobs' raw logs, in the private folder: it names the
    redacted copies in the run folder instead, which stay."""

    def repoint(record: RunRecord | None) -> RunRecord | None:
        if record is None:
            return None
        changed = False
        for job in record.jobs:
            for stream in ("stdout", "stderr"):
                recorded = getattr(job, stream)
                if recorded and private in Path(recorded).parents:
                    setattr(job, stream, str(log_copy_path(run_root, Path(recorded))))
                    changed = True
        return record if changed else None

    rewrite_run(run_root, repoint)


def known_secrets(run_root: Path) -> Redactor:
    """Every secret a run is known to have, read back after its session: those of its recipe
    (if the file still reads), of this environment, its API key, its services' client
    credentials, its monitoring password and its services' metrics tokens."""
    redactor = _recipe_redactor(run_root) or Redactor(secrets_from_env(os.environ))
    folder = secrets_dir_of(run_root)
    files = [folder / "api_key"] + [f for pattern in MONITOR_SECRETS for f in folder.glob(pattern)]
    for path in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            redactor.add(path.read_text().strip())
    for name in _listing(folder)[0]:
        if name.endswith(".client.json"):
            service = name.removesuffix(".client.json")
            for value in secrets_from_env(read_client_settings(run_root, service)):
                redactor.add(value)
    return redactor


def _recipe_redactor(run_root: Path) -> Redactor | None:
    record = read_run(run_root)
    if record is None or not record.recipe_path:
        return None
    # deferred: the recipe module pulls in every kind; only logs left uncopied need it
    from pytest_aifactory.recipe import RecipeError, load_recipe

    try:
        return run_redactor(load_recipe(record.recipe_path))
    except (RecipeError, OSError, ValueError):
        return None


def _remove(paths: list[Path]) -> list[Path]:
    """Each path removed: a link or a file unlinked, a folder removed with what it holds
    (`shutil.rmtree` works on file descriptors here and never follows a link out); then the
    folders left empty above it, up to `runs/`."""
    top = runs_root()
    removed = []
    for path in paths:
        _check_inside(path, top)
        try:
            if _real_folder(path):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another prune was first
            continue
        removed.append(path)
        _remove_empty(path.parent)
    return removed


def _remove_empty(folder: Path) -> None:
    """`folder` and those above it while they are empty, up to (not including) `runs/`."""
    top = runs_root()
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # not empty: neither is anything above it
            return
        folder = folder.parent


def _check_inside(path: Path, top: Path) -> None:
    """Every folder from `runs/` down to `path`'s own is a real folder, not a link: what is
    removed is what lies under `runs/`, not what a link there points to."""
    if top not in path.parents:
        raise OSError(f"{path} is not under {top}: not removed")
    if not _real_folder(top):
        raise OSError(f"{top} is not a folder (a link?): nothing removed")
    walked = top
    for part in path.parent.relative_to(top).parts:
        walked = walked / part
        if not _real_folder(walked):
            raise OSError(f"{walked} is not a folder (a link?): {path} not removed")


def _real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _listing(folder: Path) -> tuple[set[str], list[Path]]:
    """The names in `folder` and its sub-folders that are folders, not links to one."""
    names: set[str] = set()
    folders: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            names.add(entry.name)
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
    return names, folders


def prune_ended_quietly(ended_ago_s: float = ENDED_AGO_S) -> None:
    """At a session's start: the secrets of runs that ended at least `ended_ago_s` ago (and
    those of runs whose folder is gone) removed; whatever goes wrong is left for later,
    never failing the session."""
    with contextlib.suppress(Exception):
        prune([v for v in survey(ended_ago_s) if v.action != "keep"])
