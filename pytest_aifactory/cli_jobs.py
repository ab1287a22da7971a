"""`aifactory status | stop | logs`: the jobs of runs, from any folder, after the driver is gone.

Runs are found through the per-user index (`cluster/run_records.py`); a run is named by its id, a
unique prefix of it, its folder, or `latest`.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import contextlib
import datetime as dt
import glob
import io
import json
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from pytest_aifactory.cli_common import Subcommands
from pytest_aifactory.cli_common import print_error as _error
from pytest_aifactory.cluster.run_control import (
    LiveJob,
    driver_alive,
    observe,
    service_healthy,
    stop_run,
)
from pytest_aifactory.cluster.run_records import (
    TERMINAL_STATES,
    JobRecord,
    RunNotFound,
    RunRecord,
    iter_records,
    list_runs,
    read_run,
    resolve_run,
)
from pytest_aifactory.cluster.rundir import not_owned, read_client_settings, secrets_dir_of
from pytest_aifactory.loadgen.live import (
    ClientCounters,
    fetch_client_counters,
    progress_counters,
)
from pytest_aifactory.monitor.credentials import read_credentials
from pytest_aifactory.monitor.layout import read_endpoints
from pytest_aifactory.redact import Redactor, secrets_from_env
from pytest_aifactory.tabulate import format_table

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FOLLOW_POLL_S = 0.25
WATCH_INTERVAL_S = 2.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"
COPY_CHUNK = 1 << 16


def _resolve(ref: str) -> RunRecord | None:
    try:
        return resolve_run(ref)
    except RunNotFound as err:
        _error(str(err))
        return None


def _resolve_own(ref: str, command: str) -> RunRecord | None:
    """A run this account owns: `stop` would signal, `logs` would print, what another
    account's run folder names (its job ids, its log paths), planted or not."""
    record = _resolve(ref)
    if record is None:
        return None
    problem = not_owned(Path(record.run_dir))
    if problem:
        _error(f"{command}: {problem}")
        return None
    return record


