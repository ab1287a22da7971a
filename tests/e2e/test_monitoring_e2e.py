"""Monitoring against the real parts: Prometheus, node exporter, pushgateway, llama-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.monitor.run_monitor import find_prometheus
from pytest_aifactory.testing import dcgm_exporter
from tests.helpers import (
    Session,
    benchmark_command,
    benchmark_env,
    keep_artifact,
    processes_matching,
    run_benchmark,
    running_dcgm_exporter,
    wait_for,
    write_recipe,
)
from tests.report.chromium import assert_every_chart_drawn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.requires("prometheus", "prometheus-node-exporter", "llama-server"),
]

REQUESTS = 10


def recipe_document(
    levels: list[int], output_tokens: int = 32, gpu_exporter: str | None = None
) -> dict[str, Any]:
    """`gpu_exporter`: the address of a DCGM exporter on the node (else none is looked for)."""
    gpu_port = int(gpu_exporter.rsplit(":", 1)[1]) if gpu_exporter else None
    return {
        "name": "monitored-smollm2",
        "services": {
            "llm": {
                "kind": "llamacpp",
                "model": "smollm2-135m",
                "args": ["--parallel", "4"],
                "health_timeout_s": 120,
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "dataset": {"kind": "random", "input_tokens": 32, "output_tokens": output_tokens},
                "load": {
                    "mode": "concurrency",
                    "levels": levels,
                    "requests": REQUESTS,
                    "warmup_requests": 1,
                },
            }
        },
        "slo": {"chat": {"error_rate": {"max": 0.0}}},
        "monitor": {"prometheus": True, "scrape_interval_s": 0.5, "gpu_exporter_port": gpu_port},
    }


@pytest.fixture(scope="module")
def gpu_exporter() -> Iterator[str]:
    """The node's DCGM exporter (a stand-in: this machine has no GPU), serving two GPUs."""
    with running_dcgm_exporter(gpus=2) as address:
        yield address


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory: pytest.TempPathFactory, gpu_exporter: str) -> Session:
    tmp_path = tmp_path_factory.mktemp("monitored")
    document = recipe_document([1, 4], gpu_exporter=gpu_exporter)
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    session = run_benchmark(tmp_path, recipe, "-v")
    assert session.returncode == 0, session.output
    return session


def test_metrics_parquet_holds_server_and_node_series_per_test(monitored_run: Session) -> None:
    (run,) = monitored_run.run_dirs()
    summary = monitored_run.summary()
    assert summary["monitoring"]["mode"] == "prometheus"
    metrics = pd.read_parquet(run / "metrics.parquet")
    test_ids = [t["test_id"] for t in summary["tests"]]
    assert sorted(metrics["test_id"].unique()) == sorted(test_ids)
    for test in summary["tests"]:
        window = metrics[metrics["test_id"] == test["test_id"]]
        series = set(window["series"])
        assert {"llamacpp_generated_tokens", "llamacpp_requests_processing"} <= series, series
        assert {"node_cpu_seconds", "node_memory_available_bytes"} <= series, series
        llama = window[window["series"] == "llamacpp_generated_tokens"]
        assert set(llama["service"]) == {"llm"}
        assert (llama["origin"] == "prometheus").all()
        # samples cover the window: from before the start to after the end
        started = pd.Timestamp(test["started_at"]).timestamp()
        ended = pd.Timestamp(test["ended_at"]).timestamp()
        assert llama["timestamp"].min() <= started
        assert llama["timestamp"].max() >= ended
        cpu = window[window["series"] == "node_cpu_seconds"]
        assert {"mode", "cpu"} <= set(json.loads(cpu["labels"].iloc[0]))
        gpu = window[window["series"] == "gpu_utilization"]
        assert set(gpu["node"]) == set(cpu["node"])
        assert {json.loads(labels)["gpu"] for labels in gpu["labels"]} == {"0", "1"}
        assert gpu["value"].between(0, 100).all()
        # like the node's, the GPU exporter's scrapes are not awaited at a test's edges (only
        # the service's are): its samples span the window to within a few scrape intervals
        assert gpu["timestamp"].min() <= started + 3.0
        assert gpu["timestamp"].max() >= ended - 3.0


