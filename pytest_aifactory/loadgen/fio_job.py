"""fio's side of the `fio` client kind: the command line of one process's job and the
measurements in fio's JSON report.

Pure functions and data, so the command and the parsing are checked against a real fio without
running a load. The process around them (signals, progress, records, files) is `loadgen.fio`.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_aifactory.loadgen.kinds.fio import FioOptions

MIB = 1024 * 1024

DIRECTIONS: dict[str, tuple[str, ...]] = {
    "read": ("read",),
    "randread": ("read",),
    "write": ("write",),
    "randwrite": ("write",),
    "rw": ("read", "write"),
    "readwrite": ("read", "write"),
    "randrw": ("read", "write"),
}
"""The directions each `rw` mode moves data in: one record per direction and fio job."""

PERCENTILES: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
"""The latency percentiles asked of fio, by the names summaries use."""

PREFERRED_ENGINE = "libaio"
FALLBACK_ENGINE = "psync"


def fio_binary() -> str | None:
    """Where fio is on this node (None when it is not installed)."""
    return shutil.which("fio")


def engine_available(fio: str, engine: str) -> bool:
    """Whether this fio build has the I/O engine (`fio --enghelp=NAME` fails otherwise)."""
    try:
        done = subprocess.run(
            [fio, f"--enghelp={engine}"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def default_engine(fio: str) -> str:
    """libaio where fio has it (I/Os in flight beyond one), else psync."""
    return PREFERRED_ENGINE if engine_available(fio, PREFERRED_ENGINE) else FALLBACK_ENGINE


def file_prefix(client: str, process: int, run_token: str) -> str:
    """The name every file of one process starts with: the client and process name it, the
    run token keeps two runs sharing a directory apart, so no process touches another's files."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", client) or "client"
    return f"aifactory-fio.{safe}.{run_token}.p{process}"


def _milliseconds(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True)
class FioJob:
    """What one client process runs: its job kind at its load level, on its own files."""

    options: FioOptions
    directory: Path
    prefix: str
    ioengine: str
    iodepth: int
    rate_iops: int | None = None
    """Per fio job (rate mode), None in concurrency mode."""
    fio: str = "fio"

    def files(self) -> list[Path]:
        """The files fio works on: one per fio job (`numjobs`), named from `prefix`."""
        return [self.directory / f"{self.prefix}.{n}.0" for n in range(self.options.numjobs)]

    def argv(
        self, *, create_only: bool = False, status_interval_s: float | None = None
    ) -> list[str]:
        """fio's command line. `create_only`: only lay out the files (untimed preparation);
        `status_interval_s`: also print an interim report this often (live progress)."""
        o = self.options
        argv = [
            self.fio,
            f"--name={self.prefix}",
            f"--directory={self.directory}",
            f"--filename_format={self.prefix}.$jobnum.$filenum",
            f"--rw={o.rw}",
            f"--bs={o.bs}",
            f"--size={o.size}",
            f"--numjobs={o.numjobs}",
            f"--ioengine={self.ioengine}",
            f"--iodepth={self.iodepth}",
            f"--direct={int(o.direct)}",
            "--group_reporting",
            "--output-format=json",
            "--eta=never",
            "--lat_percentiles=1",
            "--percentile_list=" + ":".join(f"{p:g}" for p in PERCENTILES.values()),
        ]
        if create_only:
            return [*argv, "--create_only=1", *o.args]
        argv.append(f"--runtime={_milliseconds(o.runtime_s)}")
        if o.time_based:
            argv.append("--time_based")
        if o.ramp_time_s > 0:
            argv.append(f"--ramp_time={_milliseconds(o.ramp_time_s)}")
        if self.rate_iops is not None:
            argv.append(f"--rate_iops={self.rate_iops}")
        if status_interval_s is not None:
            argv.append(f"--status-interval={_milliseconds(status_interval_s)}")
        return [*argv, *o.args]


