"""Where monitoring lives in a run directory; jobs on other nodes find it by these paths."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pytest_aifactory import atomic

MonitorMode = Literal["prometheus", "scrape", "off"]

TARGET_GROUPS = ("services", "nodes", "pushgateway", "prometheus")
"""One file-SD folder per scrape job of the generated Prometheus configuration."""


def monitor_dir(run_root: Path) -> Path:
    return run_root / "monitor"


def targets_dir(run_root: Path, group: str) -> Path:
    return monitor_dir(run_root) / "targets" / group


def tsdb_dir(run_root: Path) -> Path:
    """Prometheus's database, copied here from the node's local disk when the run ends."""
    return monitor_dir(run_root) / "tsdb"


def metrics_parts_dir(run_root: Path) -> Path:
    """One parquet file per test window, merged into `metrics.parquet` when the run is saved."""
    return monitor_dir(run_root) / "metrics"


def metrics_path(run_root: Path) -> Path:
    return run_root / "metrics.parquet"


def endpoints_path(run_root: Path) -> Path:
    return monitor_dir(run_root) / "endpoints.json"


@dataclass(frozen=True)
class MonitorEndpoints:
    """What the run's monitoring is and where it answers (written by the driver)."""

    mode: MonitorMode
    scrape_interval_s: float
    prometheus_url: str | None = None
    pushgateway_url: str | None = None
    note: str = ""
    """Why monitoring runs in a reduced mode (no Prometheus binary...), said once."""


def write_endpoints(run_root: Path, endpoints: MonitorEndpoints) -> None:
    write_json_atomic(endpoints_path(run_root), asdict(endpoints))


def read_endpoints(run_root: Path) -> MonitorEndpoints | None:
    try:
        data = json.loads(endpoints_path(run_root).read_text())
    except (OSError, ValueError):
        return None
    try:
        return MonitorEndpoints(**data)
    except TypeError:
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers (Prometheus's file discovery, other processes) never see half a file; folders
    made for it are private."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic.write_json_atomic(path, data, indent=1)
