"""Which runs' private folders are pruned, what of them goes, and that nothing else does."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from pytest_aifactory import api
from pytest_aifactory.cli import main
from pytest_aifactory.cluster import run_records
from pytest_aifactory.cluster.private_prune import (
    ENDED_AGO_S,
    NOT_A_RUN,
    prune,
    prune_ended_quietly,
    retire,
    runs_root,
    survey,
)
from pytest_aifactory.cluster.run_records import (
    JobRecord,
    ProcessRef,
    RunRecord,
    process_ref,
    read_run,
    write_run,
)
from pytest_aifactory.cluster.rundir import RunDir, private_root_of, private_tree

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv(run_records.STATE_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def reports(tmp_path: Path, state: Path) -> Path:
    folder = tmp_path / "reports"
    folder.mkdir()
    return folder


def service_job(run: RunDir, **fields: object) -> JobRecord:
    """A service job of `run` whose log, in the run's private folder, printed the run's key."""
    folder = run.job_folder("service-llm")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "7_0_log.out"
    log.write_text(f"llama-server --api-key {run.api_key()}\nserver is listening\n")
    values: dict[str, object] = {
        "name": "service-llm",
        "role": "service",
        "job_id": "7",
        "executor": "local",
        "state": "CANCELLED",
        "host": socket.gethostname(),
        "stdout": str(log),
        "stderr": str(folder / "7_0_log.err"),
        "submitted_at": NOW,
        **fields,
    }
    return JobRecord.model_validate(values)


def make_run(
    reports: Path,
    name: str,
    *,
    monitored: bool = False,
    job: dict[str, object] | None = None,
    **fields: object,
) -> RunDir:
    """A run as a session leaves it: its record, its key, a service job's raw log, and for a
    monitored run the monitoring password and Grafana's state."""
    run = RunDir.create(reports, name)
    run.beat()
    service = service_job(run, **(job or {}))
    values: dict[str, object] = {
        "run_id": run.run_id,
        "run_dir": str(run.root.resolve()),
        "recipe": "demo",
        "executor": "local",
        "driver_host": socket.gethostname(),
        "started_at": NOW - dt.timedelta(minutes=5),
        "ended_at": NOW,
        "status": "complete",
        "jobs": [service],
        **fields,
    }
    write_run(RunRecord.model_validate(values))
    if monitored:
        monitor = private_tree(run.private_root / "secrets" / "monitor")
        (monitor / "password").write_text("monitor-password-123")
        (monitor / "web-config.yml").write_text("basic_auth_users: {}\n")
        private_tree(monitor / "tokens")
        (monitor / "tokens" / "store").write_text("metrics-token-of-store")
        private_tree(run.private_root / "grafana" / "data")
    return run


def by_run(reports: Path) -> dict[str, tuple[str, str]]:
    return {v.run_dir.name: (v.action, v.why) for v in survey()}


