"""`aifactory metrics | grafana`: a run's server-side series, as tables, files or a dashboard.

`metrics` reads `metrics.parquet` (the samples of every test window); `grafana` exports a
dashboard of the run and says how to serve the run's kept Prometheus data to it again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pytest_aifactory.cli_common import Subcommands, print_error
from pytest_aifactory.cluster.run_records import RunNotFound, RunRecord, resolve_run
from pytest_aifactory.monitor.credentials import read_credentials
from pytest_aifactory.monitor.grafana import (
    DATASOURCE_UID,
    DEFAULT_PROMETHEUS_URL,
    GRAFANA_HOME,
    dashboard_uid,
    export_grafana,
    grafana_env,
    has_tsdb,
    panel_queries,
    provisioning_dir,
    read_summary,
    replay_argv,
    run_kinds,
    run_window,
    write_replay_config,
)
from pytest_aifactory.monitor.layout import metrics_path, read_endpoints
from pytest_aifactory.monitor.query import PrometheusClient
from pytest_aifactory.monitor.run_monitor import read_metrics
from pytest_aifactory.monitor.series import Series, find_series
from pytest_aifactory.monitor.window import counter_increase
from pytest_aifactory.tabulate import format_table

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
SOURCE_ORDER = {"client": 0, "service": 1, "node": 2, "gpu": 3}
READY_TIMEOUT_S = 2.0
_SAMPLE_KEY = ["series", "service", "node", "instance", "labels", "timestamp"]
_SI = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k"))


class UsageError(Exception):
    """A wrong argument or a run without what was asked for; the message says which."""


def _resolve(ref: str) -> RunRecord:
    try:
        return resolve_run(ref)
    except RunNotFound as err:
        raise UsageError(str(err)) from None


def _run_id(record: RunRecord) -> str:
    return record.run_id or record.root.name


def _why_no_monitoring(run_root: Path) -> str:
    endpoints = read_endpoints(run_root)
    mode: str | None
    if endpoints is not None:
        mode, note = endpoints.mode, endpoints.note
    else:  # a run that ended before monitoring started says so in its summary, if at all
        monitoring = read_summary(run_root).get("monitoring") or {}
        mode, note = monitoring.get("mode"), str(monitoring.get("note") or "")
    suffix = f" ({note})" if note else ""
    if mode == "off":
        return f"monitoring was off{suffix}"
    if mode == "scrape":
        return f"no Prometheus ran, samples were scraped directly{suffix}"
    if mode == "prometheus":
        return f"its Prometheus data (monitor/tsdb) is not there{suffix}"
    return "monitoring did not run"


# -- aifactory metrics RUN ----------------------------------------------------------------------


def _summary_tests(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(test id, name) of every test the run recorded."""
    tests = []
    for test in summary.get("tests") or []:
        test_id = test.get("test_id") or test.get("id")
        if test_id:
            tests.append((str(test_id), str(test.get("name") or "")))
    return tests


def match_test(ref: str, frame: pd.DataFrame, summary: dict[str, Any]) -> str:
    """A test id by exact id, exact name, or a part of its id that only one test has."""
    tests = _summary_tests(summary)
    known = {test_id for test_id, _ in tests}
    tests += [(str(t), "") for t in frame["test_id"].dropna().unique() if str(t) not in known]
    ids = list(dict.fromkeys(test_id for test_id, _ in tests))
    if ref in ids:
        return ref
    by_name = list(dict.fromkeys(test_id for test_id, name in tests if name == ref))
    if len(by_name) == 1:
        return by_name[0]
    found = by_name or [test_id for test_id in ids if ref in test_id]
    if len(found) == 1:
        return found[0]
    if not found:
        listed = ", ".join(ids[:10]) + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")
        raise UsageError(f"no test matching '{ref}' (tests: {listed or 'none'})")
    raise UsageError(f"'{ref}' matches {len(found)} tests: {', '.join(found[:10])}")


def _is_counter(series: Series | None, metric: str) -> bool:
    if series is not None:
        return series.type == "counter"
    return metric.endswith("_total")


