"""A run's manifest of data-file checksums, and the refusal to compare a run altered since."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_aifactory.report.compare import CompareError, read_run_folder
from pytest_aifactory.report.manifest import manifest_problems, sha256_of, write_manifest


def run_folder(tmp_path: Path) -> Path:
    root = tmp_path / "20260101-000000-r"
    root.mkdir()
    (root / "summary.json").write_text(json.dumps({"run_id": root.name, "tests": []}))
    (root / "records.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    return root


def test_manifest_lists_the_data_files_with_their_sha256(tmp_path: Path) -> None:
    root = run_folder(tmp_path)
    write_manifest(root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["files"]) == {"summary.json", "records.parquet"}
    entry = manifest["files"]["records.parquet"]
    assert entry == {"sha256": sha256_of(root / "records.parquet"), "bytes": 208}
    assert manifest_problems(root) == []
    assert read_run_folder(root).run_id == root.name


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_any_change_is_named_and_refused(tmp_path: Path, damage: str) -> None:
    root = run_folder(tmp_path)
    write_manifest(root)
    records = root / "records.parquet"
    data = bytearray(records.read_bytes())
    if damage == "flip":
        data[50] ^= 1
        records.write_bytes(bytes(data))
    elif damage == "truncate":
        records.write_bytes(bytes(data[:-1]))
    else:
        records.unlink()
    (problem,) = manifest_problems(root)
    assert str(records) in problem
    with pytest.raises(CompareError, match=r"records\.parquet"):
        read_run_folder(root)


def test_a_run_without_a_manifest_is_still_read(tmp_path: Path) -> None:
    root = run_folder(tmp_path)
    assert manifest_problems(root) == []
    assert read_run_folder(root).run_id == root.name
