"""A configuration matrix side by side on Slurm: every configuration's session at once, each
service on a whole node of its own, each run kept, then compared. Needs the dev cluster
(`bash scripts/slurm-up.sh` as root)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.factories import recipe_document
from tests.helpers import BENCHMARK, benchmark_env, write_recipe
from tests.slurm.test_slurm_executor import queued_names

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.requires("llama-server")]


def matrix(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest_aifactory.cli", "matrix", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=480,
        cwd=tmp_path,
        env=benchmark_env(tmp_path),
        check=False,
    )


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_configurations_side_by_side_on_nodes_apart(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    assert len(slurm_cluster.nodes) >= 3, slurm_cluster.nodes
    document = recipe_document(
        name="slurm-matrix",
        platform={"executor": "slurm", "slurm": {"time_limit": "00:10:00"}},
        service={
            "exclusive": True,
            "health_timeout_s": 90,
            "matrix": {"args": [["--parallel", "1"], ["--parallel", "2"]]},
        },
        client={
            "dataset": {"input_tokens": 16, "output_tokens": 6},
            "load": {"levels": [2], "requests": 6, "timeout_s": 60},
        },
        slo={"chat": {"error_rate": {"max": 0.0}}},
        monitor={"prometheus": False},
    )
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    reports = tmp_path / "reports"
    done = matrix(
        tmp_path,
        str(recipe),
        "--side-by-side",
        "--benchmarks",
        str(BENCHMARK),
        "--report-dir",
        str(reports),
        "--",
        "-p",
        "no:cacheprovider",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summaries = [json.loads(p.read_text()) for p in sorted(reports.glob("*/summary.json"))]
    assert sorted(s["matrix"]["id"] for s in summaries) == ["c1-parallel-1", "c2-parallel-2"]
    assert all(s["verdict"] == "pass" for s in summaries), output
    # at once: each session began before the other ended
    first, second = summaries
    assert when(first["started_at"]) < when(second["written_at"])
    assert when(second["started_at"]) < when(first["written_at"])
    # each service on a whole node of its own
    nodes = [s["services"]["llm"]["node"] for s in summaries]
    assert len(set(nodes)) == 2, nodes
    (page,) = reports.glob("matrix-*/matrix.html")
    assert len(list(page.parent.glob("*.log"))) == 2
    result = json.loads((page.parent / "matrix.json").read_text())
    assert result["best"] is not None
    assert not [name for name in queued_names() if "slurm-matrix" in name]
