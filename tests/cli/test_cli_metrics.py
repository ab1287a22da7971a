"""`aifactory metrics` and `aifactory grafana` on a run folder with a small `metrics.parquet`."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pytest_aifactory.cli import main
from pytest_aifactory.cluster import run_records
from pytest_aifactory.cluster.run_records import RunRecord, index_entry, update_index, write_run
from pytest_aifactory.monitor.grafana import grafana_state_dir
from pytest_aifactory.monitor.layout import (
    MonitorEndpoints,
    metrics_parts_dir,
    metrics_path,
    write_endpoints,
)
from pytest_aifactory.monitor.samples import SAMPLE_COLUMNS, normalize

RUN_ID = "20240501T100000Z-demo"
T0 = dt.datetime(2024, 5, 1, 10, 0, 0, tzinfo=dt.UTC).timestamp()
C1 = "benchmarks/test_inference.py::test_chat[chat-c1]"
C4 = "benchmarks/test_inference.py::test_chat[chat-c4]"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _samples() -> pd.DataFrame:
    rows = []

    def add(
        test: str,
        series: str,
        metric: str,
        source: str,
        points: list[tuple[float, float]],
        service: str = "",
        node: str = "n1",
    ) -> None:
        for offset, value in points:
            rows.append(
                {
                    "test_id": test,
                    "series": series,
                    "metric": metric,
                    "source": source,
                    "service": service,
                    "node": node,
                    "instance": "127.0.0.1:8080" if service else "127.0.0.1:9100",
                    "labels": "{}",
                    "timestamp": T0 + offset,
                    "value": value,
                    "origin": "prometheus",
                }
            )

    tokens = ("llamacpp_generated_tokens", "llamacpp:tokens_predicted_total", "service")
    busy = ("llamacpp_requests_processing", "llamacpp:requests_processing", "service")
    load = ("node_load1", "node_load1", "node")
    add(C1, *tokens, [(0, 100), (5, 150), (10, 300)], service="llm")
    # the server restarted during c4: the counter starts again from zero
    add(C4, *tokens, [(20, 300), (22, 400), (25, 50), (30, 150)], service="llm")
    add(C1, *busy, [(0, 1), (5, 3), (10, 2)], service="llm")
    add(C1, *load, [(0, 0.5), (10, 1.5)])
    add(C4, *load, [(10, 1.5), (20, 2.5), (30, 3.5)])  # t0+10: at the edge of both windows
    return normalize(pd.DataFrame(rows))


def make_run(root: Path, with_metrics: bool = True) -> Path:
    run = root / RUN_ID
    run.mkdir(parents=True)
    record = RunRecord(
        run_id=RUN_ID,
        run_dir=str(run),
        recipe="demo",
        executor="local",
        driver_host="localhost",
        started_at=dt.datetime.fromtimestamp(T0 - 5, dt.UTC),
        ended_at=dt.datetime.fromtimestamp(T0 + 40, dt.UTC),
        status="complete",
    )
    write_run(record)
    tests = [
        {
            "test_id": test,
            "name": test.split("::")[1],
            "passed": True,
            "started_at": _iso(T0 + start),
            "ended_at": _iso(T0 + start + 10),
        }
        for test, start in ((C1, 0), (C4, 20))
    ]
    summary = {
        "format": 1,
        "run_id": RUN_ID,
        "status": "complete",
        "started_at": _iso(T0 - 5),
        "written_at": _iso(T0 + 35),
        "services": {"llm": {"kind": "llamacpp", "url": "http://127.0.0.1:8080"}},
        "tests": tests,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    write_endpoints(run, MonitorEndpoints("prometheus", 1.0, "http://127.0.0.1:1", None))
    if with_metrics:
        _samples().to_parquet(metrics_path(run), index=False)
    return run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def table(out: str) -> dict[tuple[str, str], dict[str, str]]:
    """The table's rows by (series, service/node); every cell is one word."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("SERIES "))
    headers = lines[start].split()
    rows = [dict(zip(headers, line.split(), strict=True)) for line in lines[start + 1 :]]
    return {(row["SERIES"], row["SERVICE/NODE"]): row for row in rows}


