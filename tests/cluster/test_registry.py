"""Run records and their control: jobs.json, the per-user index, live states, stopping by PID."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_aifactory.cluster import run_records
from pytest_aifactory.cluster.run_control import observe, stop_local, stop_run
from pytest_aifactory.cluster.run_records import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    IndexEntry,
    JobRecord,
    ProcessRef,
    RunNotFound,
    RunRecord,
    list_runs,
    process_ref,
    read_run,
    resolve_run,
    update_index,
    write_run,
)
from pytest_aifactory.cluster.slurm_commands import job_states

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv(run_records.STATE_DIR_ENV, str(folder))
    return folder


def make_run(root: Path, run_id: str, jobs: list[JobRecord] | None = None) -> RunRecord:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    record = RunRecord(
        run_id=run_id,
        run_dir=str(run_dir),
        recipe="demo",
        executor="local",
        driver_host=socket.gethostname(),
        started_at=NOW,
        jobs=jobs or [],
    )
    write_run(record)
    update_index(record.run_dir, run_records.index_entry(record))
    return record


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def local_job(pids: list[ProcessRef], state: str = "RUNNING") -> JobRecord:
    return JobRecord(
        name="service-web",
        role="service",
        job_id=str(pids[0].pid) if pids else "1",
        executor="local",
        state=state,
        host=socket.gethostname(),
        submitted_at=NOW,
        pids=pids,
    )


def test_run_record_round_trip_private(tmp_path: Path, state_dir: Path) -> None:
    job = local_job([ProcessRef(pid=123, role="controller", create_time=1.5, cmdline=["x"])])
    job.endpoint = "127.0.0.1:8000"
    record = make_run(tmp_path, "20240501-120000-demo", [job])
    path = run_records.jobs_path(record.root)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_run(record.root) == record
    index = run_records.index_path()
    assert index.parent == state_dir
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    (entry,) = list_runs()
    assert entry.run_id == record.run_id
    assert entry.run_dir == record.run_dir
    assert entry.status == "running"
    visible = [p.name for p in record.root.iterdir() if not p.name.startswith(".")]
    assert visible == ["jobs.json"]  # the lock file is hidden


def test_resolve_run_by_id_prefix_part_path_latest(tmp_path: Path) -> None:
    first = make_run(tmp_path, "20240501-120000-alpha")
    second = make_run(tmp_path, "20240501-130000-beta")
    update_index(
        second.run_dir,
        IndexEntry(
            run_id=second.run_id,
            run_dir=second.run_dir,
            recipe="demo",
            started_at=NOW + dt.timedelta(hours=1),
            status="complete",
        ),
    )
    assert resolve_run(first.run_id).run_id == first.run_id
    assert resolve_run("20240501-13").run_id == second.run_id
    assert resolve_run("alpha").run_id == first.run_id
    assert resolve_run(first.run_dir).run_id == first.run_id
    assert resolve_run("latest").run_id == second.run_id
    with pytest.raises(RunNotFound, match="matches 2 runs"):
        resolve_run("20240501")
    with pytest.raises(RunNotFound, match="no run 'gamma'"):
        resolve_run("gamma")
    with pytest.raises(RunNotFound, match="not a run folder"):
        resolve_run(str(tmp_path))


def test_index_drops_runs_whose_folder_is_gone(tmp_path: Path) -> None:
    gone = make_run(tmp_path, "20240501-120000-gone")
    shutil.rmtree(gone.root)
    kept = make_run(tmp_path, "20240501-130000-kept")
    assert [e.run_id for e in list_runs()] == [kept.run_id]


def _append_runs(state_dir: str, root: str, prefix: str, count: int) -> None:
    os.environ[run_records.STATE_DIR_ENV] = state_dir
    for i in range(count):
        run_dir = Path(root) / f"{prefix}-{i:03d}"
        run_dir.mkdir()
        update_index(
            run_dir,
            IndexEntry(
                run_id=run_dir.name,
                run_dir=str(run_dir),
                recipe=prefix,
                started_at=NOW + dt.timedelta(seconds=i),
                status="running",
            ),
        )


def test_index_survives_two_processes_writing_at_once(tmp_path: Path, state_dir: Path) -> None:
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_append_runs, args=(str(state_dir), str(tmp_path), name, 30))
        for name in ("a", "b")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    names = sorted(e.run_id for e in list_runs())
    assert names == sorted(f"{p}-{i:03d}" for p in "ab" for i in range(30))


def test_observe_and_stop_only_the_recorded_process(tmp_path: Path) -> None:
    proc = sleeper()
    try:
        ref = process_ref(proc.pid, "controller")
        impostor = ref.model_copy(update={"create_time": ref.create_time - 100})
        other = make_run(tmp_path, "20240501-120000-other", [local_job([impostor])])
        (live,) = observe(other)
        assert live.state == "ENDED"  # same PID, another process: not ours
        assert stop_run(other) == []
        assert proc.poll() is None  # not signalled

        ours = make_run(tmp_path, "20240501-130000-ours", [local_job([ref])])
        (live,) = observe(ours)
        assert (live.state, live.checked, live.active) == ("RUNNING", True, True)
        (stopped,) = stop_run(ours)
        assert stopped.ok
        assert str(proc.pid) in stopped.detail
        assert proc.wait(timeout=10) == -15
        after = read_run(ours.root)
        assert after is not None
        assert after.jobs[0].state == "STOPPED"
        assert after.status == "stopped"  # its driver is not running
        (live,) = observe(after)
        assert live.state == "STOPPED"
    finally:
        proc.kill()
        proc.wait()


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ignoring\n"  # SIGTERM is ignored from here on
        job = local_job([process_ref(proc.pid, "controller")])
        start = time.monotonic()
        stopped = stop_local(job, grace_s=0.5)
        assert stopped == [proc.pid]
        assert proc.wait(timeout=10) == -9
        assert time.monotonic() - start < 8
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_slurm_jobs_without_slurm_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # a machine without Slurm
    job = JobRecord(
        name="service-llm",
        role="service",
        job_id="4242",
        executor="slurm",
        state="RUNNING",
        submitted_at=NOW,
    )
    record = make_run(tmp_path, "20240501-120000-cluster", [job])
    (live,) = observe(record)
    assert (live.state, live.checked, live.active) == ("RUNNING", False, True)
    (result,) = stop_run(record)
    assert not result.ok
    assert "scancel is not available" in result.detail
    after = read_run(record.root)
    assert after is not None
    assert after.jobs[0].state == "RUNNING"  # not marked stopped: it was not


@pytest.mark.slurm
def test_slurm_jobs_observed_and_stopped(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:
    name = f"aif-registry-{uuid.uuid4().hex[:6]}"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-J",
            name,
            "-o",
            "/dev/null",
            "--array=0-1",
            "--wrap",
            "sleep 120",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    array_id = submitted.stdout.strip().split(";")[0]
    job_ids = [f"{array_id}_{i}" for i in range(2)]
    try:
        jobs = [
            JobRecord(
                name=f"client-chat.{i}",
                role="client",
                job_id=job_id,
                executor="slurm",
                state="PENDING",
                submitted_at=NOW,
            )
            for i, job_id in enumerate(job_ids)
        ]
        record = make_run(tmp_path, "20240501-120000-slurm", jobs)
        # waiting array tasks show as one `ID_[0-1]` line: still both found, neither ENDED
        assert [(j.state in ACTIVE_STATES, j.checked) for j in observe(record)] == [
            (True, True)
        ] * 2
        deadline = time.monotonic() + 30
        while (live := observe(record))[0].state != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.3)
        if live[0].state == "RUNNING":
            assert set(live[0].nodes) <= set(slurm_cluster.nodes)
            assert live[0].nodes
        results = stop_run(record)
        assert [(r.job.job_id, r.ok, r.detail) for r in results] == [
            (job_id, True, f"scancel {job_id}") for job_id in job_ids
        ]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = job_states(job_ids)
            assert states is not None
            if all(s.state in TERMINAL_STATES for s in states.values()):
                break
            time.sleep(0.5)
        assert {s.state for s in states.values()} <= {"CANCELLED", "ENDED"}
        after = read_run(record.root)
        assert after is not None
        assert [j.state for j in after.jobs] == ["STOPPED", "STOPPED"]
    finally:
        subprocess.run(["scancel", array_id], capture_output=True, check=False)