def test_server_token_count_agrees_with_clients(monitored_run: Session) -> None:
    (run,) = monitored_run.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    for test in monitored_run.summary()["tests"]:
        (check,) = test["cross_checks"]
        mine = records[records["test_id"] == test["test_id"]]
        client_tokens = float(mine["output_tokens"].sum())
        assert check["client"] == client_tokens
        assert check["server"] == pytest.approx(client_tokens, rel=0.02)
        assert not check["flagged"]
        assert test["server"]["llm"]["output_tokens"] == check["server"]
        assert not [w for w in test["warnings"] if "monitoring" in w or "server" in w], test


def test_efficiency_figures_match_what_the_gpus_and_the_node_spent(monitored_run: Session) -> None:
    """Energy per token from the DCGM stand-in (a test double: no GPU here), whose energy in any
    window is known exactly, and CPU time per token from the real node exporter."""
    (run,) = monitored_run.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    for test in monitored_run.summary()["tests"]:
        figures = test["efficiency"]
        mine = records[(records["test_id"] == test["test_id"]) & (records["phase"] == "measure")]
        start, end = float(mine["send_ts"].min()), float(mine["end_ts"].max())
        tokens = float(mine.loc[mine["error"].fillna("") == "", "output_tokens"].sum())
        assert figures["window_s"] == pytest.approx(end - start)
        assert figures["output_tokens"] == tokens
        assert (figures["gpus"], figures["gpus_from"], figures["nodes"]) == (2, "DCGM series", 1)
        assert figures["energy_source"] == "counter"
        served = sum(
            dcgm_exporter.energy_mj(gpu, end, 0) - dcgm_exporter.energy_mj(gpu, start, 0)
            for gpu in range(2)
        )
        assert figures["energy_j"] == pytest.approx(served / 1000, rel=0.02)
        assert figures["energy_per_output_token_j"] == pytest.approx(figures["energy_j"] / tokens)
        assert figures["energy_per_request_j"] == pytest.approx(figures["energy_j"] / REQUESTS)
        throughput = test["per_level"]["output_throughput"]
        assert figures["output_throughput_per_gpu"] == pytest.approx(throughput / 2)
        # the node's CPUs served the tokens (and ran the clients: one machine)
        assert figures["cpu_seconds_per_output_token"] > 0
        assert figures["cpu_seconds"] == pytest.approx(figures["busy_cores"] * (end - start))
        assert 0 < figures["busy_cores"] <= figures["node_cpus"]
        assert "notes" not in figures, figures["notes"]
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<h4>Efficiency</h4>" in page
    assert "GPU energy per output token" in page


def test_monitoring_jobs_logged_and_stopped(monitored_run: Session) -> None:
    (run,) = monitored_run.run_dirs()
    logs = {p.name for p in (run / "logs").iterdir()}
    assert {"monitor-prometheus", "monitor-pushgateway", "service-llm"} <= logs
    assert (run / "monitor" / "tsdb").is_dir()
    assert not processes_matching(str(run)), "monitoring processes left running"


