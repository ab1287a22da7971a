"""A Grafana dashboard of one run, and the provisioning files that open it with no clicking.

The run's Prometheus ends with the run, but its TSDB stays in the run folder: served again by a
Prometheus started on it (`replay_argv`), the dashboard shows the run as it happened. Panels
select the run by a `run` constant, so the same Prometheus may hold several runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from pytest_aifactory.cluster.rundir import private_root_of, private_tree
from pytest_aifactory.monitor.credentials import MonitorCredentials, read_credentials
from pytest_aifactory.monitor.layout import monitor_dir, read_endpoints, tsdb_dir
from pytest_aifactory.monitor.prometheus_config import duration
from pytest_aifactory.monitor.series import (
    CLIENT_SERIES,
    GPU_SERIES,
    NODE_LABEL,
    NODE_SERIES,
    RATE_WINDOW,
    SERVICE_LABEL,
    Series,
    service_series,
)

SCHEMA_VERSION = 39
DATASOURCE_UID = "aifactory-prometheus"
DATASOURCE_NAME = "aifactory Prometheus"
DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
RUN_VARIABLE = "run"
RUN_MATCH = f"${RUN_VARIABLE}"
REPLAY_RETENTION = "100y"
"""Prometheus deletes blocks older than its retention (15 days by default) when it opens a TSDB:
an old run served again must not lose its data."""
GRAFANA_HOME = "/usr/share/grafana"
"""Where Debian/RPM packages of Grafana keep its static files (`grafana-server --homepath`)."""

_INTERVAL_VARIABLES = ("$__rate_interval", "$__interval", "${__rate_interval}", "${__interval}")
_AVERAGED_UNITS = frozenset({"%", "ratio", "slots"})
"""Gauges that are already averages or fractions: summing them over instances means nothing."""
_GAUGE_UNITS = {
    "bytes": "bytes",
    "MiB": "mbytes",
    "%": "percent",
    "ratio": "percentunit",
    "W": "watt",
    "s": "s",
    "": "short",
}
_RATE_UNITS = {"bytes": "Bps", "requests": "reqps", "s": "percentunit"}
"""Per-second rates: seconds of work per second is a busy fraction."""
PANEL_HEIGHT = 8
PANEL_WIDTH = 12


# -- where the files go -------------------------------------------------------------------------


def grafana_dir(run_root: Path) -> Path:
    """The dashboard folder a Grafana file provider reads (it takes every .json below it)."""
    return run_root / "grafana"


def dashboard_path(run_root: Path) -> Path:
    return grafana_dir(run_root) / "dashboard.json"


def provisioning_dir(run_root: Path) -> Path:
    """What `GF_PATHS_PROVISIONING` points at."""
    return grafana_dir(run_root) / "provisioning"


def replay_config_path(run_root: Path) -> Path:
    return monitor_dir(run_root) / "replay.yml"


def has_tsdb(run_root: Path) -> bool:
    path = tsdb_dir(run_root)
    return path.is_dir() and any(path.iterdir())


# -- queries ------------------------------------------------------------------------------------


def run_selector(series: Series, **matchers: str) -> str:
    """`metric{aif_run="$run",...}`; a matcher value starting with `!` is a negative match."""
    equal = {
        **series.run_labels(RUN_MATCH),
        **{k: v for k, v in matchers.items() if not v.startswith("!")},
    }
    selector = series.selector(equal)
    negative = [f'{k}!="{v[1:]}"' for k, v in sorted(matchers.items()) if v.startswith("!")]
    return selector[:-1] + "".join("," + m for m in negative) + "}" if negative else selector


def aggregated(series: Series, by: Sequence[str], **matchers: str) -> str:
    """What one line of a panel plots: counters as per-second rates summed over the group,
    gauges summed (or averaged, for fractions and averages) over it."""
    selector = run_selector(series, **matchers)
    inner = f"rate({selector}[{RATE_WINDOW}])" if series.type == "counter" else selector
    how = "avg" if series.type == "gauge" and series.unit in _AVERAGED_UNITS else "sum"
    return f"{how} by ({', '.join(by)}) ({inner})"


def grafana_unit(series: Series) -> str:
    if series.type == "counter":
        return _RATE_UNITS.get(series.unit) or f"suffix: {series.unit or 'events'}/s"
    return _GAUGE_UNITS.get(series.unit) or f"suffix: {series.unit}"


def _node(name: str) -> Series:
    return next(s for s in NODE_SERIES if s.name == name)


def _target(expr: str, legend: str, ref: str, uid: str) -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": {"type": "prometheus", "uid": uid},
        "expr": expr,
        "legendFormat": legend,
        "editorMode": "code",
        "range": True,
    }


def _timeseries(
    title: str, targets: list[tuple[str, str]], unit: str, uid: str, description: str = ""
) -> dict[str, Any]:
    refs = "ABCDEFGHIJ"
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": uid},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "spanNulls": False,
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            _target(expr, legend, refs[i], uid) for i, (expr, legend) in enumerate(targets)
        ],
    }


def _series_panel(series: Series, by: Sequence[str], legend: str, uid: str) -> dict[str, Any]:
    title = series.help[:1].upper() + series.help[1:]
    if series.type == "counter":
        title += " per second"
    return _timeseries(
        title, [(aggregated(series, by), legend)], grafana_unit(series), uid, series.metric
    )


def _client_panels(uid: str) -> list[dict[str, Any]]:
    return [_series_panel(s, ["client"], "{{client}}", uid) for s in CLIENT_SERIES]


def _service_panels(kind: str, uid: str) -> list[dict[str, Any]]:
    return [
        _series_panel(s, [SERVICE_LABEL], f"{{{{{SERVICE_LABEL}}}}}", uid)
        for s in service_series(kind)
    ]


def _node_panels(uid: str) -> list[dict[str, Any]]:
    by = f"by ({NODE_LABEL})"
    legend = f"{{{{{NODE_LABEL}}}}}"
    idle = run_selector(_node("node_cpu_seconds"), mode="idle")
    total = run_selector(_node("node_memory_total_bytes"))
    available = run_selector(_node("node_memory_available_bytes"))
    rx = aggregated(_node("node_network_receive_bytes"), [NODE_LABEL], device="!lo")
    tx = aggregated(_node("node_network_transmit_bytes"), [NODE_LABEL], device="!lo")
    load = _node("node_load1")
    cpu = _timeseries(
        "CPU busy (all CPUs)",
        [(f"1 - avg {by} (rate({idle}[{RATE_WINDOW}]))", legend)],
        "percentunit",
        uid,
        "share of CPU time not idle, averaged over the node's CPUs",
    )
    cpu["fieldConfig"]["defaults"]["max"] = 1
    return [
        cpu,
        _timeseries(
            "Load average (1 min)", [(f"max {by} ({run_selector(load)})", legend)], "short", uid
        ),
        _timeseries(
            "Memory used",
            [
                (f"max {by} ({total}) - max {by} ({available})", f"{legend} used"),
                (f"max {by} ({total})", f"{legend} installed"),
            ],
            "bytes",
            uid,
            "installed minus available",
        ),
        _timeseries(
            "Network (all interfaces but lo)",
            [(rx, f"{legend} received"), (tx, f"{legend} sent")],
            "Bps",
            uid,
        ),
    ]


def _gpu_panels(uid: str) -> list[dict[str, Any]]:
    legend = f"{{{{{NODE_LABEL}}}}} GPU {{{{gpu}}}}"
    return [_series_panel(s, [NODE_LABEL, "gpu"], legend, uid) for s in GPU_SERIES]


def _tests_panel(tests: Sequence[dict[str, Any]]) -> dict[str, Any]:
    lines = ["| test | started (UTC) | ended (UTC) | verdict |", "|---|---|---|---|"]
    for test in tests:
        passed = test.get("passed")
        verdict = "-" if passed is None else "pass" if passed else "fail"
        name = str(test.get("name") or test.get("test_id") or test.get("id") or "-")
        lines.append(
            f"| `{name.replace('|', '/')}` | {test.get('started_at', '-')} "
            f"| {test.get('ended_at', '-')} | {verdict} |"
        )
    return {
        "type": "text",
        "title": "Tests of the run",
        "options": {"mode": "markdown", "content": "\n".join(lines)},
    }


# -- the dashboard ------------------------------------------------------------------------------


def _iso(when: dt.datetime | float) -> str:
    if not isinstance(when, dt.datetime):
        when = dt.datetime.fromtimestamp(float(when), dt.UTC)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dashboard_uid(run_id: str) -> str:
    """Grafana uids are at most 40 characters; run ids may be longer."""
    return "aif-" + hashlib.sha1(run_id.encode()).hexdigest()[:16]


def dashboard(
    run_id: str,
    kinds: Iterable[str],
    start: dt.datetime | float,
    end: dt.datetime | float,
    datasource_uid: str = DATASOURCE_UID,
    tests: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The dashboard of one run: clients, then each service kind of the run, nodes, GPUs.

    `start`/`end`: datetimes or epoch seconds; `tests`: summary.json's test entries, listed in a
    text panel so a test's window can be found on the time axis."""
    rows: list[tuple[str, list[dict[str, Any]]]] = [("Clients", _client_panels(datasource_uid))]
    for kind in sorted(set(kinds)):
        panels = _service_panels(kind, datasource_uid)
        if panels:
            rows.append((f"Services: {kind}", panels))
    rows.append(("Nodes", _node_panels(datasource_uid)))
    rows.append(("GPUs (DCGM exporter; empty where none runs)", _gpu_panels(datasource_uid)))

    laid_out: list[dict[str, Any]] = []
    y = 0
    if tests:
        text = _tests_panel(tests)
        height = min(12, 3 + len(tests))
        text["gridPos"] = {"h": height, "w": 24, "x": 0, "y": y}
        laid_out.append(text)
        y += height
    for title, panels in rows:
        laid_out.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        for i, panel in enumerate(panels):
            x = (i % 2) * PANEL_WIDTH
            panel["gridPos"] = {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": x, "y": y}
            laid_out.append(panel)
            if x or i == len(panels) - 1:
                y += PANEL_HEIGHT
    for number, panel in enumerate(laid_out, start=1):
        panel["id"] = number

    return {
        "uid": dashboard_uid(run_id),
        "title": f"aifactory run {run_id}",
        "description": f"Services, clients and nodes of the pytest-aifactory run {run_id}",
        "tags": ["aifactory"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "",
        "time": {"from": _iso(start), "to": _iso(end)},
        "timepicker": {},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "type": "constant",
                    "name": RUN_VARIABLE,
                    "label": "run",
                    "hide": 2,
                    "query": run_id,
                    "current": {"text": run_id, "value": run_id},
                    "skipUrlSync": False,
                }
            ]
        },
        "panels": laid_out,
    }