class ReportStream:
    """fio's JSON reports out of its output as it arrives.

    With `--status-interval` fio prints one pretty-printed report after another, and messages
    such as `fio: terminating on signal 15` may come between them; a report starts with `{` and
    ends with `}` at the start of a line (nested objects are indented).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The reports completed by this chunk of output, in order."""
        self._buffer += self._decoder.decode(data)
        reports: list[dict[str, Any]] = []
        while True:
            start = self._report_start()
            if start < 0:  # no report begun: keep only a last, unfinished line
                self._buffer = self._buffer[self._buffer.rfind("\n") + 1 :]
                return reports
            end = self._buffer.find("\n}", start)
            if end < 0:
                self._buffer = self._buffer[start:]
                return reports
            chunk, self._buffer = self._buffer[start : end + 2], self._buffer[end + 2 :]
            try:
                report = json.loads(chunk)
            except ValueError:
                continue
            if isinstance(report, dict) and isinstance(report.get("jobs"), list):
                reports.append(report)

    def _report_start(self) -> int:
        if self._buffer.startswith("{"):
            return 0
        found = self._buffer.find("\n{")
        return found + 1 if found >= 0 else -1


def parse_reports(output: str | bytes) -> list[dict[str, Any]]:
    """Every report in a finished fio's output (the last one is the final report)."""
    stream = ReportStream()
    return stream.feed(output.encode() if isinstance(output, str) else output)


def _latency_ms(block: Any) -> dict[str, Any] | None:
    """fio's `clat_ns`/`lat_ns` block in milliseconds with the summary names; None when fio
    timed no I/O."""
    if not isinstance(block, dict) or not int(block.get("N") or 0):
        return None
    stats: dict[str, Any] = {
        "n": int(block["N"]),
        "mean": float(block.get("mean", math.nan)) / 1e6,
        "std": float(block.get("stddev", math.nan)) / 1e6,
        "min": float(block.get("min", math.nan)) / 1e6,
        "max": float(block.get("max", math.nan)) / 1e6,
    }
    percentiles = block.get("percentile") or {}
    for name, value in PERCENTILES.items():
        found = percentiles.get(f"{value:.6f}")
        stats[name] = float(found) / 1e6 if found is not None else None
    return stats


def job_error(job: dict[str, Any]) -> str:
    """A fio job's own error (errno and its text), empty when it had none."""
    errno = int(job.get("error") or 0)
    if not errno:
        return ""
    try:
        text = os.strerror(errno)
    except ValueError:
        text = "unknown error"
    return f"FioError: fio job failed with error {errno} ({text})"


def measurements(report: dict[str, Any], job: FioJob) -> list[dict[str, Any]]:
    """The record fields of each fio job (one with group reporting) and direction of `rw`:
    op, send_ts/end_ts (fio's span: its report time minus the direction's runtime),
    latency_ms (mean total latency), bytes, items (I/Os), error, and extra with fio's own
    figures (bandwidth, IOPS, runtime, clat/lat statistics in ms)."""
    end_ts = float(report.get("timestamp_ms") or 0) / 1000.0 or None
    rows: list[dict[str, Any]] = []
    for fio_job in report.get("jobs") or []:
        error = job_error(fio_job)
        for op in DIRECTIONS[job.options.rw]:
            side = fio_job.get(op) or {}
            runtime_s = float(side.get("runtime") or 0) / 1000.0
            lat = _latency_ms(side.get("lat_ns"))
            rows.append(
                {
                    "op": op,
                    "send_ts": end_ts - runtime_s if end_ts is not None else None,
                    "end_ts": end_ts,
                    "latency_ms": lat["mean"] if lat else None,
                    "bytes": int(side.get("io_bytes") or 0),
                    "items": int(side.get("total_ios") or 0),
                    "error": error,
                    "extra": {
                        "runtime_s": runtime_s,
                        "bw_bytes": int(side.get("bw_bytes") or 0),
                        "bw_mib_s": float(side.get("bw_bytes") or 0) / MIB,
                        "iops": float(side.get("iops") or 0.0),
                        "clat_ms": _latency_ms(side.get("clat_ns")),
                        "lat_ms": lat,
                        "job": str(fio_job.get("jobname", "")),
                        "rw": job.options.rw,
                        "bs": str(job.options.bs),
                        "size": str(job.options.size),
                        "numjobs": job.options.numjobs,
                        "iodepth": job.iodepth,
                        "rate_iops": job.rate_iops,
                        "ioengine": job.ioengine,
                        "direct": job.options.direct,
                        "directory": str(job.directory),
                        "fio_version": str(report.get("fio version", "")),
                    },
                }
            )
    return rows


def completed_ios(report: dict[str, Any]) -> int:
    """I/Os done so far in a (possibly interim) report, both directions, every job."""
    return sum(
        int((fio_job.get(op) or {}).get("total_ios") or 0)
        for fio_job in report.get("jobs") or []
        for op in ("read", "write", "trim")
    )