def test_table_of_every_series(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "metrics", str(run))
    assert status == 0, err
    assert out.splitlines()[0].startswith(f"run {RUN_ID}, 2 tests: ")
    rows = table(out)
    assert list(rows) == [
        ("llamacpp_generated_tokens", "llm"),
        ("llamacpp_requests_processing", "llm"),
        ("node_load1", "n1"),
    ]
    tokens = rows["llamacpp_generated_tokens", "llm"]
    assert tokens["SOURCE"] == "service"
    assert tokens["UNIT"] == "tokens"
    assert tokens["SAMPLES"] == "7"
    assert (tokens["FIRST"], tokens["LAST"]) == ("10:00:00", "10:00:30")
    # 50 + 150 + 0 + 100, then 50 after the restart, then 100
    assert tokens["INCREASE"] == "450"
    assert tokens["RATE/S"] == "15"
    busy = rows["llamacpp_requests_processing", "llm"]
    assert (busy["MIN"], busy["MEAN"], busy["MAX"]) == ("1", "2", "3")
    assert busy["INCREASE"] == busy["RATE/S"] == "-"
    load = rows["node_load1", "n1"]
    assert load["SOURCE"] == "node"
    assert load["SAMPLES"] == "4"  # the sample both windows hold counts once
    assert load["MEAN"] == "2"


@pytest.mark.parametrize("ref", [C4, "chat-c4", "test_chat[chat-c4]"])
def test_one_test(run: Path, capsys: pytest.CaptureFixture[str], ref: str) -> None:
    status, out, err = cli(capsys, "metrics", str(run), "--test", ref)
    assert status == 0, err
    assert out.splitlines()[0].startswith(f"run {RUN_ID}, test {C4}: 7 samples of 2 series")
    rows = table(out)
    assert set(rows) == {("llamacpp_generated_tokens", "llm"), ("node_load1", "n1")}
    tokens = rows["llamacpp_generated_tokens", "llm"]
    assert (tokens["SAMPLES"], tokens["INCREASE"], tokens["RATE/S"]) == ("4", "250", "25")


def test_test_that_matches_several_or_none(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "metrics", str(run), "--test", "test_chat")
    assert status == 2
    assert out == ""
    assert err == f"aifactory: 'test_chat' matches 2 tests: {C1}, {C4}\n"
    status, _, err = cli(capsys, "metrics", str(run), "--test", "c9")
    assert status == 2
    assert err == f"aifactory: no test matching 'c9' (tests: {C1}, {C4})\n"


def test_series_filter(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "metrics", str(run), "--series", "node_load1")
    assert status == 0, err
    assert list(table(out)) == [("node_load1", "n1")]
    status, out, err = cli(capsys, "metrics", str(run), "--series", "gpu_power")
    assert status == 2
    assert "Traceback" not in err
    assert err == (
        f"aifactory: run {RUN_ID} has no series 'gpu_power' (available: llamacpp_generated_tokens,"
        " llamacpp_requests_processing, node_load1)\n"
    )
    status, _, err = cli(
        capsys, "metrics", str(run), "--test", "c4", "--series", "llamacpp_requests_processing"
    )
    assert status == 2
    assert err.startswith(f"aifactory: test {C4} of run {RUN_ID} has no series")
    assert err.endswith("(available: llamacpp_generated_tokens, node_load1)\n")