def test_prune_chooses_ended_and_gone_runs_and_keeps_live_and_unknown(reports: Path) -> None:
    make_run(reports, "ended", monitored=True)
    gone = make_run(reports, "gone")
    make_run(reports, "live", status="running", driver=process_ref(os.getpid(), "driver"))
    make_run(
        reports,
        "elsewhere",
        status="running",
        driver=ProcessRef(pid=1, role="driver"),
        driver_host="another-login-node",
    )
    make_run(reports, "kept", job={"state": "RUNNING", "kept": True, "host": "node-7"})
    unreadable = make_run(reports, "unreadable")
    (unreadable.root / "jobs.json").write_text("{not json")
    no_record = make_run(reports, "no-record")
    (no_record.root / "jobs.json").unlink()
    for path in sorted(gone.root.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    gone.root.rmdir()

    verdicts = by_run(reports)

    assert verdicts["ended"][0] == "retire"
    assert verdicts["ended"][1].startswith("run ended ended (last active ")
    assert verdicts["gone"] == ("remove", "its run folder is gone")
    assert verdicts["live"] == ("keep", f"its session runs (pid {os.getpid()})")
    assert verdicts["elsewhere"][0] == "keep"
    assert "ran on another-login-node" in verdicts["elsewhere"][1]
    assert verdicts["kept"][0] == "keep"
    assert (
        "service-llm was RUNNING and cannot be checked from here (node-7)" in (verdicts["kept"][1])
    )
    assert verdicts["unreadable"] == ("keep", "its jobs.json cannot be read")
    assert verdicts["no-record"] == ("keep", NOT_A_RUN)
    assert len(verdicts) == 7


def test_retiring_keeps_grafana_and_shows_the_logs_redacted(
    reports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(reports, "ended", monitored=True)
    key = run.api_key()
    private = run.private_root
    with (private / "jobs" / "service-llm" / "7_0_log.out").open("a") as log:
        log.write("scraped with monitor-password-123 and metrics-token-of-store\n")

    outcomes = prune(survey())

    assert [o.error for o in outcomes] == [""]
    assert sorted(p.relative_to(private).as_posix() for p in outcomes[0].removed) == [
        "jobs",
        "secrets/api_key",
        "secrets/monitor/tokens",
    ]
    left = sorted(p.relative_to(private).as_posix() for p in private.rglob("*"))
    assert left == [
        "grafana",
        "grafana/data",
        "secrets",
        "secrets/monitor",
        "secrets/monitor/password",
        "secrets/monitor/web-config.yml",
    ]
    copy = run.root / "logs" / "service-llm" / "7_0_log.out"
    assert copy.read_text() == (
        "llama-server --api-key ***\nserver is listening\nscraped with *** and ***\n"
    )
    record = read_run(run.root)
    assert record is not None
    assert record.jobs[0].stdout == str(copy)
    assert main(["logs", str(run.root)]) == 0
    out = capsys.readouterr().out
    assert "server is listening" in out
    assert key not in out
    assert survey() == []  # what is left is what `aifactory grafana` needs


def test_a_run_without_monitoring_leaves_nothing_and_empty_parents_go_up_to_runs(
    reports: Path, state: Path
) -> None:
    run = make_run(reports, "plain")
    top = runs_root()
    assert run.private_root.is_dir()
    (state / "runs.json").write_text("{}")

    removed = retire(run.root)

    assert removed
    assert not run.private_root.exists()
    assert top.is_dir()
    assert list(top.iterdir()) == []
    assert (state / "runs.json").read_text() == "{}"
    # a session's record written again (a second end of it) names the raw logs once more
    record = read_run(run.root)
    assert record is not None
    raw = str(run.private_root / "jobs" / "service-llm" / "7_0_log.out")
    write_run(
        record.model_copy(update={"jobs": [record.jobs[0].model_copy(update={"stdout": raw})]})
    )
    assert retire(run.root) == []
    again = read_run(run.root)
    assert again is not None
    assert again.jobs[0].stdout == str(run.root / "logs" / "service-llm" / "7_0_log.out")


def test_dry_run_removes_nothing(reports: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ended = make_run(reports, "ended")
    live = make_run(reports, "live", status="running", driver=process_ref(os.getpid(), "driver"))
    before = sorted(runs_root().rglob("*"))

    assert main(["prune", "--dry-run"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"would remove the secrets and job folders of {ended.root.resolve()} "
        f"(run {ended.run_id} ended (last active {_minute(ended)}))",
        f"kept {live.private_root}: its session runs (pid {os.getpid()})",
    ]
    assert sorted(runs_root().rglob("*")) == before
    assert not (ended.root / "logs" / "service-llm").exists()


def _minute(run: RunDir) -> str:
    when = max((run.root / name).stat().st_mtime for name in ("jobs.json", "heartbeat"))
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def test_prune_command_says_what_it_removed(
    reports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ended = make_run(reports, "ended")

    assert main(["prune"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "1 pruned, 0 kept"
    assert out[0].startswith(f"removed the secrets and job folders of {ended.root.resolve()}")
    assert not ended.private_root.exists()
    assert main(["prune"]) == 0
    assert capsys.readouterr().out == f"nothing to prune in {runs_root()}\n"


def test_links_in_the_private_tree_are_not_followed(reports: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"  # looks like a private folder whose run folder is gone
    (outside / "secrets").mkdir(parents=True)
    (outside / "secrets" / "api_key").write_text("not the run's")
    (outside / "jobs").mkdir()
    (outside / "jobs" / "keep.txt").write_text("precious")
    run = make_run(reports, "ended")
    jobs = run.private_root / "jobs"
    (jobs / "linked-folder").symlink_to(outside, target_is_directory=True)
    (jobs / "service-llm" / "linked-file").symlink_to(outside / "jobs" / "keep.txt")
    (run.private_root / "secrets" / "linked").symlink_to(outside / "secrets")
    # a folder under runs/ that is a link: never entered, never judged
    (runs_root() / "elsewhere").symlink_to(outside, target_is_directory=True)

    outcomes = prune(survey())

    assert [(o.verdict.run_dir.name, o.error) for o in outcomes] == [("ended", "")]
    assert not jobs.exists()
    assert not (run.private_root / "secrets").exists()
    assert (outside / "jobs" / "keep.txt").read_text() == "precious"
    assert (outside / "secrets" / "api_key").read_text() == "not the run's"
    assert (runs_root() / "elsewhere").is_symlink()


def test_a_link_above_a_private_folder_stops_its_removal(reports: Path, tmp_path: Path) -> None:
    """A private folder's path whose folders were replaced by a link (after it was judged) is
    not removed through the link."""
    run = make_run(reports, "ended")
    (verdict,) = survey()
    real = tmp_path / "moved"
    run.private_root.parent.rename(real)
    run.private_root.parent.symlink_to(real, target_is_directory=True)

    (outcome,) = prune([verdict])

    assert "is not a folder (a link?)" in outcome.error
    assert (real / run.run_id / "secrets" / "api_key").is_file()


def test_a_session_start_prunes_only_runs_ended_a_day_ago(reports: Path) -> None:
    recent = make_run(reports, "recent")
    old = make_run(
        reports,
        "old",
        started_at=NOW - dt.timedelta(days=3),
        ended_at=NOW - dt.timedelta(days=2),
    )
    long_ago = (NOW - dt.timedelta(days=2)).timestamp()
    for name in ("jobs.json", "heartbeat"):
        os.utime(old.root / name, (long_ago, long_ago))

    prune_ended_quietly()

    assert not old.private_root.exists()
    assert (recent.private_root / "secrets" / "api_key").is_file()
    assert (old.root / "logs" / "service-llm" / "7_0_log.out").is_file()
    assert survey(ENDED_AGO_S) == []


def test_a_killed_sessions_logs_are_copied_before_its_folder_goes(reports: Path) -> None:
    """The session never copied its jobs' logs: pruning copies them, redacted, first; a log
    copied already and unchanged since is left as it is."""
    run = make_run(reports, "killed", status="running", driver=ProcessRef(pid=1, role="driver"))
    raw = run.private_root / "jobs" / "service-llm" / "7_0_log.err"
    raw.write_text("the last words\n")
    copies = run.root / "logs" / "service-llm"
    copies.mkdir(parents=True)
    (copies / "7_0_log.err").write_text("copied by the session\n")

    (verdict,) = survey()
    assert verdict.action == "retire"
    prune([verdict])

    assert (copies / "7_0_log.out").read_text() == (
        "llama-server --api-key ***\nserver is listening\n"
    )
    assert (copies / "7_0_log.err").read_text() == "copied by the session\n"
    assert not private_root_of(run.root).exists()
    saved = json.loads((run.root / "jobs.json").read_text())
    assert saved["jobs"][0]["stdout"] == str(copies / "7_0_log.out")
    assert saved["jobs"][0]["stderr"] == str(copies / "7_0_log.err")


def test_stop_removes_the_secrets_once_the_kept_service_is_gone(reports: Path) -> None:
    """A kept service (here a process standing for its server) holds its run's folder until
    `aifactory stop` ends it."""
    server = subprocess.Popen(["sleep", "60"])
    try:
        run = make_run(
            reports,
            "kept",
            job={"state": "RUNNING", "kept": True, "pids": [process_ref(server.pid, "controller")]},
        )
        assert by_run(reports) == {
            "kept": (
                "keep",
                "job service-llm still runs (a kept service: `aifactory stop` ends it)",
            )
        }

        results = api.stop_jobs(str(run.root))

        assert [(r.job, r.ok) for r in results] == [("service-llm", True)]
        assert server.wait(timeout=10) != 0
        assert not run.private_root.exists()
        record = read_run(run.root)
        assert record is not None
        assert record.jobs[0].state == "STOPPED"
        assert Path(record.jobs[0].stdout).read_text().startswith("llama-server --api-key ***")
    finally:
        server.kill()
        server.wait()
