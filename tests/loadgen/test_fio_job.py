"""fio's command line, its JSON report and the fio summary, checked against a real fio."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.loadgen.fio_job import (
    FioJob,
    ReportStream,
    completed_ios,
    default_engine,
    file_prefix,
    measurements,
    parse_reports,
)
from pytest_aifactory.loadgen.kinds.fio import FioOptions
from pytest_aifactory.metrics.fio import combine_latency, summarize_fio
from pytest_aifactory.recipe import RecipeError, load_recipe
from tests.helpers import write_recipe

pytestmark = pytest.mark.requires("fio")

MIB = 1024 * 1024


def run_fio(job: FioJob, **argv_options: Any) -> list[dict[str, Any]]:
    done = subprocess.run(job.argv(**argv_options), capture_output=True, timeout=60, check=True)
    return parse_reports(done.stdout)


def records_of(report: dict[str, Any], job: FioJob, process: int) -> list[dict[str, Any]]:
    return [
        {**fields, "phase": "measure", "process": process, "request_id": n}
        for n, fields in enumerate(measurements(report, job))
    ]


@pytest.fixture(scope="module")
def engine() -> str:
    return default_engine(shutil.which("fio") or "fio")


def test_a_run_reaches_the_records_and_the_summary_as_fio_reported_it(
    tmp_path: Path, engine: str
) -> None:
    options = FioOptions(rw="randrw", bs="4k", size="2M", runtime_s=0.5, numjobs=2)
    job = FioJob(options, tmp_path, file_prefix("rand rw/4k", 0, "t0"), engine, iodepth=4)
    reports = run_fio(job, status_interval_s=0.2)
    assert len(reports) >= 2, "interim reports and the final one"
    final = reports[-1]
    (fio_job,) = final["jobs"]  # group reporting: the two fio jobs as one
    assert fio_job["job options"]["iodepth"] == "4"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in job.files())
    assert [p.name for p in job.files()] == [
        "aifactory-fio.rand_rw_4k.t0.p0.0.0",
        "aifactory-fio.rand_rw_4k.t0.p0.1.0",
    ]

    records = records_of(final, job, process=0)
    assert [r["op"] for r in records] == ["read", "write"]
    for record in records:
        side = fio_job[record["op"]]
        assert record["items"] == side["total_ios"] > 0
        assert record["bytes"] == side["io_bytes"]
        assert record["latency_ms"] == pytest.approx(side["lat_ns"]["mean"] / 1e6)
        assert record["end_ts"] - record["send_ts"] == pytest.approx(side["runtime"] / 1000)
        assert record["extra"]["clat_ms"]["p99"] == side["clat_ns"]["percentile"]["99.000000"] / 1e6
        assert record["error"] == ""

    summary = summarize_fio(records)
    read, write = fio_job["read"], fio_job["write"]
    level = summary["per_level"]
    assert level["bw_mib_s"] == pytest.approx((read["bw_bytes"] + write["bw_bytes"]) / MIB)
    assert level["iops"] == pytest.approx(read["iops"] + write["iops"])
    assert level["error_rate"] == 0.0
    assert summary["by_op"]["read"]["bw_mib_s"] == pytest.approx(read["bw_bytes"] / MIB)
    clat = summary["per_request"]["clat_ms"]
    worst_p99 = max(
        read["clat_ns"]["percentile"]["99.000000"], write["clat_ns"]["percentile"]["99.000000"]
    )
    assert clat["p99"] == pytest.approx(worst_p99 / 1e6)
    n_read, n_write = read["clat_ns"]["N"], write["clat_ns"]["N"]
    pooled = (n_read * read["clat_ns"]["mean"] + n_write * write["clat_ns"]["mean"]) / (
        n_read + n_write
    )
    assert clat["mean"] == pytest.approx(pooled / 1e6)
    assert clat["max"] == max(read["clat_ns"]["max"], write["clat_ns"]["max"]) / 1e6
    assert (
        summary["counts"]["ios"] == completed_ios(final) == read["total_ios"] + write["total_ios"]
    )
    assert json.dumps(summary, allow_nan=False)


def test_processes_add_up_and_the_worst_percentile_bounds_the_level(
    tmp_path: Path, engine: str
) -> None:
    """Two processes on their own files: bandwidth and IOPS add up, each percentile is the
    worse process's (an upper bound), and the mean is weighted by each one's I/Os."""
    options = FioOptions(rw="read", bs="64k", size="2M", runtime_s=0.4)
    jobs = [
        FioJob(options, tmp_path, file_prefix("seq", p, "t1"), engine, iodepth=1 + 3 * p)
        for p in (0, 1)
    ]
    finals = [run_fio(job)[-1] for job in jobs]
    records = [
        record
        for process, (job, final) in enumerate(zip(jobs, finals, strict=True))
        for record in records_of(final, job, process)
    ]
    sides = [final["jobs"][0]["read"] for final in finals]
    summary = summarize_fio(records)
    assert summary["counts"] == {
        "sent": 2,
        "completed": 2,
        "failed": 0,
        "good": 2,
        "ios": sum(s["total_ios"] for s in sides),
        "bytes": sum(s["io_bytes"] for s in sides),
        "processes": 2,
    }
    assert summary["per_level"]["bw_mib_s"] == pytest.approx(
        sum(s["bw_bytes"] for s in sides) / MIB
    )
    assert summary["per_level"]["iops"] == pytest.approx(sum(s["iops"] for s in sides))
    for name, key in (("p50", "50.000000"), ("p999", "99.900000")):
        worst = max(s["clat_ns"]["percentile"][key] for s in sides) / 1e6
        assert summary["per_request"]["clat_ms"][name] == pytest.approx(worst)
    assert summary["percentiles"].startswith("upper bound")


def test_latency_parts_combine_exactly_where_they_can() -> None:
    values = [[1.0, 2.0, 3.0], [10.0, 20.0]]

    def part(xs: list[float]) -> dict[str, float]:
        m = sum(xs) / len(xs)
        std = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
        return {
            "n": len(xs),
            "mean": m,
            "std": std,
            "min": min(xs),
            "max": max(xs),
            "p50": xs[len(xs) // 2],
        }

    combined = combine_latency([part(values[0]), None, {"n": 0}, part(values[1])])
    everything = [x for xs in values for x in xs]
    mean = sum(everything) / len(everything)
    assert combined["mean"] == pytest.approx(mean)
    assert combined["std"] == pytest.approx(
        math.sqrt(sum((x - mean) ** 2 for x in everything) / len(everything))
    )
    assert (combined["min"], combined["max"], combined["p50"]) == (1.0, 20.0, 20.0)
    assert math.isnan(combined["p99"])
    assert all(math.isnan(v) for v in combine_latency([None]).values())


def test_failed_runs_count_as_errors_with_no_bandwidth() -> None:
    failed = {
        "op": "read",
        "phase": "measure",
        "process": 0,
        "error": "FioError: no such directory",
    }
    summary = summarize_fio([failed])
    assert summary["counts"]["failed"] == 1
    assert summary["per_level"]["error_rate"] == 1.0
    assert summary["per_level"]["bw_mib_s"] == 0.0
    assert summary["per_request"]["clat_ms"]["p99"] is None
    assert summary["errors"] == {"FioError": 1}
    assert math.isnan(summarize_fio([])["per_level"]["bw_mib_s"] or math.nan)


def test_reports_are_found_between_fio_messages_however_the_output_is_cut() -> None:
    report = {"fio version": "fio-3.33", "timestamp_ms": 5, "jobs": [{"jobname": "x"}]}
    text = json.dumps(report, indent=2)
    output = f"{text}\nfio: terminating on signal 15\n{text}\n".encode()
    stream = ReportStream()
    found = [r for i in range(len(output)) for r in stream.feed(output[i : i + 1])]
    assert found == [report, report]
    assert parse_reports(b"fio: pid=0, err=2/file:filesetup.c:174\n") == []


def test_the_command_sets_the_level_rate_and_runtime() -> None:
    options = FioOptions(
        rw="write",
        bs=4096,
        size="1G",
        runtime_s=1.5,
        ramp_time_s=0.5,
        direct=True,
        time_based=False,
        args=["--fsync=8"],
    )
    argv = FioJob(options, Path("/x"), "pre", "psync", iodepth=2, rate_iops=300).argv()
    assert {
        "--iodepth=2",
        "--rate_iops=300",
        "--runtime=1500ms",
        "--ramp_time=500ms",
        "--direct=1",
        "--bs=4096",
        "--size=1G",
        "--fsync=8",
    } <= set(argv)
    assert "--time_based" not in argv
    layout = FioJob(options, Path("/x"), "pre", "psync", iodepth=2).argv(create_only=True)
    assert "--create_only=1" in layout
    assert not any(a.startswith("--runtime") for a in layout)


def test_bad_fio_options_are_named_in_the_recipe(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml",
        {
            "name": "bad-fio",
            "clients": {
                "disk": {
                    "kind": "fio",
                    "fio": {"bs": "4x", "rw": "trim", "args": ["--output=/tmp/x"]},
                }
            },
        },
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    message = str(caught.value)
    assert "clients.disk.fio.bs" in message
    assert "4x" in message
    assert "clients.disk.fio.rw" in message
    assert "clients.disk.fio.args" in message
    assert "--output" in message
