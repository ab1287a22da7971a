"""A run's signed manifest: what verifies as a baseline, and each way a run is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pytest_aifactory.cli import main
from pytest_aifactory.report.compare import CompareError, read_run_folder
from pytest_aifactory.report.manifest import sha256_of, verify_run, write_manifest
from pytest_aifactory.report.signing import SigningError, key_path, signing_key


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A signing key of this test's own (the state folder is where keys are made)."""
    state = tmp_path / "state"
    monkeypatch.setenv("AIFACTORY_STATE_DIR", str(state))
    return state


def run_folder(tmp_path: Path, status: str = "complete") -> Path:
    root = tmp_path / "reports" / "20260101-000000-r"
    root.parent.mkdir(parents=True)
    root.mkdir(mode=0o700)
    summary = {"run_id": root.name, "status": status, "tests": []}
    (root / "summary.json").write_text(json.dumps(summary))
    (root / "records.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    return root


def test_manifest_lists_the_data_files_signed_with_the_users_key(
    tmp_path: Path, own_state_dir: Path
) -> None:
    root = run_folder(tmp_path)
    write_manifest(root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["files"]) == {"summary.json", "records.parquet"}
    entry = manifest["files"]["records.parquet"]
    assert entry == {"sha256": sha256_of(root / "records.parquet"), "bytes": 208}
    assert manifest["signature"]["algorithm"] == "hmac-sha256"
    assert verify_run(root) == []
    assert read_run_folder(root).run_id == root.name
    # the key lives in the per-user state folder, never beside the runs
    assert key_path().parent == own_state_dir
    assert own_state_dir.stat().st_mode & 0o777 == 0o700
    assert key_path().stat().st_mode & 0o777 == 0o600
    assert not list(root.parent.rglob("*.key"))


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
    (problem,) = verify_run(root)
    assert str(records) in problem
    with pytest.raises(CompareError, match=r"records\.parquet"):
        read_run_folder(root)


def test_an_edit_with_recomputed_hashes_fails_the_signature(tmp_path: Path) -> None:
    """What a plain hash could not stop: the summary edited and its sha256 written again."""
    root = run_folder(tmp_path)
    write_manifest(root)
    summary = root / "summary.json"
    summary.write_text(summary.read_text().replace('"tests": []', '"tests": [{}]'))
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["files"]["summary.json"]
    entry["sha256"] = hashlib.sha256(summary.read_bytes()).hexdigest()
    entry["bytes"] = summary.stat().st_size
    (root / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = verify_run(root)
    assert "manifest.json: its signature does not match" in problem


def test_a_run_signed_with_another_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = run_folder(tmp_path)
    write_manifest(root)
    monkeypatch.setenv("AIFACTORY_STATE_DIR", str(tmp_path / "another-state"))
    (problem,) = verify_run(root)
    assert "signed with another key" in problem


def test_a_data_file_added_after_signing_is_named(tmp_path: Path) -> None:
    root = run_folder(tmp_path)
    write_manifest(root)
    (root / "metrics.parquet").write_bytes(b"PAR1PAR1")
    (problem,) = verify_run(root)
    assert "metrics.parquet: not in manifest.json" in problem


def test_an_unsigned_run_is_refused_with_how_to_sign_it(tmp_path: Path) -> None:
    root = run_folder(tmp_path)
    (problem,) = verify_run(root)
    assert "no manifest.json" in problem
    assert "unsigned" in problem
    assert f"aifactory sign {root}" in problem
    with pytest.raises(CompareError, match="unsigned"):
        read_run_folder(root)


def test_a_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    root = run_folder(tmp_path)
    write_manifest(root)
    root.chmod(0o755)
    (problem,) = verify_run(root)
    assert f"{root}: mode 0755 lets others change it" in problem
    with pytest.raises(SigningError, match="mode 0755"):
        write_manifest(root)  # nor is such a folder signed


def test_a_key_file_others_could_read_is_not_used(tmp_path: Path) -> None:
    signing_key()
    key_path().chmod(0o644)
    with pytest.raises(SigningError, match=r"signing\.key: mode 0644"):
        signing_key()


def old_manifest(root: Path) -> None:
    """As versions before signing wrote it: plain sha256s."""
    files = {
        name: {"sha256": sha256_of(root / name), "bytes": (root / name).stat().st_size}
        for name in ("summary.json", "records.parquet")
    }
    (root / "manifest.json").write_text(
        json.dumps({"format": 1, "algorithm": "sha256", "files": files})
    )


def test_sign_vouches_for_an_old_run_that_still_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = run_folder(tmp_path)
    old_manifest(root)
    (problem,) = verify_run(root)
    assert "unsigned" in problem
    assert "aifactory sign" in problem
    assert main(["sign", str(root)]) == 0
    assert "signed" in capsys.readouterr().out
    assert verify_run(root) == []
    assert main(["sign", str(root)]) == 0
    assert "already signed" in capsys.readouterr().out


def test_sign_refuses_a_changed_run_and_a_running_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = run_folder(tmp_path)
    old_manifest(root)
    (root / "records.parquet").write_bytes(b"PAR1 altered PAR1")
    assert main(["sign", str(root)]) == 1
    assert "records.parquet: changed since the run wrote it" in capsys.readouterr().err
    assert verify_run(root) != []
    # a signed run that no longer verifies is not signed again
    (root / "manifest.json").unlink()
    write_manifest(root)
    (root / "records.parquet").write_bytes(b"PAR1 altered again PAR1")
    assert main(["sign", str(root)]) == 1
    assert "changed since the run wrote it" in capsys.readouterr().err
    running = run_folder(tmp_path / "other", status="running")
    assert main(["sign", str(running)]) == 1
    assert "still running" in capsys.readouterr().err
