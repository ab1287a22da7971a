"""Client kind `fio`: one fio job kind on a file system, the load level as fio's iodepth.

fio measures every I/O itself, so this kind does not use the driver's request loop: each client
process lays out its own files (untimed), waits for the other processes, runs fio once for the
level and turns fio's JSON report into records, one per direction (read, write). The process
keeps the runner's contract: progress while fio runs (I/Os done, from fio's interim reports),
the driver's heartbeat watched, and SIGINT/SIGTERM ending the load with what was measured kept
(fio is told to stop and still reports; a second signal kills it). The files fio made are
removed afterwards unless the recipe keeps them; nothing else in the directory is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pytest_aifactory.atomic import write_json_atomic
from pytest_aifactory.cluster.local import STOP_GRACE_S
from pytest_aifactory.cluster.rundir import driver_gone
from pytest_aifactory.loadgen.barrier import agreed_start
from pytest_aifactory.loadgen.fio_job import (
    DIRECTIONS,
    FioJob,
    ReportStream,
    completed_ios,
    default_engine,
    file_prefix,
    fio_binary,
    measurements,
)
from pytest_aifactory.loadgen.kinds.fio import FioOptions
from pytest_aifactory.loadgen.live import LivePusher
from pytest_aifactory.loadgen.progress import WRITE_EVERY_S, Progress
from pytest_aifactory.loadgen.records import Clock, RecordWriter, new_record
from pytest_aifactory.loadgen.signals import install_stop_signals, restore_signals
from pytest_aifactory.loadgen.spec import LoadSpec

STATUS_INTERVAL_S = 1.0
"""How often fio reports while it runs (the live progress)."""
STDERR_TAIL = 400
"""Characters of fio's last messages kept in an error record."""


class FioSetupError(Exception):
    """The load cannot start here (no fio, no such directory, bad options): said in a record."""


def fio_json_path(records_path: str | os.PathLike[str]) -> Path:
    """fio's own final report of a process, kept beside its records file."""
    path = Path(records_path)
    return path.with_name(f"{path.stem}.fio.json")


def run_token(records_path: str | os.PathLike[str]) -> str:
    """Short and the same for every level and process of one run (the records folder names
    the run), different between runs sharing a directory."""
    run_records = Path(records_path).resolve().parent.parent
    return hashlib.sha256(str(run_records).encode()).hexdigest()[:8]


@dataclass
class FioRun:
    """One fio invocation: its reports (interim ones, then the final one) and how it ended."""

    returncode: int | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    stopped: bool = False
    """Told to stop (a signal, the driver gone) rather than ending by itself."""

    @property
    def final(self) -> dict[str, Any] | None:
        return self.reports[-1] if self.reports else None

    def said(self) -> str:
        """fio's last messages on stderr, on one line."""
        detail = " | ".join(line.strip() for line in self.stderr.splitlines() if line.strip())
        return "..." + detail[-STDERR_TAIL:] if len(detail) > STDERR_TAIL else detail

    def failure(self) -> str:
        """Why fio failed, in its own words where it said any."""
        status = f"FioError: fio exited with status {self.returncode}"
        return f"{status}: {self.said()}" if self.said() else status


async def fio_load(spec: LoadSpec) -> dict[str, Any]:
    """Run one process's share of a fio load level; returns the runner's outcome dict."""
    return await FioProcess(spec).run()


