"""Prometheus file-based service discovery: one JSON file per target, written atomically.

Services, node exporters and the pushgateway start at different times and on different nodes;
each announces itself by dropping a file into the run's targets folder, and Prometheus (which
watches the folder) or the direct scraper picks it up without a restart.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pytest_aifactory.monitor.layout import TARGET_GROUPS, targets_dir, write_json_atomic
from pytest_aifactory.monitor.series import NODE_LABEL, ROLE_LABEL, RUN_LABEL

NO_AUTH = "none"
"""`AUTH_LABEL` of a node target that is not the run's own program (a site's DCGM exporter):
scraped without the run's monitoring password, which would otherwise go to whatever answers on
that port, as open to any account as the site made it."""
BEARER_AUTH = "bearer"
"""`AUTH_LABEL` of a service target whose server takes a bearer token of its own for its metrics
(MinIO's JWT, see services/minio_token.py): scraped by a job of its own that sends the token
from the service's token file, not the run's API key."""


@dataclass(frozen=True)
class Target:
    """One scrape target: `host:port`, its metrics path and its labels."""

    group: str
    name: str
    address: str
    metrics_path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.address}{self.metrics_path}"


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") + ".json"


def write_target(run_root: Path, target: Target) -> Path:
    labels = dict(target.labels)
    labels["__metrics_path__"] = target.metrics_path
    path = targets_dir(run_root, target.group) / _file_name(target.name)
    write_json_atomic(path, [{"targets": [target.address], "labels": labels}])
    return path


def remove_target(run_root: Path, group: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (targets_dir(run_root, group) / _file_name(name)).unlink()


def read_targets(run_root: Path, groups: tuple[str, ...] | None = None) -> list[Target]:
    """Every target announced so far (what the direct scraper scrapes)."""
    found: list[Target] = []
    for group in groups or TARGET_GROUPS:
        for path in sorted(targets_dir(run_root, group).glob("*.json")):
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for entry in entries:
                labels = dict(entry.get("labels", {}))
                metrics_path = labels.pop("__metrics_path__", "/metrics")
                for address in entry.get("targets", []):
                    found.append(Target(group, path.stem, address, metrics_path, labels))
    return found


def base_labels(run_id: str, role: str, node: str) -> dict[str, str]:
    return {RUN_LABEL: run_id, ROLE_LABEL: role, NODE_LABEL: node}
