"""One process of the fio client kind, for real: records, fio's saved report, the files it
leaves (only the user's), failures as error records, and a signal that ends the load."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.loadgen.fio import fio_json_path, run_token
from pytest_aifactory.loadgen.fio_job import file_prefix
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import LoadSpec
from pytest_aifactory.metrics.fio import summarize_fio
from pytest_aifactory.testing.load_specs import load_spec
from tests.helpers import REPO, processes_matching, wait_for

pytestmark = pytest.mark.requires("fio")

MIB = 1024 * 1024


def fio_spec(tmp_path: Path, level: int = 2, mode: str = "concurrency", **options: Any) -> LoadSpec:
    run = tmp_path / "run"
    return load_spec(
        run,
        client="disk",
        kind="fio",
        mode=mode,
        level=level,
        requests=64,
        records_path=str(run / "records" / "case" / "p0000.jsonl"),
        progress_path=str(run / "progress" / "case" / "p0000.json"),
        options={"size": "2M", "runtime_s": 0.5, **options},
    )


def fio_files(spec: LoadSpec, numjobs: int) -> list[str]:
    prefix = file_prefix(spec.client, spec.process, run_token(spec.records_path))
    return [f"{prefix}.{n}.0" for n in range(numjobs)]


def test_records_match_fio_and_only_fios_own_files_are_removed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.dat").write_bytes(b"user data")
    spec = fio_spec(tmp_path, directory=str(data), rw="randrw", numjobs=2)
    theirs, ours = fio_files(spec, 2)
    (data / theirs).write_bytes(b"\0" * 4096)  # was there before: the user's, whatever its name

    outcome = run_load(spec)

    assert sorted(p.name for p in data.iterdir()) == sorted(["mine.dat", theirs])
    assert ours != theirs
    assert (data / "mine.dat").read_bytes() == b"user data"
    assert outcome["interrupted"] is False
    assert (outcome["sent"], outcome["completed"], outcome["failed"]) == (2, 2, 0)
    report = json.loads(fio_json_path(spec.records_path).read_text())
    assert outcome["fio_json"] == str(fio_json_path(spec.records_path))
    (job,) = report["jobs"]
    assert job["job options"]["iodepth"] == "2"
    records = read_records([spec.records_path])
    assert list(records["op"]) == ["read", "write"]
    assert set(records["phase"]) == {"measure"}
    assert list(records["items"]) == [job["read"]["total_ios"], job["write"]["total_ios"]]
    assert outcome["ios"] == job["read"]["total_ios"] + job["write"]["total_ios"] > 0
    summary = summarize_fio(records)
    bw = (job["read"]["bw_bytes"] + job["write"]["bw_bytes"]) / MIB
    assert summary["per_level"]["bw_mib_s"] == pytest.approx(bw)
    progress = json.loads(Path(spec.progress_path).read_text())
    assert progress["done"] is True
    assert progress["completed"] == outcome["ios"]


def test_the_default_folder_is_private_and_removed_unless_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "node-local"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    run_load(fio_spec(tmp_path, rw="write", bs="64k"))
    assert list(scratch.iterdir()) == []

    spec = fio_spec(tmp_path / "kept", rw="read", keep_files=True)
    run_load(spec)
    (folder,) = scratch.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == fio_files(spec, 1)


def test_rate_mode_paces_fio(tmp_path: Path) -> None:
    spec = fio_spec(tmp_path, level=200, mode="rate", runtime_s=1, rw="randread")
    run_load(spec)
    summary = summarize_fio(read_records([spec.records_path]), requested_rate=200)
    assert summary["per_level"]["iops"] == pytest.approx(200, rel=0.2)
    assert summary["per_level"]["requested_rate"] == 200


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"directory": "/nonexistent/fio-target"}, "directory '/nonexistent/fio-target' does not"),
        ({"ioengine": "no-such-engine"}, "no-such-engine"),
    ],
)
def test_a_fio_that_cannot_run_leaves_an_error_record(
    tmp_path: Path, options: dict[str, Any], expected: str
) -> None:
    spec = fio_spec(tmp_path, rw="randrw", **options)
    outcome = run_load(spec)
    assert (outcome["completed"], outcome["failed"]) == (0, 2)
    records = read_records([spec.records_path])
    assert list(records["op"]) == ["read", "write"]
    for error in records["error"]:
        assert error.startswith("FioError: ")
        assert expected in error
    summary = summarize_fio(records)
    assert summary["per_level"]["error_rate"] == 1.0
    assert summary["errors"] == {"FioError": 2}


RUN_ONE = """
import json, sys
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import LoadSpec
print(json.dumps(run_load(LoadSpec(**json.loads(sys.argv[1])))), flush=True)
"""


def test_a_signal_ends_the_load_and_keeps_what_fio_measured(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    spec = fio_spec(tmp_path, directory=str(data), runtime_s=60, rw="randread")
    fields = {k: v for k, v in spec.__dict__.items() if k not in ("dataset", "node_exporter")}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_ONE, json.dumps(fields)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:

        def ios_done() -> int:
            try:
                return int(json.loads(Path(spec.progress_path).read_text())["completed"])
            except (OSError, ValueError, KeyError):
                return 0

        wait_for(ios_done, timeout=30, what="fio reporting I/Os")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert time.monotonic() - signalled < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["interrupted"] is True
    assert proc.returncode == 0
    (record,) = read_records([spec.records_path]).to_dict("records")
    assert record["error"] == ""
    assert record["items"] > 0
    assert 0 < record["end_ts"] - record["send_ts"] < 30
    assert processes_matching(file_prefix(spec.client, 0, run_token(spec.records_path))) == []
    assert list(data.iterdir()) == []


def test_fio_stops_when_the_driver_is_gone(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat"
    heartbeat.write_text("")
    stale = time.time() - 3600
    os.utime(heartbeat, (stale, stale))
    spec = dataclasses.replace(
        fio_spec(tmp_path, runtime_s=60, rw="randread"), heartbeat_path=str(heartbeat)
    )
    started = time.monotonic()
    outcome = run_load(spec)
    assert time.monotonic() - started < 20
    assert outcome["interrupted"] is True