def _all_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))  # a collapsed row holds its panels


def panel_queries(board: dict[str, Any], interval: str | None = None) -> list[str]:
    """Every PromQL expression of every panel, in panel order.

    With `interval` (a Prometheus duration such as `5s`), Grafana's interval variables become
    that duration and the dashboard's constants their values: plain PromQL for Prometheus."""
    exprs = [
        target["expr"]
        for panel in _all_panels(board.get("panels", []))
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    if interval is None:
        return exprs
    constants = {
        v["name"]: str(v["query"])
        for v in board.get("templating", {}).get("list", [])
        if v.get("type") == "constant"
    }
    return [expand(expr, constants, interval) for expr in exprs]


def expand(expr: str, constants: dict[str, str], interval: str) -> str:
    for variable in _INTERVAL_VARIABLES:
        expr = expr.replace(variable, interval)

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in constants:
            return match.group(0)
        # the constants stand inside a label matcher's double quotes
        return constants[name].replace("\\", "\\\\").replace('"', '\\"')

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def panel_datasource_uids(board: dict[str, Any]) -> set[str]:
    """The data source uids the panels and their queries use (one, for a generated board)."""
    uids = set()
    for panel in _all_panels(board.get("panels", [])):
        for holder in (panel, *panel.get("targets", [])):
            source = holder.get("datasource")
            if isinstance(source, dict) and "uid" in source:
                uids.add(str(source["uid"]))
    return uids


# -- provisioning -------------------------------------------------------------------------------


def datasource_provisioning(
    prometheus_url: str,
    uid: str = DATASOURCE_UID,
    scrape_interval_s: float | None = None,
    credentials: MonitorCredentials | None = None,
) -> dict[str, Any]:
    """`timeInterval` tells Grafana the scrape interval, so `$__rate_interval` spans enough
    samples for a rate. `credentials`: the run's, for its own Prometheus while it runs; Grafana
    reads the password from its private file (`$__file{}`), so none is written here."""
    source: dict[str, Any] = {
        "name": DATASOURCE_NAME,
        "type": "prometheus",
        "uid": uid,
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": True,
        "editable": True,
    }
    if scrape_interval_s:
        source["jsonData"] = {"timeInterval": duration(scrape_interval_s)}
    if credentials is not None:
        source["basicAuth"] = True
        source["basicAuthUser"] = credentials.user
        source["secureJsonData"] = {"basicAuthPassword": f"$__file{{{credentials.password_file}}}"}
    return {"apiVersion": 1, "datasources": [source]}


def dashboard_provisioning(folder: Path) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "aifactory",
                "orgId": 1,
                "folder": "aifactory",
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": True,
                "options": {"path": str(folder), "foldersFromFilesStructure": False},
            }
        ],
    }