def _pid_of(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def test_killing_prometheus_mid_run_keeps_the_benchmark(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_document([2, 4], output_tokens=48))
    report_dir = tmp_path / "reports"
    proc = subprocess.Popen(
        benchmark_command(recipe, report_dir, "-v"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=benchmark_env(tmp_path),
    )
    try:
        run = wait_for(lambda: next(report_dir.glob("*/"), None), 120, "run folder")
        pid = wait_for(
            lambda: _pid_of(run / "rendezvous" / "aifactory-prometheus.json"), 120, "Prometheus"
        )
        wait_for(
            lambda: any(p.stat().st_size for p in (run / "records").glob("*/*.jsonl")),
            180,
            "first records",
        )
        os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    summary = json.loads((run / "summary.json").read_text())
    assert "Prometheus stopped answering" in " ".join(summary["monitoring"]["warnings"])
    assert any("Prometheus stopped answering" in w for t in summary["tests"] for w in t["warnings"])
    assert "AIFactoryWarning" in output
    records = pd.read_parquet(run / "records.parquet")
    measured = records[records["phase"] == "measure"]
    assert len(measured) == 2 * REQUESTS
    assert (measured["error"].fillna("") == "").all()
    assert all(t["passed"] for t in summary["tests"])
    assert not processes_matching(str(run))


def test_without_prometheus_the_endpoints_are_scraped_directly(
    tmp_path: Path, gpu_exporter: str
) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_document([2], gpu_exporter=gpu_exporter))
    session = run_benchmark(tmp_path, recipe, "-v", env={"AIFACTORY_PROMETHEUS": ""})
    assert session.returncode == 0, session.output
    assert session.output.count("no Prometheus binary found") == 1, session.output
    summary = session.summary()
    assert summary["monitoring"]["mode"] == "scrape"
    (run,) = session.run_dirs()
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert (metrics["origin"] == "scrape").all()
    assert {"llamacpp_generated_tokens", "node_cpu_seconds", "gpu_utilization"} <= set(
        metrics["series"]
    )
    (test,) = summary["tests"]
    (check,) = test["cross_checks"]
    assert check["server"] == pytest.approx(check["client"], rel=0.02)
    # the scraper keeps the GPUs' energy counter (no `_total` in its name) as Prometheus does
    assert test["efficiency"]["energy_source"] == "counter"
    assert test["efficiency"]["cpu_seconds"] > 0


def test_grafana_dashboard_replays_the_run(monitored_run: Session) -> None:
    """Every panel's query runs on the run's kept Prometheus data; the server panels have it."""
    from pytest_aifactory.cluster.rendezvous import free_port
    from pytest_aifactory.monitor.grafana import panel_queries, replay_argv, write_replay_config
    from pytest_aifactory.monitor.query import PrometheusClient

    (run,) = monitored_run.run_dirs()
    board = json.loads((run / "grafana" / "dashboard.json").read_text())
    assert "aifactory grafana" in monitored_run.output
    write_replay_config(run)
    port = free_port("127.0.0.1")
    binary = find_prometheus()
    assert binary is not None
    proc = subprocess.Popen(
        replay_argv(run, f"127.0.0.1:{port}", binary),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = PrometheusClient(f"http://127.0.0.1:{port}")
        wait_for(client.ready, 30, "replayed Prometheus ready")
        (test,) = [t for t in monitored_run.summary()["tests"] if "4" in t["level_label"]]
        at = pd.Timestamp(test["ended_at"]).timestamp() - 1
        answered = {expr: client.query(expr, at=at) for expr in panel_queries(board, "5s")}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    generated = [e for e in answered if "llamacpp:tokens_predicted_total" in e]
    assert generated
    assert all(answered[e] for e in generated), generated
    cpu = [e for e in answered if "node_cpu_seconds_total" in e]
    assert cpu
    assert all(answered[e] for e in cpu), cpu


@pytest.mark.requires("chromium")
def test_the_runs_report_draws_client_server_node_and_gpu_series(
    monitored_run: Session, tmp_path: Path
) -> None:
    """The report of this real run (not a synthetic one) draws every chart in a real browser,
    with the server's, the node's and the GPU's series on the client's time axis."""
    (run,) = monitored_run.run_dirs()
    page = run / "report.html"
    for panel in ("output tokens/s", "server requests", "node CPU busy %", "GPU utilization %"):
        assert panel in page.read_text(encoding="utf-8"), panel
    shot = assert_every_chart_drawn(page, tmp_path)
    print(f"screenshot: {keep_artifact(shot, 'monitored-run-report.png')}")
