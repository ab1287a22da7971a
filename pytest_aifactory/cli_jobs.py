"""`aifactory status | stop | logs`: the jobs of runs, from any folder, after the driver is gone.

Runs are found through the per-user index (`cluster/run_records.py`); a run is named by its id, a
unique prefix of it, its folder, or `latest`. What is found and done is the Python API's
(`api_runs.py`, `api_sessions.py`); this module prints it.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import contextlib
import datetime as dt
import io
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from pytest_aifactory.api_runs import (
    counters_of,
    find_own_run,
    find_run,
    job_log_files,
    jobs_named,
    runs,
    status_of,
    status_redactor,
)
from pytest_aifactory.api_sessions import stop_jobs, stop_session
from pytest_aifactory.api_shapes import ApiError, NotOwnedError, RunSummary, StopResult
from pytest_aifactory.cli_common import Subcommands
from pytest_aifactory.cli_common import print_error as _error
from pytest_aifactory.cluster.run_control import driver_alive
from pytest_aifactory.cluster.run_records import TERMINAL_STATES, RunRecord, list_runs, read_run
from pytest_aifactory.loadgen.live import ClientCounters
from pytest_aifactory.redact import Redactor
from pytest_aifactory.tabulate import format_table

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FOLLOW_POLL_S = 0.25
WATCH_INTERVAL_S = 2.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"
COPY_CHUNK = 1 << 16


def _resolve(ref: str) -> RunRecord | None:
    try:
        return find_run(ref)
    except ApiError as err:
        _error(str(err))
        return None


def _resolve_own(ref: str, command: str) -> RunRecord | None:
    """A run this account owns: `stop` would signal, `logs` would print, what another
    account's run folder names (its job ids, its log paths), planted or not."""
    try:
        return find_own_run(ref, command)
    except ApiError as err:
        _error(str(err))
        return None


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
    sys.stdout.write(status_redactor(record).text(shown.getvalue()))
    return code


def _status_of_runs(as_json: bool) -> int:
    """The runs with live jobs, and the latest one."""
    entries = list_runs()
    latest = entries[-1].run_dir if entries else None
    shown: list[RunSummary] = [s for s in runs() if s.live_jobs or s.run_dir == latest]
    if as_json:
        listing = [
            {
                "run_id": summary.run_id,
                "run_dir": summary.run_dir,
                "recipe": summary.recipe,
                "status": summary.recorded_status,
                "kept_services": summary.kept_services,
                "driver_alive": summary.driver_alive,
                "started_at": summary.started_at.isoformat(),
                "latest": summary.run_dir == latest,
                "live_jobs": [
                    {"name": j.name, "role": j.role, "state": j.state} for j in summary.live_jobs
                ],
            }
            for summary in shown
        ]
        print(json.dumps({"runs": listing}, indent=2))
        return EXIT_OK
    if not shown:
        print("no runs recorded yet", file=sys.stderr)
        return EXIT_OK
    rows = []
    for summary in shown:
        roles = collections.Counter(j.role for j in summary.live_jobs)
        shown_roles = ["service", "client", *sorted(set(roles) - {"service", "client"})]
        parts = [_count(roles[role], role) for role in shown_roles if roles[role]]
        rows.append(
            (
                summary.run_id,
                summary.recipe,
                summary.status,
                f"{age(_since(summary.started_at))} ago",
                ", ".join(parts) or "none",
                summary.run_dir,
            )
        )
    print(format_table(("RUN", "RECIPE", "STATUS", "STARTED", "LIVE JOBS", "FOLDER"), rows))
    return EXIT_OK


def _status_of_run(record: RunRecord, as_json: bool) -> int:
    status = status_of(record)
    jobs = status.jobs
    if as_json:
        run = record.model_dump(mode="json", exclude={"jobs"})
        run["status_now"] = status.summary.status
        run["driver_alive"] = status.summary.driver_alive
        print(json.dumps({"run": run, "jobs": [j.to_json() for j in jobs]}, indent=2))
        return EXIT_OK
    driver = f"pid {record.driver.pid} on {record.driver_host}" if record.driver else "-"
    alive = status.summary.driver_alive
    if alive is not None and record.status == "running":
        driver += " (alive)" if alive else " (gone)"
    print(f"run      {record.run_id}")
    print(f"recipe   {record.recipe} ({record.recipe_path or '-'})")
    print(f"folder   {record.run_dir}")
    print(f"status   {status.summary.status}")
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
    for job in jobs:
        state = job.state + ("" if job.checked else "?")
        if job.kept and job.state not in TERMINAL_STATES:
            state += " (kept)"
        rows.append(
            (
                job.name,
                job.role,
                job.job_id,
                state,
                ",".join(job.nodes),
                job.endpoint,
                age(job.age_s),
                job.health,
            )
        )
    print()
    headers = ("NAME", "ROLE", "JOB", "STATE", "NODES", "ENDPOINT", "AGE", "HEALTH")
    print(format_table(headers, rows, right={6}))
    if any(not job.checked for job in jobs):
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
            counters = counters_of(record)
            rows, source, problem = counters.rows, counters.source, counters.note
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
    if args.session and args.all:
        _error("stop: --session stops one run's session: give its RUN, not --all")
        return EXIT_USAGE
    if args.session:
        return _stop_session(args.run)
    if args.all:
        refs = [s.run_dir for s in runs(live_only=True)]
        which = "any run of yours"
    else:
        record = _resolve_own(args.run, "stop")
        if record is None:
            return EXIT_USAGE
        refs = [record.run_dir]
        which = f"run {record.run_id}"
    results: list[StopResult] = []
    for ref in refs:
        try:
            results += stop_jobs(ref)
        except NotOwnedError:  # another account's runs are not ours to stop: left alone
            continue
        except ApiError as err:
            _error(str(err))
            return EXIT_USAGE
    if not results:
        print(f"nothing to stop: no live jobs in {which}")
        return EXIT_OK
    return _print_stopped(results)


def _print_stopped(results: list[StopResult]) -> int:
    status = EXIT_OK
    for result in results:
        if result.ok:
            print(f"stopped {result.job} of run {result.run_id} ({result.detail})")
        else:
            _error(f"cannot stop {result.job} of run {result.run_id}: {result.detail}")
            status = EXIT_FAILED
    return status


def _stop_session(ref: str) -> int:
    """`stop --session RUN`: the session saves what it measured, then its jobs are stopped."""
    record = _resolve_own(ref, "stop")
    if record is None:
        return EXIT_USAGE
    print(
        f"stopping the session of run {record.run_id} (it saves what it measured first)",
        file=sys.stderr,
    )
    try:
        results = stop_session(record.run_dir)
    except ApiError as err:
        _error(str(err))
        return EXIT_USAGE
    if not results:
        print(f"nothing to stop: no session or live job in run {record.run_id}")
        return EXIT_OK
    return _print_stopped(results)


# -- aifactory logs RUN [NAME] [-f] [-n LINES] --------------------------------------------------


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
    try:
        jobs = jobs_named(record, args.name)
    except ApiError as err:
        _error(str(err))
        return EXIT_USAGE
    out = _RedactingWriter(sys.stdout, status_redactor(record))
    files = [(log.label, Path(log.path)) for log in job_log_files(jobs)]
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
    stop.add_argument(
        "--session",
        action="store_true",
        help="stop the run's session as Ctrl-C would (it saves what it measured), then its jobs",
    )
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