# -- a run's files ------------------------------------------------------------------------------


def _parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def read_summary(run_root: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_root / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_kinds(summary: dict[str, Any]) -> list[str]:
    services = summary.get("services") or {}
    return sorted(
        {str(s["kind"]) for s in services.values() if isinstance(s, dict) and "kind" in s}
    )


def run_window(summary: dict[str, Any]) -> tuple[dt.datetime, dt.datetime] | None:
    """From the run's start to the last time anything of it was written or measured."""
    tests = summary.get("tests") or []
    start = _parse_time(summary.get("started_at"))
    starts = [t for t in (_parse_time(x.get("started_at")) for x in tests) if t]
    ends = [t for t in (_parse_time(x.get("ended_at")) for x in tests) if t]
    ends += [t for t in (_parse_time(summary.get(k)) for k in ("ended_at", "written_at")) if t]
    start = start or (min(starts) if starts else None)
    if start is None or not ends:
        return None
    return start, max(max(ends), start)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def export_grafana(
    run_root: Path,
    prometheus_url: str = DEFAULT_PROMETHEUS_URL,
    window: tuple[dt.datetime, dt.datetime] | None = None,
    kinds: Iterable[str] | None = None,
) -> Path:
    """Writes `<run>/grafana/dashboard.json` and the provisioning tree; returns the dashboard.

    `window` and `kinds` default to what summary.json says (a run that ended before writing it
    needs them given: see `aifactory grafana`)."""
    run_root = run_root.resolve()
    summary = read_summary(run_root)
    window = window or run_window(summary)
    if window is None:
        raise ValueError(f"{run_root}: no summary.json with the run's start and end times")
    run_id = str(summary.get("run_id") or run_root.name)
    board = dashboard(
        run_id,
        run_kinds(summary) if kinds is None else kinds,
        *window,
        tests=summary.get("tests") or [],
    )
    path = dashboard_path(run_root)
    _write(path, json.dumps(board, indent=2) + "\n")
    endpoints = read_endpoints(run_root)
    provisioning = provisioning_dir(run_root)
    live = endpoints is not None and endpoints.prometheus_url == prometheus_url
    source = datasource_provisioning(
        prometheus_url,
        scrape_interval_s=endpoints.scrape_interval_s if endpoints else None,
        credentials=read_credentials(run_root) if live else None,
    )
    _write(provisioning / "datasources" / "aifactory.yaml", yaml.safe_dump(source, sort_keys=False))
    _write(
        provisioning / "dashboards" / "aifactory.yaml",
        yaml.safe_dump(dashboard_provisioning(grafana_dir(run_root)), sort_keys=False),
    )
    for unused in ("alerting", "plugins"):  # Grafana logs an error for each missing one
        (provisioning / unused).mkdir(exist_ok=True)
    return path


# -- serving a finished run's data again ---------------------------------------------------------


def write_replay_config(run_root: Path) -> Path:
    """A Prometheus configuration that scrapes nothing: the run's own one would scrape its
    targets' addresses again, and whatever answers there now would land in the run's data."""
    endpoints = read_endpoints(run_root)
    interval = duration(endpoints.scrape_interval_s) if endpoints else "15s"
    config = {"global": {"scrape_interval": interval, "evaluation_interval": interval}}
    path = replay_config_path(run_root)
    _write(path, yaml.safe_dump(config, sort_keys=False))
    return path


def replay_argv(
    run_root: Path, listen: str = "127.0.0.1:9090", binary: str = "prometheus"
) -> list[str]:
    run_root = run_root.resolve()
    return [
        binary,
        f"--config.file={replay_config_path(run_root)}",
        f"--storage.tsdb.path={tsdb_dir(run_root)}",
        f"--storage.tsdb.retention.time={REPLAY_RETENTION}",
        f"--web.listen-address={listen}",
    ]


def grafana_state_dir(run_root: Path) -> Path:
    """Grafana's own database, sessions and logs for the run: private (its database holds
    the admin's password hash), and the run's alone (a distribution's default folders are
    shared by every Grafana on the machine)."""
    return private_root_of(run_root.resolve()) / "grafana"


def grafana_env(run_root: Path, listen: str = "127.0.0.1") -> dict[str, str]:
    """The admin's password is the run's monitoring password, read from its private file
    (never Grafana's well-known default, which anyone on the node could use)."""
    state = private_tree(grafana_state_dir(run_root))
    env = {
        "GF_PATHS_PROVISIONING": str(provisioning_dir(run_root.resolve())),
        "GF_SERVER_HTTP_ADDR": listen,
        "GF_PATHS_DATA": str(state / "data"),
        "GF_PATHS_LOGS": str(state / "logs"),
    }
    credentials = read_credentials(run_root)
    if credentials is not None:
        env["GF_SECURITY_ADMIN_PASSWORD__FILE"] = str(credentials.password_file)
    return env
