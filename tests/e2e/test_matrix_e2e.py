"""A configuration matrix against the real llama-server: two slot counts, each benchmarked as a
run of its own, set side by side with a Pareto front and the best configuration named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import recipe_document
from tests.helpers import BENCHMARK, benchmark_env, processes_matching, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]


def test_each_configuration_is_a_run_and_the_best_is_named(tmp_path: Path) -> None:
    document = recipe_document(
        name="slots",
        service={
            "model": "smollm2-135m",
            "health_timeout_s": 120,
            "matrix": {"args": [["--parallel", "1"], ["--parallel", "2"]]},
        },
        client={
            "dataset": {"kind": "random", "input_tokens": 16, "output_tokens": 8},
            "load": {"levels": [2], "requests": 6},
        },
        slo={"chat": {"error_rate": {"max": 0.0}}},
        monitor={"prometheus": False},
    )
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    reports = tmp_path / "reports"
    command = [sys.executable, "-m", "pytest_aifactory.cli", "matrix", str(recipe)]
    command += ["--benchmarks", str(BENCHMARK), "--report-dir", str(reports), "--"]
    command += ["-p", "no:cacheprovider"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=benchmark_env(tmp_path),
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "configuration 2 of 2: llm.args=--parallel 2" in output
    # each configuration kept as a run of its own, named after it, with its own report
    runs = sorted(p.parent for p in reports.glob("*/summary.json"))
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert sorted(s["recipe"]["name"] for s in summaries) == [
        "slots-c1-parallel-1",
        "slots-c2-parallel-2",
    ]
    assert sorted(s["matrix"]["index"] for s in summaries) == [0, 1]
    for run, summary in zip(runs, summaries, strict=True):
        assert (run / "report.html").is_file()
        assert summary["verdict"] == "pass"
        args = summary["recipe"]["document"]["services"]["llm"]["args"]
        assert args == ["--parallel", str(summary["matrix"]["index"] + 1)]
    (page,) = reports.glob("matrix-*/matrix.html")
    result = json.loads((page.parent / "matrix.json").read_text())
    labels = {c["label"] for c in result["configurations"]}
    assert labels == {"llm.args=--parallel 1", "llm.args=--parallel 2"}
    assert result["best"]["label"] in labels
    assert f"best configuration: {result['best']['label']}" in output
    assert result["unit"] == "node"
    assert any(p["on_front"] for p in result["points"])
    best = max(result["configurations"], key=lambda c: c["peak_throughput_per_unit"])
    assert result["best"]["id"] == best["id"]
    html = page.read_text()
    assert "Best configuration:" in html
    assert "Pareto front" in html
    assert not processes_matching(str(reports))
