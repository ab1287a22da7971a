"""A run's manifest: the sha256 of each data file, written with them and checked when a run is
read back for comparison, so a gate never judges a run whose numbers were altered or torn after
it was written (a partial copy, a hand edit, a disk error)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pytest_aifactory.atomic import write_json_atomic

MANIFEST_FILE = "manifest.json"
DATA_FILES: tuple[str, ...] = (
    "summary.json",
    "records.parquet",
    "metrics.parquet",
    "benchmark.json",
)
"""The files a run's numbers come from (reports and logs are derived or informative)."""
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(root: Path) -> Path:
    """Record the data files present in `root` now (atomically: a reader sees the old manifest
    or the new one, never half of one)."""
    files: dict[str, Any] = {}
    for name in DATA_FILES:
        path = root / name
        if path.is_file():
            files[name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    target = root / MANIFEST_FILE
    write_json_atomic(target, {"format": 1, "algorithm": "sha256", "files": files}, indent=2)
    return target


def manifest_problems(root: Path) -> list[str]:
    """What no longer matches the manifest: each changed or missing data file, named. A run
    saved without a manifest (by an older version) has nothing to check."""
    path = root / MANIFEST_FILE
    if not path.is_file():
        return []
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{path}: unreadable manifest ({err})"]
    problems = []
    for name, entry in files.items():
        data = root / name
        if not data.is_file():
            problems.append(f"{data}: listed in {MANIFEST_FILE} but missing")
            continue
        actual = sha256_of(data)
        if actual != entry.get("sha256"):
            problems.append(
                f"{data}: changed since the run wrote it (sha256 {actual[:12]}..., "
                f"manifest says {str(entry.get('sha256'))[:12]}...)"
            )
    return problems