def summarize(frame: pd.DataFrame, kinds: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One entry per series and service (or node): what the table shows.

    Samples at a window's edge appear in both neighbouring windows: counted once."""
    frame = frame.drop_duplicates(subset=_SAMPLE_KEY)
    where = frame["service"].fillna("")
    for fallback in ("node", "instance"):
        where = where.where(where != "", frame[fallback].fillna(""))
    frame = frame.assign(where=where)
    entries = []
    for (name, source, place), group in frame.groupby(
        ["series", "source", "where"], dropna=False, sort=False
    ):
        metric = str(group["metric"].iloc[0])
        series = find_series(str(name), tuple(kinds))
        first, last = float(group["timestamp"].min()), float(group["timestamp"].max())
        entry: dict[str, Any] = {
            "series": name,
            "source": source,
            "where": place,
            "unit": series.unit if series else "",
            "counter": _is_counter(series, metric),
            "samples": len(group),
            "first": first,
            "last": last,
            "min": float(group["value"].min()),
            "mean": float(group["value"].mean()),
            "max": float(group["value"].max()),
            "increase": None,
            "rate": None,
        }
        if entry["counter"]:
            increase = counter_increase(group, str(name))
            entry["increase"] = increase
            if increase is not None and last > first:
                entry["rate"] = increase / (last - first)
        entries.append(entry)
    entries.sort(key=lambda e: (SOURCE_ORDER.get(str(e["source"]), 9), e["series"], e["where"]))
    return entries


def number(value: float | None) -> str | None:
    """Four significant digits, with k/M/G/T/P past 10 000 so columns stay narrow."""
    if value is None or not np.isfinite(value):
        return None
    for scale, suffix in _SI:
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.4g}"


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S")


def render_table(entries: list[dict[str, Any]]) -> str:
    headers = (
        "SERIES",
        "SOURCE",
        "SERVICE/NODE",
        "UNIT",
        "SAMPLES",
        "FIRST",
        "LAST",
        "MIN",
        "MEAN",
        "MAX",
        "INCREASE",
        "RATE/S",
    )
    rows = [
        (
            e["series"],
            e["source"],
            e["where"],
            e["unit"],
            e["samples"],
            _clock(e["first"]),
            _clock(e["last"]),
            number(e["min"]),
            number(e["mean"]),
            number(e["max"]),
            number(e["increase"]),
            number(e["rate"]),
        )
        for e in entries
    ]
    return format_table(headers, rows, right={4, 7, 8, 9, 10, 11})


def _read_samples(record: RunRecord) -> pd.DataFrame:
    try:
        frame = read_metrics(record.root)
    except Exception as err:  # pyarrow raises its own types for a damaged file
        raise UsageError(f"cannot read the samples of {record.root}: {err}") from None
    if frame is None:
        why = _why_no_monitoring(record.root)
        raise UsageError(f"run {_run_id(record)} has no metrics.parquet: {why}")
    return frame


def _filter(args: argparse.Namespace, record: RunRecord, frame: pd.DataFrame) -> pd.DataFrame:
    summary = read_summary(record.root)
    if args.test is not None:
        frame = frame[frame["test_id"] == match_test(args.test, frame, summary)]
    if args.series:
        available = sorted(frame["series"].dropna().unique())
        unknown = [name for name in args.series if name not in available]
        if unknown:
            which = f"test {_frame_test(args, frame)} of run" if args.test is not None else "run"
            raise UsageError(
                f"{which} {_run_id(record)} has no series {', '.join(map(repr, unknown))} "
                f"(available: {', '.join(available) or 'none'})"
            )
        frame = frame[frame["series"].isin(args.series)]
    return frame


def _frame_test(args: argparse.Namespace, frame: pd.DataFrame) -> str:
    tests = frame["test_id"].dropna().unique()
    return str(tests[0]) if len(tests) == 1 else repr(args.test)


def _write_text(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text)
    except OSError as err:
        raise UsageError(f"cannot write {output}: {err.strerror or err}") from None


def cmd_metrics(args: argparse.Namespace) -> int:
    if args.format == "parquet" and args.output is None:
        raise UsageError("metrics: --format parquet needs --output FILE")
    record = _resolve(args.run)
    frame = _filter(args, record, _read_samples(record))
    if args.format == "parquet":
        try:
            frame.reset_index(drop=True).to_parquet(args.output, index=False)
        except OSError as err:
            raise UsageError(f"cannot write {args.output}: {err.strerror or err}") from None
    elif args.format == "csv":
        _write_text(frame.to_csv(index=False), args.output)
    else:
        if frame.empty:
            print(f"no samples in run {_run_id(record)} for that selection", file=sys.stderr)
            return EXIT_OK
        kinds = run_kinds(read_summary(record.root))
        entries = summarize(frame, kinds)
        day = dt.datetime.fromtimestamp(float(frame["timestamp"].min()), dt.UTC)
        tests = frame["test_id"].dropna().unique()
        scope = f"test {tests[0]}" if len(tests) == 1 else f"{len(tests)} tests"
        header = (
            f"run {_run_id(record)}, {scope}: {len(frame)} samples of {len(entries)} series "
            f"(times UTC, {day:%Y-%m-%d})"
        )
        _write_text(f"{header}\n{render_table(entries)}\n", args.output)
    if args.output is not None:
        print(f"wrote {len(frame)} samples to {args.output}", file=sys.stderr)
    return EXIT_OK


# -- aifactory grafana RUN ----------------------------------------------------------------------