class FioProcess:
    """One client process of a fio client for one level."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.clock = Clock()
        self.node = spec.node or os.uname().nodename
        self.progress = Progress.for_load(spec, bounded=False)
        self.live = LivePusher.for_load(spec, self.node)
        self.writer: RecordWriter | None = None
        self.interrupted = False
        self.started_at: float | None = None
        self.sent = 0
        self.completed = 0
        self.failed = 0
        self.ios = 0
        self._stop = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._run_started_ns: int | None = None
        self._saved_signals: dict[int, Any] = {}

    # -- the load ------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        self.writer = RecordWriter(self.spec.records_path)
        self.progress.write()
        self.live.start()
        self._install_signals()
        ticker = asyncio.create_task(self._tick())
        try:
            await self._load()
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            self._restore_signals()
            self.writer.close()
            self.live.completed = self.ios
            self.live.close()
            with contextlib.suppress(OSError):
                self.progress.write(done=True)
        return self.outcome()

    def outcome(self) -> dict[str, Any]:
        """The runner's outcome; `sent`/`completed`/`failed` count fio's reports per direction
        (one record each), `ios` the I/Os fio did, `fio_json` its saved report."""
        report = fio_json_path(self.spec.records_path)
        return {
            "sent": self.sent,
            "completed": self.completed,
            "failed": self.failed,
            "warmup": 0,
            "started_at": self.started_at,
            "ended_at": time.time(),
            "records_path": str(self.spec.records_path),
            "interrupted": self.interrupted,
            "ios": self.ios,
            "fio_json": str(report) if report.exists() else None,
        }

    async def _load(self) -> None:
        try:
            options = FioOptions.model_validate(self.spec.options)
        except ValidationError as err:
            self._fail_all("randread", f"FioError: invalid fio options: {err}")
            return
        try:
            job, scratch = await self._job(options)
        except FioSetupError as err:
            self._fail_all(options.rw, f"FioError: {err}")
            return
        made = [path for path in job.files() if not path.exists()]
        try:
            layout = await self._fio(job.argv(create_only=True))
            if self._stop.is_set():
                return
            if layout.returncode != 0:
                self._fail_all(options.rw, layout.failure(), layout)
                return
            if not await self._wait_for_start():
                return
            self._run_started_ns = self.clock.now_ns()
            self.started_at = self.clock.wall(self._run_started_ns)
            self.progress.duration_s = options.runtime_s + options.ramp_time_s
            measured = await self._fio(
                job.argv(status_interval_s=STATUS_INTERVAL_S), on_report=self._on_report
            )
            self._record(job, measured)
        finally:
            self._remove(options, made, scratch)

    async def _job(self, options: FioOptions) -> tuple[FioJob, Path | None]:
        """This process's fio job; the scratch folder made for it when no directory was set."""
        fio = fio_binary()
        if fio is None:
            raise FioSetupError(
                f"fio is not installed on {self.node} (scripts/install-fio.sh installs it)"
            )
        scratch: Path | None = None
        if options.directory is None:
            base = os.environ.get("TMPDIR") or tempfile.gettempdir()
            scratch = Path(tempfile.mkdtemp(prefix="aifactory-fio-", dir=base))
            directory = scratch
        else:
            directory = Path(options.directory)
            if not directory.is_dir():
                what = "is not a directory" if directory.exists() else "does not exist"
                raise FioSetupError(f"directory '{directory}' {what} on {self.node}")
        engine = options.ioengine
        if not engine:
            engine = await asyncio.to_thread(default_engine, fio)
        if self.spec.mode == "rate":
            iodepth = options.rate_iodepth
            rate_iops: int | None = max(1, round(self.spec.level / options.numjobs))
        else:
            iodepth, rate_iops = max(1, int(self.spec.level)), None
        prefix = file_prefix(self.spec.client, self.spec.process, run_token(self.spec.records_path))
        job = FioJob(options, directory, prefix, engine, iodepth, rate_iops, fio=fio)
        return job, scratch

    async def _wait_for_start(self) -> bool:
        """Start with the other processes of the load; False if told to stop meanwhile."""
        start_at = self.spec.start_at
        if self.spec.barrier_dir and self.spec.processes > 1:
            barrier = agreed_start(
                Path(self.spec.barrier_dir), self.spec.process, self.spec.processes
            )
            agreed = await self._unless_stopped(barrier)
            if agreed is None:
                return False
            start_at = max(start_at or 0.0, agreed)
        if start_at is not None:
            delay = max(0.0, start_at - time.time())
            await self._unless_stopped(asyncio.sleep(delay, result=True))
        return not self._stop.is_set()

    async def _unless_stopped(self, awaitable: Any) -> Any:
        task = asyncio.ensure_future(awaitable)
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
        return task.result()

    # -- fio -----------------------------------------------------------------------------------

    async def _fio(self, argv: list[str], on_report: Any = None) -> FioRun:
        """Run fio to its end, or until told to stop (then it still reports what it did)."""
        run = FioRun(started_at=time.time())
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:  # not executable, out of processes: said like fio's own errors
            run.returncode, run.stderr, run.ended_at = -1, f"cannot start fio: {err}", time.time()
            return run
        self._proc = proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        reader = asyncio.create_task(self._read_reports(proc.stdout, run, on_report))
        errors = asyncio.create_task(proc.stderr.read())
        exited = asyncio.create_task(proc.wait())
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                run.stopped = True
                self._signal(signal.SIGINT)
                done, _ = await asyncio.wait({exited}, timeout=STOP_GRACE_S)
                if not done:
                    self._signal(signal.SIGKILL)
            await exited
        except asyncio.CancelledError:
            self._signal(signal.SIGKILL)
            raise
        finally:
            stop.cancel()
            if proc.returncode is None:
                self._signal(signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
            await asyncio.gather(reader, errors, return_exceptions=True)
            self._proc = None
        run.returncode = proc.returncode
        run.stderr = errors.result().decode("utf-8", "replace") if not errors.cancelled() else ""
        run.ended_at = time.time()
        return run

    async def _read_reports(
        self, stdout: asyncio.StreamReader, run: FioRun, on_report: Any
    ) -> None:
        stream = ReportStream()
        while chunk := await stdout.read(65536):
            for report in stream.feed(chunk):
                run.reports.append(report)
                if on_report is not None:
                    on_report(report)

    def _signal(self, sig: int) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def _on_report(self, report: dict[str, Any]) -> None:
        self.ios = completed_ios(report)
        self.progress.sent = self.progress.completed = self.ios
        self.live.completed = self.ios

    # -- records -------------------------------------------------------------------------------

    def _new_record(self, request_id: int) -> dict[str, Any]:
        return new_record(self.spec, self.node, request_id, "measure")

    def _add(self, record: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.add(record)
        self.sent += 1
        if record["error"]:
            self.failed += 1
            self.progress.failed += 1
            self.live.failed += 1
        else:
            self.completed += 1

    def _record(self, job: FioJob, run: FioRun) -> None:
        """One record per fio job and direction of the final report; fio's report saved."""
        final = run.final
        if final is None:
            self._fail_all(job.options.rw, run.failure(), run)
            return
        with contextlib.suppress(OSError):
            write_json_atomic(fio_json_path(self.spec.records_path), final)
        failed_run = run.returncode != 0 and not run.stopped
        for request_id, fields in enumerate(measurements(final, job)):
            record = self._new_record(request_id)
            record.update(fields)
            record["scheduled_ts"] = record["send_ts"]
            if record["error"] and run.said():
                record["error"] = f"{record['error']}: {run.said()}"
            elif failed_run:
                record["error"] = run.failure()
            self._add(record)
        self.ios = completed_ios(final)
        self.progress.sent = self.ios
        self.progress.completed = self.ios

    def _fail_all(self, rw: str, error: str, run: FioRun | None = None) -> None:
        """A failed load: one error record per direction of the job kind."""
        now = time.time()
        for request_id, op in enumerate(DIRECTIONS.get(rw, ("read",))):
            record = self._new_record(request_id)
            record.update(
                op=op,
                error=error[:1000],
                send_ts=run.started_at if run else now,
                end_ts=run.ended_at if run else now,
                scheduled_ts=run.started_at if run else now,
                bytes=0,
                items=0,
            )
            self._add(record)

    # -- files ---------------------------------------------------------------------------------

    def _remove(self, options: FioOptions, made: list[Path], scratch: Path | None) -> None:
        """Remove what this process's fio created (not what was there before), unless kept."""
        if options.keep_files:
            return
        for path in made:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- progress, heartbeat, signals ------------------------------------------------------------

    async def _tick(self) -> None:
        """Publish progress and stop fio if the driver went away."""
        while True:
            await asyncio.sleep(WRITE_EVERY_S)
            if self.writer is not None:
                self.writer.flush()
            if self._run_started_ns is not None:
                self.progress.elapsed_s = (self.clock.now_ns() - self._run_started_ns) / 1e9
            with contextlib.suppress(OSError):
                self.progress.write()
            if not self._stop.is_set() and self._driver_gone():
                self.interrupted = True
                self._stop.set()

    def _driver_gone(self) -> bool:
        return driver_gone(self.spec.heartbeat_path, started_at=self.clock.anchor_wall)

    def _on_signal(self) -> None:
        if self._stop.is_set():  # a second signal: stop waiting for fio
            self._signal(signal.SIGKILL)
            return
        self.interrupted = True
        self._stop.set()

    def _install_signals(self) -> None:
        self._saved_signals = install_stop_signals(self._on_signal)

    def _restore_signals(self) -> None:
        restore_signals(self._saved_signals)