def test_csv_to_stdout(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(
        capsys, "metrics", str(run), "--format", "csv", "--test", "c1", "--series", "node_load1"
    )
    assert status == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == list(SAMPLE_COLUMNS)
    assert frame["value"].tolist() == [0.5, 1.5]
    assert set(frame["test_id"]) == {C1}


def test_parquet_export(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.parquet"
    status, out, err = cli(
        capsys, "metrics", str(run), "--format", "parquet", "-o", str(target), "--test", C4
    )
    assert status == 0, err
    assert out == ""
    assert err == f"wrote 7 samples to {target}\n"
    written = pd.read_parquet(target)
    expected = _samples()
    expected = expected[expected["test_id"] == C4].reset_index(drop=True)
    pd.testing.assert_frame_equal(normalize(written), expected)

    status, _, err = cli(capsys, "metrics", str(run), "--format", "parquet")
    assert status == 2
    assert err == "aifactory: metrics: --format parquet needs --output FILE\n"


def test_table_to_file(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "table.txt"
    status, out, _ = cli(capsys, "metrics", str(run), "--output", str(target))
    assert status == 0
    assert out == ""
    assert ("node_load1", "n1") in table(target.read_text())


def test_runs_found_by_id_prefix_and_latest(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(run_records.STATE_DIR_ENV, str(tmp_path / "state"))
    record = run_records.read_run(run)
    assert record is not None
    update_index(run, index_entry(record))
    for ref in (RUN_ID, "20240501T10", "latest"):
        status, out, err = cli(capsys, "metrics", ref, "--series", "node_load1")
        assert status == 0, err
        assert out.startswith(f"run {RUN_ID}, 2 tests")
    status, _, err = cli(capsys, "metrics", "20230101")
    assert status == 2
    assert err == f"aifactory: no run '20230101' (latest: {RUN_ID})\n"


def test_a_run_still_going_shows_its_windows_so_far(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """metrics.parquet is merged when the session ends; before (or when its driver was
    killed), the samples of each test window already collected are read."""
    merged = make_run(tmp_path / "merged")
    status, whole, err = cli(capsys, "metrics", str(merged))
    assert status == 0, err
    going = make_run(tmp_path / "going", with_metrics=False)
    samples = _samples()
    parts = metrics_parts_dir(going)
    parts.mkdir(parents=True)
    for index, (_, window) in enumerate(samples.groupby("test_id", sort=True)):
        window.to_parquet(parts / f"window-{index}.parquet", index=False)
    status, out, err = cli(capsys, "metrics", str(going))
    assert status == 0, err
    assert table(out) == table(whole)


def test_run_without_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, with_metrics=False)
    write_endpoints(run, MonitorEndpoints("off", 1.0, note="--monitor off"))
    status, out, err = cli(capsys, "metrics", str(run))
    assert status == 2
    assert out == ""
    assert err == (
        f"aifactory: run {RUN_ID} has no metrics.parquet: monitoring was off (--monitor off)\n"
    )
    (run / "monitor" / "endpoints.json").unlink()
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "monitoring": {"mode": "scrape"}}))
    status, _, err = cli(capsys, "metrics", str(run))
    assert err.endswith(
        "has no metrics.parquet: no Prometheus ran, samples were scraped directly\n"
    )
    (run / "summary.json").write_text(json.dumps(summary))
    status, _, err = cli(capsys, "metrics", str(run))
    assert err.endswith("has no metrics.parquet: monitoring did not run\n")
    status, _, err = cli(capsys, "metrics", str(tmp_path / "nowhere"))
    assert status == 2
    assert err.startswith("aifactory: no run ")


# -- aifactory grafana ----------------------------------------------------------------------------


def test_grafana_without_prometheus_data(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_endpoints(run, MonitorEndpoints("scrape", 1.0, note="no prometheus binary"))
    status, out, err = cli(capsys, "grafana", str(run))
    assert status == 2
    assert out == ""
    assert err.startswith(
        f"aifactory: run {RUN_ID} has no Prometheus data to chart: no Prometheus ran, samples "
        f"were scraped directly (no prometheus binary); its samples: aifactory metrics {RUN_ID}"
    )
    assert not (run / "grafana").exists()


def test_grafana_of_a_run_with_kept_data(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / "monitor" / "tsdb" / "wal").mkdir(parents=True)
    status, out, err = cli(capsys, "grafana", str(run))
    assert status == 0, err
    root = run.resolve()
    board = json.loads((root / "grafana" / "dashboard.json").read_text())
    assert board["time"] == {"from": "2024-05-01T09:59:55.000Z", "to": "2024-05-01T10:00:35.000Z"}
    assert f"wrote {root}/grafana/dashboard.json" in out
    assert (
        f"   prometheus --config.file={root}/monitor/replay.yml "
        f"--storage.tsdb.path={root}/monitor/tsdb --storage.tsdb.retention.time=100y "
        "--web.listen-address=127.0.0.1:9090\n" in out
    )
    assert yaml.safe_load((root / "monitor" / "replay.yml").read_text())["global"] == {
        "scrape_interval": "1s",
        "evaluation_interval": "1s",
    }
    state = grafana_state_dir(root)
    assert (
        f"   GF_PATHS_PROVISIONING={root}/grafana/provisioning GF_SERVER_HTTP_ADDR=127.0.0.1 "
        f"GF_PATHS_DATA={state}/data GF_PATHS_LOGS={state}/logs "
        "grafana-server --homepath /usr/share/grafana\n" in out
    )
    assert f"/d/{board['uid']}\n" in out
    source = yaml.safe_load((root / "grafana/provisioning/datasources/aifactory.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://127.0.0.1:9090"


def test_grafana_with_another_prometheus(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(
        capsys, "grafana", str(run), "--prometheus-url", "http://prom.example:9090"
    )
    assert status == 0, err
    assert "prometheus --config.file" not in out  # not this machine's to start
    assert "grafana-server" in out
    source = yaml.safe_load((run / "grafana/provisioning/datasources/aifactory.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prom.example:9090"
    assert source["datasources"][0]["jsonData"] == {"timeInterval": "1s"}