def _record_window(record: RunRecord) -> tuple[dt.datetime, dt.datetime]:
    return record.started_at, record.ended_at or dt.datetime.now(dt.UTC)


def _live_prometheus(record: RunRecord) -> str | None:
    """The run's own Prometheus, while the run goes on and it answers."""
    endpoints = read_endpoints(record.root)
    if record.status != "running" or endpoints is None or not endpoints.prometheus_url:
        return None
    credentials = read_credentials(record.root)
    client = PrometheusClient(
        endpoints.prometheus_url,
        timeout_s=READY_TIMEOUT_S,
        headers=credentials.header if credentials else None,
    )
    return endpoints.prometheus_url if client.ready() else None


def _listen_address(url: str) -> str | None:
    """Where a Prometheus serving the run again must listen for the data source to find it;
    None when the data source is not on this machine."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in LOOPBACK:
        return None
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{host}:{parts.port or 9090}"


def cmd_grafana(args: argparse.Namespace) -> int:
    record = _resolve(args.run)
    root = record.root.resolve()
    summary = read_summary(root)
    kinds = run_kinds(summary) or sorted(
        {job.service.kind for job in record.jobs if job.service is not None}
    )
    live = None if args.prometheus_url else _live_prometheus(record)
    kept = has_tsdb(root)
    if args.prometheus_url is None and live is None and not kept:
        why = _why_no_monitoring(root)
        hint = (
            f"; its samples: aifactory metrics {_run_id(record)}"
            if metrics_path(root).is_file()
            else ""
        )
        raise UsageError(
            f"run {_run_id(record)} has no Prometheus data to chart: {why}{hint} "
            "(--prometheus-url URL: a Prometheus that holds it)"
        )
    url = args.prometheus_url or live or DEFAULT_PROMETHEUS_URL
    window = run_window(summary) or _record_window(record)
    path = export_grafana(root, url, window, kinds)
    uid = dashboard_uid(_run_id(record))
    panels = len(panel_queries(json.loads(path.read_text())))
    start, end = window
    print(
        f"wrote {path} ({panels} queries, {start:%Y-%m-%d %H:%M:%S} .. {end:%H:%M:%S} UTC)\n"
        f"      {provisioning_dir(root)}/ (Prometheus data source at {url}, uid {DATASOURCE_UID})"
    )
    print()
    step = 1
    listen = _listen_address(url)
    if live is not None:
        print(f"{step}. the run's Prometheus answers at {live} while the run goes on")
        step += 1
    elif kept and listen is not None:
        write_replay_config(root)
        print(f"{step}. serve the run's kept Prometheus data again (its own ended with the run):")
        print(f"   {shlex.join(replay_argv(root, listen))}")
        step += 1
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in grafana_env(root).items())
    print(f"{step}. start Grafana with the run's provisioning folder:")
    print(f"   {env} grafana-server --homepath {GRAFANA_HOME}")
    print(f"   then open http://127.0.0.1:3000/d/{uid}")
    print(
        f"   or, in a Grafana already running: Dashboards > New > Import, upload {path}\n"
        f"   (its panels use the Prometheus data source with uid {DATASOURCE_UID}: "
        f"{provisioning_dir(root)}/datasources/aifactory.yaml declares it)"
    )
    return EXIT_OK


# -- registration -------------------------------------------------------------------------------


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except UsageError as err:
            print_error(str(err))
            return EXIT_USAGE

    return run


def register_monitor(subcommands: Subcommands) -> None:
    metrics = subcommands.add_parser(
        "metrics", help="a run's server, node and client series (metrics.parquet)"
    )
    metrics.add_argument("run", metavar="RUN", help="run id, unique prefix, folder or 'latest'")
    metrics.add_argument("--test", metavar="ID", help="one test: its id or a unique part of it")
    metrics.add_argument(
        "--series", metavar="NAME", action="append", help="only this series (repeatable)"
    )
    metrics.add_argument(
        "--format",
        choices=("table", "csv", "parquet"),
        default="table",
        help="a summary table per series (default), or the samples as CSV or Parquet",
    )
    metrics.add_argument("-o", "--output", metavar="FILE", help="write to FILE (not stdout)")
    metrics.set_defaults(func=_guarded(cmd_metrics))

    grafana = subcommands.add_parser(
        "grafana", help="export a run's Grafana dashboard and say how to open it"
    )
    grafana.add_argument("run", metavar="RUN", help="run id, unique prefix, folder or 'latest'")
    grafana.add_argument(
        "--prometheus-url",
        metavar="URL",
        help=f"the Prometheus the dashboard reads (default: {DEFAULT_PROMETHEUS_URL}, "
        "where the printed command serves the run's kept data)",
    )
    grafana.set_defaults(func=_guarded(cmd_grafana))
