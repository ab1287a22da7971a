"""Starting a benchmark session in the background and stopping it, or stopping a run's jobs.

A session started here is `python -m pytest ... --recipe R` in a session of its own: it goes on
when the caller (a terminal, the web interface) goes away. As `aifactory submit` does for a
batch job, the run folder is made and the run recorded before the session starts, so status,
logs and stop find it from the first second; the session then fills that same folder
(`RunDir.submitted`) and keeps the recorded `session` job in its own record.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pytest_aifactory.api_reports import load_checked_recipe
from pytest_aifactory.api_runs import find_own_run
from pytest_aifactory.api_shapes import ApiError, StartedSession, StopResult
from pytest_aifactory.cluster.local import same_process, stop_process_tree
from pytest_aifactory.cluster.private_prune import retire, run_ended
from pytest_aifactory.cluster.run_control import live_processes, stop_run
from pytest_aifactory.cluster.run_records import (
    SESSION_ROLE,
    JobRecord,
    ProcessRef,
    RunRecord,
    index_run,
    process_ref,
    read_run,
    rewrite_run,
    utcnow,
)
from pytest_aifactory.cluster.rundir import (
    SUBMITTED_RUN_ENV,
    RunDir,
    make_run_id,
    not_owned,
    private_mkdir,
)

SESSION_JOB = "session"
"""The background session's job in the run (`aifactory logs RUN session`)."""
SHIPPED_BENCHMARKS = "pytest_aifactory.benchmarks"
STOP_GRACE_S = 120.0
"""How long a session has to stop its jobs and write what it measured after SIGTERM."""


def session_command(
    recipe: Path,
    report_dir: Path,
    *,
    benchmarks: str | None,
    executor: str | None,
    keyword: str | None,
    pytest_args: Sequence[str],
) -> list[str]:
    """This Python's pytest on the benchmarks (the suites the package ships by default)."""
    target = [benchmarks] if benchmarks else ["--pyargs", SHIPPED_BENCHMARKS]
    command = [sys.executable, "-m", "pytest", *target, "--recipe", str(recipe)]
    command += ["--report-dir", str(report_dir)]
    if executor:
        command += ["--executor", executor]
    if keyword:
        command += ["-k", keyword]
    return [*command, *pytest_args]


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """A long-lived caller (the web interface) would otherwise keep each ended session as a
    zombie, which still looks alive to a PID check."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def start_session(
    recipe: str | Path,
    *,
    pytest_args: Sequence[str] = (),
    benchmarks: str | None = None,
    report_dir: str | Path | None = None,
    executor: str | None = None,
    keyword: str | None = None,
) -> StartedSession:
    """Starts `pytest --recipe RECIPE` in the background and returns once it runs; its output
    goes to the run's `jobs/session/` logs. `InvalidRecipeError` before anything starts."""
    path = Path(recipe)
    loaded = load_checked_recipe(path)
    if not loaded.clients:
        raise ApiError(f"{recipe}: the recipe has no clients: nothing to run")
    if benchmarks is not None and not Path(benchmarks).exists():
        raise ApiError(f"{benchmarks}: no such benchmark folder or file")
    folder = Path(report_dir or loaded.report.dir).expanduser().absolute()
    try:
        run = RunDir.create(folder, make_run_id(loaded.name))
    except OSError as err:
        raise ApiError(f"cannot make a run folder in {folder}: {err.strerror or err}") from None
    logs = private_mkdir(run.jobs_dir / SESSION_JOB)
    stdout, stderr = logs / f"{SESSION_JOB}.out", logs / f"{SESSION_JOB}.err"
    command = session_command(
        path.absolute(),
        folder,
        benchmarks=str(Path(benchmarks).absolute()) if benchmarks else None,
        executor=executor,
        keyword=keyword,
        pytest_args=pytest_args,
    )
    try:
        with stdout.open("ab") as out, stderr.open("ab") as errors:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=errors,
                env={**os.environ, SUBMITTED_RUN_ENV: str(run.root)},
                start_new_session=True,
            )
    except OSError as err:
        raise ApiError(f"cannot start the session ({command[0]}): {err.strerror or err}") from None
    _reap(proc)
    driver = process_ref(proc.pid, "controller")
    now = utcnow()
    job = JobRecord(
        name=SESSION_JOB,
        role=SESSION_ROLE,
        job_id=str(proc.pid),
        executor="local",
        state="RUNNING",
        host=socket.gethostname(),
        stdout=str(stdout),
        stderr=str(stderr),
        submitted_at=now,
        pids=[driver],
    )
    record = RunRecord(
        run_id=run.run_id,
        run_dir=str(run.root.resolve()),
        recipe=loaded.name,
        recipe_path=str(path.resolve()),
        executor=executor or loaded.platform.executor,
        driver_host=socket.gethostname(),
        driver=driver.model_copy(update={"role": "driver"}),
        started_at=now,
        status="submitted",
        jobs=[job],
    )

    def add_session(on_disk: RunRecord | None) -> RunRecord:
        """The session may have written its record first: it then gets the job added."""
        if on_disk is None:
            return record
        others = [j for j in on_disk.jobs if j.role != SESSION_ROLE]
        return on_disk.model_copy(update={"jobs": [job, *others]})

    written = rewrite_run(run.root, add_session)
    if written is not None:
        index_run(written)
    return StartedSession(
        run_id=run.run_id,
        run_dir=record.run_dir,
        pid=proc.pid,
        stdout=str(stdout),
        stderr=str(stderr),
    )