def age(seconds: float) -> str:
    """`42s`, `5m03s`, `2h05m`, `3d04h`: short enough for a table column."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _since(when: dt.datetime) -> float:
    return (dt.datetime.now(dt.UTC) - when).total_seconds()


def _might_live(record: RunRecord) -> bool:
    """Only runs with a job not known to have ended need a look at processes or Slurm."""
    return any(job.state not in TERMINAL_STATES for job in record.jobs)


def _run_status(record: RunRecord, live: list[LiveJob]) -> str:
    status = record.status
    if status == "running" and driver_alive(record) is False:
        status = "running (driver gone)"
    if status == "submitted" and not any(j.active for j in live):
        status = "submitted, ended before the session started (see its session log)"
    if any(j.record.kept and j.active for j in live):
        status += ", services kept"
    return status


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# -- aifactory status [RUN] [--json] ------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch_command(args)
    record = None
    if args.run is not None:
        record = _resolve(args.run)
        if record is None:
            return EXIT_USAGE
    # what status shows is pasted into tickets and chats: secrets never reach it
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        code = _status_of_run(record, args.json) if record else _status_of_runs(args.json)
    sys.stdout.write(_status_redactor(record).text(shown.getvalue()))
    return code


def _status_redactor(record: RunRecord | None) -> Redactor:
    """Every secret the run keeps (its API key, its services' credentials), and whatever looks
    like one (`user:pass@`, `Bearer ...`, `--api-key X`)."""
    redactor = Redactor()
    if record is None:
        return redactor
    secrets = secrets_dir_of(Path(record.run_dir))
    with contextlib.suppress(OSError):
        redactor.add((secrets / "api_key").read_text().strip())
    for settings in secrets.glob("*.client.json"):
        service = settings.name.removesuffix(".client.json")
        for value in secrets_from_env(read_client_settings(Path(record.run_dir), service)):
            redactor.add(value)
    return redactor


def _status_of_runs(as_json: bool) -> int:
    entries = list_runs()
    latest = entries[-1].run_dir if entries else None
    shown = []
    for entry, record in iter_records(entries):
        live = [j for j in observe(record) if j.active] if _might_live(record) else []
        if live or entry.run_dir == latest:
            shown.append((record, live))
    if as_json:
        runs = [
            {
                "run_id": record.run_id,
                "run_dir": record.run_dir,
                "recipe": record.recipe,
                "status": record.status,
                "kept_services": any(j.record.kept for j in live),
                "driver_alive": driver_alive(record),
                "started_at": record.started_at.isoformat(),
                "latest": record.run_dir == latest,
                "live_jobs": [
                    {"name": j.record.name, "role": j.record.role, "state": j.state} for j in live
                ],
            }
            for record, live in shown
        ]
        print(json.dumps({"runs": runs}, indent=2))
        return EXIT_OK
    if not shown:
        print("no runs recorded yet", file=sys.stderr)
        return EXIT_OK
    rows = []
    for record, live in shown:
        roles = collections.Counter(j.record.role for j in live)
        shown_roles = ["service", "client", *sorted(set(roles) - {"service", "client"})]
        parts = [_count(roles[role], role) for role in shown_roles if roles[role]]
        rows.append(
            (
                record.run_id,
                record.recipe,
                _run_status(record, live),
                f"{age(_since(record.started_at))} ago",
                ", ".join(parts) or "none",
                record.run_dir,
            )
        )
    print(format_table(("RUN", "RECIPE", "STATUS", "STARTED", "LIVE JOBS", "FOLDER"), rows))
    return EXIT_OK


def _job_view(live: LiveJob) -> dict[str, Any]:
    job = live.record
    health = None
    if job.service is not None and live.active and live.checked and job.endpoint:
        health = "healthy" if service_healthy(job.service) else "unhealthy"
    return {
        "name": job.name,
        "role": job.role,
        "job_id": job.job_id,
        "executor": job.executor,
        "state": live.state,
        "checked": live.checked,
        "kept": job.kept,
        "nodes": live.nodes,
        "endpoint": job.endpoint,
        "health": health,
        "submitted_at": job.submitted_at.isoformat(),
        "age_s": round(_since(job.submitted_at), 1),
        "stdout": job.stdout,
        "stderr": job.stderr,
    }


def _status_of_run(record: RunRecord, as_json: bool) -> int:
    live = observe(record)
    jobs = [_job_view(j) for j in live]
    if as_json:
        run = record.model_dump(mode="json", exclude={"jobs"})
        run["status_now"] = _run_status(record, live)
        run["driver_alive"] = driver_alive(record)
        print(json.dumps({"run": run, "jobs": jobs}, indent=2))
        return EXIT_OK
    driver = f"pid {record.driver.pid} on {record.driver_host}" if record.driver else "-"
    alive = driver_alive(record)
    if alive is not None and record.status == "running":
        driver += " (alive)" if alive else " (gone)"
    print(f"run      {record.run_id}")
    print(f"recipe   {record.recipe} ({record.recipe_path or '-'})")
    print(f"folder   {record.run_dir}")
    print(f"status   {_run_status(record, live)}")
    print(
        f"started  {record.started_at:%Y-%m-%d %H:%M:%S} UTC ({age(_since(record.started_at))} ago)"
    )
    print(f"driver   {driver}, executor {record.executor}")
    for reused in record.reused_services:
        print(f"uses     {reused.name} at {reused.endpoint}, kept by run {reused.run_id}")
    if not jobs:
        print("no jobs")
        return EXIT_OK
    rows = []
    for view in jobs:
        state = view["state"] + ("" if view["checked"] else "?")
        if view["kept"] and view["state"] not in TERMINAL_STATES:
            state += " (kept)"
        rows.append(
            (
                view["name"],
                view["role"],
                view["job_id"],
                state,
                ",".join(view["nodes"]),
                view["endpoint"],
                age(view["age_s"]),
                view["health"],
            )
        )
    print()
    headers = ("NAME", "ROLE", "JOB", "STATE", "NODES", "ENDPOINT", "AGE", "HEALTH")
    print(format_table(headers, rows, right={6}))
    if any(not view["checked"] for view in jobs):
        print("?: as last recorded (cannot be checked from here)")
    return EXIT_OK


# -- aifactory status RUN --watch [--interval S] [--count N] ------------------------------------

WATCH_HEADERS = (
    "CLIENT",
    "LEVEL",
    "NODE",
    "PROCESS",
    "DONE",
    "FAILED",
    "TOKENS",
    "IN FLIGHT",
    "REQ/S",
)


def render_watch(
    rows: list[ClientCounters],
    previous: Mapping[tuple[str, str, str, str], ClientCounters] | None = None,
    elapsed_s: float | None = None,
    title: str = "",
) -> str:
    """One frame of `status --watch`: a row per load process and a total. REQ/S is the
    completed requests since the previous frame (`elapsed_s` ago) per second."""
    lines = [title] if title else []
    if not rows:
        return "\n".join([*lines, "no client counters yet"])

    def rate(row: ClientCounters) -> float | None:
        before = (previous or {}).get(row.key)
        if before is None or not elapsed_s or elapsed_s <= 0:
            return None
        return max(0, row.completed - before.completed) / elapsed_s

    table: list[tuple[object, ...]] = []
    rates = []
    for row in rows:
        per_s = rate(row)
        rates.append(per_s)
        table.append(
            (
                row.client,
                row.level,
                row.node,
                row.process,
                row.completed,
                row.failed,
                row.output_tokens,
                row.in_flight,
                None if per_s is None else f"{per_s:.1f}",
            )
        )
    if len(rows) > 1:
        known = [r for r in rates if r is not None]
        table.append(
            (
                "total",
                None,
                None,
                len(rows),
                sum(r.completed for r in rows),
                sum(r.failed for r in rows),
                sum(r.output_tokens for r in rows),
                sum(r.in_flight for r in rows),
                f"{sum(known):.1f}" if known else None,
            )
        )
    lines.append(format_table(WATCH_HEADERS, table, right={3, 4, 5, 6, 7, 8}))
    return "\n".join(lines)


def _watch_command(args: argparse.Namespace) -> int:
    if args.json:
        _error("status: --watch and --json do not go together")
        return EXIT_USAGE
    if args.interval <= 0 or (args.count is not None and args.count < 1):
        _error("status: --interval needs a positive number of seconds, --count at least 1")
        return EXIT_USAGE
    record = _resolve(args.run if args.run is not None else "latest")
    if record is None:
        return EXIT_USAGE
    return watch_run(record, args.interval, args.count, sys.stdout)


def _live_counters(record: RunRecord) -> tuple[list[ClientCounters], str, str | None]:
    """The rows, where they came from, and why not from the pushgateway (None if they did)."""
    endpoints = read_endpoints(record.root)
    url = endpoints.pushgateway_url if endpoints is not None else None
    if url is None:
        problem = "the run has no pushgateway"
    else:
        try:
            credentials = read_credentials(record.root)
            headers = credentials.header if credentials else None
            rows = fetch_client_counters(url, record.run_id, headers=headers)
            return rows, f"pushgateway {url}", None
        except (OSError, ValueError) as err:  # requests' errors are OSErrors
            problem = f"its pushgateway at {url} does not answer ({type(err).__name__})"
    return progress_counters(record.root), "progress files", problem


def _watch_ended(record: RunRecord) -> str | None:
    if record.status != "running":
        return f"run {record.run_id} is {record.status}"
    if driver_alive(record) is False:
        return f"the driver of run {record.run_id} is gone"
    return None


def watch_run(record: RunRecord, interval_s: float, count: int | None, out: IO[str]) -> int:
    """Reprint the run's live client counters every `interval_s` until the run ends, Ctrl-C,
    or `count` frames; a terminal is cleared between frames, a pipe gets them one after
    another."""
    clear = out.isatty()
    previous: dict[tuple[str, str, str, str], ClientCounters] | None = None
    previous_at: float | None = None
    said_fallback = False
    frames = 0
    try:
        while True:
            rows, source, problem = _live_counters(record)
            if problem is not None and not said_fallback:
                print(f"note: {problem}; showing the progress files instead", file=sys.stderr)
                said_fallback = True
            now = time.monotonic()
            title = f"run {record.run_id}  {dt.datetime.now():%H:%M:%S}  from {source}"
            elapsed = None if previous_at is None else now - previous_at
            frame = render_watch(rows, previous, elapsed, title)
            if clear:
                out.write(CLEAR_SCREEN)
            elif frames:
                out.write("\n")
            out.write(frame + "\n")
            out.flush()
            previous, previous_at = {row.key: row for row in rows}, now
            frames += 1
            record = read_run(record.root) or record
            ended = _watch_ended(record)
            if ended is not None:
                print(ended, file=out)
                return EXIT_OK
            if count is not None and frames >= count:
                return EXIT_OK
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return EXIT_OK


# -- aifactory stop RUN | --all -----------------------------------------------------------------


def cmd_stop(args: argparse.Namespace) -> int:
    if args.all == (args.run is not None):
        _error("stop: give a RUN or --all")
        return EXIT_USAGE
    if args.all:
        records = [r for _, r in iter_records(list_runs()) if _might_live(r)]
    else:
        record = _resolve_own(args.run, "stop")
        if record is None:
            return EXIT_USAGE
        records = [record]
    records = [r for r in records if not not_owned(Path(r.run_dir))]
    if not records:
        print("nothing to stop: no live jobs in any run of yours")
        return EXIT_OK
    status = EXIT_OK
    stopped_any = False
    for record in records:
        for result in stop_run(record):
            stopped_any = True
            if result.ok:
                print(f"stopped {result.job.name} of run {record.run_id} ({result.detail})")
            else:
                _error(f"cannot stop {result.job.name} of run {record.run_id}: {result.detail}")
                status = EXIT_FAILED
    if not stopped_any:
        which = "any run" if args.all else f"run {records[0].run_id}"
        print(f"nothing to stop: no live jobs in {which}")
    return status


# -- aifactory logs RUN [NAME] [-f] [-n LINES] --------------------------------------------------


def _select_jobs(record: RunRecord, name: str | None) -> list[JobRecord] | None:
    """All jobs, the job `name` (a job array's `name.0`, `name.1`... too), `service-<name>`,
    or the job of another run that kept a service this run reused."""
    if name is None:
        return list(record.jobs)
    for wanted in (name, f"service-{name}"):
        found = [j for j in record.jobs if j.name == wanted or j.name.startswith(wanted + ".")]
        if found:
            return found
    for reused in record.reused_services:
        if name in (reused.name, f"service-{reused.name}", reused.job):
            other = read_run(Path(reused.run_dir))
            if other is not None:
                return [j for j in other.jobs if j.name == reused.job]
    return None


_FIRST_TASK_LOG = re.compile(r"^(?P<job>.+)_0_log\.(?P<ext>out|err)$")


def _task_logs(path: Path) -> list[tuple[int, Path]]:
    """The logs of every task of a job (one per client process, say), from the first one's
    name: `55_0_log.out` -> `55_0_log.out`, `55_1_log.out`, ..."""
    match = _FIRST_TASK_LOG.match(path.name)
    if match is None:
        return [(0, path)]
    tasks = {0: path}
    for other in path.parent.glob(f"{glob.escape(match['job'])}_*_log.{match['ext']}"):
        task = other.name[len(match["job"]) + 1 : -len(f"_log.{match['ext']}")]
        if task.isdigit():
            tasks[int(task)] = other
    return sorted(tasks.items())


def _log_files(jobs: list[JobRecord]) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for job in jobs:
        for label, recorded in (("stdout", job.stdout), ("stderr", job.stderr)):
            if not recorded:
                continue
            tasks = _task_logs(Path(recorded))
            for task, path in tasks:
                if path not in {p for _, p in files}:
                    shown = (
                        f"{job.name} {label}" if len(tasks) == 1 else f"{job.name}[{task}] {label}"
                    )
                    files.append((shown, path))
    return files


def _print_file(path: Path, lines: int | None, out: IO[str] | io.TextIOBase) -> int:
    """Writes the file (or its last `lines`), ending with a newline; returns the offset a
    follower goes on from."""
    text = ""
    with path.open("rb") as fh:
        if lines is None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            while chunk := fh.read(COPY_CHUNK):
                text = decoder.decode(chunk) or text
                out.write(text)
            out.write(decoder.decode(b"", final=True))
        else:
            tail = collections.deque(fh, maxlen=lines) if lines > 0 else []
            text = b"".join(tail).decode("utf-8", errors="replace")
            out.write(text)
        if text and not text.endswith("\n"):
            out.write("\n")
        return fh.tell()


def cmd_logs(args: argparse.Namespace) -> int:
    if args.lines is not None and args.lines < 0:
        _error("logs: -n needs a number of lines >= 0")
        return EXIT_USAGE
    record = _resolve_own(args.run, "logs")
    if record is None:
        return EXIT_USAGE
    jobs = _select_jobs(record, args.name)
    if jobs is None:
        names = ", ".join(j.name for j in record.jobs) or "none"
        _error(f"run {record.run_id} has no job '{args.name}' (jobs: {names})")
        return EXIT_USAGE
    out = _RedactingWriter(sys.stdout, _status_redactor(record))
    files = _log_files(jobs)
    offsets: dict[Path, int] = {}
    shown = None
    for label, path in files:
        if not path.is_file() or path.stat().st_size == 0:
            continue
        if shown is not None:
            print(file=out)
        print(f"==> {label}: {path} <==", file=out)
        offsets[path] = _print_file(path, args.lines, out)
        shown = path
    if shown is None and not args.follow:
        print(
            f"no log output from {args.name or 'any job'} of run {record.run_id}", file=sys.stderr
        )
    out.flush()
    if not args.follow:
        return EXIT_OK
    return _follow(files, offsets, shown, out)


def _follow(
    files: list[tuple[str, Path]],
    offsets: dict[Path, int],
    shown: Path | None,
    out: _RedactingWriter,
) -> int:
    """Like `tail -f` over several files: a header whenever the output switches file; the
    decoders keep a character split across two reads whole. Ends on Ctrl-C, with status 0."""
    decoders = {path: codecs.getincrementaldecoder("utf-8")(errors="replace") for _, path in files}
    try:
        while True:
            for label, path in files:
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                offset = offsets.get(path, 0)
                if size < offset:  # truncated or replaced: start again
                    offset = 0
                if size == offset:
                    continue
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read(size - offset)
                offsets[path] = offset + len(data)
                if shown != path:
                    print(f"\n==> {label}: {path} <==", file=out)
                    shown = path
                out.write(decoders[path].decode(data))
                out.flush()
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return EXIT_OK


class _RedactingWriter(io.TextIOBase):
    """What `logs` prints: the job's own files hold what servers echoed (keys included), so
    they go out redacted, a whole line at a time (a secret split across two reads is still
    seen whole); `flush` lets out a line without its end, as `-f` needs."""

    def __init__(self, out: IO[str], redactor: Redactor) -> None:
        self._out = out
        self._redactor = redactor
        self._pending = ""

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._out.write(self._redactor.text(line) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._out.write(self._redactor.text(self._pending))
            self._pending = ""
        self._out.flush()


# -- registration -------------------------------------------------------------------------------


def register_jobs(subcommands: Subcommands) -> None:
    status = subcommands.add_parser(
        "status", help="runs with live jobs, or one run's services and clients"
    )
    status.add_argument(
        "run", nargs="?", metavar="RUN", help="run id, unique prefix, folder or 'latest'"
    )
    status.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    status.add_argument(
        "--watch",
        action="store_true",
        help="keep showing the run's live client counters (Ctrl-C ends; default RUN: latest)",
    )
    status.add_argument(
        "--interval",
        type=float,
        default=WATCH_INTERVAL_S,
        metavar="S",
        help=f"seconds between refreshes with --watch (default {WATCH_INTERVAL_S:g})",
    )
    status.add_argument(
        "--count", type=int, metavar="N", help="with --watch: stop after N refreshes"
    )
    status.set_defaults(func=cmd_status)

    stop = subcommands.add_parser("stop", help="cancel a run's live jobs, kept services included")
    stop.add_argument(
        "run", nargs="?", metavar="RUN", help="run id, unique prefix, folder or 'latest'"
    )
    stop.add_argument("--all", action="store_true", help="every run that has live jobs")
    stop.set_defaults(func=cmd_stop)

    logs = subcommands.add_parser("logs", help="print (or follow) the logs of a run's jobs")
    logs.add_argument("run", metavar="RUN", help="run id, unique prefix, folder or 'latest'")
    logs.add_argument(
        "name", nargs="?", metavar="NAME", help="one job, e.g. service-llm (default: all)"
    )
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing (Ctrl-C ends)")
    logs.add_argument(
        "-n", "--lines", type=int, metavar="LINES", help="only the last LINES of each log"
    )
    logs.set_defaults(func=cmd_logs)