def _results(record: RunRecord) -> list[StopResult]:
    results = [
        StopResult(job=s.job.name, detail=s.detail, ok=s.ok, run_id=record.run_id)
        for s in stop_run(record)
    ]
    _retire_if_ended(record)
    return results


def _retire_if_ended(record: RunRecord) -> None:
    """Once nothing of the run runs, its secrets and job folders go (its logs copied first):
    a run that kept services kept them for those services alone. A run whose session still
    runs is left to it."""
    with contextlib.suppress(OSError, TimeoutError):
        after = read_run(record.root)
        if after is not None and not not_owned(after.root) and run_ended(after)[0]:
            retire(after.root)


def stop_jobs(ref: str) -> list[StopResult]:
    """Cancels every live job of the run, kept services included (`aifactory stop RUN`), and
    removes the run's secrets once nothing of it runs."""
    return _results(find_own_run(ref, "stop"))


def _session_processes(record: RunRecord) -> list[tuple[str, ProcessRef]]:
    """What runs the session here: the controller of its `session` job, else its driver."""
    here = socket.gethostname()
    found = [
        (job.name, ref)
        for job in record.jobs
        if job.role == SESSION_ROLE and job.executor == "local" and job.host in ("", here)
        for ref in job.pids
        if ref.role == "controller"
    ]
    if not found and record.driver is not None and record.driver_host == here:
        found = [("driver", record.driver)]
    return found


def stop_session(ref: str, *, grace_s: float = STOP_GRACE_S) -> list[StopResult]:
    """SIGTERM to the run's session, which then stops its jobs and saves what it measured (as
    on Ctrl-C); after `grace_s` what is left of it is killed, and any job of the run that still
    lives (a kept service, a job the session could not stop) is stopped, and the run's secrets
    removed. Returns when all is gone (up to `grace_s` and a few seconds); an empty list:
    nothing of the run was running."""
    record = find_own_run(ref, "stop")
    results: list[StopResult] = []
    for name, recorded in _session_processes(record):
        proc = same_process(recorded.pid, recorded.create_time, recorded.cmdline)
        if proc is None:
            continue
        started = time.monotonic()
        pids = stop_process_tree([proc], first=[proc], grace_s=grace_s)
        took = time.monotonic() - started
        shown = ", ".join(str(pid) for pid in pids)
        results.append(
            StopResult(
                job=name,
                detail=f"pids {shown}, gone {took:.1f} s after SIGTERM",
                ok=True,
                run_id=record.run_id,
            )
        )
    after = read_run(record.root) or record
    if not_owned(after.root):  # the folder changed hands meanwhile: touch nothing it names
        return results
    if results:
        _mark_session_stopped(after)
    results += _results(read_run(record.root) or after)
    return results


def _mark_session_stopped(record: RunRecord) -> None:
    def mark(on_disk: RunRecord | None) -> RunRecord:
        current = on_disk or record
        for job in current.jobs:
            if job.role == SESSION_ROLE and job.executor == "local" and not live_processes(job):
                job.state = "STOPPED"
        return current

    with contextlib.suppress(OSError, TimeoutError):
        stopped = rewrite_run(record.root, mark)
        if stopped is not None:
            index_run(stopped)
